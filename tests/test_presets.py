"""The paper presets give each row the method and calibration of the paper it reproduces."""

from __future__ import annotations

from omegaconf import OmegaConf

from tests.test_app import CONF, compose_run


def sweep(experiment: str) -> dict[str, list[str]]:
    params = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    return {key: str(values).split(",") for key, values in params.items()}


def test_rku_table_compares_rku_with_gisp_and_rku_iterative_on_gisps_trajectory() -> None:
    scorers = sweep("rku_table")["scorer"]
    assert {"rku", "gisp", "rku_iterative"} <= set(scorers)
    for scorer in ("gisp", "rku_iterative"):
        run = compose_run(["experiment=rku_table", f"scorer={scorer}", "pruning.sparsity=0.5"])
        assert (run.pruning.schedule, run.pruning.steps, run.pruning.trajectory_end) == ("iterative", 111, 0.7)
        assert run.calibration.name == "q16k"


def test_resp_table_calibrates_baselines_on_gold_chat_and_resp_on_its_own_traces() -> None:
    rows = sweep("resp_table")["+experiment/resp_table_rows"]
    assert sorted(rows) == ["gisp", "resp", "wanda_sp"]
    expected = {
        "resp": ("resp", "self_generated", [0.1, 0.2, 0.3, 0.4, 0.5]),
        "gisp": ("gisp", "gsm8k_gold_chat", []),
        "wanda_sp": ("wanda_sp", "gsm8k_gold_chat", []),
    }
    for row in rows:
        run = compose_run(["experiment=resp_table", f"+experiment/resp_table_rows={row}", "pruning.sparsity=0.4"])
        assert (run.scorer.name, run.calibration.name, run.pruning.regenerate_at) == expected[row]
        assert run.calibration.num_prompts == 500 and run.model.name == "qwen3-8b"
        if row != "wanda_sp":
            assert (run.pruning.steps, run.pruning.trajectory_end) == (111, 0.7)
