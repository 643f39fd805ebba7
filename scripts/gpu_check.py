"""The first command to run on a GPU machine (``make gpu-check``): does the 8B path work, how long does
each stage take, how much memory does it need, and what does pruning buy?

It builds a full-depth random model of the exact Qwen3-8B shape in bf16 (fast init: the values do not
matter for time and memory), scores it with RKU on 16K calibration tokens, slices it at 40%, measures
dense vs pruned prefill and decode throughput and peak CUDA memory, runs one gisp scoring pass on the
dense weights first (the gradient-accumulating scorer's memory), and writes ``gpu_check.json`` and
``gpu_check.md`` under ``--out``. Without CUDA it says so in one line and exits with status 1.

    make gpu-check                     # or: python scripts/gpu_check.py --out gpu_check
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("gpu_check")
NO_CUDA = (
    "gpu-check: no CUDA device is visible (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU"
)


def stage(name: str, results: dict[str, Any], call: Callable[[], Any]) -> Any:
    """Run one stage, recording its wall time and peak CUDA memory."""
    log.info("%s ...", name)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    value = call()
    torch.cuda.synchronize()
    results["stages"][name] = {
        "seconds": round(time.perf_counter() - start, 2),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }
    log.info("%s: %s", name, results["stages"][name])
    return value


def check(args: argparse.Namespace) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from rkuprune.allocation import PruningConfig, allocate
    from rkuprune.data.calibration import CALIBRATION_SOURCES, CalibrationConfig
    from rkuprune.data.sources import DataConfig
    from rkuprune.evaluation import speed
    from rkuprune.models.adapters import adapter_for
    from rkuprune.models.loading import ModelConfig, load_model
    from rkuprune.models.surgery import apply_plan
    from rkuprune.scoring import SCORERS

    arch = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / f"{args.shape}.yaml"))["arch"]
    if args.layers:
        arch["num_hidden_layers"] = args.layers
    model_cfg = ModelConfig(name=args.shape, source="random", arch=arch, dtype="bfloat16", device="cuda", init="fast")
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "stages": {}}
    results["settings"] = {
        "layers": arch["num_hidden_layers"],
        "calibration_tokens": args.tokens,
        "sparsity": args.sparsity,
    }
    loaded = stage("build model", results, lambda: load_model(model_cfg))
    model = loaded.model
    calib_cfg = CalibrationConfig(name="synthetic", num_tokens=args.tokens, seqlen=512, batch_size=args.batch_size)
    calibration = CALIBRATION_SOURCES.build(calib_cfg).build(loaded.tokenizer, DataConfig())
    settings = speed.SpeedConfig(
        prefill_batch=4, prompt_length=512, decode_batches=[1, 16], new_tokens=64, warmup=2, repeats=3
    )
    dense = stage("dense speed", results, lambda: speed.measure(model, settings))
    gisp = SCORERS.build(SCORERS.get("gisp").config())
    stage("gisp scoring pass (dense)", results, lambda: gisp.score(model, calibration))
    rku = SCORERS.build(SCORERS.get("rku").config())
    scores = stage("rku scoring", results, lambda: rku.score(model, calibration))
    structures = adapter_for(model).structures()
    plan = allocate(PruningConfig(sparsity=args.sparsity), scores, structures, base_model=args.shape)
    stage("slice", results, lambda: apply_plan(model, plan, "slice"))
    pruned = stage("pruned speed", results, lambda: speed.measure(model, settings))
    results["speed"] = {"settings": speed.settings(settings, model), "dense": dense, "pruned": pruned}
    results["speed"].update(speed.compare(dense, pruned))
    results["scoring_tokens_per_s"] = calibration.num_tokens / results["stages"]["rku scoring"]["seconds"]
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [f"{results['device']}, torch {results['torch']}, settings {results['settings']}", ""]
    lines += ["| stage | seconds | peak CUDA GiB |", "|---|---:|---:|"]
    lines += [f"| {name} | {s['seconds']} | {s['peak_gib']} |" for name, s in results["stages"].items()]
    figures = results["speed"]
    lines += ["", "| figure | dense | pruned | pruned/dense |", "|---|---:|---:|---:|"]
    for key, ratio in figures["ratio"].items():
        lines.append(f"| {key} | {figures['dense'][key]:.4g} | {figures['pruned'][key]:.4g} | {ratio:.3f} |")
    lines.append(f"\nideal (weight bytes) speedup {figures['ideal_speedup']:.3f}; decode speedup / ideal: ")
    lines[-1] += ", ".join(f"{k.split('@')[1]} {v:.3f}" for k, v in figures["decode_speedup_vs_ideal"].items())
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check"))
    parser.add_argument("--tokens", type=int, default=16384, help="RKU calibration tokens")
    parser.add_argument("--batch-size", type=int, default=8, help="calibration rows per micro-batch (512 tokens each)")
    parser.add_argument("--sparsity", type=float, default=0.4)
    parser.add_argument("--shape", default="qwen3-8b-shape", help="a random-shape model config under conf/model")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than Qwen3-8B's 36, for a quick try")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = check(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    (args.out / "gpu_check.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
