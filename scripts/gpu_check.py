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
import gc
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


class Check:
    """The results so far, written to ``out`` after every stage."""

    def __init__(self, out: Path, device: torch.device, settings: dict[str, Any]) -> None:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        self.out, self.device = out, device
        self.results: dict[str, Any] = {"device": name, "torch": torch.__version__, "settings": settings, "stages": {}}

    def stage(self, name: str, call: Callable[[], Any]) -> Any:
        """Run one stage, recording its wall time and peak memory; None (and the error) when it fails."""
        from rkuprune.evaluation import speed

        log.info("%s ...", name)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        record: dict[str, Any] = {}
        start = time.perf_counter()
        try:
            with speed.peak_memory(self.device) as peak:
                value = call()
                speed.synchronize(self.device)
        except Exception as exc:  # noqa: BLE001 - any failure is a result here; the next stages still run
            record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.error("%s failed: %s", name, record["error"])
            value = None
        else:
            record["peak_gib"] = round(peak["peak_memory_bytes"] / 2**30, 2)
            record["peak_kind"] = peak["peak_memory_kind"]
        record["seconds"] = round(time.perf_counter() - start, 2)
        self.results["stages"][name] = record
        log.info("%s: %s", name, record)
        self.write()
        return value

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=1))
        (self.out / "gpu_check.md").write_text(markdown(self.results))


def check(args: argparse.Namespace) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from rkuprune.allocation import PruningConfig, allocate
    from rkuprune.data.calibration import CALIBRATION_SOURCES, CalibrationConfig
    from rkuprune.data.sources import DataConfig
    from rkuprune.evaluation import speed
    from rkuprune.models.adapters import adapter_for
    from rkuprune.models.loading import ModelConfig, load_model
    from rkuprune.models.params import count_params, sparsity
    from rkuprune.models.surgery import apply_plan
    from rkuprune.scoring import SCORERS

    arch = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / f"{args.shape}.yaml"))["arch"]
    if args.layers:
        arch["num_hidden_layers"] = args.layers
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    model_cfg = ModelConfig(name=args.shape, source="random", arch=arch, dtype=dtype, device=args.device, init="fast")
    settings = {
        "shape": args.shape,
        "layers": arch["num_hidden_layers"],
        "dtype": dtype,
        "calibration_tokens": args.tokens,
        "rku_rows_per_micro_batch": args.batch_size,
        "gisp_rows_per_micro_batch": args.gisp_batch_size,
        "sparsity": args.sparsity,
    }
    run = Check(args.out, torch.device(args.device), settings)
    results = run.results
    loaded = run.stage("build model", lambda: load_model(model_cfg))
    if loaded is None:
        return results
    model = loaded.model

    def calibration(rows: int) -> Any:
        cfg = CalibrationConfig(name="synthetic", num_tokens=args.tokens, seqlen=512, batch_size=rows)
        return CALIBRATION_SOURCES.build(cfg).build(loaded.tokenizer, DataConfig())

    speed_cfg = speed.SpeedConfig(
        prefill_batch=4,
        prompt_length=args.prompt_length,
        decode_batches=[1, 16],
        new_tokens=args.new_tokens,
        warmup=2,
        repeats=3,
    )
    dense = run.stage("dense speed", lambda: speed.measure(model, speed_cfg))
    pruning = PruningConfig(sparsity=args.sparsity)
    gisp = SCORERS.build(SCORERS.get("gisp").config())
    gisp.bind(pruning)
    run.stage("gisp scoring pass (dense)", lambda: gisp.score(model, calibration(args.gisp_batch_size)))
    rku = SCORERS.build(SCORERS.get("rku").config())
    rku.bind(pruning)
    rku_calibration = calibration(args.batch_size)
    scores = run.stage("rku scoring", lambda: rku.score(model, rku_calibration))
    if scores is None:
        return results
    results["scoring_tokens_per_s"] = round(rku_calibration.num_tokens / results["stages"]["rku scoring"]["seconds"])
    structures = adapter_for(model).structures()
    plan = allocate(pruning, scores, structures, base_model=args.shape)
    before = count_params(model)
    run.stage("slice", lambda: apply_plan(model, plan, "slice"))
    if "error" in results["stages"]["slice"]:
        return results
    results["pruned"] = {"sparsity": round(sparsity(before, count_params(model)), 4)}
    results["pruned"]["removed"] = plan.removed_summary(structures)
    pruned = run.stage("pruned speed", lambda: speed.measure(model, speed_cfg))
    if dense is not None and pruned is not None:
        results["speed"] = {"settings": speed.settings(speed_cfg, model), "dense": dense, "pruned": pruned}
        results["speed"].update(speed.compare(dense, pruned))
    run.write()
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [f"{results['device']}, torch {results['torch']}, settings {results['settings']}", ""]
    lines += ["| stage | seconds | peak GiB |", "|---|---:|---:|"]
    for name, stage in results["stages"].items():
        lines.append(f"| {name} | {stage['seconds']} | {stage.get('peak_gib', 'failed: ' + stage.get('error', ''))} |")
    if "pruned" in results:
        lines.append(f"\npruned: sparsity {results['pruned']['sparsity']}, removed {results['pruned']['removed']}")
    if "scoring_tokens_per_s" in results:
        lines.append(f"RKU scoring: {results['scoring_tokens_per_s']} tokens/s")
    figures = results.get("speed")
    if figures:
        lines += ["", "| figure | dense | pruned | pruned/dense |", "|---|---:|---:|---:|"]
        for key, ratio in figures["ratio"].items():
            lines.append(f"| {key} | {figures['dense'][key]:.4g} | {figures['pruned'][key]:.4g} | {ratio:.3f} |")
        lines.append(f"\nideal (weight bytes) speedup {figures['ideal_speedup']:.3f}; decode speedup / ideal: ")
        lines[-1] += ", ".join(f"{k.split('@')[1]} {v:.3f}" for k, v in figures["decode_speedup_vs_ideal"].items())
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check"))
    parser.add_argument("--tokens", type=int, default=16384, help="calibration tokens (RKU and the gisp pass)")
    parser.add_argument("--batch-size", type=int, default=8, help="RKU calibration rows per micro-batch (512 tokens)")
    parser.add_argument("--gisp-batch-size", type=int, default=2, help="gisp rows per micro-batch (its activations)")
    parser.add_argument("--sparsity", type=float, default=0.4)
    parser.add_argument("--shape", default="qwen3-8b-shape", help="a random-shape model config under conf/model")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the shape's, for a quick try")
    parser.add_argument("--prompt-length", type=int, default=512, help="speed: prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=64, help="speed: greedy decode steps")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run with a tiny shape")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = check(args)
    print(markdown(results))
    failed = [name for name, stage in results["stages"].items() if "error" in stage]
    return 1 if failed or "speed" not in results else 0


if __name__ == "__main__":
    sys.exit(main())
