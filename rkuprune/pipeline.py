"""The pruning pipeline, stage after stage as in DESIGN.md section 1:

config -> load model -> build calibration -> score -> allocate -> apply (slice) -> (recover) -> evaluate -> record
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from rkuprune.allocation import allocate, check_feasible
from rkuprune.allocation.schedule import run_iterative
from rkuprune.config import RunConfig, config_hash
from rkuprune.data.calibration import CALIBRATION_SOURCES, CalibrationSet, CalibrationSource
from rkuprune.errors import ConfigError
from rkuprune.evaluation.base import EvalContext, Task, build_tasks, derived_metrics
from rkuprune.models.adapters import adapter_for
from rkuprune.models.io import save_pruned
from rkuprune.models.loading import LoadedModel, cache_dir, check_model_config, load_model
from rkuprune.models.params import count_params, sparsity, total_reduction
from rkuprune.models.plan import PruningPlan
from rkuprune.models.surgery import apply_plan
from rkuprune.recovery import RECOVERY, Recovery
from rkuprune.scoring.base import SCORERS, Scorer
from rkuprune.tracking.atomic import write_json
from rkuprune.tracking.records import RESULTS_FILE, RunRecord
from rkuprune.tracking.trackers import TRACKERS, Tracker


@dataclass
class Stages:
    """The plug-ins a run uses, built and checked before any model is loaded."""

    scorer: Scorer
    calibration: CalibrationSource | None
    tasks: dict[str, Task]
    tracker: Tracker
    recovery: Recovery


def prepare(cfg: RunConfig) -> Stages:
    """Validate every config field that can be checked without a model (fail fast, one line)."""
    cfg.pruning.check()
    check_model_config(cfg.model)
    scorer = SCORERS.build(cfg.scorer, "scorer")
    scorer.check()
    check_depth(cfg, scorer)
    calibration = None
    if scorer.needs_calibration:
        calibration = CALIBRATION_SOURCES.build(cfg.calibration, "calibration")
        calibration.check(cfg.data)
    if cfg.pruning.regenerate_at:
        if cfg.pruning.schedule != "iterative":
            raise ConfigError("pruning.regenerate_at", "regeneration needs pruning.schedule=iterative; or set it to []")
        if calibration is None or not calibration.regenerates:
            raise ConfigError(
                "pruning.regenerate_at",
                f"calibration '{cfg.calibration.name}' cannot regenerate; use calibration=self_generated or set it to []",
            )
    tasks = build_tasks(cfg.benchmark, cfg.data)
    tracker = TRACKERS.build(cfg.logger, "logger")
    tracker.check()
    recovery = RECOVERY.build(cfg.recovery, "recovery")
    recovery.check(cfg.data)
    return Stages(scorer, calibration, tasks, tracker, recovery)


def check_depth(cfg: RunConfig, scorer: Scorer) -> None:
    """Depth pruning needs layer scores, and a layer-only scorer (shortgpt) cannot rank heads or channels."""
    if cfg.pruning.depth_share > 0 and not scorer.scores_layers:
        raise ConfigError(
            "pruning.granularity",
            f"scorer '{cfg.scorer.name}' gives no layer scores for depth pruning; use scorer=shortgpt, rku or taylor",
        )
    if cfg.pruning.depth_share < 1 and not scorer.scores_units:
        raise ConfigError(
            "pruning.granularity",
            f"scorer '{cfg.scorer.name}' scores whole layers only; set pruning.granularity=layer",
        )


def run(cfg: RunConfig, run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Prune and evaluate as ``cfg`` says; write records into ``run_dir``; return results.json's content."""
    stages = prepare(cfg)
    finished = completed_results(run_dir, config_hash(config))
    if finished is not None:
        print(f"skipped: {run_dir} already completed with the same config")
        return {**finished, "skipped": True}
    torch.manual_seed(cfg.seed)
    record = RunRecord(run_dir, config, config_hash(config))
    record.update("evaluation", {key: task.settings() for key, task in stages.tasks.items()})
    tags = [cfg.model.name, cfg.scorer.name, cfg.calibration.name, *cfg.tags]
    stages.tracker.start(run_dir, config, name=run_dir.name, group=cfg.sweep_name, tags=tags)
    ctx = EvalContext(run_dir=run_dir, tracker=stages.tracker, seed=cfg.seed)
    try:
        with record.timed("load_s"):
            loaded = load_model(cfg.model)
        check_feasible(cfg.pruning, adapter_for(loaded.model).structures())
        calibration = build_calibration(stages, loaded, cfg, record)
        dense = evaluate_dense(stages.tasks, loaded, cfg, ctx, record)
        with record.timed("score_s"):
            plan, loaded = select_units(cfg, loaded, stages, calibration, record, run_dir)
        with record.timed("prune_s"):
            prune(cfg, loaded, plan, record, stages.scorer)
        recover(cfg, loaded, stages, record)
        with record.timed("eval_s"):
            metrics = evaluate(stages.tasks, loaded, ctx)
        finish(cfg, loaded, plan, metrics, dense, record, stages.tracker, run_dir)
    except BaseException as exc:
        record.fail(exc)
        stages.tracker.finish(failed=True)
        raise
    stages.tracker.finish()
    return record.data


def completed_results(run_dir: Path, wanted_hash: str) -> dict[str, Any] | None:
    """The results of an earlier completed run of the same resolved config in ``run_dir``, if any."""
    path = run_dir / RESULTS_FILE
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if results.get("status") == "completed" and results.get("config_hash") == wanted_hash:
        return results
    return None


def build_calibration(stages: Stages, loaded: LoadedModel, cfg: RunConfig, record: RunRecord) -> CalibrationSet | None:
    if stages.calibration is None:
        return None
    calibration = stages.calibration.build(loaded.tokenizer, cfg.data, model=loaded.model)
    record.update("calibration", calibration.provenance)
    return calibration


def select_units(
    cfg: RunConfig,
    loaded: LoadedModel,
    stages: Stages,
    calibration: CalibrationSet | None,
    record: RunRecord,
    run_dir: Path,
) -> tuple[PruningPlan, LoadedModel]:
    """Score and allocate: once, or iteratively on the masked model (which may need the dense one back)."""
    structures = adapter_for(loaded.model).structures()
    base_model = cfg.model.path or cfg.model.name
    if cfg.pruning.schedule == "oneshot":
        scores = stages.scorer.score(loaded.model, calibration)
        scores.check(structures, cfg.scorer.name)
        return allocate(cfg.pruning, scores, structures, base_model=base_model), loaded

    source = stages.calibration

    def regenerate(model: Any, plan: PruningPlan) -> CalibrationSet:
        assert source is not None
        fresh = source.build(loaded.tokenizer, cfg.data, model=model, plan=plan)
        record.data["calibration"].setdefault("regenerated", []).append(fresh.provenance)
        return fresh

    result = run_iterative(
        loaded.model,
        stages.scorer,
        calibration,
        cfg.pruning,
        structures,
        base_model,
        regenerate if source is not None and source.regenerates else None,
    )
    for milestone, plan in result.milestone_plans.items():
        plan.save(run_dir / "plans" / f"plan_at_{milestone:g}.json")
    record.update(
        "pruning",
        {
            "steps": cfg.pruning.steps,
            "milestones_reached": sorted(result.milestone_plans),
            "regenerations": result.regenerations,
            "schedule_history": result.history,
        },
    )
    if result.plan is not result.last_plan:  # an earlier plan is closer: slice it from the dense weights
        loaded = load_model(cfg.model)
    return result.plan, loaded


def prune(cfg: RunConfig, loaded: LoadedModel, plan: PruningPlan, record: RunRecord, scorer: Scorer) -> None:
    """Let the scorer compensate, slice the plan out of the model, record target and measured sparsity."""
    before = count_params(loaded.model)
    scorer.compensate(loaded.model, plan)
    apply_plan(loaded.model, plan, "slice")
    after = count_params(loaded.model)
    plan.measured_sparsity = sparsity(before, after)
    plan.base_revision = loaded.revision
    plan.metadata.update({"target_sparsity": cfg.pruning.sparsity, "scorer": cfg.scorer.name})
    record.update(
        "model",
        {
            "name": cfg.model.name,
            "params_total_before": before.total,
            "params_total_after": after.total,
            "params_prunable_before": before.prunable,
            "params_prunable_after": after.prunable,
        },
    )
    record.update(
        "pruning",
        {
            "scorer": cfg.scorer.name,
            "target_sparsity": cfg.pruning.sparsity,
            "measured_sparsity": plan.measured_sparsity,
            "total_param_reduction": total_reduction(before, after),
            "granularity": cfg.pruning.granularity,
            "depth_share": cfg.pruning.depth_share,
            "removed_layers": plan.removed_layers,
            "overshoot": plan.measured_sparsity - cfg.pruning.sparsity,
            "allocation": cfg.pruning.allocation,
            "schedule": cfg.pruning.schedule,
        },
    )


def recover(cfg: RunConfig, loaded: LoadedModel, stages: Stages, record: RunRecord) -> None:
    """Evaluate the pruned model, then fine-tune it (merged into plain weights) when a recovery is set."""
    if not stages.recovery.active:
        return
    with record.timed("eval_before_recovery_s"):
        before = evaluate(stages.tasks, loaded, EvalContext(run_dir=None, tracker=None, seed=cfg.seed))
    record.data["metrics_before_recovery"] = before
    with record.timed("recover_s"):
        result = stages.recovery.recover(loaded.model, loaded.tokenizer, cfg.data)
    loaded.model = result.model
    record.data["recovery"] = {**result.info, "losses": result.losses}
    record.write()
    stages.tracker.log_series(
        "recovery/step", [{"recovery/step": i + 1, "recovery/loss": loss} for i, loss in enumerate(result.losses)]
    )


def evaluate(tasks: dict[str, Task], loaded: LoadedModel, ctx: EvalContext) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for task in tasks.values():
        metrics.update(task.evaluate(loaded.model, loaded.tokenizer, ctx))
    metrics.update(derived_metrics(metrics))
    return metrics


def evaluate_dense(
    tasks: dict[str, Task], loaded: LoadedModel, cfg: RunConfig, ctx: EvalContext, record: RunRecord
) -> dict[str, float]:
    """Dense reference metrics, computed once per (model, task settings, data) and cached on disk."""
    dense: dict[str, float] = {}
    model_key = OmegaConf.to_container(OmegaConf.structured(cfg.model))
    dense_ctx = EvalContext(run_dir=None, tracker=None, seed=ctx.seed)
    with record.timed("dense_eval_s"):
        for task in tasks.values():
            key = config_hash(
                {"model": model_key, "task": task.settings(), "data": str(cfg.data.root), "seed": cfg.seed}
            )
            path = cache_dir() / "dense" / f"{key}.json"
            if cfg.dense_cache and path.is_file():
                dense.update(json.loads(path.read_text()))
                continue
            values = task.evaluate(loaded.model, loaded.tokenizer, dense_ctx)
            if cfg.dense_cache:
                write_json(path, values)
            dense.update(values)
    dense.update(derived_metrics(dense))
    record.update("dense_metrics", dense)
    return dense


def finish(
    cfg: RunConfig,
    loaded: LoadedModel,
    plan: PruningPlan,
    metrics: dict[str, float],
    dense: dict[str, float],
    record: RunRecord,
    tracker: Tracker,
    run_dir: Path,
) -> None:
    """Write the plan, the metrics, the model if asked, and tell the tracker."""
    plan.save(run_dir / "pruning_plan.json")
    record.update("metrics", metrics)
    if cfg.save_model:
        save_pruned(loaded.model, loaded.tokenizer, plan, run_dir / "model")
    record.complete()
    summary = {f"pruning/{k}": v for k, v in record.data["pruning"].items() if isinstance(v, int | float)}
    summary.update(metrics)
    summary.update({f"dense/{k}": v for k, v in dense.items()})
    summary.update({f"before_recovery/{k}": v for k, v in record.data.get("metrics_before_recovery", {}).items()})
    summary.update({f"efficiency/{k}": v for k, v in record.data["efficiency"].items()})
    tracker.log_summary(summary)
