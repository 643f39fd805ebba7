from rkuprune.cli import main

main()
