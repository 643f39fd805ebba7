"""``magnitude``: the L2 norm of all weights a unit owns (data-free baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rkuprune.data.calibration import CalibrationSet
from rkuprune.models.adapters import Projection, adapter_for
from rkuprune.precision import at_least_fp32
from rkuprune.scoring.base import SCORERS, LayerScores, Scorer, ScorerConfig, Scores


@dataclass
class MagnitudeConfig(ScorerConfig):
    name: str = "magnitude"


def squared_row_norms(projection: Projection) -> torch.Tensor:
    """Per output row of a role: sum of squared weights plus the squared bias (at least fp32)."""
    sq = at_least_fp32(projection.weight.detach()).pow(2).sum(dim=1)
    if projection.bias is not None:
        sq = sq + at_least_fp32(projection.bias.detach()).pow(2)
    return sq


def squared_col_norms(projection: Projection) -> torch.Tensor:
    return at_least_fp32(projection.weight.detach()).pow(2).sum(dim=0)


def per_head(values: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Sum a per-row (or per-column) vector over each head's head_dim block."""
    return values.view(-1, head_dim).sum(dim=1)


@SCORERS.register("magnitude", MagnitudeConfig)
class MagnitudeScorer(Scorer):
    def score(self, model: nn.Module, calibration: CalibrationSet | None) -> Scores:
        adapter = adapter_for(model)
        layers = []
        for layer in adapter.layers():
            attn, mlp = adapter.attention(layer), adapter.mlp(layer)
            head_sq = per_head(squared_row_norms(attn.q) + squared_col_norms(attn.o), adapter.head_dim)
            channel_sq = squared_row_norms(mlp.gate) + squared_row_norms(mlp.up) + squared_col_norms(mlp.down)
            layers.append(LayerScores(heads=head_sq.sqrt(), channels=channel_sq.sqrt()))
        return Scores(layers)
