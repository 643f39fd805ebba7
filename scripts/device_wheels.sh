#!/usr/bin/env bash
# Wheels for scripts/device_check.sh: what gpu_check.py and bench_scale.py import that the device
# machine's image lacks (its package list: /work/.library/device/KINDS.md), for its Python 3.12, into
# .whl/ (git-ignored). Pure-Python packages only, so one wheel fits any platform.
set -euo pipefail
mkdir -p .whl
grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
    hydra-core==1.3.8 omegaconf==2.3.1
# antlr4-python3-runtime 4.9.3 (the version omegaconf 2.3 needs) is published as a source archive only
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -l .whl
