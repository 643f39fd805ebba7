"""Before/after of the global q_head ranking on SmolLM2 (docs/scorers.md, "Attention ranked fairly").

Scores each scorer once per version on the default calibration, allocates 30% and 40% with the old
rule (a q_head unit scored by the sum of its heads; the allocator of ``--before``, a checkout of main
before the change, e.g. ``git archive c29f414 rkuprune | tar -x -C /tmp/scorers_before``) and with the
current one, lets the scorer compensate (FLAP's biases), slices, and measures WikiText-2 perplexity
(``benchmark=ppl_small``'s 8 windows of 512 tokens). Versions: ``before`` (the scorer's old settings and
the old rule), ``sum rule`` (today's scorer, the old rule: only for scorers whose settings changed) and
``after``. Writes a markdown table and the plan pictures to --out.

    OMP_NUM_THREADS=2 flock /tmp/rkuprune-heavy.lock python scripts/fair_ranking_evidence.py \
        --before /tmp/scorers_before --out docs/scorers_evidence/fair_ranking
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rkuprune.allocation import allocate
from rkuprune.config import RunConfig, register_configs
from rkuprune.evaluation.base import EvalContext, build_tasks
from rkuprune.models.adapters import adapter_for
from rkuprune.models.loading import load_model
from rkuprune.models.surgery import apply_plan
from rkuprune.pipeline import prepare
from rkuprune.report.plan_picture import plot_plan

CONF = Path(__file__).resolve().parents[1] / "conf"
# (label, scorer, overrides that reproduce the scorer as it was before the change)
SCORERS = {
    "rku": ("rku", []),
    "flap": ("flap", ["scorer.square_attention=false", "scorer.skip_first_token=true"]),
}


def compose_run(overrides: list[str]) -> RunConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=overrides))


def old_allocators(before: Path):
    spec = importlib.util.spec_from_file_location("old_allocators", before / "rkuprune/allocation/allocators.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-root", default="/work/shared/data")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scorers", nargs="+", default=list(SCORERS), choices=list(SCORERS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    old = old_allocators(args.before)
    rows = ["| scorer | version | target | measured | removed | ppl/wikitext2@512 |"]
    rows.append("|---|---|---:|---:|---|---:|")
    base = [f"model={args.model}", "benchmark=ppl_small", f"data.root={args.data_root}", "logger=none"]
    for label in args.scorers:
        name, before_overrides = SCORERS[label]
        # before: the scorer and the allocator as they were; sum rule: today's scorer under the old
        # allocator (isolates the ranking rule); after: both as they are now
        versions = [("before", before_overrides), ("sum rule", []), ("after", [])]
        for version, extra in versions if before_overrides else [versions[0], versions[2]]:
            cfg = compose_run([*base, f"scorer={name}", *extra])
            stages = prepare(cfg)
            loaded = load_model(cfg.model)
            structures = adapter_for(loaded.model).structures()
            calibration = stages.calibration.build(loaded.tokenizer, cfg.data, model=loaded.model)
            scores = stages.scorer.score(loaded.model, calibration)
            wiki = {k: t for k, t in build_tasks(cfg.benchmark, cfg.data).items() if k == "ppl_wikitext2"}
            for target in (0.3, 0.4):
                if version != "after":
                    plan = old.allocate(old.PruningConfig(sparsity=target), scores, structures, args.model)
                else:
                    plan = allocate(type(cfg.pruning)(sparsity=target), scores, structures, args.model)
                model = copy.deepcopy(loaded.model)
                stages.scorer.compensate(model, plan)  # FLAP's bias compensation, as the pipeline applies it
                model = apply_plan(model, plan, "slice")
                (ppl,) = wiki["ppl_wikitext2"].evaluate(model, loaded.tokenizer, EvalContext()).values()
                rows.append(
                    f"| {label} | {version} | {target:g} | {plan.sparsity(structures):.3f} | "
                    f"{plan.removed_summary(structures)} | {ppl:.2f} |"
                )
                logging.info(rows[-1])
                plan.measured_sparsity = plan.sparsity(structures)
                picture = args.out / f"{label}_{version.replace(' ', '_')}_{target:g}.png"
                plot_plan(plan, picture, title=f"{args.model} {label} {version}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
