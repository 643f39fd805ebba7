"""Scoring cost of each scorer relative to one forward+backward pass over the same calibration tokens.

Method (CPU): every measurement runs in a fresh child process, so memory one run frees but the allocator
keeps cannot hide another run's peak. The child loads the model and builds the calibration set, resets
the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``), notes the current RSS, runs the
measured call and reports wall time and peak RSS minus that baseline. The reference is a plain training
step over the same micro-batches: causal-LM loss on the loss-mask tokens, ``loss.backward()`` with every
parameter trainable (weight gradients accumulated in ``.grad`` as usual). Times are the faster of
``--repeats`` runs; memory is from the first.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_scorers.py                        # SmolLM2-135M, synthetic
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_scorers.py model=tiny-llama --repeats 1
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
SCORERS_BENCHED = ("random", "magnitude", "wanda_sp", "flap", "taylor", "rku")


def rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reference_step(model: torch.nn.Module, calibration: Any) -> None:
    """One forward+backward of the causal-LM loss over every micro-batch, as training would do it."""
    for batch in calibration.batches(model.device):
        labels = batch["input_ids"].masked_fill(~(batch["loss_mask"] & batch["attention_mask"].bool()), -100)
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss.backward()
    model.zero_grad(set_to_none=True)


def measure(name: str, overrides: list[str], repeats: int) -> dict[str, Any]:
    """Run in the child: load, calibrate, then time and measure one scorer (or the reference)."""
    from rkuprune.config import register_configs
    from rkuprune.data.calibration import CALIBRATION_SOURCES
    from rkuprune.models.loading import load_model
    from rkuprune.scoring import SCORERS

    register_configs()
    scorer_override = [] if name == "reference" else [f"scorer={name}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name="config", overrides=[*overrides, *scorer_override]))
    loaded = load_model(cfg.model)
    calibration = CALIBRATION_SOURCES.build(cfg.calibration).build(loaded.tokenizer, cfg.data)
    scorer = SCORERS.build(cfg.scorer)
    scorer.bind(cfg.pruning)  # a sequential scorer (wanda_sp) prunes as it scores, to the run's target
    call = (
        (lambda: reference_step(loaded.model, calibration))
        if name == "reference"
        else (lambda: scorer.score(loaded.model, calibration))
    )
    times, peak = [], 0
    for attempt in range(repeats):
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        baseline = rss_kib("VmRSS")
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if attempt == 0:
            peak = rss_kib("VmHWM") - baseline
    return {
        "name": name,
        "seconds": min(times),
        "peak_mib": peak / 1024,
        "tokens": calibration.num_tokens,
        "model": cfg.model.name,
        "calibration": cfg.calibration.name,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=tiny-llama calibration=pydoc")
    parser.add_argument("--scorers", default=",".join(SCORERS_BENCHED))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.overrides, args.repeats)))
        return
    rows = []
    for name in ["reference", *args.scorers.split(",")]:
        command = [sys.executable, __file__, *args.overrides, "--repeats", str(args.repeats), "--child", name]
        out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"measured {name}", file=sys.stderr)
    ref = rows[0]
    print(
        f"model {ref['model']}, calibration {ref['calibration']} ({ref['tokens']} tokens), "
        f"{ref['threads']} threads, best of {args.repeats} for time\n"
    )
    print("| scorer | wall s | × fwd+bwd | peak extra RSS MiB | × fwd+bwd |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        label = "fwd+bwd (reference)" if row["name"] == "reference" else row["name"]
        print(
            f"| {label} | {row['seconds']:.2f} | {row['seconds'] / ref['seconds']:.2f} | "
            f"{row['peak_mib']:.0f} | {row['peak_mib'] / ref['peak_mib']:.2f} |"
        )


if __name__ == "__main__":
    main()
