"""Parameter counts and measured sparsity, as DESIGN.md section 2 defines them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rkuprune.models.adapters import adapter_for


@dataclass(frozen=True)
class ParamCounts:
    """Whole-model parameters (tied weights counted once) and decoder-layer linear parameters."""

    total: int
    prunable: int


def count_params(model: nn.Module) -> ParamCounts:
    adapter = adapter_for(model)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    prunable = 0
    for layer in adapter.layers():
        parts = (*vars(adapter.attention(layer)).values(), *vars(adapter.mlp(layer)).values())
        prunable += sum(p.numel() for linear in parts for p in linear.parameters(recurse=False))
    return ParamCounts(total=total, prunable=prunable)


def sparsity(before: ParamCounts, after: ParamCounts) -> float:
    """1 - prunable parameters after / before."""
    return 1.0 - after.prunable / before.prunable


def total_reduction(before: ParamCounts, after: ParamCounts) -> float:
    """Whole-model parameter reduction (embeddings, LM head and norms included)."""
    return 1.0 - after.total / before.total
