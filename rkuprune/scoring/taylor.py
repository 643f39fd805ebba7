"""``taylor``: LLM-Pruner's first-order Taylor importance (Ma et al., NeurIPS 2023, ``param_first``).

A unit scores Σ |W ⊙ ∇_W L| over the weights of its group, L being the causal-LM loss on the loss-mask
tokens of the calibration set:

- MLP channel: its row of gate and up and its column of down (LLM-Pruner's channel group).
- Query head: its head_dim rows of q and columns of o, plus 1/group_size of its KV head's k and v rows.
  LLM-Pruner's head group is q, k and v rows with o columns; under GQA a KV head is shared, so its
  share is split evenly over the query heads that read it, and the ``kv_group`` unit (the sum of its
  query heads) is exactly LLM-Pruner's group. Biases are not counted (LLM-Pruner scores weights only).

Only the seven prunable projections of each layer get gradients (everything else stays frozen), and
gradients are returned by autograd per micro-batch, reduced to per-unit sums at once and dropped, so
no full-size gradient outlives a batch. With one micro-batch this is LLM-Pruner's score exactly; with
several it is the sum of the per-batch scores.

``scope``: ``global`` keeps raw scores (one ranking across layers, LLM-Pruner's global pruning);
``layer`` divides each layer's scores by that layer's total, so a layer-wide gradient scale cannot
decide how much each layer loses (heads and channels inside a layer keep their ratio).

Layer score (depth pruning): Σ |W ⊙ ∇_W L| over all seven projections of the layer (the sum of its head
and channel scores before any ``scope`` division), the layer-level analogue of LLM-Pruner's group score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rkuprune.data.calibration import CalibrationSet
from rkuprune.errors import ConfigError
from rkuprune.models.adapters import adapter_for
from rkuprune.scoring.base import SCORERS, LayerScores, Scorer, ScorerConfig, Scores
from rkuprune.scoring.capture import run_calibration
from rkuprune.scoring.objectives import OBJECTIVES

SCOPES = ("global", "layer")


@dataclass
class TaylorConfig(ScorerConfig):
    name: str = "taylor"
    scope: str = "global"  # global (raw scores, default) | layer (each layer divided by its total)


def _salience(weight: nn.Parameter, grad: torch.Tensor) -> torch.Tensor:
    return (weight.detach().float() * grad.float()).abs()


@SCORERS.register("taylor", TaylorConfig)
class TaylorScorer(Scorer):
    cfg: TaylorConfig
    needs_calibration = True
    scores_layers = True

    def check(self) -> None:
        if self.cfg.scope not in SCOPES:
            raise ConfigError("scorer.scope", f"'{self.cfg.scope}' is not one of {', '.join(SCOPES)}")

    def score(self, model: nn.Module, calibration: CalibrationSet | None) -> Scores:
        self.check()
        adapter = adapter_for(model)
        structures = adapter.structures()
        linears = []
        for layer in adapter.layers():
            attn, mlp = adapter.attention(layer), adapter.mlp(layer)
            linears.append((attn.q, attn.k, attn.v, attn.o, mlp.gate, mlp.up, mlp.down))
        weights = [linear.weight for group in linears for linear in group]
        scores = [
            LayerScores(heads=torch.zeros(s.num_q_heads), channels=torch.zeros(s.intermediate_size))
            for s in structures.layers
        ]

        def accumulate(grads: tuple[torch.Tensor, ...]) -> None:
            for index, (group, s) in enumerate(zip(linears, structures.layers, strict=True)):
                layer_grads = grads[len(group) * index : len(group) * (index + 1)]
                q, k, v, o, gate, up, down = (
                    _salience(linear.weight, grad) for linear, grad in zip(group, layer_grads, strict=True)
                )
                heads = q.view(s.num_q_heads, -1).sum(dim=1) + o.view(-1, s.num_q_heads, s.head_dim).sum(dim=(0, 2))
                kv = (k + v).view(s.num_kv_heads, -1).sum(dim=1)
                heads += kv.repeat_interleave(s.group_size) / s.group_size
                channels = gate.sum(dim=1) + up.sum(dim=1) + down.sum(dim=0)
                scores[index].heads += heads.cpu()
                scores[index].channels += channels.cpu()

        run_calibration(
            model, calibration, objective=OBJECTIVES["lm_loss"], weights=weights, on_weight_grads=accumulate
        )
        for layer in scores:
            layer.layer = float(layer.heads.sum() + layer.channels.sum())
        if self.cfg.scope == "layer":
            for layer in scores:
                total = (layer.heads.sum() + layer.channels.sum()).clamp_min(torch.finfo(torch.float32).tiny)
                layer.heads /= total
                layer.channels /= total
        return Scores(scores)
