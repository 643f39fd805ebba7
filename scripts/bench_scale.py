"""Real-width scale evidence: every scorer on random models of the exact Qwen2.5-7B, LLaMA-3-8B and
Qwen3-8B widths with 1 and 2 decoder layers, and the full-depth figures extrapolated from them.

For each shape and depth, each measurement runs in a fresh child process (``scripts/bench_scorers.py``
explains why): wall time of the scorer and of one forward+backward over the same calibration tokens
(the reference; the fastest of ``REPEATS`` calls, the first paying page faults and kernel set-up), peak
memory of the first call, and the dense vs pruned (40%, global plan) prefill and
decode throughput. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and, on CPU, the peak
resident set (VmHWM after ``clear_refs``) minus the resident set before the call, plus the weight bytes.

Extrapolation rule: a figure x measured at 1 and 2 layers is fitted as x(L) = a + b·L (b: what one
decoder layer adds, weights, activations, gradient accumulators, time; a: what does not grow with
depth: embeddings, LM head, logits, the Python runtime), and evaluated at the model's real depth.
Decode throughput is extrapolated through its time per token, which is what grows with depth.

    OMP_NUM_THREADS=2 flock /tmp/rkuprune-heavy.lock .venv/bin/python scripts/bench_scale.py --out docs/scale
    python scripts/bench_scale.py --device cuda --shapes qwen3-8b-shape   # on a GPU machine
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]  # this checkout's package, and the sibling script
from bench_scorers import reference_step, rss_kib  # noqa: E402

SHAPES = ("qwen2.5-7b-shape", "llama3-8b-shape", "qwen3-8b-shape")
SCORERS = ("rku", "gisp", "taylor", "wanda_sp", "flap", "magnitude")
DEPTHS = (1, 2)
REPEATS = 2  # timed calls per measurement in one child; the fastest is kept, the peak memory is the first's
log = logging.getLogger("bench_scale")


def compose_run(overrides: list[str]) -> Any:
    from rkuprune.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=overrides))


class Peak:
    """Peak memory of one call on the model's device, in bytes (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> Peak:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.baseline = rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:  # the weights were resident before the call: add them back to what the call added
            self.bytes = rss_kib("VmHWM") * 1024 - self.baseline + self.weights

    weights = 0


def child(name: str, overrides: list[str]) -> dict[str, Any]:
    """Load the model and calibration, then measure one scorer, the reference, or speed."""
    from rkuprune.allocation import allocate
    from rkuprune.data.calibration import CALIBRATION_SOURCES
    from rkuprune.evaluation import speed
    from rkuprune.models.adapters import adapter_for
    from rkuprune.models.loading import load_model
    from rkuprune.models.surgery import apply_plan
    from rkuprune.scoring import SCORERS as REGISTRY

    cfg = compose_run([*overrides, f"scorer={'magnitude' if name in {'reference', 'speed'} else name}"])
    start = time.perf_counter()
    loaded = load_model(cfg.model)
    out: dict[str, Any] = {"name": name, "load_s": time.perf_counter() - start}
    model, device = loaded.model, speed.input_device(loaded.model)
    out["weight_bytes"] = speed.weight_bytes(model)
    if name == "speed":
        settings = speed.SpeedConfig(prompt_length=64, decode_batches=[1, 8], new_tokens=8, repeats=1)
        out["dense"] = speed.measure(model, settings)
        magnitude = REGISTRY.build(cfg.scorer)
        magnitude.bind(cfg.pruning)
        scores = magnitude.score(model, None)
        plan = allocate(cfg.pruning, scores, adapter_for(model).structures(), base_model=cfg.model.name)
        apply_plan(model, plan, "slice")
        out["pruned"] = speed.measure(model, settings)
        return out
    calibration = CALIBRATION_SOURCES.build(cfg.calibration).build(loaded.tokenizer, cfg.data)
    out["tokens"] = calibration.num_tokens
    scorer = REGISTRY.build(cfg.scorer)
    scorer.bind(cfg.pruning)  # a sequential scorer (wanda_sp) prunes as it scores, to the run's target
    call = (
        (lambda: reference_step(model, calibration))
        if name == "reference"
        else (lambda: scorer.score(model, calibration))
    )
    Peak.weights = out["weight_bytes"]

    def timed_call() -> float:
        start = time.perf_counter()
        call()
        speed.synchronize(device)
        return time.perf_counter() - start

    with Peak(device) as peak:
        times = [timed_call()]
    out["peak_bytes"] = peak.bytes
    for _ in range(REPEATS - 1):  # warm calls: the first also pays page faults and kernel set-up
        gc.collect()
        times.append(timed_call())
    out["seconds"], out["all_seconds"] = min(times), times
    return out


def run_child(name: str, overrides: list[str]) -> dict[str, Any]:
    command = [sys.executable, __file__, *overrides, "--child", name]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        log.warning("%s failed: %s", name, tail[0])
        return {"name": name, "error": tail[0]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def fit(at1: float, at2: float, depth: int) -> float:
    """x(L) = a + b·L through the 1- and 2-layer measurements, evaluated at ``depth``."""
    return at1 + (at2 - at1) * (depth - 1)


def extrapolate(shape: dict[str, Any], depth: int) -> dict[str, Any]:
    """Full-depth figures from the 1- and 2-layer ones of one shape."""
    one, two = shape["depths"]["1"], shape["depths"]["2"]
    if "error" in one["reference"] or "error" in two["reference"]:
        return {"depth": depth, "error": "the reference fwd+bwd failed", "scorers": {}, "speedup": {}}
    ref_s = fit(one["reference"]["seconds"], two["reference"]["seconds"], depth)
    weights = fit(one["reference"]["weight_bytes"], two["reference"]["weight_bytes"], depth)
    rows = {}
    for name in SCORERS:
        if "error" in one.get(name, {"error": 1}) or "error" in two.get(name, {"error": 1}):
            continue
        seconds = fit(one[name]["seconds"], two[name]["seconds"], depth)
        peak = fit(one[name]["peak_bytes"], two[name]["peak_bytes"], depth)
        rows[name] = {
            "x_fwd_bwd": seconds / ref_s,
            "peak_gib": peak / 2**30,
            "peak_x_weights": peak / weights,
            "grad_buffers_gib": buffer_bytes(shape["arch"], name, depth) / 2**30,
        }
    speedup = {}
    if "error" not in one["speed"] and "error" not in two["speed"]:
        for key in one["speed"]["dense"]:
            if key.startswith(("decode_tokens", "prefill_tokens")):
                per_token = {  # seconds per token grow with depth; tokens/s do not
                    side: fit(1 / one["speed"][side][key], 1 / two["speed"][side][key], depth)
                    for side in ("dense", "pruned")
                }
                speedup[key] = per_token["dense"] / per_token["pruned"]
        speedup["ideal"] = fit(
            one["speed"]["dense"]["weight_bytes"], two["speed"]["dense"]["weight_bytes"], depth
        ) / fit(one["speed"]["pruned"]["weight_bytes"], two["speed"]["pruned"]["weight_bytes"], depth)
    return {"depth": depth, "weight_gib": weights / 2**30, "reference_s": ref_s, "scorers": rows, "speedup": speedup}


def buffer_bytes(arch: dict[str, Any], name: str, depth: int) -> int:
    """What the scorer declares it holds beside the weights (``Scorer.buffer_bytes``: gisp's and taylor's
    fp32 gradient accumulators) for the model of this shape and depth, built on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rkuprune.scoring import SCORERS as REGISTRY

    fields = {**arch, "num_hidden_layers": depth}
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return sum(REGISTRY.build(REGISTRY.get(name).config()).buffer_bytes(model).values())


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"device {results['device']}, {results['threads']} threads, calibration {results['calibration']}",
        "",
        "| shape | scorer | s (× fwd+bwd), 1 layer | s (× fwd+bwd), 2 layers | × fwd+bwd, full depth (fit) "
        "| peak GiB (/ weights), 1 layer | peak GiB (/ weights), 2 layers | predicted peak GiB, full depth "
        "| of which full-size gradient buffers GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shape_name, shape in results["shapes"].items():
        full = shape.get("full", {})
        measured_names = {name for measured in shape["depths"].values() for name in measured}
        for name in [n for n in ["reference", *SCORERS] if n in measured_names]:
            cells = []
            for depth in ("1", "2"):
                measured, ref = shape["depths"][depth].get(name, {}), shape["depths"][depth]["reference"]
                if "seconds" not in measured or "seconds" not in ref:
                    cells.append("failed")
                    continue
                cells.append(f"{measured['seconds']:.1f} ({measured['seconds'] / ref['seconds']:.2f})")
            for depth in ("1", "2"):
                measured = shape["depths"][depth].get(name, {})
                cells.append(
                    f"{measured['peak_bytes'] / 2**30:.2f} ({measured['peak_bytes'] / measured['weight_bytes']:.2f})"
                    if "peak_bytes" in measured
                    else "failed"
                )
            row = full.get("scorers", {}).get(name)
            fitted = f"{row['x_fwd_bwd']:.2f}" if row else "1.00" if name == "reference" else ""
            predicted = f"{row['peak_gib']:.1f}" if row else ""
            buffers = f"{row['grad_buffers_gib']:.1f}" if row and row["grad_buffers_gib"] else "—"
            lines.append(
                f"| {shape_name} | {name} | {cells[0]} | {cells[1]} | {fitted} | {cells[2]} | {cells[3]} "
                f"| {predicted} | {buffers} |"
            )
    lines += ["", "| shape | layers | figure | dense | pruned | pruned / dense |", "|---|---:|---|---:|---:|---:|"]
    for shape_name, shape in results["shapes"].items():
        for depth, measured in shape["depths"].items():
            figures = measured.get("speed", {})
            for key in figures.get("dense", {}):
                if key.endswith("kind"):
                    continue
                dense, pruned = figures["dense"][key], figures["pruned"][key]
                lines.append(f"| {shape_name} | {depth} | {key} | {dense:.4g} | {pruned:.4g} | {pruned / dense:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every child")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--scorers", default=",".join(SCORERS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "bench_scale_out")
    parser.add_argument("--report", type=Path, help="only rewrite the markdown from an earlier bench_scale.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.overrides)))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"bench_scale: --device {args.device} but no CUDA device is visible; use --device cpu")
    if args.report:
        results = json.loads(args.report.read_text())
        for shape in results["shapes"].values():
            if len(shape["depths"]) == len(DEPTHS):
                shape["full"] = extrapolate(shape, shape["arch"]["num_hidden_layers"])
        args.report.with_suffix(".md").write_text(markdown(results))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    calibration = ["calibration=synthetic", "calibration.num_tokens=256", "calibration.seqlen=64"]
    calibration += ["calibration.batch_size=4", "pruning.sparsity=0.4", "pruning.schedule=oneshot"]
    results: dict[str, Any] = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "calibration": " ".join(calibration),
        "shapes": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for shape_name in args.shapes.split(","):
        arch = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / f"{shape_name}.yaml"))["arch"]
        shape: dict[str, Any] = {"arch": arch, "depths": {}}
        for depth in DEPTHS:
            overrides = [f"model={shape_name}", f"model.device={args.device}", f"model.arch.num_hidden_layers={depth}"]
            overrides += [*calibration, *args.overrides]
            measured = {}
            for name in ["reference", *args.scorers.split(","), "speed"]:
                log.info("%s, %d layers: %s", shape_name, depth, name)
                measured[name] = run_child(name, overrides)
            shape["depths"][str(depth)] = measured
            results["shapes"][shape_name] = shape
            (args.out / "bench_scale.json").write_text(json.dumps(results, indent=1))
        shape["full"] = extrapolate(shape, arch["num_hidden_layers"])
        (args.out / "bench_scale.json").write_text(json.dumps(results, indent=1))
        (args.out / "bench_scale.md").write_text(markdown(results))
    log.info("wrote %s", args.out / "bench_scale.md")


if __name__ == "__main__":
    main()
