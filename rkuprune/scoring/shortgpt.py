"""``shortgpt``: ShortGPT's Block Influence (Men et al., 2024, "ShortGPT: Layers in Large Language
Models are More Redundant Than You Expect").

BI of decoder layer i = 1 − E[cos(x_i, x_{i+1})], x_i being the hidden state entering the layer and
x_{i+1} the one leaving it (residual stream included), the expectation taken over the calibration's
counted tokens (``capture.token_mask``: real, in the loss mask, not a row's first token). A layer that
barely turns the hidden state scores low and is removed first (``pruning.granularity=layer``).

Forward only, no gradient; per layer only a running sum and a count are kept. ShortGPT ranks layers,
not units: the scores carry the layer value, and the pipeline refuses a width granularity with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rkuprune.data.calibration import CalibrationSet
from rkuprune.errors import ConfigError
from rkuprune.models.adapters import adapter_for
from rkuprune.precision import at_least_fp32
from rkuprune.scoring.base import SCORERS, LayerScores, Scorer, ScorerConfig, Scores
from rkuprune.scoring.capture import frozen, token_mask


@dataclass
class ShortGPTConfig(ScorerConfig):
    name: str = "shortgpt"


def _hidden(value: Any) -> torch.Tensor:
    """A decoder layer's hidden state, whether it returns a tensor or a tuple led by one."""
    return value[0] if isinstance(value, tuple) else value


def block_influence(model: nn.Module, calibration: CalibrationSet) -> list[float]:
    """1 − mean cosine similarity between each layer's input and output hidden states."""
    adapter = adapter_for(model)
    layers = adapter.layers()
    sums = [0.0] * len(layers)
    count = 0
    mask = torch.zeros(0, dtype=torch.bool)

    def hook(index: int):  # noqa: ANN202 - a forward hook factory
        def record(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
            x_in = _hidden(args[0] if args else kwargs["hidden_states"])[mask]
            x_out = _hidden(output)[mask]
            cos = nn.functional.cosine_similarity(at_least_fp32(x_in), at_least_fp32(x_out), dim=-1)
            sums[index] += float(cos.sum())

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    device = model.get_input_embeddings().weight.device
    try:
        with frozen(model), torch.no_grad():
            for batch in calibration.batches(device):
                mask = token_mask(batch)
                count += int(mask.sum())
                adapter.decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise ConfigError(
            "calibration.num_tokens", "no calibration token counts (each row is a single token?); raise it"
        )
    return [1.0 - total / count for total in sums]


@SCORERS.register("shortgpt", ShortGPTConfig)
class ShortGPTScorer(Scorer):
    needs_calibration = True
    scores_layers = True
    scores_units = False

    def score(self, model: nn.Module, calibration: CalibrationSet | None) -> Scores:
        if calibration is None:
            raise ConfigError("scorer", "shortgpt needs a calibration set; the pipeline built none")
        influence = block_influence(model, calibration)
        # Heads and channels get their layer's value: no width ranking, only shapes that fit the model.
        return Scores(
            [
                LayerScores(
                    heads=torch.full((s.num_q_heads,), bi), channels=torch.full((s.intermediate_size,), bi), layer=bi
                )
                for s, bi in zip(adapter_for(model).structures().layers, influence, strict=True)
            ]
        )
