"""``wanda_sp``: structured Wanda as FLAP's ``prune_wanda_sp`` (lib/prune.py) defines it (the FLAP paper's
"Wanda-sp" baseline, also GISP/RESP's ``baseline_uniform_wanda``).

Input feature j of an output projection W (o_proj or down_proj) scores mean_i |W_ij| · ‖X_j‖, where ‖X_j‖
is the L2 norm of that feature over every calibration token (first tokens included, as the reference
counts them); a query head sums its head_dim features, an MLP channel is one feature. The reference
divides ‖X_j‖² by the number of calibration rows, one positive constant for every module, which no
ranking can see; it is left out.

``flow``: ``sequential`` (default, the reference) calibrates layer by layer, each layer on the output of
the already-pruned earlier layers: after scoring layer i its units are masked as the plan will remove
them (``pruning.allocation=uniform``, the same share in every layer, as the reference), so the model
is left masked with exactly the plan the allocator then builds. ``dense`` scores every layer on the
dense model in one pass, which any allocator (e.g. ``pruning.allocation=global``) can rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rkuprune.data.calibration import CalibrationSet
from rkuprune.errors import ConfigError, check_choice
from rkuprune.models.adapters import adapter_for
from rkuprune.models.plan import PruningPlan
from rkuprune.models.surgery import apply_plan
from rkuprune.precision import at_least_fp32
from rkuprune.scoring.base import SCORERS, LayerScores, Scorer, ScorerConfig, Scores
from rkuprune.scoring.capture import FeatureStats, Key, Site, run_calibration, run_sequential, sites, to_scores

FLOWS = ("sequential", "dense")


@dataclass
class WandaSPConfig(ScorerConfig):
    name: str = "wanda_sp"
    flow: str = "sequential"  # sequential (the reference: layer by layer on pruned inputs) | dense (one pass)
    skip_first_token: bool = False  # the reference counts every calibration token


def wanda_metric(site: Site, stats: FeatureStats) -> torch.Tensor:
    """Per unit: Σ over its input features of mean_i |W_ij| · ‖X_j‖."""
    per_feature = at_least_fp32(site.linear.weight.detach()).abs().mean(dim=0) * stats.squared_norm(site).sqrt()
    return site.units(per_feature).sum(dim=-1)


@SCORERS.register("wanda_sp", WandaSPConfig)
class WandaSPScorer(Scorer):
    cfg: WandaSPConfig
    needs_calibration = True

    def check(self) -> None:
        check_choice("scorer.flow", self.cfg.flow, FLOWS)
        if self.cfg.flow != "sequential" or self.pruning is None:
            return
        if self.pruning.allocation != "uniform" or self.pruning.schedule != "oneshot":
            raise ConfigError(
                "scorer.flow",
                "'sequential' prunes each layer while scoring and needs pruning.allocation=uniform and "
                "pruning.schedule=oneshot; use scorer.flow=dense for a global or iterative plan",
            )

    def score(self, model: nn.Module, calibration: CalibrationSet | None) -> Scores:
        self.check()
        stats = FeatureStats()
        skip = self.cfg.skip_first_token
        if self.cfg.flow == "dense":
            run_calibration(model, calibration, reducer=stats, skip_first=skip)
            return to_scores({site.key: wanda_metric(site, stats) for site in sites(model)})
        if self.pruning is None:
            raise ConfigError("scorer.flow", "'sequential' needs the pruning settings (Scorer.bind); or use dense")
        by_layer: dict[int, list[Site]] = {}
        for site in sites(model):
            by_layer.setdefault(site.layer, []).append(site)
        per_unit: dict[Key, torch.Tensor] = {}
        structures = adapter_for(model).structures()
        plan = PruningPlan.dense(structures)

        def prune_layer(index: int) -> None:
            """Score layer ``index`` and mask what the uniform plan removes from it."""
            from rkuprune.allocation.allocators import allocate  # allocation imports scoring

            for site in by_layer[index]:
                per_unit[site.key] = wanda_metric(site, stats)
            layer = LayerScores(per_unit[(index, "attention")].float(), per_unit[(index, "mlp")].float())
            flat = [
                LayerScores(torch.zeros(s.num_q_heads), torch.zeros(s.intermediate_size)) for s in structures.layers
            ]
            flat[index] = layer
            # Uniform allocation decides each layer from its own scores alone; other layers' are placeholders.
            plan.layers[index] = allocate(self.pruning, Scores(flat), structures).layers[index]
            apply_plan(model, plan, "mask")

        run_sequential(model, calibration, stats, prune_layer, skip_first=skip)
        return to_scores(per_unit)
