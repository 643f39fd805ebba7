"""Structural surgery: masked and sliced models agree, shrink as planned, save and reload exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from rkuprune import apply_plan, load_pruned, save_pruned
from rkuprune.errors import CheckpointError, PlanError
from rkuprune.models.adapters import adapter_for
from rkuprune.models.params import count_params, sparsity
from rkuprune.models.plan import PruningPlan
from tests.conftest import TINY_ARCHS, in_float64, random_plan, tiny

GRANULARITIES = ("q_head", "kv_group", "none")
# Masked and sliced models sum the same products, the masked one with extra exact zeros, in a different
# order: float64 round-off on these logits (|x| < 10, a few hundred terms per dot product, 4 layers) is
# ~1e-13; a wrong slice changes them by ~1e-2.
FLOAT64_ATOL = 1e-10


def padded_batch(tokenizer: object) -> dict[str, torch.Tensor]:
    texts = ["The quick brown fox jumps over the lazy dog.", "2 + 2 = 4"]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True)


def masked_and_sliced(name: str, granularity: str, seed: int = 0):
    """In float64, so that masked and sliced agree to round-off (~1e-15) on any CPU's kernels."""
    loaded = tiny(name)
    in_float64(loaded.model)
    plan = random_plan(adapter_for(loaded.model).structures(), granularity, seed=seed)
    masked = apply_plan(copy.deepcopy(loaded.model), plan, "mask")
    sliced = apply_plan(loaded.model, plan, "slice")
    return masked, sliced, plan, loaded.tokenizer


def independent_linear_count(model: torch.nn.Module) -> int:
    """Count decoder-layer linear parameters by walking module names, not through the adapter."""
    total = 0
    for name, module in model.named_modules():
        if ".layers." in name and isinstance(module, torch.nn.Linear):
            total += module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
    return total


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("name", TINY_ARCHS)
def test_sliced_logits_equal_masked_logits(name: str, granularity: str) -> None:
    masked, sliced, plan, tokenizer = masked_and_sliced(name, granularity)
    batch = padded_batch(tokenizer)
    with torch.no_grad():
        expected = masked(**batch).logits
        got = sliced(**batch).logits
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=FLOAT64_ATOL, rtol=0)
    assert count_params(sliced).prunable < count_params(masked).prunable


@pytest.mark.parametrize("granularity", ("q_head", "kv_group"))
@pytest.mark.parametrize("name", TINY_ARCHS)
def test_greedy_generation_with_cache_matches(name: str, granularity: str) -> None:
    masked, sliced, _, tokenizer = masked_and_sliced(name, granularity, seed=1)
    batch = padded_batch(tokenizer)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id, use_cache=True)
    with torch.no_grad():
        expected = masked.generate(**batch, **kwargs)
        got = sliced.generate(**batch, **kwargs)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("granularity", ("q_head", "kv_group"))
@pytest.mark.parametrize("name", TINY_ARCHS)
def test_measured_sparsity_matches_independent_count(name: str, granularity: str) -> None:
    loaded = tiny(name)
    structures = adapter_for(loaded.model).structures()
    before = count_params(loaded.model)
    assert before.prunable == independent_linear_count(loaded.model) == structures.prunable_params
    plan = random_plan(structures, granularity, seed=2)
    apply_plan(loaded.model, plan, "slice")
    after = count_params(loaded.model)
    assert after.prunable == independent_linear_count(loaded.model) == plan.params(structures)
    assert sparsity(before, after) == pytest.approx(plan.sparsity(structures), abs=1e-12)
    assert before.total - after.total == before.prunable - after.prunable


@pytest.mark.parametrize("granularity", ("q_head", "kv_group"))
@pytest.mark.parametrize("name", TINY_ARCHS)
def test_save_then_load_gives_identical_logits(name: str, granularity: str, tmp_path) -> None:
    _, sliced, plan, tokenizer = masked_and_sliced(name, granularity, seed=3)
    save_pruned(sliced, tokenizer, plan, tmp_path / "pruned")
    reloaded, reloaded_tokenizer = load_pruned(tmp_path / "pruned")
    in_float64(reloaded)
    batch = padded_batch(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, sliced(**batch).logits, atol=0, rtol=0)
    assert reloaded_tokenizer("2 + 2").input_ids == tokenizer("2 + 2").input_ids
    assert PruningPlan.load(tmp_path / "pruned" / "pruning_plan.json").layers == plan.layers


@pytest.mark.parametrize("name", TINY_ARCHS)
def test_uniform_plan_loads_with_plain_from_pretrained(name: str, tmp_path) -> None:
    loaded = tiny(name)
    structures = adapter_for(loaded.model).structures()
    plan = PruningPlan.dense(structures, base_model=name)
    for layer_plan in plan.layers:
        layer_plan.q_heads = [h for h in layer_plan.q_heads if h % 4 < 2]  # 2 of 4 per group
        layer_plan.mlp_channels = layer_plan.mlp_channels[::2]
    assert plan.is_uniform()
    apply_plan(loaded.model, plan, "slice")
    save_pruned(loaded.model, loaded.tokenizer, plan, tmp_path / "pruned")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    batch = padded_batch(loaded.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, loaded.model(**batch).logits, atol=1e-6, rtol=1e-6)


def test_uniform_llama_plan_with_indivisible_heads_still_saves_and_loads(tmp_path) -> None:
    """LlamaConfig refuses hidden % heads != 0, so the top-level fields stay at base values."""
    loaded = tiny("tiny-llama")
    plan = PruningPlan.dense(adapter_for(loaded.model).structures(), base_model="tiny-llama")
    for layer_plan in plan.layers:
        layer_plan.q_heads = [h for h in layer_plan.q_heads if h % 4 != 3]  # 6 heads: 64 % 6 != 0
    apply_plan(loaded.model, plan, "slice")
    assert loaded.model.config.num_attention_heads == 8
    save_pruned(loaded.model, loaded.tokenizer, plan, tmp_path / "pruned")
    reloaded, _ = load_pruned(tmp_path / "pruned")
    batch = padded_batch(loaded.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, loaded.model(**batch).logits, atol=0, rtol=0)


def test_load_refuses_weights_that_do_not_match_the_plan(tmp_path) -> None:
    _, sliced, plan, tokenizer = masked_and_sliced("tiny-llama", "q_head")
    folder = save_pruned(sliced, tokenizer, plan, tmp_path / "pruned")
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    weights[name] = weights[name][:, :-1].contiguous()
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        load_pruned(folder)


def test_removed_layer_masks_to_identity_and_slices_away(tmp_path) -> None:
    loaded = tiny("tiny-qwen3")
    in_float64(loaded.model)
    structures = adapter_for(loaded.model).structures()
    plan = random_plan(structures, "q_head", seed=4)
    plan.layers = [lp for lp in plan.layers if lp.index != 2]
    plan.removed_layers = [2]
    masked = apply_plan(copy.deepcopy(loaded.model), plan, "mask")
    sliced = apply_plan(loaded.model, plan, "slice")
    assert len(adapter_for(sliced).layers()) == 3
    batch = padded_batch(loaded.tokenizer)
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(
            sliced(**batch).logits[keep], masked(**batch).logits[keep], atol=FLOAT64_ATOL, rtol=0
        )
    save_pruned(sliced, loaded.tokenizer, plan, tmp_path / "pruned")
    reloaded = in_float64(load_pruned(tmp_path / "pruned")[0])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, sliced(**batch).logits, atol=0, rtol=0)


def _plan_for(name: str) -> tuple[PruningPlan, object]:
    structures = adapter_for(tiny(name).model).structures()
    return PruningPlan.dense(structures, base_model=name), structures


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: setattr(p.layers[1], "mlp_channels", [0, 96]), r"layer 1: mlp_channels index 96 is out of range"),
        (lambda p: setattr(p.layers[2], "mlp_channels", []), r"layer 2: no MLP channel"),
        (
            lambda p: (setattr(p.layers[3], "q_heads", []), setattr(p.layers[3], "kv_heads", [])),
            r"layer 3: no attention",
        ),
        (lambda p: setattr(p.layers[0], "q_heads", [0, 1, 2, 4]), r"layer 0: query heads are not kept evenly"),
        (lambda p: setattr(p.layers[1], "kv_heads", [1]), r"layer 1: query head 0 is kept but its KV head 0"),
        (lambda p: setattr(p.layers[2], "q_heads", [3, 1]), r"layer 2: q_heads must be sorted"),
        (lambda p: p.removed_layers.append(7), r"removed layer 7 is out of range"),
    ],
)
def test_bad_plans_name_the_layer(mutate, message: str) -> None:
    plan, structures = _plan_for("tiny-llama")
    mutate(plan)
    with pytest.raises(PlanError, match=message):
        plan.validate(structures)


def test_plan_round_trips_through_json() -> None:
    plan, structures = _plan_for("tiny-qwen2")
    plan = random_plan(structures, "q_head", seed=5)
    plan.measured_sparsity = 0.25
    assert PruningPlan.from_dict(plan.to_dict()) == plan
