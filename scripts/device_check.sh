#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md as one prepared command, for a machine with a GPU but no network
# (the workplace's device machine: torch, transformers, accelerate and peft installed, none of hydra,
# omegaconf, datasets): install the wheels carried in .whl/ (scripts/device_wheels.sh fetches them),
# then run gpu_check.py and the CUDA real-width bench, each under its own time limit, into $OUT.
#
#   bash scripts/device_wheels.sh                     # here, once: .whl/ (git-ignored)
#   device run: carry [".whl"], command "bash scripts/device_check.sh", timeout_s 590
set -uo pipefail
out=${OUT:-device_out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/nvidia_smi.csv" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee "$out/versions.txt"
timeout "${GPU_CHECK_S:-330}" python3 scripts/gpu_check.py --out "$out/gpu_check" 2>&1 | tee "$out/gpu_check.log"
timeout "${BENCH_S:-220}" python3 scripts/bench_scale.py --device cuda --shapes "${SHAPES:-qwen3-8b-shape}" \
    --out "$out/scale" 2>&1 | tee "$out/scale.log"
