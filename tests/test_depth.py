"""Depth pruning: ShortGPT's Block Influence, layer scores of rku and taylor, the layer allocation, and
sliced models with removed layers (masked ≡ sliced, save/reload, generation with a KV cache)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from rkuprune import apply_plan, load_pruned, save_pruned
from rkuprune.allocation import PruningConfig, allocate, check_feasible
from rkuprune.data.calibration import CalibrationSet
from rkuprune.errors import ConfigError
from rkuprune.models.adapters import adapter_for
from rkuprune.models.structures import Structures
from rkuprune.scoring import SCORERS, LayerScores, Scores
from rkuprune.scoring.rku import RKUConfig
from rkuprune.scoring.shortgpt import ShortGPTConfig, block_influence
from rkuprune.scoring.taylor import TaylorConfig
from tests.conftest import TINY_ARCHS, in_float64, tiny
from tests.test_app import run_cli
from tests.test_surgery import FLOAT64_ATOL, padded_batch


def calibration_rows(vocab: int, seed: int = 0) -> CalibrationSet:
    """Rows of different lengths (right padding) in two batches, loss mask covering a suffix of each."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [9, 5, 12, 7]
    rows = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]
    return CalibrationSet.right_padded(rows, pad_id=0, batch_size=2, loss_starts=[0, 2, 3, 0])


@pytest.mark.parametrize("name", TINY_ARCHS)
def test_block_influence_matches_a_hand_computation(name: str) -> None:
    model = in_float64(tiny(name).model)
    calibration = calibration_rows(model.config.vocab_size)
    adapter = adapter_for(model)
    adapter.decoder().norm = nn.Identity()  # so the last hidden state is the last layer's raw output
    influence = block_influence(model, calibration)

    num_layers = len(adapter.layers())
    sums, count = [0.0] * num_layers, 0
    for row in range(len(calibration)):
        length = int(calibration.attention_mask[row].sum())
        ids = calibration.input_ids[row : row + 1, :length]
        with torch.no_grad():
            hidden = adapter.decoder()(input_ids=ids, output_hidden_states=True).hidden_states
        # counted: in the loss mask and not the row's first token
        positions = [t for t in range(1, length) if calibration.loss_mask[row, t]]
        count += len(positions)
        for i in range(num_layers):
            for t in positions:
                x, y = hidden[i][0, t], hidden[i + 1][0, t]
                sums[i] += float(x @ y / (x.norm() * y.norm()))
    expected = [1.0 - total / count for total in sums]
    assert influence == pytest.approx(expected, abs=1e-12)
    assert all(0.0 < value < 2.0 for value in influence)


def test_shortgpt_scores_carry_the_layer_value_only() -> None:
    loaded = tiny("tiny-llama")
    scorer = SCORERS.build(ShortGPTConfig())
    calibration = calibration_rows(loaded.model.config.vocab_size)
    scores = scorer.score(loaded.model, calibration)
    scores.check(adapter_for(loaded.model).structures(), "shortgpt")
    assert scores.layer_scores() == block_influence(loaded.model, calibration)
    assert scorer.scores_layers and not scorer.scores_units


@pytest.mark.parametrize(
    ("scorer", "config"),
    [("rku", RKUConfig(normalisation="none")), ("taylor", TaylorConfig())],
)
def test_rku_and_taylor_layer_scores_are_the_layer_sums(scorer: str, config: object) -> None:
    """rku: Σ of the layer's un-normalised utilities; taylor: Σ |W ⊙ ∇W L| over the layer (= its unit sums)."""
    loaded = tiny("tiny-qwen2")
    calibration = calibration_rows(loaded.model.config.vocab_size)
    raw = SCORERS.build(config).score(loaded.model, calibration)
    for layer in raw.layers:
        assert layer.layer == pytest.approx(float(layer.heads.sum() + layer.channels.sum()), rel=1e-5)
    # the layer score does not depend on how units are normalised within a layer
    other = RKUConfig() if scorer == "rku" else TaylorConfig(scope="layer")
    normalised = SCORERS.build(other).score(loaded.model, calibration)
    assert normalised.layer_scores() == pytest.approx(raw.layer_scores(), rel=1e-5)


def layer_scores(structures: Structures, values: list[float]) -> Scores:
    """Scores with the given layer values and distinct unit scores (for the width remainder)."""
    generator = torch.Generator().manual_seed(0)
    return Scores(
        [
            LayerScores(
                heads=torch.rand(s.num_q_heads, generator=generator),
                channels=torch.rand(s.intermediate_size, generator=generator),
                layer=value,
            )
            for s, value in zip(structures.layers, values, strict=True)
        ]
    )


def test_layer_granularity_removes_the_lowest_layers_until_the_budget_is_met() -> None:
    structures = adapter_for(tiny("tiny-llama").model).structures()  # 4 equal layers: 0.25 each
    scores = layer_scores(structures, [3.0, 1.0, 4.0, 2.0])
    plan = allocate(PruningConfig(sparsity=0.3, granularity="layer"), scores, structures)
    plan.validate(structures)
    assert plan.removed_layers == [1, 3]
    assert [lp.index for lp in plan.layers] == [0, 2]
    assert all(lp.params(structures[lp.index]) == structures[lp.index].dense_params for lp in plan.layers)
    assert 0.3 <= plan.sparsity(structures) < 0.3 + 0.25  # overshoot below one layer
    protected = allocate(PruningConfig(sparsity=0.3, granularity="layer", protected_layers=[1]), scores, structures)
    assert protected.removed_layers == [0, 3]


def test_depth_fraction_takes_its_share_from_layers_and_the_rest_from_units() -> None:
    structures = adapter_for(tiny("tiny-llama").model).structures()
    scores = layer_scores(structures, [3.0, 1.0, 4.0, 2.0])
    cfg = PruningConfig(sparsity=0.5, granularity="q_head", depth_fraction=0.4)  # 0.2 from layers: one layer
    plan = allocate(cfg, scores, structures)
    plan.validate(structures)
    assert plan.removed_layers == [1]
    largest_unit = max(max(s.channel_cost, s.num_kv_heads * s.q_head_cost) for s in structures.layers)
    assert 0.5 <= plan.sparsity(structures) < 0.5 + largest_unit / structures.prunable_params
    assert all(lp.params(structures[lp.index]) < structures[lp.index].dense_params for lp in plan.layers)


def test_a_target_that_removes_every_layer_is_refused() -> None:
    structures = adapter_for(tiny("tiny-llama").model).structures()
    check_feasible(PruningConfig(sparsity=0.75, granularity="layer"), structures)  # three of four layers
    with pytest.raises(ConfigError, match=r"^pruning.sparsity: 0.8 cannot be met by removing layers"):
        check_feasible(PruningConfig(sparsity=0.8, granularity="layer"), structures)
    with pytest.raises(ConfigError, match=r"^pruning.sparsity: 0.5 cannot be met"):
        check_feasible(PruningConfig(sparsity=0.5, granularity="layer", protected_layers=[0, 1, 2]), structures)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scorer=magnitude", "pruning.granularity=layer"], "error: pruning.granularity: scorer 'magnitude' gives no"),
        (["scorer=shortgpt"], "error: pruning.granularity: scorer 'shortgpt' scores whole layers only"),
        (["pruning.depth_fraction=1.5"], "error: pruning.depth_fraction: 1.5 is outside [0, 1]"),
        (["pruning.granularity=layer", "pruning.depth_fraction=0.5"], "error: pruning.depth_fraction: granularity"),
        (["scorer=rku_iterative", "pruning.granularity=layer"], "error: pruning.schedule: depth pruning"),
    ],
)
def test_bad_depth_input_is_one_line_before_loading(args, message, tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["model=tiny-llama", "logger=none", f"hydra.run.dir={run_dir}", *args], monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert lines == [lines[0]] and lines[0].startswith(message), err
    assert not (run_dir / "results.json").exists()


def test_removing_every_layer_fails_in_one_line_right_after_loading(tmp_path, monkeypatch, capsys) -> None:
    args = ["model=tiny-llama", "logger=none", "scorer=shortgpt", "pruning.granularity=layer", "pruning.sparsity=0.9"]
    code, _, err = run_cli([*args, f"hydra.run.dir={tmp_path}"], monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: pruning.sparsity: 0.9 cannot be met by removing layers")


def depth_plan(name: str, granularity: str, depth_fraction: float):
    """A float64 tiny model and an RKU plan that removes a layer (and, when mixed, units of the others)."""
    loaded = tiny(name)
    in_float64(loaded.model)
    calibration = calibration_rows(loaded.model.config.vocab_size)
    structures = adapter_for(loaded.model).structures()
    scores = SCORERS.build(RKUConfig()).score(loaded.model, calibration)
    cfg = PruningConfig(sparsity=0.4, granularity=granularity, depth_fraction=depth_fraction)
    plan = allocate(cfg, scores, structures, base_model=name)
    assert plan.removed_layers
    return loaded, plan


@pytest.mark.parametrize("name", TINY_ARCHS)
def test_masked_identity_layers_equal_sliced_with_removed_layers(name: str, tmp_path) -> None:
    loaded, plan = depth_plan(name, "q_head", depth_fraction=0.5)
    masked = apply_plan(copy.deepcopy(loaded.model), plan, "mask")
    sliced = apply_plan(loaded.model, plan, "slice")
    assert len(adapter_for(sliced).layers()) == len(plan.layers)
    batch = padded_batch(loaded.tokenizer)
    keep = batch["attention_mask"].bool()
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(
            sliced(**batch).logits[keep], masked(**batch).logits[keep], atol=FLOAT64_ATOL, rtol=0
        )
        cached = sliced.generate(**batch, **kwargs, use_cache=True)
        assert torch.equal(cached, masked.generate(**batch, **kwargs, use_cache=True))
        assert torch.equal(cached, sliced.generate(**batch, **kwargs, use_cache=False))
    save_pruned(sliced, loaded.tokenizer, plan, tmp_path / "pruned")
    reloaded = in_float64(load_pruned(tmp_path / "pruned")[0])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, sliced(**batch).logits, atol=0, rtol=0)


@pytest.mark.parametrize("name", TINY_ARCHS)
def test_layer_only_plan_loads_with_plain_from_pretrained(name: str, tmp_path) -> None:
    loaded, plan = depth_plan(name, "layer", depth_fraction=0.0)
    assert plan.is_uniform()
    apply_plan(loaded.model, plan, "slice")
    save_pruned(loaded.model, loaded.tokenizer, plan, tmp_path / "pruned")
    plain = in_float64(AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", dtype=torch.float64))
    assert plain.config.num_hidden_layers == len(plan.layers)
    batch = padded_batch(loaded.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, loaded.model(**batch).logits, atol=0, rtol=0)
