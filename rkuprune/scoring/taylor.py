"""``taylor``: LLM-Pruner's first-order Taylor importance (Ma et al., NeurIPS 2023; ``TaylorImportance``
with ``taylor=param_first`` and ``group_reduction=sum`` in LLMPruner/pruner/hf_llama_pruner.py).

A unit scores Σ |W ⊙ ḡ| over the weights of its group, ḡ being the gradient of the causal-LM loss
averaged over the loss-mask tokens of the whole calibration set. LLM-Pruner takes one gradient of
one batch (``loss.backward()`` on all examples at once); here ḡ is accumulated **signed** in fp32 over
the micro-batches (each batch's loss scaled by its share of the tokens) and |W ⊙ ḡ| is taken once, so
the score is that same single-batch estimator however the calibration is split.

- MLP channel: its row of gate and up and its column of down (LLM-Pruner's channel group).
- Query head: its head_dim rows of q and columns of o, plus 1/group_size of its KV head's k and v rows.
  LLM-Pruner's attention group (Llama-3 script: root k_proj) is a KV head's k and v rows with the q
  rows and o columns of the query heads reading it; the ``kv_group`` unit (the mean of its query
  heads, allocators.py) is that group's sum divided by group_size, one constant per layer, so a
  layer-local plan is LLM-Pruner's. Biases are not counted (LLM-Pruner scores weights only).

Only the seven prunable projections of each layer get gradients (everything else stays frozen);
ḡ of those seven is kept in fp32 until the pass ends (as ``gisp`` does).

``scope``: ``global`` keeps raw scores (one ranking across layers, LLM-Pruner's ``--global_pruning``);
``layer`` divides each layer's scores by that layer's total, so a layer-wide gradient scale cannot
decide how much each layer loses (heads and channels inside a layer keep their ratio). LLM-Pruner's
own setting (KV groups, the same share per layer, first 4 and last 2 layers kept) is the preset
``scorer=taylor_llmpruner``.

Layer score (depth pruning): Σ |W ⊙ ḡ| over all seven projections of the layer (the sum of its head
and channel scores before any ``scope`` division), the layer-level analogue of LLM-Pruner's group score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rkuprune.data.calibration import CalibrationSet
from rkuprune.errors import check_choice
from rkuprune.models.adapters import ROLES, adapter_for
from rkuprune.scoring.base import SCORERS, LayerScores, Scorer, ScorerConfig, Scores
from rkuprune.scoring.capture import accumulator_bytes, kv_share, unit_saliency, weight_saliency
from rkuprune.scoring.objectives import OBJECTIVES

SCOPES = ("global", "layer")


@dataclass
class TaylorConfig(ScorerConfig):
    name: str = "taylor"
    scope: str = "global"  # global (raw scores, default) | layer (each layer divided by its total)


@SCORERS.register("taylor", TaylorConfig)
class TaylorScorer(Scorer):
    cfg: TaylorConfig
    needs_calibration = True
    scores_layers = True

    def check(self) -> None:
        check_choice("scorer.scope", self.cfg.scope, SCOPES)

    def buffer_bytes(self, model: nn.Module) -> dict[torch.device, int]:
        return accumulator_bytes(model, ROLES)

    def score(self, model: nn.Module, calibration: CalibrationSet | None) -> Scores:
        self.check()
        adapter = adapter_for(model)
        structures = adapter.structures()
        saliency = weight_saliency(model, calibration, OBJECTIVES["lm_loss"], ROLES)
        scores = []
        for s, per_role in zip(structures.layers, saliency, strict=True):
            heads, channels = unit_saliency(s, per_role)
            heads += kv_share(s, per_role)
            scores.append(LayerScores(heads=heads.cpu(), channels=channels.cpu()))
        for layer in scores:
            layer.layer = float(layer.heads.sum() + layer.channels.sum())
        if self.cfg.scope == "layer":
            for layer in scores:
                total = (layer.heads.sum() + layer.channels.sum()).clamp_min(torch.finfo(torch.float32).tiny)
                layer.heads /= total
                layer.channels /= total
        return Scores(scores)
