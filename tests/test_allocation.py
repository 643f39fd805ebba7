"""Allocators meet the parameter budget, respect GQA and protected layers, and refuse the impossible."""

from __future__ import annotations

import math

import pytest
import torch

from rkuprune.allocation import PruningConfig, allocate
from rkuprune.allocation.allocators import attention_units
from rkuprune.errors import ConfigError
from rkuprune.models.adapters import adapter_for
from rkuprune.models.structures import LayerStructure, Structures
from rkuprune.scoring.base import LayerScores, Scores
from tests.conftest import tiny


def structures_of(name: str = "tiny-llama"):
    return adapter_for(tiny(name).model).structures()


def seeded_scores(structures, seed: int = 0) -> Scores:
    g = torch.Generator().manual_seed(seed)
    return Scores(
        [
            LayerScores(torch.rand(s.num_q_heads, generator=g), torch.rand(s.intermediate_size, generator=g))
            for s in structures.layers
        ]
    )


@pytest.mark.parametrize("allocation", ["global", "uniform"])
@pytest.mark.parametrize("granularity", ["q_head", "kv_group", "none"])
@pytest.mark.parametrize("target", [0.1, 0.3, 0.5])
def test_budget_is_met_within_the_stated_tolerance(allocation: str, granularity: str, target: float) -> None:
    structures = structures_of()
    cfg = PruningConfig(sparsity=target, granularity=granularity, allocation=allocation)
    mlp_share = sum((s.intermediate_size - 1) * s.channel_cost for s in structures.layers) / structures.prunable_params
    if granularity == "none" and target > mlp_share:
        with pytest.raises(ConfigError, match="cannot be met"):
            allocate(cfg, seeded_scores(structures), structures)
        return
    plan = allocate(cfg, seeded_scores(structures), structures)
    plan.validate(structures)
    measured = plan.sparsity(structures)
    assert measured >= target
    largest_unit = max(max(s.kv_head_cost + s.group_size * s.q_head_cost, s.channel_cost) for s in structures.layers)
    if allocation == "global":
        assert measured - target <= largest_unit / structures.prunable_params
    else:
        per_layer_channels = sum(s.channel_cost for s in structures.layers)
        assert measured - target <= (per_layer_channels + largest_unit) / structures.prunable_params
        assert len({len(lp.mlp_channels) for lp in plan.layers}) == 1
        assert len({len(lp.q_heads) for lp in plan.layers}) == 1


def test_global_removes_the_lowest_scored_units_first() -> None:
    structures = structures_of()
    scores = Scores(
        [
            LayerScores(torch.full((8,), 100.0), torch.arange(96, dtype=torch.float) * 4 + s.index)
            for s in structures.layers
        ]
    )
    plan = allocate(PruningConfig(sparsity=0.05, granularity="q_head"), scores, structures)
    removed = {(lp.index, c) for lp in plan.layers for c in set(range(96)) - set(lp.mlp_channels)}
    cost = structures[0].channel_cost
    n = math.ceil(math.ceil(0.05 * structures.prunable_params) / cost)
    ranked = sorted(((layer, c) for layer in range(4) for c in range(95)), key=lambda lc: lc[1] * 4 + lc[0])
    assert removed == set(ranked[:n])
    assert all(len(lp.q_heads) == 8 for lp in plan.layers)


def test_q_head_removes_the_same_number_from_every_group() -> None:
    structures = structures_of("tiny-qwen3")
    plan = allocate(PruningConfig(sparsity=0.5, granularity="q_head"), seeded_scores(structures, 3), structures)
    for lp in plan.layers:
        s = structures[lp.index]
        per_group = [sum(1 for h in lp.q_heads if s.kv_of(h) == kv) for kv in range(s.num_kv_heads)]
        assert len(set(per_group)) == 1 and per_group[0] >= 1
        assert lp.kv_heads == list(range(s.num_kv_heads))


def test_protected_layers_are_untouched() -> None:
    structures = structures_of()
    cfg = PruningConfig(sparsity=0.15, protected_layers=[0], protection_rule="gisp")
    plan = allocate(cfg, seeded_scores(structures), structures)
    # explicit layer 0; the gisp rule protects the first int(10% of 4) = 0 layers and the last one
    for index in (0, 3):
        assert plan.layers[index].mlp_channels == list(range(96))
        assert plan.layers[index].q_heads == list(range(8))
    assert len(plan.layers[1].mlp_channels) < 96 and len(plan.layers[2].mlp_channels) < 96


def test_impossible_target_is_an_error_naming_the_field() -> None:
    structures = structures_of()
    cfg = PruningConfig(sparsity=0.6, protected_layers=[0, 1, 2])
    with pytest.raises(ConfigError, match=r"pruning\.sparsity: 0\.6 cannot be met"):
        allocate(cfg, seeded_scores(structures), structures)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sparsity", 0.99, r"pruning\.sparsity: 0\.99 is outside \[0, 0\.95\]"),
        ("granularity", "heads", r"pruning\.granularity"),
        ("allocation", "greedy", r"pruning\.allocation: unknown allocator 'greedy'"),
        ("protection_rule", "first", r"pruning\.protection_rule"),
    ],
)
def test_bad_pruning_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PruningConfig(**{field: value}).check()


def shaped(num_layers: int, hidden: int, head_dim: int, q_heads: int, kv_heads: int, intermediate: int):
    """Structures of a real model's shape, without building the model."""
    layer = dict(hidden_size=hidden, head_dim=head_dim, num_q_heads=q_heads, num_kv_heads=kv_heads)
    return Structures(tuple(LayerStructure(i, intermediate_size=intermediate, **layer) for i in range(num_layers)))


REAL_SHAPES = {  # layer shapes of the real models; the 7-8B ones with 6 layers to keep the test fast
    "smollm2-135m": (30, 576, 64, 9, 3, 1536),
    "qwen2.5-7b": (6, 3584, 128, 28, 4, 18944),
    "llama3-8b": (6, 4096, 128, 32, 8, 14336),
}


@pytest.mark.parametrize("shape", sorted(REAL_SHAPES))
@pytest.mark.parametrize("granularity", ["q_head", "kv_group"])
@pytest.mark.parametrize("target", [0.3, 0.4])
def test_iid_scores_cut_attention_and_mlp_by_the_same_share(shape: str, granularity: str, target: float) -> None:
    """Heads and channels with scores of one distribution compete fairly in the global ranking: the removed
    fractions of query-head parameters and of MLP parameters differ by less than 10 points (the sum rule
    removed 3% of SmolLM2's query heads at 30%, and none of Qwen2.5-7B's at 40%)."""
    structures = shaped(*REAL_SHAPES[shape])
    plan = allocate(PruningConfig(sparsity=target, granularity=granularity), seeded_scores(structures, 7), structures)
    # Query-head parameters (q rows, o columns): what both granularities remove in proportion to heads.
    attention_cut = 1 - sum(len(lp.q_heads) for lp in plan.layers) / sum(s.num_q_heads for s in structures.layers)
    mlp_cut = 1 - sum(len(lp.mlp_channels) for lp in plan.layers) / sum(s.intermediate_size for s in structures.layers)
    assert abs(attention_cut - mlp_cut) < 0.10, (attention_cut, mlp_cut)
    assert plan.sparsity(structures) >= target


def test_a_multi_head_unit_scores_the_mean_of_its_heads() -> None:
    s = shaped(1, 64, 8, 6, 2, 16).layers[0]
    heads = torch.tensor([5.0, 1.0, 3.0, 2.0, 6.0, 4.0])  # groups (0, 1, 2) and (3, 4, 5)
    scores = LayerScores(heads, torch.zeros(16))
    q_units = attention_units(s, scores, "q_head")
    assert [(u.members, u.score, u.cost) for u in q_units] == [
        ((1, 3), 1.5, 2 * s.q_head_cost),
        ((2, 5), 3.5, 2 * s.q_head_cost),
    ]
    kv_units = attention_units(s, scores, "kv_group")
    assert [(u.members, u.score) for u in kv_units] == [((0,), 3.0)]
    assert kv_units[0].cost == s.kv_head_cost + 3 * s.q_head_cost


def test_llm_pruner_rule_protects_the_first_four_and_last_two_layers() -> None:
    structures = shaped(10, 64, 8, 4, 2, 32)
    cfg = PruningConfig(sparsity=0.1, protection_rule="llm_pruner", allocation="uniform", granularity="kv_group")
    plan = allocate(cfg, seeded_scores(structures), structures)
    untouched = [lp.index for lp in plan.layers if lp.params(structures[lp.index]) == structures[lp.index].dense_params]
    assert untouched == [0, 1, 2, 3, 8, 9]


def test_layer_ratios_prune_each_unprotected_layer_by_resps_rule() -> None:
    """RESP's baseline_uniform_wanda at 40% (ratio 0.47): layers outside [int(0.1 L), L - 1) kept, the
    others lose int(0.47 · 100) = 47 channels (the lowest) and round(0.47 · 4) = 2 heads per KV group."""
    s = [
        LayerStructure(i, hidden_size=16, head_dim=2, num_q_heads=8, num_kv_heads=2, intermediate_size=100)
        for i in range(10)
    ]
    structures = Structures(tuple(s))
    gen = torch.Generator().manual_seed(0)
    scores = Scores([LayerScores(torch.rand(8, generator=gen), torch.rand(100, generator=gen)) for _ in s])
    cfg = PruningConfig(sparsity=0.4, allocation="uniform", protection_rule="gisp", layer_ratios={40: 0.47})
    cfg.check()
    plan = allocate(cfg, scores, structures)
    for lp in plan.layers:
        if lp.index in (0, 9):
            assert (len(lp.q_heads), len(lp.mlp_channels)) == (8, 100)
            continue
        channels = scores.layers[lp.index].channels
        assert sorted(set(range(100)) - set(lp.mlp_channels)) == sorted(channels.argsort()[:47].tolist())
        heads = scores.layers[lp.index].heads
        for kv in (0, 1):  # the two lowest heads of each group of four
            group = range(4 * kv, 4 * kv + 4)
            assert sorted(h for h in group if h not in lp.q_heads) == sorted(sorted(group, key=lambda h: heads[h])[:2])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"sparsity": 0.5},
            r"pruning\.layer_ratios: no ratio for pruning\.sparsity=0\.5 \(targets given: \[40\] percent\)",
        ),
        ({"allocation": "global"}, r"pruning\.layer_ratios: per-layer ratios are for pruning\.allocation=uniform"),
        ({"layer_ratios": {40: 1.2}}, r"pruning\.layer_ratios: 1\.2 for 40% is outside \[0, 1\)"),
    ],
)
def test_bad_layer_ratios_are_one_line_errors(fields: dict, message: str) -> None:
    cfg = PruningConfig(**{"sparsity": 0.4, "allocation": "uniform", "layer_ratios": {40: 0.47}, **fields})
    with pytest.raises(ConfigError, match=message):
        cfg.check()
