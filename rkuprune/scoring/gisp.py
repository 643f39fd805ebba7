"""``gisp`` (arXiv 2510.18030) and ``resp`` (arXiv 2512.02185): |W ⊙ ḡ| per unit.

ḡ is the signed mean gradient of the causal-LM loss over the calibration tokens (the loss mask
decides which tokens count: for RESP's self-generated traces, only the generated ones). A query
head sums |W ⊙ ḡ| over its q rows and o columns, and on a model with one query head per KV head (MHA)
over its k and v rows too, as the reference does (``grad_sp_global``: k and v are skipped only under
GQA, where they are shared); an MLP channel over its gate and up rows and its down column. Scores are divided by per-type
constants, 4·head_dim·hidden for heads and 3·intermediate for channels, as the GISP reference does,
so that heads and channels meet in one global ranking.

Loss weighting (``scorer.loss_weighting``): ``per_sample`` (default, as both references: the
loss is averaged over each sample's counted tokens and samples weigh equally) or ``pooled`` (one
mean over every counted token of the set, so long traces weigh more).

Because the mean must be taken before the absolute value, ḡ is accumulated in fp32 (fp64 for a
float64 model) for the five projections that are scored (q, o, gate, up, down) and reduced per
unit once, after the pass (and for k and v on an MHA model).
RESP is this scorer on self-generated calibration with regeneration; its YAML sets those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rkuprune.data.calibration import CalibrationSet
from rkuprune.errors import check_choice
from rkuprune.models.adapters import adapter_for
from rkuprune.scoring.base import SCORERS, LayerScores, Scorer, ScorerConfig, Scores
from rkuprune.scoring.capture import accumulator_bytes, kv_share, unit_saliency, weight_saliency
from rkuprune.scoring.objectives import OBJECTIVES, Objective, PerSampleMean

LOSS_WEIGHTINGS = ("per_sample", "pooled")
SCORED_ROLES = ("q", "o", "gate", "up", "down")  # GISP scores a GQA head by its q rows and o columns


def scored_roles(model: nn.Module) -> tuple[str, ...]:
    """The projections GISP scores: k and v too when every layer has one query head per KV head."""
    mha = all(s.group_size == 1 for s in adapter_for(model).structures().layers)
    return (*SCORED_ROLES, "k", "v") if mha else SCORED_ROLES


@dataclass
class GispConfig(ScorerConfig):
    name: str = "gisp"
    loss_weighting: str = "per_sample"  # per_sample (the references) | pooled (every token weighs the same)


@dataclass
class RespConfig(GispConfig):
    name: str = "resp"


@dataclass
class RespNoRegenConfig(GispConfig):
    name: str = "resp_no_regen"


@SCORERS.register("gisp", GispConfig)
class GispScorer(Scorer):
    needs_calibration = True
    cfg: GispConfig

    def check(self) -> None:
        check_choice("scorer.loss_weighting", self.cfg.loss_weighting, LOSS_WEIGHTINGS)

    def objective(self) -> Objective:
        """The causal-LM loss, averaged per sample or pooled over tokens as configured."""
        loss = OBJECTIVES["lm_loss"]
        return PerSampleMean(loss) if self.cfg.loss_weighting == "per_sample" else loss

    def buffer_bytes(self, model: nn.Module) -> dict[torch.device, int]:
        return accumulator_bytes(model, scored_roles(model))

    def score(self, model: nn.Module, calibration: CalibrationSet | None) -> Scores:
        adapter = adapter_for(model)
        structures = adapter.structures()
        # The objective is already divided by the calibration's sample (or token) count: the sum is the mean.
        saliency = weight_saliency(model, calibration, self.objective(), scored_roles(model))
        layers = []
        for s, per_role in zip(structures.layers, saliency, strict=True):
            heads, channels = unit_saliency(s, per_role)
            if "k" in per_role:  # MHA: a head's own k and v rows
                heads = heads + kv_share(s, per_role)
            layers.append(
                LayerScores(
                    heads=(heads / (4 * s.head_dim * s.hidden_size)).float().cpu(),
                    channels=(channels / (3 * s.intermediate_size)).float().cpu(),
                )
            )
        return Scores(layers)


@SCORERS.register("resp", RespConfig)
class RespScorer(GispScorer):
    """GISP scoring; what makes RESP is its calibration (self-generated, regenerated), set by its YAML."""


SCORERS.register("resp_no_regen", RespNoRegenConfig)(RespScorer)
