"""Reports: the end-of-run summary table, and sweep tables and plots (``python -m rkuprune.report``)."""
