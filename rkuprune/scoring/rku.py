"""``rku``: Relative Kinetic Utility, as docs/design.md section 3 defines it for this project.

1. Φ, a label-free objective on the final hidden state h_L (after the final norm), averaged over the
   calibration's real tokens: ``energy`` ½‖h_L‖² (default), or ``lm_loss``, or ``entropy``.
2. Kinetic utility of a unit: the calibration mean of |a · ∂Φ/∂a|, a being the unit's activation (an MLP
   channel's entry of down_proj's input; a query head's head_dim slice of o_proj's input, dotted with
   its gradient). The gradient is backpropagated from the last layer, so it carries the unit's effect
   along every downstream path (the "integral over depth").
3. Normalisation, which puts every unit on the one scale the global ranking compares. Per block
   (layer × {attention, MLP}): ``block_relative`` divides by the block's mean utility over its live
   units, so a block-wide scale cannot decide the cross-layer competition while the order inside the
   block is kept; ``fisher_trace`` divides by sqrt(mean over tokens of ‖∂Φ/∂a_block‖²); ``none`` keeps
   raw utilities. Each of these scales heads and channels apart, so where heads compete with channels
   the per-type scales decide which type loses (docs/scorers.md). Per layer, keeping the raw
   head/channel exchange rate (both are first-order estimates of |ΔΦ|): ``layer_relative`` divides
   both types by one constant, the mean utility of the layer's live channels, so channels get exactly
   their ``block_relative`` scores (a channels-only plan is the same), a head is measured in mean
   channels of its layer, and the ratio of a head's utility to a channel's stays;
   ``per_parameter`` ranks raw utility per parameter of the unit (a head's q rows and o columns, a
   channel's gate, up and down); ``gisp_constants`` divides by GISP's per-type constants,
   4·head_dim·hidden for heads and 3·intermediate for channels. A unit is live unless its columns of
   o_proj / down_proj are all zero: that is how the iterative schedule masks a removed unit
   (models/surgery.py), and such a unit writes nothing, so its zero utility must not drag a mean down
   and inflate the survivors of a heavily pruned block.

The first token of every row is not counted (``skip_first_token``, part of this project's definition:
its activations are the attention sink's outliers).

Every weight stays frozen while scoring: gradients are taken with respect to activations only, so no
weight gradient is ever allocated (what makes RKU affordable for an 8B model on one GPU). The global
selection under the parameter budget is ``pruning.allocation=global``. Every run logs each layer's raw
mean head and channel utility, the exchange rate the per-layer rules keep and the per-block rules drop.

Layer score (depth pruning, ``pruning.granularity=layer``): the sum of the un-normalised utilities of
the layer's heads and channels, i.e. Σ over the layer's units of mean |a · ∂Φ/∂a|. Normalisation is not
applied: ``block_relative`` would make every block sum to its unit count and erase the comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from rkuprune.data.calibration import CalibrationSet
from rkuprune.errors import check_choice
from rkuprune.models.adapters import adapter_for
from rkuprune.models.structures import LayerStructure
from rkuprune.scoring.base import SCORERS, Scorer, ScorerConfig, Scores
from rkuprune.scoring.capture import Key, Reducer, Site, run_calibration, sites, to_scores
from rkuprune.scoring.objectives import OBJECTIVES

log = logging.getLogger(__name__)
BLOCK_NORMALISATIONS = ("block_relative", "fisher_trace", "none")  # each (layer, type) block on its own
LAYER_NORMALISATIONS = ("layer_relative", "per_parameter", "gisp_constants")  # a layer's two types together
NORMALISATIONS = LAYER_NORMALISATIONS + BLOCK_NORMALISATIONS


@dataclass
class RKUConfig(ScorerConfig):
    """RKU's choices; the defaults are the project's definition (docs/design.md section 3)."""

    name: str = "rku"
    objective: str = "energy"  # energy (½‖h_L‖², default) | lm_loss (causal-LM loss) | entropy (own next-token)
    normalisation: str = "layer_relative"  # see NORMALISATIONS and the module docstring (as conf/scorer/rku.yaml)
    skip_first_token: bool = True  # the first token of a row is the attention sink's, not the unit's


@dataclass
class KineticUtility(Reducer):
    """Per site: Σ over tokens of |a · ∂Φ/∂a| per unit, Σ of ‖∂Φ/∂a_block‖², and the token count."""

    utility: dict[Key, torch.Tensor] = field(default_factory=dict)
    grad_sq: dict[Key, torch.Tensor] = field(default_factory=dict)
    count: dict[Key, int] = field(default_factory=dict)

    def backward(self, site: Site, acts: torch.Tensor, grads: torch.Tensor) -> None:
        key = site.key
        utility = site.units(acts * grads).sum(dim=-1).abs().sum(dim=0)
        grad_sq = grads.pow(2).sum()
        if key in self.utility:
            self.utility[key] += utility
            self.grad_sq[key] += grad_sq
            self.count[key] += acts.shape[0]
        else:
            self.utility[key], self.grad_sq[key], self.count[key] = utility, grad_sq, acts.shape[0]

    def mean_utility(self, key: Key) -> torch.Tensor:
        return self.utility[key] / self.count[key]

    def mean_grad_sq(self, key: Key) -> torch.Tensor:
        return self.grad_sq[key] / self.count[key]


def live_units(site: Site) -> torch.Tensor:
    """Units whose output-projection columns are not all zero (a masked unit's are: it writes nothing)."""
    return site.units(site.linear.weight.detach().ne(0).any(dim=0)).any(dim=-1).cpu()


def normalise(
    utility: torch.Tensor, mean_grad_sq: torch.Tensor, method: str, live: torch.Tensor | None = None
) -> torch.Tensor:
    """Scale one block's utilities as ``method`` says; the block mean is over the ``live`` units (default all).

    A zero denominator leaves the zeros as they are.
    """
    if method == "block_relative":
        return utility / live_mean(utility, live)
    if method == "fisher_trace":
        return utility / mean_grad_sq.sqrt().clamp_min(torch.finfo(torch.float32).tiny)
    return utility


def live_mean(utility: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
    """The mean utility of a block's ``live`` units (all when none is marked), never below fp32's tiniest."""
    counted = utility if live is None or not live.any() else utility[live.to(utility.device)]
    return counted.mean().clamp_min(torch.finfo(torch.float32).tiny)


def normalise_layer(
    s: LayerStructure,
    heads: torch.Tensor,
    channels: torch.Tensor,
    method: str,
    live_channels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale one layer's head and channel utilities together as ``method`` (a per-layer rule) says."""
    if method == "per_parameter":
        return heads / s.q_head_cost, channels / s.channel_cost
    if method == "gisp_constants":
        return heads / (4 * s.head_dim * s.hidden_size), channels / (3 * s.intermediate_size)
    scale = live_mean(channels, live_channels)  # layer_relative: heads measured in the layer's mean channel
    return heads / scale, channels / scale


def log_exchange_rates(s: LayerStructure, heads: torch.Tensor, channels: torch.Tensor) -> None:
    """The measured head/channel exchange rate of a layer: what the per-block rules discard."""
    head, channel = float(heads.mean()), float(channels.mean())
    ratio = head / channel if channel > 0 else float("inf")
    log.info(
        "rku layer %d: mean raw utility head %.4g, channel %.4g: a head carries %.1f channels' utility and costs "
        "%.1f channels' parameters (%.2f per parameter)",
        s.index,
        head,
        channel,
        ratio,
        s.q_head_cost / s.channel_cost,
        ratio * s.channel_cost / s.q_head_cost,
    )


@SCORERS.register("rku", RKUConfig)
class RKUScorer(Scorer):
    cfg: RKUConfig
    needs_calibration = True
    scores_layers = True

    def check(self) -> None:
        check_choice("scorer.objective", self.cfg.objective, OBJECTIVES)
        check_choice("scorer.normalisation", self.cfg.normalisation, NORMALISATIONS)

    def score(self, model: nn.Module, calibration: CalibrationSet | None) -> Scores:
        self.check()
        reducer = KineticUtility()
        objective = OBJECTIVES[self.cfg.objective]
        run_calibration(model, calibration, reducer=reducer, objective=objective, skip_first=self.cfg.skip_first_token)
        method = self.cfg.normalisation
        live = {site.key: live_units(site) for site in sites(model)}
        per_unit = {}
        for s in adapter_for(model).structures().layers:
            attention, mlp = (s.index, "attention"), (s.index, "mlp")
            heads, channels = reducer.mean_utility(attention), reducer.mean_utility(mlp)
            log_exchange_rates(s, heads, channels)
            if method in LAYER_NORMALISATIONS:
                per_unit[attention], per_unit[mlp] = normalise_layer(s, heads, channels, method, live[mlp])
            else:
                for key, utility in ((attention, heads), (mlp, channels)):
                    per_unit[key] = normalise(utility, reducer.mean_grad_sq(key), method, live[key])
        scores = to_scores(per_unit)
        for index, layer in enumerate(scores.layers):  # the sum of its blocks' un-normalised utilities
            layer.layer = sum(float(reducer.mean_utility((index, block)).sum()) for block in ("attention", "mlp"))
        return scores
