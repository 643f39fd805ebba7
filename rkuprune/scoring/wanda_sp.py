"""``wanda_sp``: structured Wanda as the FLAP paper defines it (its "Wanda-sp" baseline).

Input feature j of an output projection W (o_proj or down_proj) scores Σ_i |W_ij| · ‖X_j‖, where ‖X_j‖ is
the L2 norm of that feature over the calibration tokens; a query head sums its head_dim features, an
MLP channel is one feature. One forward pass, no gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rkuprune.data.calibration import CalibrationSet
from rkuprune.scoring.base import SCORERS, Scorer, ScorerConfig, Scores
from rkuprune.scoring.capture import FeatureStats, run_calibration, sites, to_scores


@dataclass
class WandaSPConfig(ScorerConfig):
    name: str = "wanda_sp"


@SCORERS.register("wanda_sp", WandaSPConfig)
class WandaSPScorer(Scorer):
    needs_calibration = True

    def score(self, model: nn.Module, calibration: CalibrationSet | None) -> Scores:
        stats = FeatureStats()
        run_calibration(model, calibration, reducer=stats)
        per_unit = {}
        for site in sites(model):
            per_feature = site.linear.weight.detach().float().abs().sum(dim=0) * stats.squared_norm(site).sqrt()
            per_unit[site.key] = site.units(per_feature).sum(dim=-1)
        return to_scores(per_unit)
