"""The shared capture: which tokens count, exact statistics under any micro-batching, clean hooks."""

from __future__ import annotations

import pytest
import torch

from rkuprune.data.calibration import CalibrationSet
from rkuprune.errors import ConfigError
from rkuprune.models.adapters import adapter_for
from rkuprune.scoring.capture import FeatureStats, run_calibration, sites, token_mask
from rkuprune.scoring.objectives import OBJECTIVES
from rkuprune.scoring.rku import KineticUtility
from tests.conftest import in_float64, tiny


def padded_calibration(batch_size: int, vocab: int = 259, seed: int = 0) -> CalibrationSet:
    """Six rows of up to 16 tokens: right padding, one left-padded row, a loss mask with holes."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (6, 16), generator=generator)
    attention = torch.ones(6, 16, dtype=torch.long)
    attention[1, 9:] = 0
    attention[3, 5:] = 0
    attention[4, :4] = 0  # left padding: the first real token is at position 4
    input_ids[attention == 0] = 0
    loss = attention.bool().clone()
    loss[2, :6] = False
    return CalibrationSet(input_ids, attention, loss, batch_size)


def expected_mask(calibration: CalibrationSet) -> torch.Tensor:
    """The counted tokens, by explicit loops: real, in the loss mask, not the row's first real token."""
    mask = torch.zeros_like(calibration.loss_mask)
    for r in range(len(calibration)):
        real = [t for t in range(calibration.input_ids.shape[1]) if calibration.attention_mask[r, t]]
        for t in real[1:]:
            mask[r, t] = bool(calibration.loss_mask[r, t])
    return mask


def test_token_mask_drops_padding_first_tokens_and_loss_holes() -> None:
    calibration = padded_calibration(batch_size=6)
    batch = next(calibration.batches())
    mask = token_mask(batch)
    assert torch.equal(mask, expected_mask(calibration))
    assert not mask[4, 4] and mask[4, 5] and not mask[2, 5] and mask[2, 6]
    every = token_mask(batch, skip_first=False)  # FLAP and Wanda-sp count the first token too
    assert torch.equal(every, calibration.attention_mask.bool() & calibration.loss_mask)
    assert every[4, 4] and every[0, 0] and not every[2, 0]


def captured_inputs(model: torch.nn.Module, calibration: CalibrationSet) -> dict[tuple[int, str], torch.Tensor]:
    """o_proj / down_proj inputs of the counted tokens, with plain forward hooks and one unbatched forward."""
    adapter = adapter_for(model)
    store: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(adapter.layers()):
        for block, linear in (
            ("attention", adapter.attention(layer).o.linear),
            ("mlp", adapter.mlp(layer).down.linear),
        ):
            handles.append(
                linear.register_forward_hook(lambda m, a, o, key=(i, block): store.__setitem__(key, a[0].detach()))
            )
    with torch.no_grad():
        model(input_ids=calibration.input_ids, attention_mask=calibration.attention_mask)
    for handle in handles:
        handle.remove()
    mask = expected_mask(calibration)
    return {key: x[mask].double() for key, x in store.items()}


@pytest.mark.parametrize("batch_size", [1, 4, 6])
def test_feature_statistics_are_exact_under_any_micro_batching(batch_size: int) -> None:
    model = tiny("tiny-qwen2").model.double()  # float64 end to end: only summation order differs
    calibration = padded_calibration(batch_size)
    stats = FeatureStats()
    run_calibration(model, calibration, reducer=stats)
    inputs = captured_inputs(model, calibration)
    for site in sites(model):
        x = inputs[site.key]
        assert stats.count[site.key] == x.shape[0] == int(expected_mask(calibration).sum())
        # Chan's merge and a one-shot reduction differ only by float64 rounding of ~80 terms: 1e-12 relative.
        torch.testing.assert_close(stats.mean(site), x.mean(0), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(stats.variance(site), x.var(0), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(stats.squared_norm(site), x.pow(2).sum(0), rtol=1e-12, atol=1e-15)


def test_gradient_reductions_do_not_depend_on_micro_batching() -> None:
    model = tiny("tiny-llama").model.double()
    results = []
    for batch_size in (1, 6):
        reducer = KineticUtility()
        run_calibration(model, padded_calibration(batch_size), reducer=reducer, objective=OBJECTIVES["energy"])
        results.append(reducer)
    one, six = results
    for key in one.utility:
        torch.testing.assert_close(one.mean_utility(key), six.mean_utility(key), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(one.mean_grad_sq(key), six.mean_grad_sq(key), rtol=1e-12, atol=1e-15)


def test_hooks_are_removed_and_requires_grad_flags_restored() -> None:
    model = tiny("tiny-qwen3").model
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    run_calibration(model, padded_calibration(3), reducer=KineticUtility(), objective=OBJECTIVES["entropy"])
    run_calibration(model, padded_calibration(3), reducer=FeatureStats())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_weight_gradients_stream_out_one_at_a_time_and_sum_to_the_full_gradient() -> None:
    """Each weight's gradient is handed over as backward reaches it (last layer first) and released, so
    no two are ever held together; summed over micro-batches they equal one gradient of the whole set."""
    model = in_float64(tiny("tiny-qwen2").model)
    weights = [layer.mlp.down_proj.weight for layer in model.model.layers]
    stale = torch.full_like(weights[0], 7.0)
    weights[0].grad = stale  # a gradient the caller held before the pass: untouched by it
    totals = [torch.zeros_like(w) for w in weights]
    order, held = [], []

    def on_weight_grad(index: int, grad: torch.Tensor) -> None:
        order.append(index)
        held.append(sum(w.grad is not None for w in weights))
        totals[index] += grad

    objective = OBJECTIVES["lm_loss"]
    run_calibration(model, padded_calibration(2), objective=objective, weights=weights, on_weight_grad=on_weight_grad)
    last_first = list(reversed(range(len(weights))))
    assert order == last_first * 3 and held == [1] * len(order)  # three micro-batches, one gradient at a time
    assert weights[0].grad is stale and all(w.grad is None for w in weights[1:])

    (batch,) = padded_calibration(6).batches(torch.device("cpu"))
    hidden = adapter_for(model).decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    full = torch.autograd.grad(
        objective.total(model, hidden.last_hidden_state, batch) / objective.count(batch), weights
    )
    for total, expected in zip(totals, full, strict=True):
        torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-15)  # float64: summation order only


def test_a_calibration_with_no_countable_token_is_an_error() -> None:
    ids = torch.full((4, 1), 5)
    ones = torch.ones_like(ids)
    single_tokens = CalibrationSet(ids, ones, ones.bool(), batch_size=2)
    with pytest.raises(ConfigError, match="calibration.num_tokens"):
        run_calibration(tiny("tiny-llama").model, single_tokens, reducer=FeatureStats())
