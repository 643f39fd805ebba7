"""The plan picture encodes the plan: per layer kept query heads, KV heads and MLP channels; a run folder
and a report both get one."""

from __future__ import annotations

import pytest

from rkuprune.models.adapters import adapter_for
from rkuprune.models.plan import LayerCounts, LayerPlan, PruningPlan
from rkuprune.models.structures import LayerStructure, Structures
from rkuprune.report.__main__ import main as report_main
from rkuprune.report.plan_picture import plot_plan, read_plan_picture
from tests.conftest import random_plan, tiny
from tests.test_app import run_cli


def counts(plan: PruningPlan) -> dict[str, list[int]]:
    return {
        "layers": [lp.index for lp in plan.layers],
        "q_heads": [len(lp.q_heads) for lp in plan.layers],
        "kv_heads": [len(lp.kv_heads) for lp in plan.layers],
        "mlp_channels": [len(lp.mlp_channels) for lp in plan.layers],
    }


def hand_built_plan() -> tuple[PruningPlan, Structures]:
    """Three layers of 4 query heads in 2 KV groups and 8 MLP channels; layer 1 is removed whole."""
    structures = Structures(tuple(LayerStructure(i, 16, 4, 4, 2, 8) for i in range(3)))
    layers = [LayerPlan(2, [0, 2], [0, 1], [5]), LayerPlan(0, [0, 1, 2, 3], [0, 1], [0, 3, 6])]
    plan = PruningPlan(base_model="hand", layers=layers, removed_layers=[1])
    plan.validate(structures)
    return plan, structures


def test_layer_counts_and_the_summary_of_a_hand_built_plan() -> None:
    plan, structures = hand_built_plan()
    assert plan.layer_counts() == [
        LayerCounts(0, q_heads=4, kv_heads=2, mlp_channels=3),
        LayerCounts(1, q_heads=0, kv_heads=0, mlp_channels=0, removed=True),
        LayerCounts(2, q_heads=2, kv_heads=2, mlp_channels=1),
    ]
    summary = plan.removed_summary(structures)
    assert summary == "6/12 query heads, 2/6 KV heads, 20/24 MLP channels, 1/3 layers removed"


def test_the_picture_shows_a_removed_layer_as_zero(tmp_path) -> None:
    plan, _ = hand_built_plan()
    drawn = read_plan_picture(plot_plan(plan, tmp_path / "plan.png"))
    assert drawn == {"layers": [0, 1, 2], "q_heads": [4, 0, 2], "kv_heads": [2, 0, 2], "mlp_channels": [3, 0, 1]}


@pytest.mark.parametrize("granularity", ["q_head", "kv_group"])
def test_the_picture_holds_the_kept_units_of_every_layer(granularity: str, tmp_path) -> None:
    structures = adapter_for(tiny("tiny-qwen3").model).structures()
    plan = random_plan(structures, granularity, seed=4)
    path = plot_plan(plan, tmp_path / "plan.png")
    assert path.stat().st_size > 0
    assert read_plan_picture(path) == counts(plan)


def test_a_run_folder_and_the_report_get_the_plan_picture(tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "sweep" / "run"
    args = ["model=tiny-llama", "scorer=random", "pruning.sparsity=0.3", "logger=none", "benchmark=none"]
    code, _, err = run_cli([*args, f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    assert code == 0, err
    plan = PruningPlan.load(run_dir / "pruning_plan.json")
    assert read_plan_picture(run_dir / "pruning_plan.png") == counts(plan)
    assert report_main([str(tmp_path / "sweep")]) == 0
    assert "and 1 plan pictures" in capsys.readouterr().out
    (picture,) = (tmp_path / "sweep" / "report" / "plans").glob("*.png")
    assert read_plan_picture(picture) == counts(plan)
