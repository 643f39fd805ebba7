"""``flap``: FLAP (An et al., AAAI 2024), fluctuation-based adaptive structured pruning.

- Fluctuation metric of input feature j of an output projection W (o_proj or down_proj): the sample
  variance of X_j over the calibration tokens times ‖W_:,j‖² (how much the output moves when the
  feature is replaced by its mean).
- Standardised adaptive global structure: the metric is z-scored over the features of each module
  (one layer's attention, one layer's MLP), so a single global ranking can compare modules and layers;
  a query head scores the mean of its head_dim features' z-scores. As the reference code
  (``prune_flap`` in lib/prune.py) the attention metric is squared before standardising
  (``square_attention``, default true; false follows the paper's metric for both modules).
- Every calibration token counts, the first of each row included (``skip_first_token``, default false).
- Bias compensation: after allocation, each removed feature's calibration mean times its weight column
  is folded into the output bias of o_proj / down_proj (``compensate``), so the layer's expected output
  is unchanged. The bias is created when the projection has none and survives ``save_pruned``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rkuprune.data.calibration import CalibrationSet
from rkuprune.models.plan import PruningPlan
from rkuprune.models.surgery import add_output_bias, head_rows
from rkuprune.precision import at_least_fp32
from rkuprune.scoring.base import SCORERS, Scorer, ScorerConfig, Scores
from rkuprune.scoring.capture import FeatureStats, Key, run_calibration, sites, to_scores


@dataclass
class FLAPConfig(ScorerConfig):
    name: str = "flap"
    square_attention: bool = True  # the reference squares the attention fluctuation before standardising
    skip_first_token: bool = False  # the reference counts every calibration token


def standardise(values: torch.Tensor) -> torch.Tensor:
    """z-score over one module's features (a module whose features all fluctuate equally scores zero)."""
    std = values.std()
    centred = values - values.mean()
    return torch.zeros_like(centred) if std == 0 else centred / std


@SCORERS.register("flap", FLAPConfig)
class FLAPScorer(Scorer):
    cfg: FLAPConfig
    needs_calibration = True

    def __init__(self, cfg: FLAPConfig) -> None:
        super().__init__(cfg)
        self.means: dict[Key, torch.Tensor] = {}

    def score(self, model: nn.Module, calibration: CalibrationSet | None) -> Scores:
        stats = FeatureStats()
        run_calibration(model, calibration, reducer=stats, skip_first=self.cfg.skip_first_token)
        per_unit = {}
        for site in sites(model):
            fluctuation = stats.variance(site) * at_least_fp32(site.linear.weight.detach()).pow(2).sum(dim=0)
            if site.block == "attention" and self.cfg.square_attention:
                fluctuation = fluctuation.pow(2)
            per_unit[site.key] = site.units(standardise(fluctuation)).mean(dim=-1)
            self.means[site.key] = stats.mean(site)
        return to_scores(per_unit)

    def compensate(self, model: nn.Module, plan: PruningPlan) -> None:
        """Fold the calibration mean of every removed o/down input feature into that projection's bias."""
        if not self.means:
            raise RuntimeError("flap: compensate needs the statistics of score(); call score first")
        by_key = {site.key: site for site in sites(model)}
        for layer_plan in plan.layers:
            kept_units = {"attention": layer_plan.q_heads, "mlp": layer_plan.mlp_channels}
            for block, units in kept_units.items():
                site = by_key[(layer_plan.index, block)]
                mean = self.means[site.key]
                if mean.numel() != site.linear.in_features:
                    raise RuntimeError(f"flap: layer {site.layer} {block} changed shape since scoring")
                removed = torch.ones(mean.numel(), dtype=torch.bool)
                removed[head_rows(units, site.unit_size)] = False
                if removed.any():
                    weight = at_least_fp32(site.linear.weight.detach())[:, removed.to(mean.device)]
                    add_output_bias(site.linear, weight @ mean[removed.to(mean.device)])
