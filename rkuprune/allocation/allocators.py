"""Allocators: ``uniform`` (same fraction per layer and unit type) and ``global`` (one ranking).

Both count the budget in parameters (docs/design.md section 2) and stop at the first plan whose sparsity
reaches the target: the overshoot is below one unit's cost for ``global`` and below one MLP channel
per unprotected layer for ``uniform``. Every layer keeps at least one query head per kept KV group,
one KV head and one MLP channel; a target that cannot be met is an error, never a silent clip.

Attention units depend on ``pruning.granularity``: ``q_head`` removes one query head from every KV
group at once (the k-th lowest of each group), ``kv_group`` removes a KV head with its query heads,
``none`` removes no attention.

Fair ranking rule (``global``): every query head and every MLP channel is one entry of the ranking, on
its own per-unit scale; a unit made of several heads is never scored by their sum (which would make
it look g times as important and shield attention). A layer's attention then loses units in
proportion to its heads below the global threshold: n heads below remove round(n / num_kv_heads) heads
from every KV group (``q_head``, the lowest of each group) or round(n / group_size) KV groups, lowest
mean score first (``kv_group``). Every unit is charged its real parameter cost (each member head, plus
the KV head for ``kv_group``), and the threshold rises until the budget is met. With scores of one
distribution for heads and channels, attention and MLP lose the same share of their parameters.

``uniform`` with ``pruning.layer_ratios`` (RESP's ``baseline_uniform_wanda``): every unprotected layer
loses round(ratio · group size) query heads per KV group and int(ratio · intermediate) channels, the
ratio given per target; no budget is met, the measured sparsity is what the ratio gives.

Depth pruning (``allocate_depth``): ``granularity=layer`` takes the whole budget from whole decoder
layers, lowest layer score first, until the budget is met (overshoot below one layer; at least one
layer always stays). With a width granularity, ``depth_fraction`` in (0, 1] takes that share of the
budget from layers first, and the width allocator takes the rest from the remaining layers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from rkuprune.errors import ConfigError, check_choice
from rkuprune.models.plan import PruningPlan
from rkuprune.models.structures import LayerStructure, Structures
from rkuprune.registry import Registry
from rkuprune.scoring.base import LayerScores, Scores

GRANULARITIES = ("q_head", "kv_group", "none", "layer")
PROTECTION_RULES = ("none", "gisp", "llm_pruner")
SCHEDULES = ("oneshot", "iterative")


@dataclass
class PruningConfig:
    """``pruning`` group."""

    sparsity: float = 0.4
    granularity: str = "q_head"
    allocation: str = "global"
    protected_layers: list[int] = field(default_factory=list)
    protection_rule: str = "none"  # "gisp": first 10% of layers and the last; "llm_pruner": first 4, last 2
    schedule: str = "oneshot"  # "iterative": linear ratio over `steps`, re-scoring the masked model each step
    steps: int = 8
    milestones: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5])  # plans recorded here
    regenerate_at: list[float] = field(default_factory=list)  # calibration rebuilt by the pruned model here
    trajectory_end: float | None = None  # iterative: run to this sparsity (GISP: 0.7), read the target's plan from it
    trajectory_cache: bool = True  # iterative: reuse a trajectory cached for the same model, scorer, calibration
    depth_fraction: float = 0.0  # share of the budget taken by whole layers first (granularity=layer: all)
    # uniform: per target in percent, the share of heads and channels every unprotected layer loses
    # (RESP's baseline_uniform_wanda `ratio`, e.g. {40: 0.47}); the measured sparsity is what it gives
    layer_ratios: dict[int, float] = field(default_factory=dict)

    def check(self) -> None:
        if not 0.0 <= self.sparsity <= 0.95:
            raise ConfigError(
                "pruning.sparsity", f"{self.sparsity} is outside [0, 0.95]; use e.g. pruning.sparsity=0.4"
            )
        for name, value, allowed in (
            ("granularity", self.granularity, GRANULARITIES),
            ("protection_rule", self.protection_rule, PROTECTION_RULES),
            ("schedule", self.schedule, SCHEDULES),
        ):
            check_choice(f"pruning.{name}", value, allowed)
        ALLOCATORS.get(self.allocation, "pruning.allocation")
        if self.steps < 1:
            raise ConfigError("pruning.steps", f"{self.steps} must be at least 1")
        if self.trajectory_end is not None and not self.sparsity <= self.trajectory_end <= 0.95:
            raise ConfigError(
                "pruning.trajectory_end",
                f"{self.trajectory_end} is outside [pruning.sparsity={self.sparsity}, 0.95]; the trajectory must "
                "reach the target: raise it, or set it to null to run to the target",
            )
        if not 0.0 <= self.depth_fraction <= 1.0:
            raise ConfigError("pruning.depth_fraction", f"{self.depth_fraction} is outside [0, 1]; use e.g. 0.5")
        if self.granularity == "layer" and self.depth_fraction not in (0.0, 1.0):
            raise ConfigError(
                "pruning.depth_fraction",
                "granularity=layer takes the whole budget from layers; "
                "to mix, set a width granularity such as pruning.granularity=q_head",
            )
        if self.depth_share > 0 and self.schedule != "oneshot":
            raise ConfigError(
                "pruning.schedule", "depth pruning removes layers in one shot; use pruning.schedule=oneshot"
            )
        if self.layer_ratios:
            if self.allocation != "uniform":
                raise ConfigError(
                    "pruning.layer_ratios", "per-layer ratios are for pruning.allocation=uniform; or set it to {}"
                )
            self.layer_ratio()
        for name in ("milestones", "regenerate_at"):
            bad = [m for m in getattr(self, name) if not 0.0 < m < 1.0]
            if bad:
                raise ConfigError(f"pruning.{name}", f"{bad[0]} is outside (0, 1); use fractions such as 0.1, 0.2")

    def layer_ratio(self) -> float | None:
        """The per-layer ratio ``layer_ratios`` gives this target, or None when they are not used."""
        if not self.layer_ratios:
            return None
        percent = round(100 * self.sparsity)
        if percent not in self.layer_ratios:
            raise ConfigError(
                "pruning.layer_ratios",
                f"no ratio for pruning.sparsity={self.sparsity} (targets given: {sorted(self.layer_ratios)} percent); "
                f"add one, e.g. pruning.layer_ratios.{percent}=0.5",
            )
        ratio = self.layer_ratios[percent]
        if not 0.0 <= ratio < 1.0:
            raise ConfigError("pruning.layer_ratios", f"{ratio} for {percent}% is outside [0, 1)")
        return ratio

    @property
    def depth_share(self) -> float:
        """The share of the parameter budget taken by removing whole layers."""
        return 1.0 if self.granularity == "layer" else self.depth_fraction


def protected_layers(cfg: PruningConfig, num_layers: int) -> set[int]:
    protected = set(cfg.protected_layers)
    bad = sorted(i for i in protected if not 0 <= i < num_layers)
    if bad:
        raise ConfigError("pruning.protected_layers", f"layer {bad[0]} does not exist (the model has {num_layers})")
    if cfg.protection_rule == "gisp":
        protected |= set(range(int(0.1 * num_layers))) | {num_layers - 1}  # as GISP: layers outside [L//10, L-1)
    elif cfg.protection_rule == "llm_pruner":  # LLM-Pruner's Llama-3 script prunes layers [4, L-2)
        protected |= set(range(min(4, num_layers))) | set(range(max(num_layers - 2, 0), num_layers))
    return protected


@dataclass(frozen=True)
class Unit:
    """A removable piece of one layer: query heads, or a KV group, or one MLP channel."""

    layer: int
    kind: str  # "attention" | "channel"
    members: tuple[int, ...]
    score: float
    cost: int


def per_head_score(heads: list[float], members: tuple[int, ...]) -> float:
    """A multi-head unit's score on the single-head scale: the mean of its members (the fair rule above)."""
    return sum(heads[h] for h in members) / len(members)


def attention_units(s: LayerStructure, scores: LayerScores, granularity: str) -> list[Unit]:
    """Removable attention units of a layer in the order they must go (never the last one)."""
    heads = scores.heads.tolist()
    if granularity == "q_head":
        groups = [
            sorted(range(kv * s.group_size, (kv + 1) * s.group_size), key=lambda h: heads[h])
            for kv in range(s.num_kv_heads)
        ]
        members = [tuple(group[k] for group in groups) for k in range(s.group_size - 1)]
        cost = s.num_kv_heads * s.q_head_cost
        return [Unit(s.index, "attention", m, per_head_score(heads, m), cost) for m in members]
    if granularity == "kv_group":
        groups = [tuple(range(kv * s.group_size, (kv + 1) * s.group_size)) for kv in range(s.num_kv_heads)]
        kv_scores = [per_head_score(heads, group) for group in groups]
        order = sorted(range(s.num_kv_heads), key=lambda kv: kv_scores[kv])[:-1]
        cost = s.kv_head_cost + s.group_size * s.q_head_cost
        return [Unit(s.index, "attention", (kv,), kv_scores[kv], cost) for kv in order]
    return []


def heads_per_unit(s: LayerStructure, granularity: str) -> int:
    """Query heads one attention unit removes: one per KV group (``q_head``) or a whole group (``kv_group``)."""
    return s.num_kv_heads if granularity == "q_head" else s.group_size


def channel_units(s: LayerStructure, scores: LayerScores) -> list[Unit]:
    channels = scores.channels.tolist()
    order = sorted(range(s.intermediate_size), key=lambda c: channels[c])[:-1]
    return [Unit(s.index, "channel", (c,), channels[c], s.channel_cost) for c in order]


def plan_without(structures: Structures, removed: list[Unit], granularity: str, base_model: str) -> PruningPlan:
    """The dense plan minus the removed units."""
    plan = PruningPlan.dense(structures, base_model=base_model)
    gone: dict[tuple[int, str], set[int]] = {}
    for unit in removed:
        s = structures[unit.layer]
        if unit.kind == "channel":
            gone.setdefault((unit.layer, "channels"), set()).add(unit.members[0])
        elif granularity == "q_head":
            gone.setdefault((unit.layer, "heads"), set()).update(unit.members)
        else:
            kv = unit.members[0]
            gone.setdefault((unit.layer, "kv"), set()).add(kv)
            gone.setdefault((unit.layer, "heads"), set()).update(range(kv * s.group_size, (kv + 1) * s.group_size))
    for layer_plan in plan.layers:
        i = layer_plan.index
        layer_plan.mlp_channels = [c for c in layer_plan.mlp_channels if c not in gone.get((i, "channels"), ())]
        layer_plan.q_heads = [h for h in layer_plan.q_heads if h not in gone.get((i, "heads"), ())]
        layer_plan.kv_heads = [kv for kv in layer_plan.kv_heads if kv not in gone.get((i, "kv"), ())]
    return plan


def _impossible(cfg: PruningConfig, reachable: float) -> ConfigError:
    return ConfigError(
        "pruning.sparsity",
        f"{cfg.sparsity} cannot be met: at most {reachable:.3f} is reachable with granularity "
        f"'{cfg.granularity}' and protected layers {sorted(cfg.protected_layers)} (rule '{cfg.protection_rule}'); "
        "lower pruning.sparsity or protect fewer layers",
    )


def check_feasible(cfg: PruningConfig, structures: Structures) -> None:
    """Refuse a target that protected layers and per-layer minimums make impossible (before any scoring)."""
    if cfg.depth_share > 0:  # the width remainder, which depends on the layers removed, is checked when allocating
        _removable_layers(cfg, structures, math.ceil(cfg.depth_share * cfg.sparsity * structures.prunable_params))
        return
    protected = protected_layers(cfg, len(structures))
    removable = 0
    for s in structures.layers:
        if s.index in protected:
            continue
        removable += (s.intermediate_size - 1) * s.channel_cost
        if cfg.granularity == "q_head":
            removable += (s.group_size - 1) * s.num_kv_heads * s.q_head_cost
        elif cfg.granularity == "kv_group":
            removable += (s.num_kv_heads - 1) * (s.kv_head_cost + s.group_size * s.q_head_cost)
    reachable = removable / structures.prunable_params
    if cfg.sparsity > reachable:
        raise _impossible(cfg, reachable)


class Allocator:
    def __init__(self, cfg: PruningConfig) -> None:
        self.cfg = cfg

    def allocate(self, scores: Scores, structures: Structures, base_model: str = "") -> PruningPlan:
        raise NotImplementedError


ALLOCATORS: Registry[Allocator] = Registry("allocator")


@ALLOCATORS.register("global")
class GlobalAllocator(Allocator):
    """One ranking of every query head and MLP channel of every unprotected layer, lowest score first.

    The threshold sweeps up the ranking; each channel below it is removed, and each layer removes the
    attention units its heads below the threshold call for (the fair rule in the module docstring).
    """

    def allocate(self, scores: Scores, structures: Structures, base_model: str = "") -> PruningPlan:
        protected = protected_layers(self.cfg, len(structures))
        budget = math.ceil(self.cfg.sparsity * structures.prunable_params)
        layers = [s for s in structures.layers if s.index not in protected]
        attention = {s.index: attention_units(s, scores.layers[s.index], self.cfg.granularity) for s in layers}
        channels = {s.index: channel_units(s, scores.layers[s.index]) for s in layers}
        entries = []  # (score, layer, is_head, channel rank); channels keep their removal order
        for s in layers:
            if attention[s.index]:
                entries += [(h, s.index, True, 0) for h in scores.layers[s.index].heads.tolist()]
            entries += [(u.score, s.index, False, rank) for rank, u in enumerate(channels[s.index])]
        entries.sort(key=lambda e: e[0])  # stable: equal scores keep layer and removal order
        heads_below = dict.fromkeys(attention, 0)
        taken = dict.fromkeys(attention, 0)  # attention units removed per layer
        removed, freed = [], 0
        for _, layer, is_head, rank in entries:
            if freed >= budget:
                break
            if not is_head:
                removed.append(channels[layer][rank])
                freed += channels[layer][rank].cost
                continue
            heads_below[layer] += 1
            units = attention[layer]
            wanted = min(
                len(units),
                math.floor(heads_below[layer] / heads_per_unit(structures[layer], self.cfg.granularity) + 0.5),
            )
            for unit in units[taken[layer] : wanted]:
                removed.append(unit)
                freed += unit.cost
            taken[layer] = max(taken[layer], wanted)
        if freed < budget:
            raise _impossible(self.cfg, freed / structures.prunable_params)
        return plan_without(structures, removed, self.cfg.granularity, base_model)


@ALLOCATORS.register("uniform")
class UniformAllocator(Allocator):
    """The same share of heads (per KV group) and the same number of channels in every unprotected layer."""

    def allocate(self, scores: Scores, structures: Structures, base_model: str = "") -> PruningPlan:
        protected = protected_layers(self.cfg, len(structures))
        prunable = [s for s in structures.layers if s.index not in protected]
        budget = math.ceil(self.cfg.sparsity * structures.prunable_params)
        ratio = self.cfg.layer_ratio()
        removed: list[Unit] = []
        for s in prunable:
            units = attention_units(s, scores.layers[s.index], self.cfg.granularity)
            size = s.group_size if self.cfg.granularity == "q_head" else s.num_kv_heads
            removed += units[: min(len(units), round((self.cfg.sparsity if ratio is None else ratio) * size))]
        if ratio is not None:  # RESP's uniform baseline: int(ratio · intermediate) channels of every layer
            for s in prunable:
                removed += channel_units(s, scores.layers[s.index])[: int(ratio * s.intermediate_size)]
            return plan_without(structures, removed, self.cfg.granularity, base_model)
        freed = sum(u.cost for u in removed)
        channel_cost = sum(s.channel_cost for s in prunable)
        per_layer = max(0, math.ceil((budget - freed) / channel_cost)) if channel_cost else 0
        max_channels = min((s.intermediate_size - 1 for s in prunable), default=0)
        if per_layer > max_channels:
            reachable = (freed + max_channels * channel_cost) / structures.prunable_params
            raise _impossible(self.cfg, reachable)
        for s in prunable:
            removed += channel_units(s, scores.layers[s.index])[:per_layer]
        return plan_without(structures, removed, self.cfg.granularity, base_model)


def allocate(cfg: PruningConfig, scores: Scores, structures: Structures, base_model: str = "") -> PruningPlan:
    if cfg.depth_share > 0:
        return allocate_depth(cfg, scores, structures, base_model)
    allocator = ALLOCATORS.get(cfg.allocation, "pruning.allocation").cls(cfg)
    return allocator.allocate(scores, structures, base_model)


def _depth_impossible(cfg: PruningConfig, structures: Structures, reachable: int) -> ConfigError:
    return ConfigError(
        "pruning.sparsity",
        f"{cfg.sparsity} cannot be met by removing layers (depth share {cfg.depth_share:g}): at most "
        f"{reachable / structures.prunable_params:.3f} is reachable while one layer and the protected layers "
        f"{sorted(protected_layers(cfg, len(structures)))} stay; lower pruning.sparsity or pruning.depth_fraction",
    )


def _removable_layers(cfg: PruningConfig, structures: Structures, budget: int) -> list[int]:
    """Unprotected layers; refuses a budget they cannot meet while at least one layer stays."""
    candidates = [s.index for s in structures.layers if s.index not in protected_layers(cfg, len(structures))]
    costs = [structures[i].dense_params for i in candidates]
    reachable = sum(costs) - (min(costs) if len(candidates) == len(structures) else 0)
    if reachable < budget:
        raise _depth_impossible(cfg, structures, reachable)
    return candidates


def allocate_depth(cfg: PruningConfig, scores: Scores, structures: Structures, base_model: str = "") -> PruningPlan:
    """Remove the lowest-scoring layers until the depth share of the budget is met (never the last
    layer standing), then, with a width granularity, let the width allocator take the rest of the
    target from the layers that remain."""
    depth_budget = math.ceil(cfg.depth_share * cfg.sparsity * structures.prunable_params)
    layer_scores = scores.layer_scores()
    removed, freed = [], 0
    for index in sorted(_removable_layers(cfg, structures, depth_budget), key=lambda i: layer_scores[i]):
        if freed >= depth_budget or len(removed) == len(structures) - 1:
            break
        removed.append(index)
        freed += structures[index].dense_params
    if freed < depth_budget:
        raise _depth_impossible(cfg, structures, freed)
    if cfg.depth_share < 1:
        width_cfg = dataclasses.replace(
            cfg,
            sparsity=max(0.0, cfg.sparsity - freed / structures.prunable_params),
            depth_fraction=0.0,
            protected_layers=sorted(set(cfg.protected_layers) | set(removed)),
        )
        plan = allocate(width_cfg, scores, structures, base_model)
    else:
        plan = PruningPlan.dense(structures, base_model=base_model)
    plan.layers = [lp for lp in plan.layers if lp.index not in removed]
    plan.removed_layers = sorted(removed)
    return plan
