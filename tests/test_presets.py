"""The paper presets give each row the method and calibration of the paper it reproduces."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from tests.test_app import CONF, compose_run


def sweep(experiment: str) -> dict[str, list[str]]:
    params = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    return {key: str(values).split(",") for key, values in params.items()}


RKU_ROWS = {"rku", "rku_heads", "rku_iterative"}


def row_yaml(table: str, row: str) -> DictConfig:
    return OmegaConf.load(CONF / "experiment" / f"{table}_rows" / f"{row}.yaml")


def test_rku_table_compares_rku_with_gisp_and_rku_iterative_on_gisps_trajectory() -> None:
    rows = sweep("rku_table")["+experiment/rku_table_rows"]
    assert RKU_ROWS | {"gisp", "taylor_llmpruner"} <= set(rows)
    for row in ("gisp", "rku_iterative"):
        run = compose_run(["experiment=rku_table", f"+experiment/rku_table_rows={row}", "pruning.sparsity=0.5"])
        assert (run.pruning.schedule, run.pruning.steps, run.pruning.trajectory_end) == ("iterative", 111, 0.7)
        assert run.calibration.name == "q16k"


def test_every_rku_row_of_the_paper_presets_says_its_granularity() -> None:
    """Global RKU (the row beside the published number) prunes FFN channels; RKU with heads is a labelled
    extra row; RKU and GISP rows share GISP's layer protection, so the margin compares scorers."""
    composed = {}
    for row in sweep("rku_table")["+experiment/rku_table_rows"]:
        run = compose_run(["experiment=rku_table", f"+experiment/rku_table_rows={row}", "pruning.sparsity=0.4"])
        composed[row] = run
        if run.scorer.name == "rku":
            assert row in RKU_ROWS and "granularity" in row_yaml("rku_table", row).pruning
    assert {row: composed[row].pruning.granularity for row in RKU_ROWS} == {
        "rku": "none",
        "rku_heads": "q_head",
        "rku_iterative": "q_head",
    }
    assert {composed[row].pruning.protection_rule for row in (*RKU_ROWS, "gisp")} == {"gisp"}
    assert composed["taylor_llmpruner"].pruning.granularity == "kv_group"  # LLM-Pruner's own setting
    for experiment in ("rku_ablation", "rku_calibration"):
        assert OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").pruning.granularity == "none"
        assert compose_run([f"experiment={experiment}"]).pruning.granularity == "none"


def test_resp_tables_wanda_sp_row_is_resps_uniform_baseline() -> None:
    """baseline_uniform_wanda: GISP's layer protection, RESP's per-layer ratio for each target, every token of
    the gold chat rows packed into 256-token windows, layer by layer on the pruned earlier layers."""
    for target, ratio in ((0.2, 0.24), (0.3, 0.36), (0.4, 0.47)):
        run = compose_run(
            ["experiment=resp_table", "+experiment/resp_table_rows=wanda_sp", f"pruning.sparsity={target}"]
        )
        assert run.pruning.layer_ratio() == ratio
        assert (run.pruning.allocation, run.pruning.protection_rule, run.scorer.flow) == (
            "uniform",
            "gisp",
            "sequential",
        )
        assert (run.calibration.name, run.calibration.pack, run.calibration.seqlen) == ("gsm8k_gold_chat", True, 256)


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


def test_rku_traces_is_one_shot_global_rku_on_self_generated_traces() -> None:
    run = compose_run(["scorer=rku_traces"])
    assert (run.scorer.name, run.calibration.name) == ("rku", "self_generated")
    assert (run.pruning.granularity, run.pruning.schedule, run.pruning.regenerate_at) == ("none", "oneshot", [])
