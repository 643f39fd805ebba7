"""``random``: seeded uniform scores, the sanity floor every real scorer must beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rkuprune.data.calibration import CalibrationSet
from rkuprune.models.adapters import adapter_for
from rkuprune.scoring.base import SCORERS, LayerScores, Scorer, ScorerConfig, Scores


@dataclass
class RandomConfig(ScorerConfig):
    name: str = "random"
    seed: int = 0


@SCORERS.register("random", RandomConfig)
class RandomScorer(Scorer):
    cfg: RandomConfig

    def score(self, model: nn.Module, calibration: CalibrationSet | None) -> Scores:
        generator = torch.Generator().manual_seed(self.cfg.seed)
        layers = [
            LayerScores(
                heads=torch.rand(s.num_q_heads, generator=generator),
                channels=torch.rand(s.intermediate_size, generator=generator),
            )
            for s in adapter_for(model).structures().layers
        ]
        return Scores(layers)
