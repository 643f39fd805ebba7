"""Calibration-based scorers: RKU, wanda_sp, flap and taylor against hand computations, their invariances,
FLAP's bias compensation through slicing and save/load, determinism, every architecture and bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from rkuprune import apply_plan, load_pruned, save_pruned
from rkuprune.allocation import allocate
from rkuprune.allocation.allocators import PruningConfig
from rkuprune.data.calibration import CALIBRATION_SOURCES, CalibrationConfig, CalibrationSet
from rkuprune.data.sources import DataConfig
from rkuprune.errors import ConfigError
from rkuprune.models.adapters import DecoderAdapter, adapter_for
from rkuprune.models.io import read_config
from rkuprune.models.loading import LoadedModel, load_model
from rkuprune.models.plan import PruningPlan
from rkuprune.models.structures import LayerStructure, Structures
from rkuprune.models.surgery import head_rows
from rkuprune.scoring import SCORERS, Scorer
from rkuprune.scoring.base import LayerScores, Scores
from rkuprune.scoring.capture import Site, run_calibration, sites, to_scores
from rkuprune.scoring.flap import FLAPConfig, FLAPScorer
from rkuprune.scoring.objectives import OBJECTIVES
from rkuprune.scoring.rku import KineticUtility, RKUConfig, RKUScorer, live_units, normalise, normalise_layer
from tests.conftest import TINY_ARCHS, model_config, tiny
from tests.test_capture import expected_mask, padded_calibration

CALIBRATED = ("rku", "wanda_sp", "flap", "taylor")
GRANULARITIES = ("q_head", "kv_group", "none")


def build(name: str, **fields: object) -> Scorer:
    """A scorer bound to a uniform 30% plan (what a sequential wanda_sp prunes while it scores)."""
    scorer = SCORERS.build(SCORERS.get(name).config(**fields))
    scorer.bind(PruningConfig(sparsity=0.3, allocation="uniform"))
    return scorer


def synthetic(tokenizer: object, seed: int = 0) -> CalibrationSet:
    cfg = CalibrationConfig(name="synthetic", num_tokens=256, seqlen=64, batch_size=4, seed=seed)
    return CALIBRATION_SOURCES.build(cfg).build(tokenizer, DataConfig())


def one_layer(name: str, **arch: object) -> LoadedModel:
    base = model_config(name).arch
    return load_model(model_config(name, arch={**base, "num_hidden_layers": 1, **arch}))


def unit_columns(site_block: str, unit: int, head_dim: int) -> slice:
    return slice(unit * head_dim, (unit + 1) * head_dim) if site_block == "attention" else slice(unit, unit + 1)


# --- RKU ------------------------------------------------------------------------------------------


def hand_objective(model: nn.Module, calibration: CalibrationSet, objective: str, store: dict) -> torch.Tensor:
    """Φ over the whole calibration set in one forward, written out directly (HF's own loss for lm_loss)."""
    adapter = adapter_for(model)
    handle = adapter.final_norm().register_forward_hook(lambda m, a, o: store.__setitem__("h_L", o))
    ids, attention = calibration.input_ids, calibration.attention_mask
    real = attention.bool() & calibration.loss_mask
    if objective == "lm_loss":
        after_real = torch.zeros_like(real)
        after_real[:, 1:] = attention[:, :-1].bool()
        labels = ids.masked_fill(~(real & after_real), -100)
        phi = model(input_ids=ids, attention_mask=attention, labels=labels).loss
    else:
        logits = model(input_ids=ids, attention_mask=attention).logits
        if objective == "energy":
            phi = 0.5 * store["h_L"].pow(2).sum(-1)[real].mean()
        else:
            p = torch.softmax(logits, dim=-1)
            phi = -(p * torch.log(p)).sum(-1)[real].mean()
    handle.remove()
    return phi


@pytest.mark.parametrize("objective", ["energy", "lm_loss", "entropy"])
def test_rku_equals_explicit_autograd_on_captured_activations(objective: str) -> None:
    model = tiny("tiny-llama").model.double()  # float64: the comparison does not hang on the CPU's fp32 kernels
    model.model.embed_tokens.weight.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    calibration = padded_calibration(batch_size=2)
    scores = RKUScorer(RKUConfig(objective=objective, normalisation="none")).score(model, calibration)
    assert all(p.grad is None for p in model.parameters())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags

    adapter = adapter_for(model)
    store: dict = {}
    handles = [
        linear.register_forward_hook(lambda m, a, o, key=(i, block): store.__setitem__(key, a[0]))
        for i, layer in enumerate(adapter.layers())
        for block, linear in (("attention", adapter.attention(layer).o.linear), ("mlp", adapter.mlp(layer).down.linear))
    ]
    phi = hand_objective(model, calibration, objective, store)
    for handle in handles:
        handle.remove()
    keys = [(i, b) for i in range(len(adapter.layers())) for b in ("attention", "mlp")]
    grads = dict(zip(keys, torch.autograd.grad(phi, [store[k] for k in keys]), strict=True))
    mask = expected_mask(calibration)
    for (layer, block), grad in grads.items():
        act = store[(layer, block)]
        got = scores.layers[layer].heads if block == "attention" else scores.layers[layer].channels
        for unit in (0, 5, got.numel() - 1):
            cols = unit_columns(block, unit, adapter.head_dim)
            expected = (act[..., cols] * grad[..., cols]).sum(-1).abs()[mask].mean()
            # Everything is float64 up to the fp32 rounding of the returned score (2^-24 relative).
            torch.testing.assert_close(got[unit].double(), expected.detach(), rtol=2**-23, atol=1e-12)


def test_kinetic_reduction_and_normalisations_match_a_hand_example() -> None:
    site = Site(0, "attention", nn.Linear(4, 3), unit_size=2)
    acts = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 2.0, 1.0]])
    grads = torch.tensor([[0.5, -1.0, 1.0, 0.0], [2.0, 1.0, -1.0, 3.0]])
    reducer = KineticUtility()
    reducer.backward(site, acts, grads)
    # head 0: |1*0.5 + 2*(-1)| = 1.5 and |-2 + 0| = 2; head 1: |3 + 0| = 3 and |-2 + 3| = 1
    utility = reducer.mean_utility(site.key)
    torch.testing.assert_close(utility, torch.tensor([1.75, 2.0]))
    # ‖g‖²: 0.25 + 1 + 1 + 0 = 2.25 and 4 + 1 + 1 + 9 = 15
    grad_sq = reducer.mean_grad_sq(site.key)
    torch.testing.assert_close(grad_sq, torch.tensor(8.625))
    torch.testing.assert_close(normalise(utility, grad_sq, "fisher_trace"), torch.tensor([1.75, 2.0]) / 8.625**0.5)
    torch.testing.assert_close(normalise(utility, grad_sq, "block_relative"), torch.tensor([1.75, 2.0]) / 1.875)
    torch.testing.assert_close(normalise(utility, grad_sq, "none"), utility)


def test_normalisations_rescale_each_block_by_one_factor() -> None:
    loaded = tiny("tiny-qwen3")
    calibration = synthetic(loaded.tokenizer)
    by_method = {
        method: RKUScorer(RKUConfig(normalisation=method)).score(loaded.model, calibration)
        for method in ("none", "block_relative", "fisher_trace")
    }
    for i, raw in enumerate(by_method["none"].layers):
        for kind in ("heads", "channels"):
            relative = getattr(by_method["block_relative"].layers[i], kind)
            fisher = getattr(by_method["fisher_trace"].layers[i], kind)
            torch.testing.assert_close(relative.mean(), torch.tensor(1.0))
            ratios = fisher / getattr(raw, kind)
            torch.testing.assert_close(ratios, ratios[0].expand_as(ratios), rtol=1e-5, atol=0)


def test_per_parameter_rule_removes_the_unit_with_the_lowest_utility_per_parameter() -> None:
    """One layer, one KV head: a head costs 32 parameters (q rows + o columns), a channel 24. Head 0 has
    the lowest utility per parameter (10/32) though channel 0 has the lowest raw utility (9/24 per parameter)."""
    s = LayerStructure(index=0, hidden_size=8, head_dim=2, num_q_heads=4, num_kv_heads=1, intermediate_size=8)
    structures = Structures((s,))
    assert (s.q_head_cost, s.channel_cost) == (32, 24)
    heads = torch.tensor([10.0, 20.0, 30.0, 40.0])
    channels = torch.tensor([9.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0])
    cfg = PruningConfig(sparsity=0.05)  # 18 parameters: the first unit of the ranking meets it
    assert math.ceil(cfg.sparsity * structures.prunable_params) == 18

    def first_removed(method: str) -> tuple[list[int], list[int]]:
        h, c = normalise_layer(s, heads, channels, method) if method != "none" else (heads, channels)
        plan = allocate(cfg, Scores([LayerScores(heads=h, channels=c)]), structures).layers[0]
        return sorted(set(range(4)) - set(plan.q_heads)), sorted(set(range(8)) - set(plan.mlp_channels))

    assert first_removed("per_parameter") == ([0], [])
    assert first_removed("none") == ([], [0])  # ranked per unit, the cheaper-looking channel goes first
    # GISP's constants: head 10 / (4·2·8) = 0.156 against channel 9 / (3·8) = 0.375: the head goes too.
    assert first_removed("gisp_constants") == ([0], [])
    # Layer-relative keeps the raw per-unit comparison: channel 0 (9) is below head 0 (10).
    assert first_removed("layer_relative") == ([], [0])


def test_layer_relative_keeps_each_layers_raw_head_channel_ratio() -> None:
    loaded = tiny("tiny-qwen3")
    calibration = synthetic(loaded.tokenizer)
    raw = RKUScorer(RKUConfig(normalisation="none")).score(loaded.model, calibration)
    relative = RKUScorer(RKUConfig(normalisation="layer_relative")).score(loaded.model, calibration)
    block = RKUScorer(RKUConfig(normalisation="block_relative")).score(loaded.model, calibration)
    factors = []
    for r, n, b in zip(raw.layers, relative.layers, block.layers, strict=True):
        ratios = torch.cat([n.heads / r.heads, n.channels / r.channels])
        # One constant for both types: the head/channel ratio of every pair of units survives.
        torch.testing.assert_close(ratios, ratios[0].expand_as(ratios), rtol=1e-5, atol=0)
        # The constant is the layer's mean channel utility (every unit is live in a dense model), so the
        # channels get their block-relative scores and a channels-only plan does not change.
        torch.testing.assert_close(ratios[0], 1 / r.channels.mean(), rtol=1e-5, atol=0)
        torch.testing.assert_close(n.channels, b.channels, rtol=1e-6, atol=0)
        factors.append(float(ratios[0]))
    assert len({round(f, 6) for f in factors}) > 1  # the cross-layer scale is removed, layer by layer


def test_rku_logs_each_layers_exchange_rate(caplog) -> None:
    loaded = tiny("tiny-llama")
    with caplog.at_level("INFO", logger="rkuprune.scoring.rku"):
        RKUScorer(RKUConfig()).score(loaded.model, synthetic(loaded.tokenizer))
    lines = [r.getMessage() for r in caplog.records if "a head carries" in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == [f"rku layer {i}" for i in range(4)]


def test_block_relative_plan_ignores_a_block_wide_scale() -> None:
    loaded = tiny("tiny-llama")
    reducer = KineticUtility()
    run_calibration(loaded.model, synthetic(loaded.tokenizer), reducer=reducer, objective=OBJECTIVES["energy"])
    structures = adapter_for(loaded.model).structures()
    scale = {(1, "attention"): 1e3, (2, "mlp"): 1e-3}

    def plan(method: str, granularity: str, scaled: bool) -> PruningPlan:
        per_unit = {}
        for key in reducer.utility:
            c = scale.get(key, 1.0) if scaled else 1.0
            per_unit[key] = normalise(c * reducer.mean_utility(key), c**2 * reducer.mean_grad_sq(key), method)
        return allocate(PruningConfig(sparsity=0.3, granularity=granularity), to_scores(per_unit), structures)

    for granularity in GRANULARITIES:
        assert plan("block_relative", granularity, False).layers == plan("block_relative", granularity, True).layers
    # The same scale does move the plan when utilities are not normalised, so the property is not vacuous.
    assert plan("none", "q_head", False).layers != plan("none", "q_head", True).layers


def test_block_mean_counts_only_the_units_a_masked_model_still_has() -> None:
    """rku_iterative scores a masked model: removed units (zero o/down columns) must not dilute the block mean."""
    loaded = tiny("tiny-llama")
    model = loaded.model.double()
    structures = adapter_for(model).structures()
    plan = PruningPlan.dense(structures)
    plan.layers[1].q_heads = [0, 1, 4, 5]  # two of four heads per KV group removed
    plan.layers[1].mlp_channels = list(range(0, 96, 3))  # two thirds of the channels removed
    apply_plan(model, plan, "mask")
    calibration = synthetic(loaded.tokenizer)
    raw = RKUScorer(RKUConfig(normalisation="none")).score(model, calibration).layers[1]
    relative = RKUScorer(RKUConfig(normalisation="block_relative")).score(model, calibration).layers[1]
    for values, normalised, kept, size in (
        (raw.heads, relative.heads, plan.layers[1].q_heads, 8),
        (raw.channels, relative.channels, plan.layers[1].mlp_channels, 96),
    ):
        gone = sorted(set(range(size)) - set(kept))
        assert torch.all(values[gone] == 0)  # a masked unit writes nothing: zero utility
        torch.testing.assert_close(normalised, values / values[kept].mean(), rtol=2**-22, atol=0)
        assert not torch.allclose(normalised, values / values.mean())  # counting zeros would inflate survivors
    sites_of_layer = [site for site in sites(model) if site.layer == 1]
    assert [live_units(site).nonzero().flatten().tolist() for site in sites_of_layer] == [
        plan.layers[1].q_heads,
        plan.layers[1].mlp_channels,
    ]


# --- FLAP bias compensation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "arch"),
    [("tiny-qwen2", {}), ("tiny-llama", {"attention_bias": True, "mlp_bias": True})],
    ids=["qwen2-o-bias-created", "llama-biases-extended"],
)
def test_flap_compensation_restores_the_dense_output_for_constant_inputs(name: str, arch: dict) -> None:
    loaded = one_layer(name, **arch)
    model = loaded.model
    adapter = adapter_for(model)
    s = adapter.structures()[0]
    attn, mlp = adapter.attention(adapter.layers()[0]), adapter.mlp(adapter.layers()[0])
    generator = torch.Generator().manual_seed(1)
    constant_kv, constant_channels = 1, [3, 10, 50]
    with torch.no_grad():
        # A KV head whose values ignore the input: every query head reading it outputs the same vector.
        rows = head_rows([constant_kv], s.head_dim)
        attn.v.weight[rows] = 0.0
        attn.v.bias[rows] = torch.randn(rows.numel(), generator=generator)
        if mlp.gate.bias is not None:  # MLP channels whose activation is silu(b_gate) * b_up, whatever the input
            for linear in (mlp.gate, mlp.up):
                linear.weight[constant_channels] = 0.0
                linear.bias[constant_channels] = torch.randn(len(constant_channels), generator=generator) + 2.0
    scorer = FLAPScorer(FLAPConfig())
    scores = scorer.score(model, synthetic(loaded.tokenizer))
    removed_heads = [h for h in range(s.num_q_heads) if s.kv_of(h) == constant_kv]
    assert sorted(scores.layers[0].heads.argsort()[: len(removed_heads)].tolist()) == removed_heads
    plan = PruningPlan.dense(adapter.structures())
    plan.layers[0].kv_heads.remove(constant_kv)
    plan.layers[0].q_heads = [h for h in plan.layers[0].q_heads if h not in removed_heads]
    if mlp.gate.bias is not None:
        assert sorted(scores.layers[0].channels.argsort()[:3].tolist()) == constant_channels
        plan.layers[0].mlp_channels = [c for c in plan.layers[0].mlp_channels if c not in constant_channels]

    dense = copy.deepcopy(model)
    uncompensated = apply_plan(copy.deepcopy(model), plan, "slice")
    scorer.compensate(model, plan)
    apply_plan(model, plan, "slice")
    assert attn.o.bias is not None
    ids = torch.randint(3, 259, (2, 24), generator=generator)
    with torch.no_grad():
        expected = dense(input_ids=ids).logits
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(uncompensated(input_ids=ids).logits, expected, atol=1e-3)


def test_flap_biases_survive_save_and_load_and_plain_loading_fails_loudly(tmp_path, monkeypatch) -> None:
    loaded = tiny("tiny-llama")  # no attention_bias / mlp_bias: every compensation bias is new
    model = loaded.model
    scorer = FLAPScorer(FLAPConfig())
    scores = scorer.score(model, synthetic(loaded.tokenizer))
    cfg = PruningConfig(sparsity=0.3, granularity="none", allocation="uniform")
    plan = allocate(cfg, scores, adapter_for(model).structures(), base_model="tiny-llama")
    assert plan.is_uniform()
    unguarded = copy.deepcopy(model)
    for target in (model, unguarded):
        scorer.compensate(target, plan)
    apply_plan(model, plan, "slice")
    adapter = adapter_for(model)
    assert all(adapter.mlp(layer).down.bias is not None for layer in adapter.layers())
    save_pruned(model, loaded.tokenizer, plan, tmp_path / "pruned")
    reloaded, _ = load_pruned(tmp_path / "pruned")
    ids = torch.randint(3, 259, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)
    assert read_config(tmp_path / "pruned")["intermediate_size"] == 96  # base value: the guard held it back
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")

    # Without the guard the same folder loads plainly and silently drops the biases (what it prevents).
    monkeypatch.setattr(DecoderAdapter, "native_bias_roles", lambda self: {"o", "down"})
    apply_plan(unguarded, plan, "slice")
    save_pruned(unguarded, loaded.tokenizer, plan, tmp_path / "unguarded")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "unguarded")
    assert adapter_for(plain).mlp(adapter_for(plain).layers()[0]).down.bias is None


# --- every scorer, every architecture, determinism, bad input -----------------------------------------


@pytest.mark.parametrize("name", CALIBRATED)
def test_same_seed_and_data_give_the_same_scores_and_plan(name: str) -> None:
    runs = []
    for calibration_seed in (0, 0, 1):
        loaded = tiny("tiny-qwen2", seed=0)
        scores = build(name).score(loaded.model, synthetic(loaded.tokenizer, seed=calibration_seed))
        plan = allocate(PruningConfig(sparsity=0.4), scores, adapter_for(loaded.model).structures())
        runs.append((scores, plan))
    (first, plan_a), (second, plan_b), (other, _) = runs
    for a, b in zip(first.layers, second.layers, strict=True):
        assert torch.equal(a.heads, b.heads) and torch.equal(a.channels, b.channels)
    assert plan_a.to_dict() == plan_b.to_dict()
    assert not torch.equal(first.layers[0].channels, other.layers[0].channels)  # the data does matter


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("name", (*CALIBRATED, "magnitude", "random"))
def test_every_scorer_prunes_every_architecture_at_every_granularity(name: str, arch: str) -> None:
    loaded = tiny(arch)
    scorer = build(name)
    scores = scorer.score(loaded.model, synthetic(loaded.tokenizer))
    structures = adapter_for(loaded.model).structures()
    scores.check(structures, name)
    ids = torch.randint(3, 259, (2, 16))
    for granularity in GRANULARITIES:
        model = copy.deepcopy(loaded.model)
        plan = allocate(PruningConfig(sparsity=0.3, granularity=granularity), scores, structures)
        scorer.compensate(model, plan)
        apply_plan(model, plan, "slice")
        assert plan.sparsity(structures) >= 0.3
        if granularity == "none":
            assert all(len(lp.q_heads) == structures[lp.index].num_q_heads for lp in plan.layers)
        with torch.no_grad():
            assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("rku", "objective", "kinetic"),
        ("rku", "normalisation", "zscore"),
        ("taylor", "scope", "block"),
        ("wanda_sp", "flow", "layerwise"),
    ],
)
def test_unknown_choices_are_errors_naming_the_field(name: str, field: str, value: str) -> None:
    scorer = build(name, **{field: value})
    with pytest.raises(ConfigError, match=f"'{value}' is not one of") as error:
        scorer.check()
    assert error.value.field == f"scorer.{field}"


@pytest.mark.parametrize(("allocation", "schedule"), [("global", "oneshot"), ("uniform", "iterative")])
def test_sequential_wanda_sp_refuses_a_plan_it_cannot_prune_layer_by_layer(allocation: str, schedule: str) -> None:
    scorer = SCORERS.build(SCORERS.get("wanda_sp").config())
    scorer.bind(PruningConfig(allocation=allocation, schedule=schedule))
    with pytest.raises(ConfigError, match="scorer.flow: 'sequential' prunes each layer") as error:
        scorer.check()
    assert error.value.field == "scorer.flow"
    dense = SCORERS.build(SCORERS.get("wanda_sp").config(flow="dense"))
    dense.bind(PruningConfig(allocation=allocation, schedule=schedule))
    dense.check()


class Overflow(nn.Module):
    """An activation that overflows, as fp16 can."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("inf")


@pytest.mark.parametrize("name", CALIBRATED)
def test_non_finite_activations_give_the_non_finite_scores_error(name: str, monkeypatch) -> None:
    loaded = tiny("tiny-llama")
    adapter = adapter_for(loaded.model)
    monkeypatch.setattr(adapter.mlp_module(adapter.layers()[1]), "act_fn", Overflow())
    scores = build(name).score(loaded.model, synthetic(loaded.tokenizer))
    with pytest.raises(ConfigError, match=f"scorer: {name} produced non-finite"):
        scores.check(adapter.structures(), name)


def test_every_calibrated_scorer_asks_for_calibration() -> None:
    assert all(SCORERS.get(name).cls.needs_calibration for name in CALIBRATED)
    with pytest.raises(ConfigError, match="needs a calibration set"):
        build("rku").score(tiny("tiny-llama").model, None)
