"""Evidence for docs/depth_recovery.md: depth vs width pruning and LoRA recovery on one model.

Each scorer scores the dense model once; every (granularity, sparsity) plan is then sliced from a
freshly loaded dense model and evaluated, so a grid costs one scoring per scorer instead of one per
cell (the CLI rescoring every job did not fit the shared 2-core machine). One JSON row per cell is
appended to ``--out`` as it finishes.

    python scripts/depth_evidence.py --out docs/depth_recovery_evidence/results.jsonl \
        --recovery "recovery=lora recovery.source=c4" \
        calibration=q16k calibration.num_tokens=4096 benchmark=ppl_small data.root=/work/shared/data
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rkuprune.allocation import allocate
from rkuprune.config import RunConfig, register_configs
from rkuprune.evaluation.base import EvalContext
from rkuprune.models.adapters import adapter_for
from rkuprune.models.loading import load_model
from rkuprune.models.params import count_params, sparsity
from rkuprune.models.surgery import apply_plan
from rkuprune.pipeline import evaluate, evaluate_dense, prepare
from rkuprune.tracking.records import RunRecord

CONF = Path(__file__).resolve().parents[1] / "conf"
# (scorer, granularity, sparsity, recover): required cells first, so a cut-short run keeps them
CELLS = [
    ("shortgpt", "layer", 0.3, False),
    ("rku", "layer", 0.3, False),
    ("rku", "q_head", 0.3, True),
    ("shortgpt", "layer", 0.4, False),
    ("rku", "layer", 0.4, False),
    ("rku", "q_head", 0.4, False),
    ("shortgpt", "layer", 0.3, True),
]
log = logging.getLogger("depth_evidence")


def parse_cells(text: str) -> list[tuple[str, str, float, bool]]:
    """``rku:q_head:0.3:lora,shortgpt:layer:0.2`` -> cells as in ``CELLS``."""
    cells = []
    for item in text.split(","):
        scorer, granularity, target, *rest = item.split(":")
        cells.append((scorer, granularity, float(target), rest == ["lora"]))
    return cells


def compose_run(overrides: list[str]) -> RunConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=overrides))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recovery", default="recovery=lora", help="recovery overrides, space-separated")
    parser.add_argument(
        "--cells",
        type=parse_cells,
        default=CELLS,
        help="scorer:granularity:sparsity[:lora],... (default: the grid above); one-shot scorers only",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides shared by every cell")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    register_configs()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    base = ["logger=none", *args.overrides]
    cfg = compose_run(base)
    loaded = load_model(cfg.model)
    stages = prepare(compose_run([*base, "scorer=rku"]))
    calibration = stages.calibration.build(loaded.tokenizer, cfg.data)
    with tempfile.TemporaryDirectory() as scratch:  # evaluate_dense records into a run record
        dense = evaluate_dense(stages.tasks, loaded, cfg, EvalContext(), RunRecord(Path(scratch), {}, ""))
    scores = {}
    for scorer, granularity, target, recover in args.cells:
        cell = [f"scorer={scorer}", f"pruning.granularity={granularity}", f"pruning.sparsity={target}"]
        run_cfg = compose_run([*base, *cell, *(args.recovery.split() if recover else [])])
        run_stages = prepare(run_cfg)
        if scorer not in scores:
            start = time.perf_counter()
            scores[scorer] = (run_stages.scorer.score(loaded.model, calibration), time.perf_counter() - start)
            log.info("%s scored in %.0f s", scorer, scores[scorer][1])
        model = load_model(run_cfg.model)
        structures = adapter_for(model.model).structures()
        plan = allocate(run_cfg.pruning, scores[scorer][0], structures, base_model=run_cfg.model.name)
        before = count_params(model.model)
        apply_plan(model.model, plan, "slice")
        row = {
            "scorer": scorer,
            "granularity": granularity,
            "target": target,
            "measured": sparsity(before, count_params(model.model)),
            "removed_layers": plan.removed_layers,
            "score_s": round(scores[scorer][1], 1),
            "dense": dense,
        }
        start = time.perf_counter()
        row["metrics"] = evaluate(run_stages.tasks, model, EvalContext())
        row["eval_s"] = round(time.perf_counter() - start, 1)
        if recover:
            start = time.perf_counter()
            result = run_stages.recovery.recover(model.model, model.tokenizer, run_cfg.data)
            row["recover_s"] = round(time.perf_counter() - start, 1)
            model.model = result.model
            row["metrics_before_recovery"] = row.pop("metrics")
            row["metrics"] = evaluate(run_stages.tasks, model, EvalContext())
            row["recovery"] = {
                **result.info,
                "config": OmegaConf.to_container(OmegaConf.structured(run_cfg.recovery)),
                "loss_first10": sum(result.losses[:10]) / len(result.losses[:10]),
                "loss_last10": sum(result.losses[-10:]) / len(result.losses[-10:]),
            }
        log.info("%s", json.dumps(row))
        with args.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
