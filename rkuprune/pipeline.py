"""The pruning pipeline, stage after stage as in docs/design.md section 1:

config -> load model -> build calibration -> score -> allocate -> apply (slice) -> (recover) -> evaluate -> record

With ``benchmark.judge`` on, evaluation ends with the LLM judge, loaded once for the generations of the
dense, before-recovery and pruned evaluations (rkuprune/evaluation/judge.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rkuprune.allocation import allocate, check_feasible
from rkuprune.allocation.schedule import Trajectory, run_iterative, trajectory_end, trajectory_path
from rkuprune.config import RunConfig, config_hash
from rkuprune.data.calibration import CALIBRATION_SOURCES, CalibrationSet, CalibrationSource
from rkuprune.errors import ConfigError
from rkuprune.evaluation import speed
from rkuprune.evaluation.base import EvalContext, Task, build_tasks, derived_metrics
from rkuprune.evaluation.judge import JudgeQueue, free_accelerator_memory
from rkuprune.models.adapters import adapter_for
from rkuprune.models.io import save_pruned
from rkuprune.models.loading import LoadedModel, cache_dir, check_model_config, load_model, peek_model
from rkuprune.models.params import count_params, sparsity, total_reduction, weights_fingerprint
from rkuprune.models.plan import PruningPlan
from rkuprune.models.surgery import apply_plan
from rkuprune.recovery import RECOVERY, Recovery
from rkuprune.report.plan_picture import plot_plan
from rkuprune.scoring.base import SCORERS, Scorer, check_buffer_memory
from rkuprune.tracking.atomic import write_json
from rkuprune.tracking.records import RESULTS_FILE, RunRecord, read_results
from rkuprune.tracking.side import read_cache, side_artifact
from rkuprune.tracking.trackers import TRACKERS, Tracker

log = logging.getLogger(__name__)


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
    scorer.bind(cfg.pruning)
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
    peeked = peek_model(cfg.model)
    if peeked is not None:
        for task in tasks.values():
            task.check_model(*peeked)
        if calibration is not None:
            calibration.check_model(peeked[0])
    if cfg.benchmark.speed.enabled:
        speed.check(cfg.benchmark.speed)
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
    finished = completed_results(run_dir, config_hash(config), cfg.save_model)
    if finished is not None:
        log.info("skipped: %s already completed with the same config", run_dir)
        return {**finished, "skipped": True}
    torch.manual_seed(cfg.seed)
    record = RunRecord(run_dir, config, config_hash(config))
    record.update("evaluation", {key: task.settings() for key, task in stages.tasks.items()})
    tags = [cfg.model.name, cfg.scorer.name, cfg.calibration.name, *cfg.tags]
    stages.tracker.start(run_dir, config, name=run_dir.name, group=cfg.sweep_name, tags=tags)
    queue = JudgeQueue(cfg.benchmark.judge) if cfg.benchmark.judge.enabled else None
    ctx = EvalContext(run_dir=run_dir, tracker=stages.tracker, seed=cfg.seed, judge=queue)
    try:
        log.info("loading %s (source %s, %s on %s)", cfg.model.name, cfg.model.source, cfg.model.dtype, where(cfg))
        with record.timed("load_s"):
            loaded = load_model(cfg.model)
        structures = adapter_for(loaded.model).structures()
        check_feasible(cfg.pruning, structures)
        check_buffer_memory(stages.scorer, loaded.model)
        with record.timed("calibration_s"):  # self-generated traces: the generation is part of the method's cost
            calibration = build_calibration(stages, loaded, cfg, record)
        dense = evaluate_dense(stages.tasks, loaded, cfg, ctx, record)
        dense_speed = measure_speed(cfg.benchmark.speed, loaded, "dense")
        log.info("scoring with %s (%s schedule)", cfg.scorer.name, cfg.pruning.schedule)
        with record.timed("score_s"):
            plan, loaded = select_units(cfg, loaded, stages, calibration, record, run_dir)
        record_scoring_rate(calibration, record)
        log.info(
            "allocation (%s, target sparsity %g): %s",
            cfg.pruning.allocation,
            cfg.pruning.sparsity,
            plan.removed_summary(structures),
        )
        with record.timed("prune_s"):
            prune(cfg, loaded, plan, record, stages.scorer)
        log.info("sliced: measured sparsity %.4f", plan.measured_sparsity)
        record_speed(cfg.benchmark.speed, loaded, dense_speed, record)
        recover(cfg, loaded, stages, record, ctx)
        with record.timed("eval_s"):
            metrics = evaluate(stages.tasks, loaded, ctx, record.data["efficiency"].setdefault("task_s", {}))
        judge(queue, loaded, metrics, dense, record)
        finish(cfg, loaded, plan, metrics, dense, record, stages.tracker, run_dir)
    except BaseException as exc:
        record.fail(exc)
        stages.tracker.finish(failed=True)
        raise
    stages.tracker.finish()
    record.write_warnings()
    return record.data


def completed_results(run_dir: Path, wanted_hash: str, save_model: bool) -> dict[str, Any] | None:
    """The results of an earlier completed run of the same resolved config in ``run_dir``, if any, and only
    when every output this run asks for is there (a malformed record or a missing model means: run)."""
    path = run_dir / RESULTS_FILE
    if not path.exists():
        return None
    results, problem = read_results(path)
    if results is None:
        if problem and not problem.startswith("status"):
            log.warning("%s: %s; running the job again", path, problem)
        return None
    if results.get("config_hash") != wanted_hash:
        return None
    wanted = [run_dir / "pruning_plan.json", *([run_dir / "model" / "config.json"] if save_model else [])]
    missing = [str(p.relative_to(run_dir)) for p in wanted if not p.is_file()]
    if missing:
        log.warning("%s: completed, but %s is missing; running the job again", run_dir, ", ".join(missing))
        return None
    return results


def build_calibration(stages: Stages, loaded: LoadedModel, cfg: RunConfig, record: RunRecord) -> CalibrationSet | None:
    if stages.calibration is None:
        return None
    stages.calibration.check_model(getattr(loaded.model.config, "max_position_embeddings", None))
    log.info("building calibration '%s' (%d tokens asked)", cfg.calibration.name, cfg.calibration.num_tokens)
    calibration = stages.calibration.build(loaded.tokenizer, cfg.data, model=loaded.model)
    record.update("calibration", calibration.provenance)
    log.info("calibration: %d tokens in %d rows", calibration.num_tokens, len(calibration))
    return calibration


def where(cfg: RunConfig) -> str:
    return f"device_map={cfg.model.device_map}" if cfg.model.device_map else cfg.model.device


def record_scoring_rate(calibration: CalibrationSet | None, record: RunRecord) -> None:
    """Calibration tokens scored per second (iterative schedules pass them once per step)."""
    seconds = record.data["efficiency"].get("score_s")
    if calibration is not None and seconds:
        record.update("efficiency", {"scoring_tokens_per_s": calibration.num_tokens / seconds})
        log.info("scored in %.1f s (%.0f calibration tokens/s)", seconds, calibration.num_tokens / seconds)


def measure_speed(cfg: speed.SpeedConfig, loaded: LoadedModel, which: str) -> dict[str, Any] | None:
    """Inference efficiency of the model as it is now (``benchmark.speed``), or None when switched off."""
    if not cfg.enabled:
        return None
    log.info("measuring %s inference speed", which)
    figures = speed.measure(loaded.model, cfg)
    log.info("%s: %s", which, speed.describe(figures))
    return figures


def record_speed(cfg: speed.SpeedConfig, loaded: LoadedModel, dense: dict[str, Any] | None, record: RunRecord) -> None:
    """Measure the pruned model and record both sides, their ratios and the weight-bytes ideal."""
    pruned = measure_speed(cfg, loaded, "pruned")
    if dense is None or pruned is None:
        return
    comparison = speed.compare(dense, pruned)
    log.info(
        "speedup: prefill %.2fx, decode %s; ideal (weight bytes) %.2fx",
        comparison["ratio"]["prefill_tokens_per_s"],
        ", ".join(f"{k.split('@')[1]} {v:.2f}x" for k, v in comparison["ratio"].items() if k.startswith("decode")),
        comparison["ideal_speedup"],
    )
    values = {"settings": speed.settings(cfg, loaded.model), "dense": dense, "pruned": pruned, **comparison}
    record.update("efficiency", {"speed": values})


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
        return source.build(loaded.tokenizer, cfg.data, model=model, plan=plan)

    path = trajectory_path(cfg, weights_fingerprint(loaded.model))
    trajectory = read_cache(path, "trajectory cache", Trajectory.from_dict, log) if path is not None else None
    cached = trajectory is not None  # the same trajectory for another target of a sweep: no re-scoring
    if trajectory is None:
        trajectory = run_iterative(
            loaded.model,
            stages.scorer,
            calibration,
            cfg.pruning,
            structures,
            base_model,
            regenerate if source is not None and source.regenerates else None,
        )
        if path is not None:
            with side_artifact(f"trajectory cache {path}", log):
                trajectory.save(path)
    step = trajectory.closest_step(cfg.pruning.sparsity)
    milestones = trajectory.milestone_steps(cfg.pruning.milestones)
    for milestone, at in milestones.items():
        trajectory.plan(at).save(run_dir / "plans" / f"plan_at_{milestone:g}.json")
    if trajectory.regenerations:
        record.data["calibration"]["regenerated"] = trajectory.regenerations
    record.update(
        "pruning",
        {
            "steps": cfg.pruning.steps,
            "trajectory_end": trajectory_end(cfg.pruning),
            "trajectory_cached": cached,
            "plan_step": step,  # the trajectory step the plan comes from
            "plan_step_target": trajectory.history[step - 1]["target"],
            "milestones_reached": sorted(milestones),
            "regenerations": len(trajectory.regenerations),
            "schedule_history": trajectory.history,
        },
    )
    if not cached and step != trajectory.steps:  # the model is masked further: slice the plan from the dense weights
        loaded = load_model(cfg.model)
    return trajectory.plan(step), loaded


def prune(cfg: RunConfig, loaded: LoadedModel, plan: PruningPlan, record: RunRecord, scorer: Scorer) -> None:
    """Let the scorer compensate, slice the plan out of the model, record target and measured sparsity."""
    before = count_params(loaded.model)
    removed = plan.removed_counts(adapter_for(loaded.model).structures())
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
            **{f"removed_{unit}": count for unit, count in removed.items()},  # numbers of units, for tables
            "overshoot": plan.measured_sparsity - cfg.pruning.sparsity,
            "allocation": cfg.pruning.allocation,
            "schedule": cfg.pruning.schedule,
        },
    )


def recover(cfg: RunConfig, loaded: LoadedModel, stages: Stages, record: RunRecord, ctx: EvalContext) -> None:
    """Evaluate the pruned model, then fine-tune it (merged into plain weights) when a recovery is set."""
    if not stages.recovery.active:
        return
    with record.timed("eval_before_recovery_s"):
        before_ctx = EvalContext(seed=cfg.seed, judge=ctx.judge, phase="before_recovery")
        before = evaluate(
            stages.tasks, loaded, before_ctx, record.data["efficiency"].setdefault("task_before_recovery_s", {})
        )
    record.data["metrics_before_recovery"] = before
    with record.timed("recover_s"):
        result = stages.recovery.recover(loaded.model, loaded.tokenizer, cfg.data)
    loaded.model = result.model
    record.data["recovery"] = {**result.info, "losses": result.losses}
    record.write()
    stages.tracker.log_series(
        "recovery/step", [{"recovery/step": i + 1, "recovery/loss": loss} for i, loss in enumerate(result.losses)]
    )


def evaluate(
    tasks: dict[str, Task], loaded: LoadedModel, ctx: EvalContext, seconds: dict[str, float]
) -> dict[str, float]:
    """Every task's metrics (and the derived ones); each task's wall time goes to ``seconds``."""
    metrics: dict[str, float] = {}
    for key, task in tasks.items():
        log.info("evaluating %s (%s)", key, task.cfg.task)
        start = time.perf_counter()
        values = task.evaluate(loaded.model, loaded.tokenizer, ctx)
        seconds[key] = round(time.perf_counter() - start, 3)
        log.info("%s: %s (%.1f s)", key, ", ".join(f"{k}={v:.4g}" for k, v in values.items()), seconds[key])
        metrics.update(values)
    metrics.update(derived_metrics(metrics))
    return metrics


def evaluate_dense(
    tasks: dict[str, Task], loaded: LoadedModel, cfg: RunConfig, ctx: EvalContext, record: RunRecord
) -> dict[str, float]:
    """Dense reference metrics, cached on disk per (weights, task settings, data): the key holds a
    fingerprint of the loaded weights, so new weights behind the same config are evaluated afresh."""
    dense: dict[str, float] = {}
    weights = weights_fingerprint(loaded.model) if cfg.dense_cache else ""
    dense_ctx = EvalContext(seed=ctx.seed, judge=ctx.judge, phase="dense")
    with record.timed("dense_eval_s"):
        for name, task in tasks.items():
            key = config_hash(
                {"weights": weights, "task": task.settings(), "data": str(cfg.data.root), "seed": cfg.seed}
            )
            path = cache_dir() / "dense" / f"{key}.json"
            cached = read_dense_cache(path) if cfg.dense_cache else None
            if cached is not None:
                dense.update(cached)
                log.info("dense %s: cached (%s)", name, path)
                continue
            log.info("evaluating the dense model: %s", name)
            start = time.perf_counter()
            values = task.evaluate(loaded.model, loaded.tokenizer, dense_ctx)
            record.data["efficiency"].setdefault("dense_task_s", {})[name] = round(time.perf_counter() - start, 3)
            waiting = ctx.judge.waiting("dense", name) if ctx.judge is not None else None
            if cfg.dense_cache and waiting is not None:  # cached once judged, with the judge's metrics
                waiting.then.append(
                    lambda result, path=path, values=values: cache_write(path, {**values, **result.metrics})
                )
            elif cfg.dense_cache:
                cache_write(path, values)
            dense.update(values)
    dense.update(derived_metrics(dense))
    record.update("dense_metrics", dense)
    return dense


def judge(
    queue: JudgeQueue | None, loaded: LoadedModel, metrics: dict[str, float], dense: dict[str, float], record: RunRecord
) -> None:
    """Answer the judge queue with one load of the judge, once every generation it judges exists, and add
    the judge's metrics to the pruned, dense and before-recovery metrics. The evaluated model is moved to
    the CPU first when it sits whole on an accelerator, so that only the judge holds its memory."""
    if queue is None or not queue.requests:
        return
    model = loaded.model
    if getattr(model, "hf_device_map", None) is None and next(model.parameters()).device.type != "cpu":
        log.info("moving the evaluated model to the CPU while the judge runs")
        model.to("cpu")
        free_accelerator_memory()
    before = record.data.get("metrics_before_recovery")
    phases = {"pruned": metrics, "dense": dense, **({"before_recovery": before} if before is not None else {})}
    with record.timed("judge_s"):
        answered = queue.answer()
    for request, result in answered:
        phases[request.phase].update(result.metrics)
        unparsed = record.data["evaluation"][request.task].setdefault("judge_unparsed", {})
        unparsed[request.phase] = result.unparsed
    record.update("dense_metrics", dense)
    if before is not None:
        record.update("metrics_before_recovery", before)


def cache_write(path: Path, values: dict[str, Any]) -> None:
    """Write a dense-metric cache file; an unwritable cache (read-only, full) is a recorded warning."""
    with side_artifact(f"dense-metric cache {path}", log):
        write_json(path, values)


def read_dense_cache(path: Path) -> dict[str, float] | None:
    """Cached dense metrics, or None when absent; a corrupt file is named and recomputed."""
    return read_cache(path, "dense-metric cache", dense_metrics_of, log)


def dense_metrics_of(values: Any) -> dict[str, float]:
    """A dense-metric cache file's content: an object of numbers."""
    if not isinstance(values, dict) or not values:
        raise ValueError("not an object of metrics")
    for key, value in values.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"'{key}' is {value!r}, not a number")
    return values


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
    """Write the metrics, the plan (and its picture, a side artifact), the model if asked, and tell the tracker."""
    record.update("metrics", metrics)
    plan.save(run_dir / "pruning_plan.json")
    with side_artifact(f"plan picture {run_dir / 'pruning_plan.png'}", log):
        plot_plan(plan, run_dir / "pruning_plan.png", title=f"{cfg.model.name} {cfg.scorer.name}")
    if cfg.save_model:
        log.info("saving the pruned model to %s", run_dir / "model")
        save_pruned(loaded.model, loaded.tokenizer, plan, run_dir / "model")
    record.complete()
    summary = {f"pruning/{k}": v for k, v in record.data["pruning"].items() if isinstance(v, int | float)}
    summary.update(metrics)
    summary.update({f"dense/{k}": v for k, v in dense.items()})
    summary.update({f"before_recovery/{k}": v for k, v in record.data.get("metrics_before_recovery", {}).items()})
    summary.update(speed.flat_numbers(record.data["efficiency"], "efficiency/"))
    tracker.log_summary(summary)
