"""The iterative schedule: nested plans, monotone sparsity, milestones, regeneration, closest plan."""

from __future__ import annotations

import copy

import pytest
import torch

from rkuprune.allocation import PruningConfig
from rkuprune.allocation.schedule import run_iterative
from rkuprune.data.calibration import CALIBRATION_SOURCES, CalibrationConfig
from rkuprune.data.sources import DataConfig
from rkuprune.errors import ConfigError
from rkuprune.models.adapters import adapter_for
from rkuprune.models.plan import PruningPlan
from rkuprune.scoring import SCORERS
from rkuprune.scoring.magnitude import MagnitudeConfig
from rkuprune.scoring.random_baseline import RandomConfig
from tests.conftest import tiny


def kept_units(plan: PruningPlan) -> set[tuple[int, str, int]]:
    kept = set()
    for lp in plan.layers:
        kept |= {(lp.index, "q", h) for h in lp.q_heads} | {(lp.index, "c", c) for c in lp.mlp_channels}
    return kept


def run(granularity: str = "q_head", steps: int = 5, target: float = 0.4, **kwargs: object):
    loaded = tiny("tiny-qwen2")
    structures = adapter_for(loaded.model).structures()
    cfg = PruningConfig(sparsity=target, granularity=granularity, schedule="iterative", steps=steps, **kwargs)
    scorer = SCORERS.build(MagnitudeConfig())
    return loaded, structures, run_iterative(loaded.model, scorer, None, cfg, structures, "tiny")


@pytest.mark.parametrize("granularity", ["q_head", "kv_group", "none"])
def test_sparsity_grows_to_the_target_rescoring_every_step(granularity: str, monkeypatch) -> None:
    loaded = tiny("tiny-llama")
    structures = adapter_for(loaded.model).structures()
    target = 0.3 if granularity == "none" else 0.4
    cfg = PruningConfig(sparsity=target, granularity=granularity, schedule="iterative", steps=4)
    scorer = SCORERS.build(RandomConfig(seed=1))
    calls = []
    real_score = scorer.score
    monkeypatch.setattr(scorer, "score", lambda model, calibration: calls.append(1) or real_score(model, calibration))
    result = run_iterative(loaded.model, scorer, None, cfg, structures, "tiny")
    sparsities = [row["measured_sparsity"] for row in result.history]
    assert sparsities == sorted(sparsities) and sparsities[-1] >= target
    assert len(calls) == 4
    assert result.plan is result.last_plan
    assert all(abs(s - target) >= abs(result.plan.sparsity(structures) - target) for s in sparsities)


def test_each_step_keeps_every_earlier_removal(monkeypatch) -> None:
    import rkuprune.allocation.schedule as schedule

    loaded = tiny("tiny-qwen3")
    dense = copy.deepcopy(loaded.model)
    structures = adapter_for(loaded.model).structures()
    masked_with: list[PruningPlan] = []
    real_apply = schedule.apply_plan
    monkeypatch.setattr(schedule, "apply_plan", lambda m, p, mode: masked_with.append(p) or real_apply(m, p, mode))
    cfg = PruningConfig(sparsity=0.5, schedule="iterative", steps=5)
    run_iterative(loaded.model, SCORERS.build(RandomConfig(seed=2)), None, cfg, structures, "tiny")
    for earlier, later in zip(masked_with, masked_with[1:], strict=False):
        assert kept_units(later) < kept_units(earlier)  # strictly fewer, never one back
    expected = real_apply(dense, masked_with[-1], "mask")
    for a, b in zip(loaded.model.parameters(), expected.parameters(), strict=True):
        assert torch.equal(a, b)  # masked in place, once per step, no copy


def test_milestones_are_recorded_where_sparsity_crosses_them() -> None:
    _, structures, result = run(steps=8, target=0.4, milestones=[0.1, 0.25, 0.9])
    assert sorted(result.milestone_plans) == [0.1, 0.25]
    for milestone, plan in result.milestone_plans.items():
        first = next(row for row in result.history if row["measured_sparsity"] >= milestone)
        assert plan.sparsity(structures) == pytest.approx(first["measured_sparsity"])


def test_regeneration_happens_exactly_at_crossed_milestones_with_the_pruned_model() -> None:
    loaded = tiny("tiny-llama")
    structures = adapter_for(loaded.model).structures()
    source = CALIBRATION_SOURCES.build(CalibrationConfig(name="synthetic", num_tokens=256, seqlen=64, batch_size=4))
    calibration = source.build(loaded.tokenizer, DataConfig())
    history_at_call: list[int] = []

    def regenerate(model, plan):
        zeros = sum(int((p == 0).sum()) for p in model.parameters())
        history_at_call.append(zeros)
        return calibration

    cfg = PruningConfig(sparsity=0.4, schedule="iterative", steps=8, regenerate_at=[0.1, 0.2, 0.3])
    scorer = SCORERS.build(MagnitudeConfig())
    result = run_iterative(loaded.model, scorer, calibration, cfg, structures, "tiny", regenerate=regenerate)
    crossed = [row["step"] for row in result.history if row.get("regenerated")]
    expected_steps = []
    pending = [0.1, 0.2, 0.3]
    for row in result.history:
        hit = False
        while pending and row["measured_sparsity"] >= pending[0]:
            pending.pop(0)
            hit = True
        if hit and row["step"] < cfg.steps:
            expected_steps.append(row["step"])
    assert crossed == expected_steps and result.regenerations == len(expected_steps) >= 2
    assert history_at_call == sorted(history_at_call) and history_at_call[0] > 0  # the model was masked


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"milestones": [0.0, 0.5]}, r"pruning\.milestones: 0\.0 is outside \(0, 1\)"),
        ({"regenerate_at": [1.5]}, r"pruning\.regenerate_at: 1\.5 is outside \(0, 1\)"),
        ({"steps": 0}, r"pruning\.steps: 0 must be at least 1"),
    ],
)
def test_bad_schedule_values_name_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PruningConfig(**overrides).check()


def test_more_steps_than_units_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"pruning\.steps: 100000 steps but only"):
        run(steps=100000)


def test_regeneration_without_a_source_that_can_regenerate_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"pruning\.regenerate_at"):
        run(steps=6, regenerate_at=[0.1])
