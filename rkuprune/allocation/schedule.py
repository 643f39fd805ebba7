"""Iterative pruning (GISP-style): a linear ratio schedule over ``pruning.steps``.

Each step re-scores the currently masked model, extends the plan (plans are nested: a removed unit
never returns, because its scores are set to -inf before allocating), and masks the new units in
place, so no copy of the model is kept. Plans are recorded at every step and at each
``pruning.milestones`` crossing; when measured sparsity crosses a ``pruning.regenerate_at`` value,
the calibration set is rebuilt by the pruned model (RESP's progressive regeneration). The schedule
returns the recorded plan whose sparsity is closest to the target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rkuprune.allocation.allocators import PruningConfig, allocate, attention_units, channel_units, protected_layers
from rkuprune.data.calibration import CalibrationSet
from rkuprune.errors import ConfigError
from rkuprune.models.plan import PruningPlan
from rkuprune.models.structures import Structures
from rkuprune.models.surgery import apply_plan
from rkuprune.scoring.base import LayerScores, Scorer, Scores

Regenerate = Callable[[nn.Module, PruningPlan], CalibrationSet]  # the masked model and its plan


@dataclass
class ScheduleResult:
    plan: PruningPlan  # the recorded plan closest to the target
    last_plan: PruningPlan  # the plan the model is masked with at the end
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per step
    milestone_plans: dict[float, PruningPlan] = field(default_factory=dict)
    regenerations: int = 0


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


def check_steps(cfg: PruningConfig, structures: Structures) -> None:
    """More steps than removable units would leave steps that remove nothing."""
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
) -> ScheduleResult:
    """Score, allocate and mask ``cfg.steps`` times with a linearly growing target (the model ends masked)."""
    check_steps(cfg, structures)
    plan = PruningPlan.dense(structures, base_model=base_model)
    result = ScheduleResult(plan=plan, last_plan=plan)
    best_gap = float("inf")
    pending_milestones = sorted(cfg.milestones)
    pending_regenerations = sorted(cfg.regenerate_at)
    for step in tqdm(range(1, cfg.steps + 1), desc="iterative pruning", leave=False):
        target = cfg.sparsity * step / cfg.steps
        scores = scorer.score(model, calibration)
        scores.check(structures, scorer.cfg.name)
        step_cfg = dataclasses.replace(cfg, sparsity=target)
        plan = allocate(step_cfg, without_removed(scores, plan, structures), structures, base_model)
        apply_plan(model, plan, "mask")
        measured = plan.sparsity(structures)
        result.history.append({"step": step, "target": target, "measured_sparsity": measured})
        if abs(measured - cfg.sparsity) < best_gap:  # only the best plan is kept, not one per step
            best_gap, result.plan = abs(measured - cfg.sparsity), plan
        while pending_milestones and measured >= pending_milestones[0]:
            result.milestone_plans[pending_milestones.pop(0)] = plan
        crossed = False
        while pending_regenerations and measured >= pending_regenerations[0]:
            pending_regenerations.pop(0)
            crossed = True
        if crossed and step < cfg.steps:
            if regenerate is None:
                raise ConfigError("pruning.regenerate_at", "this calibration source cannot regenerate; set it to []")
            calibration = regenerate(model, plan)
            result.regenerations += 1
            result.history[-1]["regenerated"] = True
    result.last_plan = plan
    return result
