"""Iterative pruning (GISP-style): one trajectory of ``pruning.steps`` steps with a linear ratio.

Each step re-scores the currently masked model, extends the plan (plans are nested: a removed unit
never returns, because its scores are set to -inf before allocating), and masks the new units in
place, so no copy of the model is kept. When measured sparsity crosses a ``pruning.regenerate_at``
value, the calibration set is rebuilt by the pruned model (RESP's progressive regeneration).

GISP runs one trajectory, ``linspace(0, 0.7, 112)``, and reads every target's plan from it. So
does this schedule: it runs to ``pruning.trajectory_end`` (to the target when that is unset) and a
target's plan is the step plan whose measured sparsity is closest to it. Nested plans make the
whole trajectory one integer per unit (the step that removed it), which the pipeline caches on
disk at ``trajectory_path``, so the other targets of a sweep cost no re-scoring.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf
from torch import nn

from rkuprune.allocation.allocators import (
    PruningConfig,
    allocate,
    attention_units,
    channel_units,
    check_feasible,
    protected_layers,
)
from rkuprune.config import config_hash
from rkuprune.data.calibration import CalibrationSet
from rkuprune.errors import ConfigError
from rkuprune.models.loading import cache_dir
from rkuprune.models.plan import LayerPlan, PruningPlan
from rkuprune.models.structures import Structures
from rkuprune.models.surgery import apply_plan
from rkuprune.scoring.base import LayerScores, Scorer, Scores
from rkuprune.tracking.atomic import write_json
from rkuprune.tracking.progress import progress
from rkuprune.versions import versions

if TYPE_CHECKING:
    from rkuprune.config import RunConfig

log = logging.getLogger(__name__)

Regenerate = Callable[[nn.Module, PruningPlan], CalibrationSet]  # the masked model and its plan
UNIT_KINDS = ("q_heads", "kv_heads", "mlp_channels")  # the LayerPlan fields a step can shrink


def trajectory_end(cfg: PruningConfig) -> float:
    """The sparsity the trajectory runs to: ``pruning.trajectory_end``, or the target when unset."""
    return cfg.sparsity if cfg.trajectory_end is None else cfg.trajectory_end


@dataclass
class Trajectory:
    """Every step plan of one iterative run, as the step that removed each unit (0: never removed)."""

    base_model: str
    removed_at: list[dict[str, list[int]]]  # per layer, per kind in UNIT_KINDS, per unit
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per step
    regenerations: list[dict[str, Any]] = field(default_factory=list)  # provenance of each rebuilt calibration

    @classmethod
    def start(cls, plan: PruningPlan) -> Trajectory:
        """A trajectory at step 0: ``plan`` (dense) removes nothing."""
        sizes = [{kind: len(getattr(lp, kind)) for kind in UNIT_KINDS} for lp in plan.layers]
        return cls(plan.base_model, [{kind: [0] * n for kind, n in layer.items()} for layer in sizes])

    @property
    def steps(self) -> int:
        return len(self.history)

    def record(self, plan: PruningPlan, row: dict[str, Any]) -> None:
        """Append the next step: ``plan`` (which must contain every earlier removal) and its history row."""
        step = self.steps + 1
        for layer_plan, removed in zip(plan.layers, self.removed_at, strict=True):
            for kind in UNIT_KINDS:
                at = torch.tensor(removed[kind])
                kept = torch.zeros_like(at, dtype=torch.bool)
                kept[getattr(layer_plan, kind)] = True
                if (kept & (at > 0)).any():
                    raise ValueError(f"step {step} keeps a unit an earlier step removed: plans must be nested")
                at[~kept & (at == 0)] = step
                removed[kind] = at.tolist()
        self.history.append({"step": step, **row})

    def plan(self, step: int) -> PruningPlan:
        """The plan after ``step`` (1-based): units removed at that step or earlier are gone."""
        layers = []
        for index, removed in enumerate(self.removed_at):
            kept = {kind: [u for u, at in enumerate(removed[kind]) if at == 0 or at > step] for kind in UNIT_KINDS}
            layers.append(LayerPlan(index, kept["q_heads"], kept["kv_heads"], kept["mlp_channels"]))
        plan = PruningPlan(base_model=self.base_model, layers=layers)
        plan.metadata["trajectory_step"] = step
        return plan

    def closest_step(self, target: float) -> int:
        """The step whose measured sparsity is closest to ``target`` (the earlier one on a tie)."""
        return min(self.history, key=lambda row: abs(row["measured_sparsity"] - target))["step"]

    def milestone_steps(self, milestones: list[float]) -> dict[float, int]:
        """For each milestone the trajectory reached, the first step whose measured sparsity reaches it."""
        found = {}
        for milestone in sorted(milestones):
            step = next((row["step"] for row in self.history if row["measured_sparsity"] >= milestone), None)
            if step is not None:
                found[milestone] = step
        return found

    def save(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: Path) -> Trajectory:
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, data: Any) -> Trajectory:
        """A trajectory from its saved form; ValueError names what is missing or of the wrong type (a
        corrupt cache file must not get past here and fail later, or be used)."""
        if not isinstance(data, dict) or not isinstance(data.get("base_model"), str):
            raise ValueError("'base_model' is missing or not a string")
        removed_at, history = data.get("removed_at"), data.get("history")
        if not isinstance(removed_at, list) or not removed_at:
            raise ValueError("'removed_at' is missing or not a non-empty list")
        for i, layer in enumerate(removed_at):
            if not isinstance(layer, dict) or not all(
                isinstance(layer.get(kind), list) and all(_is_int(at) and at >= 0 for at in layer[kind])
                for kind in UNIT_KINDS
            ):
                raise ValueError(f"'removed_at[{i}]' must map {', '.join(UNIT_KINDS)} to lists of steps")
        if not isinstance(history, list) or not history:
            raise ValueError("'history' is missing or not a non-empty list")
        for i, row in enumerate(history, start=1):
            if (
                not isinstance(row, dict)
                or row.get("step") != i
                or not all(
                    isinstance(row.get(key), int | float) and not isinstance(row.get(key), bool)
                    for key in ("measured_sparsity", "target")
                )
            ):
                raise ValueError(f"'history[{i - 1}]' must hold step {i}, its target and measured_sparsity")
        regenerations = data.get("regenerations", [])
        if not isinstance(regenerations, list):
            raise ValueError("'regenerations' is not a list")
        return cls(data["base_model"], removed_at, history, regenerations)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def trajectory_path(cfg: RunConfig, weights: str) -> Path | None:
    """Where the trajectory of these weights, scorer, calibration and schedule is cached (None: caching off).

    The target is not part of the key when the trajectory has a fixed end, so every target of a
    sweep reads the same file. The package's source and versions are part of it: a trajectory is
    reused only by the code that made it.
    """
    if not cfg.pruning.trajectory_cache:
        return None
    schedule = OmegaConf.to_container(OmegaConf.structured(cfg.pruning))
    for name in ("sparsity", "milestones", "trajectory_cache"):
        schedule.pop(name)
    schedule["trajectory_end"] = trajectory_end(cfg.pruning)
    parts = {"pruning": schedule, "data": str(cfg.data.root), "seed": cfg.seed, "code": source_digest(), **versions()}
    parts["weights"] = weights
    for group in ("model", "scorer", "calibration"):
        parts[group] = OmegaConf.to_container(OmegaConf.structured(getattr(cfg, group)))
    return cache_dir() / "trajectories" / f"{config_hash(parts)}.json"


def source_digest() -> str:
    """A hash of every Python file of the rkuprune package (this file is in its ``allocation`` folder)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def without_removed(scores: Scores, plan: PruningPlan, structures: Structures) -> Scores:
    """Scores with every unit the plan already removed set to -inf, so the next plan contains it."""
    layers = []
    for layer_scores, layer_plan, s in zip(scores.layers, plan.layers, structures.layers, strict=True):
        heads = layer_scores.heads.clone().float()
        channels = layer_scores.channels.clone().float()
        removed_heads = sorted(set(range(s.num_q_heads)) - set(layer_plan.q_heads))
        removed_channels = sorted(set(range(s.intermediate_size)) - set(layer_plan.mlp_channels))
        heads[removed_heads] = -torch.inf
        channels[removed_channels] = -torch.inf
        layers.append(dataclasses.replace(layer_scores, heads=heads, channels=channels))
    return Scores(layers)


def check_schedule(cfg: PruningConfig, structures: Structures) -> None:
    """The trajectory's end must be reachable, and every step must have a unit to remove."""
    end = trajectory_end(cfg)
    try:
        check_feasible(dataclasses.replace(cfg, sparsity=end), structures)
    except ConfigError as exc:
        if cfg.trajectory_end is None:
            raise
        raise ConfigError("pruning.trajectory_end", f"{end} cannot be met ({exc}); lower it") from exc
    protected = protected_layers(cfg, len(structures))
    units = 0
    for s in structures.layers:
        if s.index not in protected:
            flat = LayerScores(torch.zeros(s.num_q_heads), torch.zeros(s.intermediate_size))
            units += len(attention_units(s, flat, cfg.granularity)) + len(channel_units(s, flat))
    if cfg.steps > units:
        raise ConfigError("pruning.steps", f"{cfg.steps} steps but only {units} removable units; use fewer steps")


def run_iterative(
    model: nn.Module,
    scorer: Scorer,
    calibration: CalibrationSet | None,
    cfg: PruningConfig,
    structures: Structures,
    base_model: str,
    regenerate: Regenerate | None = None,
) -> Trajectory:
    """Score, allocate and mask ``cfg.steps`` times with a target growing linearly to the trajectory's
    end (the model ends masked with the last step's plan)."""
    check_schedule(cfg, structures)
    end = trajectory_end(cfg)
    plan = PruningPlan.dense(structures, base_model=base_model)
    trajectory = Trajectory.start(plan)
    pending_regenerations = sorted(cfg.regenerate_at)
    for step in progress(range(1, cfg.steps + 1), "iterative pruning", log, unit="step"):
        target = end * step / cfg.steps
        scores = scorer.score(model, calibration)
        scores.check(structures, scorer.cfg.name)
        step_cfg = dataclasses.replace(cfg, sparsity=target)
        plan = allocate(step_cfg, without_removed(scores, plan, structures), structures, base_model)
        apply_plan(model, plan, "mask")
        measured = plan.sparsity(structures)
        trajectory.record(plan, {"target": target, "measured_sparsity": measured})
        crossed = False
        while pending_regenerations and measured >= pending_regenerations[0]:
            pending_regenerations.pop(0)
            crossed = True
        if crossed and step < cfg.steps:
            if regenerate is None:
                raise ConfigError("pruning.regenerate_at", "this calibration source cannot regenerate; set it to []")
            calibration = regenerate(model, plan)
            trajectory.regenerations.append(calibration.provenance)
            trajectory.history[-1]["regenerated"] = True
    return trajectory
