"""The pruning plan: which units each layer keeps. The canonical, JSON-serialisable artifact of a run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rkuprune.errors import PlanError
from rkuprune.models.structures import LayerStructure, Structures


@dataclass
class LayerPlan:
    """Kept units of one layer as sorted indices in the original numbering.

    Query head h belongs to KV head h // group_size of the original layer.
    """

    index: int
    q_heads: list[int]
    kv_heads: list[int]
    mlp_channels: list[int]

    def validate(self, layer: LayerStructure) -> None:
        where = f"layer {self.index}"
        _check_indices(self.q_heads, layer.num_q_heads, f"{where}: q_heads")
        _check_indices(self.kv_heads, layer.num_kv_heads, f"{where}: kv_heads")
        _check_indices(self.mlp_channels, layer.intermediate_size, f"{where}: mlp_channels")
        if not self.mlp_channels:
            raise PlanError(f"{where}: no MLP channel is kept; keep at least one or remove the whole layer")
        if not self.q_heads or not self.kv_heads:
            raise PlanError(f"{where}: no attention head is kept; keep at least one or remove the whole layer")
        kept_kv = set(self.kv_heads)
        per_group = dict.fromkeys(self.kv_heads, 0)
        for head in self.q_heads:
            kv = layer.kv_of(head)
            if kv not in kept_kv:
                raise PlanError(f"{where}: query head {head} is kept but its KV head {kv} is removed")
            per_group[kv] += 1
        if len(set(per_group.values())) != 1:
            raise PlanError(
                f"{where}: query heads are not kept evenly across KV groups "
                f"(kept per KV head: {per_group}); GQA needs the same count in every group"
            )

    def params(self, layer: LayerStructure) -> int:
        return layer.params(len(self.q_heads), len(self.kv_heads), len(self.mlp_channels))


def _check_indices(indices: list[int], size: int | None, what: str) -> None:
    """Indices are a list of sorted, unique, non-negative integers (below ``size`` when it is known)."""
    if not isinstance(indices, list):
        raise PlanError(f"{what} must be a list of integers, got {indices!r}")
    wrong = [i for i in indices if not isinstance(i, int) or isinstance(i, bool)]
    if wrong:
        raise PlanError(f"{what} must be integers, got {wrong[0]!r}")
    if indices != sorted(set(indices)):
        raise PlanError(f"{what} must be sorted and unique, got {indices}")
    if indices and indices[0] < 0:
        raise PlanError(f"{what} index {indices[0]} is negative")
    bad = [i for i in indices if size is not None and i >= size]
    if bad:
        raise PlanError(f"{what} index {bad[0]} is out of range (the layer has {size})")


UNIT_LABELS = {"q_heads": "query heads", "kv_heads": "KV heads", "mlp_channels": "MLP channels"}  # LayerCounts fields


@dataclass(frozen=True)
class LayerCounts:
    """How many units one layer keeps (all zero when the whole layer is removed)."""

    index: int
    q_heads: int
    kv_heads: int
    mlp_channels: int
    removed: bool = False


@dataclass
class PruningPlan:
    """Per layer kept heads and channels, plus whole removed layers and provenance."""

    base_model: str
    layers: list[LayerPlan]
    removed_layers: list[int] = field(default_factory=list)
    measured_sparsity: float | None = None
    base_revision: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Per layer of the unpruned model: num_attention_heads, num_key_value_heads, intermediate_size, so a
    # saved plan can be checked (indices in range, GQA groups) without the base model.
    base_layers: list[dict[str, int]] = field(default_factory=list)

    @classmethod
    def dense(cls, structures: Structures, base_model: str = "") -> PruningPlan:
        """The plan that keeps everything (the starting point of every allocator)."""
        return cls(
            base_model=base_model,
            base_layers=[
                {
                    "num_attention_heads": layer.num_q_heads,
                    "num_key_value_heads": layer.num_kv_heads,
                    "intermediate_size": layer.intermediate_size,
                }
                for layer in structures.layers
            ],
            layers=[
                LayerPlan(
                    layer.index,
                    list(range(layer.num_q_heads)),
                    list(range(layer.num_kv_heads)),
                    list(range(layer.intermediate_size)),
                )
                for layer in structures.layers
            ],
        )

    def layer(self, index: int) -> LayerPlan | None:
        for layer_plan in self.layers:
            if layer_plan.index == index:
                return layer_plan
        return None

    def validate(self, structures: Structures) -> None:
        """Raise PlanError naming the layer when the plan does not fit the (unpruned) structures."""
        n = len(structures)
        for index in self.removed_layers:
            if not 0 <= index < n:
                raise PlanError(f"removed layer {index} is out of range (the model has {n} layers)")
        if len(set(self.removed_layers)) != len(self.removed_layers):
            raise PlanError(f"removed_layers has duplicates: {self.removed_layers}")
        if len(self.removed_layers) >= n:
            raise PlanError("every layer is removed; keep at least one")
        seen: set[int] = set()
        for layer_plan in self.layers:
            if not 0 <= layer_plan.index < n:
                raise PlanError(f"layer {layer_plan.index} is out of range (the model has {n} layers)")
            if layer_plan.index in seen:
                raise PlanError(f"layer {layer_plan.index} appears twice in the plan")
            if layer_plan.index in self.removed_layers:
                raise PlanError(f"layer {layer_plan.index} is both removed and planned")
            seen.add(layer_plan.index)
            layer_plan.validate(structures[layer_plan.index])
        missing = set(range(n)) - seen - set(self.removed_layers)
        if missing:
            raise PlanError(f"layer {min(missing)} is neither planned nor removed")

    def params(self, structures: Structures) -> int:
        """Decoder-layer linear parameters the plan keeps (what slicing will leave)."""
        return sum(lp.params(structures[lp.index]) for lp in self.layers)

    def sparsity(self, structures: Structures) -> float:
        return 1.0 - self.params(structures) / structures.prunable_params

    def layer_counts(self) -> list[LayerCounts]:
        """Kept query heads, KV heads and MLP channels of every layer, planned or removed, in layer order.

        Read from the plan alone (a valid plan names every layer of the model once), so a saved plan
        can be summarised or drawn without its model.
        """
        counts = [LayerCounts(lp.index, len(lp.q_heads), len(lp.kv_heads), len(lp.mlp_channels)) for lp in self.layers]
        counts += [LayerCounts(index, 0, 0, 0, removed=True) for index in self.removed_layers]
        return sorted(counts, key=lambda c: c.index)

    def removed_counts(self, structures: Structures) -> dict[str, int]:
        """Removed query heads, KV heads and MLP channels (``UNIT_LABELS``' fields) and whole layers (``layer_count``)."""
        kept, dense = self.layer_counts(), PruningPlan.dense(structures).layer_counts()
        removed = {f: sum(getattr(c, f) for c in dense) - sum(getattr(c, f) for c in kept) for f in UNIT_LABELS}
        return {**removed, "layer_count": sum(c.removed for c in kept)}

    def removed_summary(self, structures: Structures) -> str:
        """Removed query heads, KV heads, MLP channels and whole layers, out of the dense totals."""
        removed, dense = self.removed_counts(structures), PruningPlan.dense(structures).layer_counts()
        parts = [f"{removed[f]}/{sum(getattr(c, f) for c in dense)} {label}" for f, label in UNIT_LABELS.items()]
        return ", ".join(parts) + f", {removed['layer_count']}/{len(structures)} layers removed"

    def is_uniform(self) -> bool:
        """True when every kept layer has the same head and channel counts (plain HF config can describe it)."""
        shapes = {(len(lp.q_heads), len(lp.kv_heads), len(lp.mlp_channels)) for lp in self.layers}
        return len(shapes) == 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        """A plan from its JSON form, with types checked (indices: sorted unique non-negative integers)."""
        try:
            layers = [LayerPlan(**layer) for layer in data["layers"]]
            for lp in layers:
                where = f"layer {lp.index}"
                if not isinstance(lp.index, int) or isinstance(lp.index, bool) or lp.index < 0:
                    raise PlanError(f"layer index {lp.index!r} is not a non-negative integer")
                for name in ("q_heads", "kv_heads", "mlp_channels"):
                    _check_indices(getattr(lp, name), None, f"{where}: {name}")
            _check_indices(data.get("removed_layers", []), None, "removed_layers")
            if not isinstance(data["base_model"], str):
                raise PlanError(f"base_model must be a string, got {data['base_model']!r}")
            return cls(
                base_model=data["base_model"],
                layers=layers,
                removed_layers=list(data.get("removed_layers", [])),
                measured_sparsity=data.get("measured_sparsity"),
                base_revision=data.get("base_revision"),
                metadata=dict(data.get("metadata", {})),
                base_layers=list(data.get("base_layers", [])),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise PlanError(f"not a pruning plan: {type(exc).__name__}: {exc}") from exc

    def save(self, path: str | Path) -> None:
        from rkuprune.tracking.atomic import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        return cls.from_dict(json.loads(Path(path).read_text()))
