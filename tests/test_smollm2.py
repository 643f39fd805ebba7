"""The offline default model, SmolLM2-135M-Instruct (real pretrained weights from the GGUF package)."""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch

from rkuprune import apply_plan
from rkuprune.models.adapters import adapter_for
from rkuprune.models.loading import LoadedModel, load_model
from rkuprune.models.params import count_params
from rkuprune.models.plan import PruningPlan
from tests.conftest import model_config

pytestmark = pytest.mark.slow


@lru_cache(maxsize=1)
def smollm2() -> LoadedModel:
    return load_model(model_config("smollm2-135m"))


def test_loads_as_a_plain_float_model_with_gqa() -> None:
    loaded = smollm2()
    config = loaded.model.config
    assert (config.model_type, config.num_hidden_layers) == ("llama", 30)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert getattr(loaded.model, "hf_quantizer", None) is None
    assert loaded.model.dtype == torch.float32
    assert loaded.tokenizer.chat_template


def test_masked_equals_sliced_on_real_text() -> None:
    loaded = smollm2()
    model = copy.deepcopy(loaded.model).double()  # float64: round-off ~1e-12, whatever the CPU's kernels
    structures = adapter_for(model).structures()
    generator = torch.Generator().manual_seed(0)
    plan = PruningPlan.dense(structures, base_model="smollm2-135m-instruct")
    for layer_plan in plan.layers:
        s = structures[layer_plan.index]
        keep = int(round(s.intermediate_size * 0.7))
        layer_plan.mlp_channels = sorted(torch.randperm(s.intermediate_size, generator=generator)[:keep].tolist())
        dropped = [kv * s.group_size + int(torch.randint(s.group_size, (1,), generator=generator)) for kv in range(3)]
        layer_plan.q_heads = [h for h in range(s.num_q_heads) if h not in dropped]
    text = ["The capital of France is Paris. It is known for", "Natalia sold clips to 48 of her friends in April."]
    loaded.tokenizer.padding_side = "left"
    batch = loaded.tokenizer(text, return_tensors="pt", padding=True)
    masked = apply_plan(copy.deepcopy(model), plan, "mask")
    before = count_params(model)
    sliced = apply_plan(model, plan, "slice")
    keep_tokens = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = masked(**batch).logits[keep_tokens]
        got = sliced(**batch).logits[keep_tokens]
    # The masked model sums the same products as the sliced one plus exact zeros, in another order. In
    # float64 that round-off is ~1e-12 after 30 layers on logits of magnitude ~20 (fp32 gave ~3e-4, which
    # depended on the CPU's kernels); one wrongly sliced head or channel moves them by far more than 1e-8.
    torch.testing.assert_close(got, expected, atol=1e-8, rtol=0)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    after = count_params(sliced)
    assert after.prunable == plan.params(structures) < before.prunable
    assert sliced.config.num_attention_heads == 6
