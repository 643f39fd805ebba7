"""``rku``: Relative Kinetic Utility, as DESIGN.md section 3 defines it for this project.

1. Φ, a label-free objective on the final hidden state h_L (after the final norm), averaged over the
   calibration's real tokens: ``energy`` ½‖h_L‖² (default), or ``lm_loss``, or ``entropy``.
2. Kinetic utility of a unit: the calibration mean of |a · ∂Φ/∂a|, a being the unit's activation (an MLP
   channel's entry of down_proj's input; a query head's head_dim slice of o_proj's input, dotted with
   its gradient). The gradient is backpropagated from the last layer, so it carries the unit's effect
   along every downstream path (the "integral over depth").
3. Relative normalisation per block (layer × {attention, MLP}): ``block_relative`` (default) divides by
   the block's mean utility over its live units, so a block-wide scale cannot decide the cross-layer
   competition while the order inside the block is kept; ``fisher_trace`` divides by sqrt(mean over
   tokens of ‖∂Φ/∂a_block‖²); ``none`` keeps raw utilities (ablation). A unit is live unless its
   columns of o_proj / down_proj are all zero: that is how the iterative schedule masks a removed unit
   (models/surgery.py), and such a unit writes nothing, so its zero utility must not drag the block
   mean down and inflate the survivors of a heavily pruned block.

The first token of every row is not counted (``skip_first_token``, part of this project's definition:
its activations are the attention sink's outliers).

Every weight stays frozen while scoring: gradients are taken with respect to activations only, so no
weight gradient is ever allocated (what makes RKU affordable for an 8B model on one GPU). The global
selection under the parameter budget is ``pruning.allocation=global``.

Layer score (depth pruning, ``pruning.granularity=layer``): the sum of the un-normalised utilities of
the layer's heads and channels, i.e. Σ over the layer's units of mean |a · ∂Φ/∂a|. Normalisation is not
applied: ``block_relative`` would make every block sum to its unit count and erase the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rkuprune.data.calibration import CalibrationSet
from rkuprune.errors import check_choice
from rkuprune.scoring.base import SCORERS, Scorer, ScorerConfig, Scores
from rkuprune.scoring.capture import Key, Reducer, Site, run_calibration, sites, to_scores
from rkuprune.scoring.objectives import OBJECTIVES

NORMALISATIONS = ("block_relative", "fisher_trace", "none")


@dataclass
class RKUConfig(ScorerConfig):
    """RKU's choices; the defaults are the project's definition (DESIGN.md section 3)."""

    name: str = "rku"
    objective: str = "energy"  # energy (½‖h_L‖², default) | lm_loss (causal-LM loss) | entropy (own next-token)
    normalisation: str = "block_relative"  # block_relative (default) | fisher_trace | none
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
    tiny = torch.finfo(torch.float32).tiny
    if method == "block_relative":
        counted = utility if live is None or not live.any() else utility[live.to(utility.device)]
        return utility / counted.mean().clamp_min(tiny)
    if method == "fisher_trace":
        return utility / mean_grad_sq.sqrt().clamp_min(tiny)
    return utility


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
        per_unit = {
            site.key: normalise(
                reducer.mean_utility(site.key), reducer.mean_grad_sq(site.key), self.cfg.normalisation, live_units(site)
            )
            for site in sites(model)
        }
        scores = to_scores(per_unit)
        for index, layer in enumerate(scores.layers):  # the sum of its blocks' un-normalised utilities
            layer.layer = sum(float(reducer.mean_utility((index, block)).sum()) for block in ("attention", "mlp"))
        return scores
