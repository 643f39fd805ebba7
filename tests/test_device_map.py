"""``model.device_map``: a model dispatched by accelerate (its modules behind device hooks) scores, slices,
saves and reloads exactly like the same model on one device.

This machine has no GPU, so every module's device is "cpu"; ``force_hooks`` still puts accelerate's
hooks on every module as a multi-GPU map does, so scoring hooks, slicing and saving run through them.
Everything is compared in float64 so that equality does not depend on the CPU's kernels.
"""

from __future__ import annotations

import pytest
import torch
from accelerate import dispatch_model

from rkuprune import apply_plan, load_pruned, save_pruned
from rkuprune.allocation import allocate
from rkuprune.allocation.allocators import PruningConfig
from rkuprune.errors import ConfigError
from rkuprune.models.adapters import adapter_for
from rkuprune.models.loading import load_model
from tests.conftest import model_config, tiny
from tests.test_scorers import build, synthetic

# The same float64 operations on the same device in the same order: identical up to round-off at most.
FLOAT64_ATOL = 1e-12


def explicit_map(model: torch.nn.Module) -> dict[str, str]:
    """One entry per top-level piece and per decoder layer, as a multi-GPU map would split them."""
    layers = {f"model.layers.{i}": "cpu" for i in range(len(adapter_for(model).layers()))}
    return {"model.embed_tokens": "cpu", **layers, "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


def prune(model: torch.nn.Module, tokenizer: object, scorer: str):
    calibration = synthetic(tokenizer)
    scores = build(scorer).score(model, calibration)
    structures = adapter_for(model).structures()
    plan = allocate(PruningConfig(sparsity=0.4, granularity="kv_group"), scores, structures, base_model="tiny")
    apply_plan(model, plan, "slice")
    return plan


@pytest.mark.parametrize("scorer", ["rku", "wanda_sp", "taylor"])  # activation, sequential, weight-gradient
def test_device_mapped_model_gives_the_same_plan_and_logits(scorer: str, tmp_path) -> None:
    single, mapped = tiny("tiny-qwen2"), tiny("tiny-qwen2")
    for loaded in (single, mapped):
        loaded.model.double()
    dispatch_model(mapped.model, device_map=explicit_map(mapped.model), force_hooks=True)
    assert hasattr(mapped.model.model.layers[0], "_hf_hook")  # really behind accelerate's hooks
    plans = [prune(loaded.model, loaded.tokenizer, scorer) for loaded in (single, mapped)]
    assert plans[0].to_dict() == plans[1].to_dict()
    ids = torch.randint(0, single.model.config.vocab_size, (2, 12))
    with torch.no_grad():
        expected, got = single.model(ids).logits, mapped.model(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=FLOAT64_ATOL)
    reloaded, _ = load_pruned(save_pruned(mapped.model, mapped.tokenizer, plans[1], tmp_path / "m"))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=0, atol=FLOAT64_ATOL)


def test_load_model_dispatches_an_explicit_map() -> None:
    plain = load_model(model_config("tiny-llama"))
    device_map = explicit_map(plain.model)
    mapped = load_model(model_config("tiny-llama", device_map=device_map))
    assert mapped.model.hf_device_map == device_map
    for a, b in zip(plain.model.state_dict().values(), mapped.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("device_map", "message"),
    [("everywhere", "'everywhere' is not one of auto"), ({"model": "cpu", "lm_head": "disk"}, "disk offload cannot")],
)
def test_a_device_map_that_cannot_work_is_one_line(device_map: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_model(model_config("tiny-llama", device_map=device_map))
    assert str(error.value).startswith(f"model.device_map: {message}") and "\n" not in str(error.value)


def test_fast_init_is_seeded_finite_and_keeps_the_shape() -> None:
    fast = [load_model(model_config("tiny-qwen3", init="fast", seed=s)).model for s in (0, 0, 1)]
    default = load_model(model_config("tiny-qwen3")).model
    state = [m.state_dict() for m in fast]
    for name, tensor in default.state_dict().items():
        assert state[0][name].shape == tensor.shape and torch.isfinite(state[0][name]).all()
        assert torch.equal(state[0][name], state[1][name])
    assert not torch.equal(state[0]["model.layers.0.mlp.up_proj.weight"], state[2]["model.layers.0.mlp.up_proj.weight"])
    # buffers (rotary frequencies) are computed, not left uninitialised
    torch.testing.assert_close(fast[0].model.rotary_emb.inv_freq, default.model.rotary_emb.inv_freq)
