"""The iterative schedule: one trajectory of nested plans, monotone sparsity, milestones, regeneration,
the closest step plan for a target, and the trajectory cache that lets a sweep score once."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch

import rkuprune
from rkuprune.allocation import PruningConfig
from rkuprune.allocation.schedule import Trajectory, run_iterative, source_digest
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
    trajectory = run_iterative(loaded.model, scorer, None, cfg, structures, "tiny")
    sparsities = [row["measured_sparsity"] for row in trajectory.history]
    assert sparsities == sorted(sparsities) and sparsities[-1] >= target
    assert len(calls) == 4
    assert trajectory.closest_step(target) == trajectory.steps == 4  # no end set: the trajectory ends at the target


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
    _, structures, trajectory = run(steps=8, target=0.4)
    steps = trajectory.milestone_steps([0.1, 0.25, 0.9])
    assert sorted(steps) == [0.1, 0.25]
    for milestone, step in steps.items():
        first = next(row for row in trajectory.history if row["measured_sparsity"] >= milestone)
        assert step == first["step"]
        assert trajectory.plan(step).sparsity(structures) == pytest.approx(first["measured_sparsity"])


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
    assert crossed == expected_steps and len(result.regenerations) == len(expected_steps) >= 2
    assert result.regenerations[0] == calibration.provenance
    assert history_at_call == sorted(history_at_call) and history_at_call[0] > 0  # the model was masked


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"milestones": [0.0, 0.5]}, r"pruning\.milestones: 0\.0 is outside \(0, 1\)"),
        ({"regenerate_at": [1.5]}, r"pruning\.regenerate_at: 1\.5 is outside \(0, 1\)"),
        ({"steps": 0}, r"pruning\.steps: 0 must be at least 1"),
        (
            {"sparsity": 0.5, "trajectory_end": 0.4},
            r"pruning\.trajectory_end: 0\.4 is outside \[pruning\.sparsity=0\.5",
        ),
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


def test_a_target_reads_the_closest_step_plan_of_one_trajectory(monkeypatch) -> None:
    import rkuprune.allocation.schedule as schedule

    loaded = tiny("tiny-llama")
    structures = adapter_for(loaded.model).structures()
    masked_with: list[PruningPlan] = []
    real_apply = schedule.apply_plan
    monkeypatch.setattr(schedule, "apply_plan", lambda m, p, mode: masked_with.append(p) or real_apply(m, p, mode))
    cfg = PruningConfig(sparsity=0.2, schedule="iterative", steps=6, trajectory_end=0.5)
    trajectory = run_iterative(loaded.model, SCORERS.build(RandomConfig(seed=4)), None, cfg, structures, "tiny")
    assert [row["target"] for row in trajectory.history] == pytest.approx([0.5 * k / 6 for k in range(1, 7)])
    for step, plan in enumerate(masked_with, start=1):  # the compact record gives back every step's plan
        assert trajectory.plan(step).layers == plan.layers
    for target in (0.1, 0.2, 0.3, 0.45):
        gaps = [abs(row["measured_sparsity"] - target) for row in trajectory.history]
        step = trajectory.closest_step(target)
        assert gaps[step - 1] == min(gaps) and step == 1 + gaps.index(min(gaps))
        assert trajectory.plan(step).metadata["trajectory_step"] == step


def test_a_trajectory_survives_a_round_trip_through_its_file(tmp_path) -> None:
    _, structures, trajectory = run(steps=5, target=0.3, trajectory_end=0.5)
    trajectory.save(tmp_path / "t.json")
    again = Trajectory.load(tmp_path / "t.json")
    assert again == trajectory
    assert all(again.plan(k).layers == trajectory.plan(k).layers for k in range(1, 6))


def test_an_unreachable_trajectory_end_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"pruning\.trajectory_end: 0\.9 cannot be met"):
        run(steps=4, target=0.3, trajectory_end=0.9, protection_rule="gisp")


def test_the_trajectory_cache_key_hashes_every_source_file_of_the_package() -> None:
    # source_digest lives in a sub-package; a trajectory must still be reused only by the code that made it
    package = Path(rkuprune.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.read_bytes())
    assert source_digest() == digest.hexdigest()[:16]
