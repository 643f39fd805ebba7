"""The Hydra app: every shipped config composes, the CLI writes complete records, bad input fails in one line."""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rkuprune import cli, load_pruned
from rkuprune.config import RunConfig, register_configs
from rkuprune.data.calibration import CALIBRATION_SOURCES
from rkuprune.errors import ConfigError
from rkuprune.evaluation.base import build_tasks
from rkuprune.models.tokenizer import byte_tokenizer
from rkuprune.scoring import SCORERS
from tests.conftest import CONF
from tests.wandb_records import offline_summary

register_configs()
HUB_ONLY_BENCHMARKS = {"commonsense", "paper"}
GROUPS = ("model", "scorer", "calibration", "pruning", "benchmark", "logger", "recovery", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_run(overrides: list[str]) -> RunConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_object(cfg)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_shipped_config_composes_and_validates(group: str, option: str) -> None:
    run = compose_run([f"{group}={option}"])
    assert isinstance(run, RunConfig)
    SCORERS.build(run.scorer)
    if group == "pruning":
        run.pruning.check()


def pairwise_combinations(*axes: list[str]) -> list[tuple[str, ...]]:
    """Combinations in which every pair of options from two different axes occurs at least once.

    Config groups interact through their defaults and interpolations, pair by pair; covering all pairs
    catches those interactions in ~100 compositions instead of the full product's ~800 (160 s).
    """
    first, second, *rest = axes
    combinations = [
        (a, b, *(axis[(i + j) % len(axis)] for axis in rest)) for i, a in enumerate(first) for j, b in enumerate(second)
    ]
    for x, y in itertools.combinations(range(len(axes)), 2):
        covered = {(c[x], c[y]) for c in combinations}
        for pair in itertools.product(axes[x], axes[y]):
            if pair not in covered:
                combination = [axis[0] for axis in axes]
                combination[x], combination[y] = pair
                combinations.append(tuple(combination))
    return combinations


def test_pairwise_combinations_cover_every_pair() -> None:
    axes = (["m1", "m2", "m3"], ["s1", "s2"], ["b1", "b2", "b3", "b4"])
    combinations = pairwise_combinations(*axes)
    for x, y in itertools.combinations(range(3), 2):
        assert {(c[x], c[y]) for c in combinations} == set(itertools.product(axes[x], axes[y]))


def test_every_model_scorer_benchmark_pair_composes() -> None:
    combinations = pairwise_combinations(options("model"), options("scorer"), options("benchmark"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # once: the costly part
        configs = [
            compose(config_name="config", overrides=[f"model={m}", f"scorer={s}", f"benchmark={b}"])
            for m, s, b in combinations
        ]
    for (model, scorer, benchmark), cfg in zip(combinations, configs, strict=True):
        run = OmegaConf.to_object(cfg)
        assert run.model.name == OmegaConf.load(CONF / "model" / f"{model}.yaml").name
        assert run.benchmark.name == benchmark
        assert SCORERS.build(run.scorer).cfg.name == scorer_run_by(scorer)


def scorer_run_by(option: str) -> str:
    """The registered scorer a scorer option runs: itself, or for a preset such as rku_iterative the one
    its defaults list pulls in (``/scorer/rku``), inside another schedule or allocation."""
    found = re.search(r"^  - /scorer/(\w+)", (CONF / "scorer" / f"{option}.yaml").read_text(), re.MULTILINE)
    return found.group(1).removesuffix("_schema") if found else option


def test_the_top_level_seed_draws_calibration_unless_calibration_seed_is_set() -> None:
    """A sweep over ``seed`` must resample calibration (Wanda's ``--seed`` does); before, only torch
    followed it and three "seeds" scored the same windows."""

    def windows(overrides: list[str]) -> tuple[int | None, list[list[int]]]:
        run = compose_run(["calibration=synthetic", "calibration.num_tokens=512", "calibration.seqlen=64", *overrides])
        built = CALIBRATION_SOURCES.build(run.calibration).build(byte_tokenizer(), run.data)
        return built.provenance["seed"], built.input_ids.tolist()

    seed0, seed1, pinned = windows(["seed=0"]), windows(["seed=1"]), windows(["seed=1", "calibration.seed=0"])
    assert (seed0[0], seed1[0], pinned[0]) == (0, 1, 0)
    assert seed0[1] != seed1[1] and pinned[1] == seed0[1]


def test_every_benchmark_builds_its_tasks_with_local_data(tmp_path) -> None:
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    for benchmark in options("benchmark"):
        run = compose_run([f"benchmark={benchmark}", f"data.root={SHARED_DATA}"])
        if benchmark in HUB_ONLY_BENCHMARKS:  # the commonsense suite has no local files: refused offline
            with pytest.raises(ConfigError, match="hub is offline"):
                build_tasks(run.benchmark, run.data)
        else:
            build_tasks(run.benchmark, run.data)


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["rkuprune", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


RESULT_KEYS = {
    "status": None,
    "model": {"name", "params_total_before", "params_total_after", "params_prunable_before", "params_prunable_after"},
    "pruning": {"scorer", "target_sparsity", "measured_sparsity", "granularity", "allocation", "removed_q_heads"},
    "metrics": None,
    "dense_metrics": None,
    "efficiency": {"load_s", "calibration_s", "score_s", "prune_s", "eval_s", "task_s"},
    "versions": None,
    "config": None,
}


@pytest.mark.slow
def test_cli_end_to_end_writes_complete_records(tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    code, out, err = run_cli(
        [
            "model=tiny-qwen3",
            "scorer=magnitude",
            "pruning.sparsity=0.3",
            "logger=wandb",
            "logger.mode=offline",
            "save_model=true",
            "benchmark.tasks.ppl_pydoc.seqlen=64",
            "benchmark.tasks.synthetic=null",  # generation is slow; test_reliability runs the default suite
            f"hydra.run.dir={run_dir}",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    for key, inner in RESULT_KEYS.items():
        assert key in results
        if inner:
            assert inner <= set(results[key]), key
    assert results["status"] == "completed"
    assert results["pruning"]["measured_sparsity"] >= 0.3
    assert results["metrics"]["ppl/pydoc@64"] > 1 and results["dense_metrics"]["ppl/pydoc@64"] > 1
    assert results["config"]["pruning"]["sparsity"] == 0.3
    task_s = results["efficiency"]["task_s"]  # each task's wall time, within the evaluation's
    assert set(task_s) == {"ppl_pydoc"} and 0 < task_s["ppl_pydoc"] <= results["efficiency"]["eval_s"]
    assert (run_dir / "pruning_plan.json").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert "ppl/pydoc@64" in out and str(run_dir / "results.json") in out
    model, _ = load_pruned(run_dir / "model")
    assert sum(p.numel() for p in model.parameters()) == results["model"]["params_total_after"]
    summary = offline_summary(run_dir / "wandb")
    assert summary["ppl/pydoc@64"] == pytest.approx(results["metrics"]["ppl/pydoc@64"])
    assert summary["pruning/measured_sparsity"] == pytest.approx(results["pruning"]["measured_sparsity"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pruning.sparsity=1.2"], "error: pruning.sparsity: 1.2 is outside [0, 0.95]"),
        (["pruning.sparsity=abc"], "error: pruning.sparsity: Value 'abc' of type 'str' could not be converted"),
        (["scorer=nope"], "error: scorer: no option 'nope'; choose one of: "),
        (["pruning.granularity=heads"], "error: pruning.granularity: 'heads' is not one of q_head, kv_group, none"),
        (
            ["model=qwen2.5-7b", "model.device=cpu"],
            "error: model.path: 'Qwen/Qwen2.5-7B' is not a local folder and the hub is offline",
        ),
        (["benchmark=ppl"], "error: data.root: benchmark.tasks.ppl_wikitext2.dataset=wikitext2 needs wikitext2/test"),
        (
            ["benchmark=ppl", "data.root=/nonexistent"],
            "error: data.root: /nonexistent/wikitext2/wiki.test.raw is missing",
        ),
        (["calibration=q16k", "scorer=magnitude", "benchmark=none", "pruning.sparsity=0.7"], None),
    ],
)
def test_bad_input_is_one_line_naming_the_field(args, message, tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["model=tiny-llama", "logger=none", f"hydra.run.dir={run_dir}", *args], monkeypatch, capsys)
    if message is None:  # a valid run (calibration is not built for a data-free scorer)
        assert code == 0, err
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert lines == [lines[0]] and lines[0].startswith(message), err
    assert not (run_dir / "results.json").exists()  # refused before any model was loaded


def test_an_impossible_target_fails_right_after_loading(tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["model=tiny-llama", "logger=none", f"hydra.run.dir={run_dir}", "pruning.protected_layers=[0,1,2]"]
    code, _, err = run_cli([*args, "pruning.sparsity=0.6"], monkeypatch, capsys)
    assert code == 2
    assert err.strip() == err.strip().splitlines()[0] and err.startswith("error: pruning.sparsity: 0.6 cannot be met")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and results["dense_metrics"] == {} and "score_s" not in results["efficiency"]


def test_a_run_failing_after_start_records_why(tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    code, _, err = run_cli(
        ["model=tiny-llama", "logger=none", f"hydra.run.dir={run_dir}", "benchmark.tasks.ppl_pydoc.seqlen=100000"],
        monkeypatch,
        capsys,
    )
    assert code == 2 and "seqlen" in err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and "seqlen" in results["error"]


def test_results_are_written_atomically(tmp_path) -> None:
    from rkuprune.tracking.atomic import write_json

    write_json(tmp_path / "r.json", {"a": 1})
    write_json(tmp_path / "r.json", {"a": 2})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 2}
    assert [p.name for p in Path(tmp_path).iterdir()] == ["r.json"]
