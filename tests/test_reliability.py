"""Issue 16, sections 1 and 3: no lost or stale results, SIGTERM recorded, bad input refused in one line.

Each test reproduces one reported defect (it fails on the code before the fix)."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from rkuprune import cli, pipeline
from rkuprune.config import register_configs
from rkuprune.evaluation.base import EvalContext
from rkuprune.evaluation.perplexity import perplexity
from rkuprune.models.params import weights_fingerprint
from rkuprune.report.__main__ import main as report_main
from rkuprune.report.collect import collect
from rkuprune.tracking import trackers
from rkuprune.tracking.atomic import write_json
from rkuprune.tracking.records import RunRecord, read_results
from tests.conftest import CONF, REPO, model_config, tiny
from tests.test_app import run_cli

register_configs()
FAST = ["model=tiny-llama", "logger=none", "scorer=magnitude", "benchmark=none"]


def strict_json(path: Path) -> dict:
    """Parse as strict JSON: bare NaN or Infinity is an error."""

    def refuse(name: str) -> None:
        raise ValueError(f"bare {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


# -- section 1: results lost or stale ---------------------------------------------------------------


def test_default_run_folders_of_runs_started_together_differ(monkeypatch) -> None:
    import datetime

    import hydra.core.utils

    instant = datetime.datetime(2026, 1, 1, 12, 0, 0, 123456)

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime.datetime:
            return instant

    monkeypatch.setattr(hydra.core.utils, "datetime", Frozen)  # both runs start in the same microsecond
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        dirs = [compose(config_name="config", return_hydra_config=True).hydra.run.dir for _ in range(2)]
    assert dirs[0] != dirs[1]


def test_a_second_live_run_in_the_same_folder_is_refused(tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    with cli.run_lock(run_dir):  # another run holds the folder
        code, _, err = run_cli([*FAST, f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: hydra.run.dir: {run_dir} is in use by another live run (pid {os.getpid()}); choose another folder"
    ]
    assert not (run_dir / "results.json").exists()


SIGTERM_DURING_LOAD = """
import os, signal, sys
from rkuprune import cli, pipeline
real = pipeline.load_model
def load_then_terminate(cfg):
    loaded = real(cfg)
    os.kill(os.getpid(), signal.SIGTERM)
    return loaded
pipeline.load_model = load_then_terminate
sys.argv = ["rkuprune", *sys.argv[1:]]
cli.main()
"""


def test_sigterm_is_recorded_as_a_failure_and_exits_non_zero(tmp_path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", SIGTERM_DURING_LOAD, *FAST, f"hydra.run.dir={run_dir}"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and "SIGTERM" in results["error"]
    assert "SIGTERM" in proc.stderr.strip().splitlines()[-1]


def test_a_sweep_with_failed_jobs_exits_non_zero_and_counts_them(tmp_path, monkeypatch, capsys) -> None:
    args = [*FAST, "pruning.protected_layers=[0,1,2]", "pruning.sparsity=0.7,0.8", f"hydra.sweep.dir={tmp_path}"]
    code, _, err = run_cli(["--multirun", *args], monkeypatch, capsys)
    assert code == 1
    assert "error: 2 of 2 sweep jobs failed" in err


def test_a_sweep_counts_the_outcomes_of_its_own_jobs_only(tmp_path, monkeypatch) -> None:
    """What the launching process reads back: this sweep's failed and unfinished jobs (one killed before
    it could finish stays "running"), never the outcome an earlier sweep left in the same folder."""
    outcome = cli.SweepOutcome()
    config = SimpleNamespace(hydra=SimpleNamespace(sweep=SimpleNamespace(dir=str(tmp_path))))
    monkeypatch.setenv(cli.SWEEP_ID, "earlier")
    cli.record_outcome(tmp_path / "a", "failed", "an old failure, fixed since")
    outcome.on_multirun_start(config)
    for name, status in [("a", "completed"), ("b", "failed"), ("c", "running")]:
        cli.record_outcome(tmp_path / name, status, "bad value" if status == "failed" else None)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / cli.OUTCOME_FILE.format(sweep=os.environ[cli.SWEEP_ID])).write_text("{trunc")
    outcome.on_multirun_end(config)
    assert cli.SWEEP_ID not in os.environ
    assert len(cli.SweepOutcome.jobs) == 4
    failed = [(Path(job["dir"]).name, job["status"]) for job in cli.SweepOutcome.failed()]
    assert failed == [("b", "failed"), ("c", "running"), ("d", "unreadable")]


@pytest.mark.slow
def test_a_sweep_whose_jobs_run_in_other_processes_still_counts_their_failures(tmp_path, monkeypatch, capsys) -> None:
    """submitit's local launcher runs each job in its own process, as SLURM runs them on other nodes."""
    args = [*FAST, "hydra/launcher=submitit_local", "pruning.sparsity=0.3,0.999", f"hydra.sweep.dir={tmp_path}"]
    code, _, err = run_cli(["--multirun", *args], monkeypatch, capsys)
    assert code == 1
    err = err.strip().splitlines()[-1]
    assert err.startswith("error: 1 of 2 sweep jobs failed or did not finish") and "pruning.sparsity: 0.999" in err
    assert (tmp_path / ".submitit").is_dir()  # the jobs really ran through submitit


def test_a_rerun_that_asks_for_the_model_saves_it(tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    assert run_cli([*FAST, f"hydra.run.dir={run_dir}"], monkeypatch, capsys)[0] == 0
    code, _, err = run_cli([*FAST, f"hydra.run.dir={run_dir}", "save_model=true"], monkeypatch, capsys)
    assert code == 0, err
    assert (run_dir / "model" / "config.json").is_file()


def completed_record(run_dir: Path) -> dict:
    return {
        "status": "completed",
        "config_hash": "h",
        "model": {"name": "m"},
        "pruning": {"scorer": "magnitude", "target_sparsity": 0.2, "measured_sparsity": 0.21},
        "metrics": {"ppl/pydoc@64": 12.5},
        "dense_metrics": {"ppl/pydoc@64": 10.0},
        "config": {"scorer": {"name": "magnitude"}},
    }


MALFORMED = {
    "missing model name": lambda r: r["model"].pop("name"),
    "null metric": lambda r: r["metrics"].update({"ppl/pydoc@64": None}),
    "string metric": lambda r: r["metrics"].update({"ppl/pydoc@64": "12.5"}),
    "missing pruning": lambda r: r.pop("pruning"),
}


@pytest.mark.parametrize("damage", sorted(MALFORMED))
def test_malformed_completed_results_are_named_skipped_by_the_report_and_redone(tmp_path, damage) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    for folder in (good, bad):
        folder.mkdir()
        (folder / "pruning_plan.json").write_text("{}")
    write_json(good / "results.json", completed_record(good))
    record = completed_record(bad)
    MALFORMED[damage](record)
    write_json(bad / "results.json", record)
    found = collect(tmp_path)
    assert [run.path for run in found.runs] == [good / "results.json"]
    assert len(found.skipped) == 1 and found.skipped[0].startswith(f"{bad / 'results.json'}: ")
    assert pipeline.completed_results(bad, "h", save_model=False) is None  # a rerun redoes it
    assert pipeline.completed_results(good, "h", save_model=False) is not None


def test_results_with_non_utf8_bytes_or_bare_nan_are_named_and_redone(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_bytes(b'{"status": "completed", "name": "\xff"}')
    (tmp_path / "b").mkdir()
    text = json.dumps(completed_record(tmp_path)).replace("12.5", "NaN")
    (tmp_path / "b" / "results.json").write_text(text)
    found = collect(tmp_path)
    assert found.runs == [] and len(found.skipped) == 2
    assert all("not readable JSON" in reason for reason in found.skipped)
    assert pipeline.completed_results(tmp_path / "b", "h", save_model=False) is None


def test_non_finite_metrics_are_strict_json_flagged_and_shown_in_the_report(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    record = RunRecord(run_dir, {"scorer": {"name": "magnitude"}}, "h")
    record.update("model", {"name": "m"})
    record.update("pruning", {"scorer": "magnitude", "target_sparsity": 0.5, "measured_sparsity": 0.5})
    record.update("metrics", {"ppl/pydoc@64": math.inf, "acc/synthetic@rkuprune": math.nan})
    record.complete()
    data = strict_json(run_dir / "results.json")
    assert data["metrics"] == {"ppl/pydoc@64": None, "acc/synthetic@rkuprune": None}
    assert data["nonfinite_metrics"] == {"metrics/ppl/pydoc@64": "inf", "metrics/acc/synthetic@rkuprune": "nan"}
    results, problem = read_results(run_dir / "results.json")
    assert problem is None and results["metrics"]["ppl/pydoc@64"] == math.inf
    assert math.isnan(results["metrics"]["acc/synthetic@rkuprune"])
    from rkuprune.report.tables import build_table

    cells = build_table(collect(tmp_path)).body()[1]
    assert "inf" in cells and "nan" in cells
    assert report_main([str(tmp_path)]) == 0
    assert "acc/synthetic@rkuprune, ppl/pydoc@64 not finite" in capsys.readouterr().out


def first_weight(model: nn.Module) -> float:
    return float(next(model.parameters()).detach().flatten()[0])


class CountingTask:
    """Stands in for a task: its metric is the model's first weight, so cached values can be told apart."""

    def __init__(self) -> None:
        self.calls = 0

    def settings(self) -> dict:
        return {"task": "counting"}

    def evaluate(self, model: nn.Module, tokenizer: object, ctx: object) -> dict[str, float]:
        self.calls += 1
        return {"first_weight": first_weight(model)}


def dense_run(task: CountingTask, loaded: object, tmp_path: Path) -> dict[str, float]:
    cfg = SimpleNamespace(model=model_config("tiny-llama"), data=SimpleNamespace(root=None), seed=0, dense_cache=True)
    record = RunRecord(tmp_path / "run", {}, "h")
    return pipeline.evaluate_dense({"t": task}, loaded, cfg, EvalContext(seed=0), record)


def test_the_dense_cache_follows_the_weights_not_the_config(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RKUPRUNE_CACHE", str(tmp_path / "cache"))
    task = CountingTask()
    first, other = tiny("tiny-llama", seed=0), tiny("tiny-llama", seed=1)  # same config, new weights
    assert dense_run(task, first, tmp_path) == {"first_weight": first_weight(first.model)}
    assert dense_run(task, other, tmp_path)["first_weight"] == first_weight(other.model)
    assert task.calls == 2
    dense_run(task, tiny("tiny-llama", seed=0), tmp_path)  # the same weights again: cached
    assert task.calls == 2


def test_a_corrupt_dense_cache_file_is_named_and_recomputed(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("RKUPRUNE_CACHE", str(tmp_path / "cache"))
    task, loaded = CountingTask(), tiny("tiny-llama")
    expected = dense_run(task, loaded, tmp_path)
    [cached] = (tmp_path / "cache" / "dense").glob("*.json")
    cached.write_bytes(b'{"first_weight": 0.1')
    assert dense_run(task, loaded, tmp_path) == expected and task.calls == 2
    assert str(cached) in caplog.text


def test_a_failing_wandb_is_a_logged_warning_and_the_run_goes_on(tmp_path, monkeypatch, caplog) -> None:
    import wandb

    def unreachable(**kwargs: object) -> None:
        raise ConnectionError("no route to host")

    monkeypatch.setattr(wandb, "init", unreachable)
    tracker = trackers.WandbTracker(trackers.LoggerConfig())
    with caplog.at_level(logging.WARNING, logger=trackers.__name__):
        tracker.start(tmp_path, {}, name="run", group=None, tags=[])
    tracker.log_summary({"acc/synthetic@rkuprune": 0.5})
    tracker.finish()
    assert tracker.run is None
    assert "W&B init failed (ConnectionError: no route to host); the run continues without it" in caplog.text


def test_the_weights_fingerprint_sees_one_changed_weight() -> None:
    model = tiny("tiny-llama").model
    before = weights_fingerprint(model)
    assert weights_fingerprint(tiny("tiny-llama").model) == before
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight[5, 7] += 1e-3
    assert weights_fingerprint(model) != before


def test_files_and_folders_follow_the_umask(tmp_path) -> None:
    from rkuprune.models.adapters import adapter_for
    from rkuprune.models.io import save_pruned
    from rkuprune.models.plan import PruningPlan
    from rkuprune.models.surgery import apply_plan

    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "r.json", {"a": 1})
        loaded = tiny("tiny-llama")
        plan = PruningPlan.dense(adapter_for(loaded.model).structures(), base_model="tiny")
        apply_plan(loaded.model, plan, "slice")
        save_pruned(loaded.model, None, plan, tmp_path / "model")
    finally:
        os.umask(previous)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "model" / "pruning_plan.json").stat().st_mode & 0o777 == 0o644


# -- section 3: user errors --------------------------------------------------------------------------


class HugeLoss(nn.Module):
    """Logits that put (almost) no mass on the next token: mean NLL about 1e4 nats."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        logits = torch.zeros(*input_ids.shape, 8)
        logits.scatter_(-1, input_ids.roll(-1, dims=1).unsqueeze(-1), -1e4)
        return SimpleNamespace(logits=logits)


def test_a_mean_nll_past_709_reports_infinite_perplexity() -> None:
    ids = torch.arange(64) % 8
    assert perplexity(HugeLoss(), ids, seqlen=16, max_windows=None, batch_size=2) == math.inf


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["benchmark.tasks.ppl_pydoc.max_windows=0"], "benchmark.tasks.ppl_pydoc.max_windows: must be at least 1"),
        (["benchmark.tasks.ppl_pydoc.max_windows=-3"], "benchmark.tasks.ppl_pydoc.max_windows: must be at least 1"),
        (["+benchmark.tasks.ppl_pydoc.batch_size=0"], "benchmark.tasks.ppl_pydoc.batch_size: must be at least 1"),
        (
            ["benchmark.tasks.ppl_pydoc.batch_size=2"],
            "benchmark.tasks.ppl_pydoc.batch_size: this preset does not set it; add it with "
            "+benchmark.tasks.ppl_pydoc.batch_size=VALUE",
        ),
        (["model.attn_implementation=foo"], "model.attn_implementation: 'foo' is not one of eager, sdpa"),
        (["calibration.seqlen=0"], "calibration.seqlen: must be at least 1 token, got 0"),
        (["calibration=pydoc", "calibration.seqlen=-5"], "calibration.seqlen: must be at least 1 token, got -5"),
        (
            ["+benchmark.tasks.again={task:perplexity,dataset:pydoc,seqlen:256}"],
            "benchmark.tasks.again: writes 'ppl/pydoc@256' like benchmark.tasks.ppl_pydoc",
        ),
        (
            ["+benchmark.tasks.more={task:synthetic,num_problems:5,shots:0}"],
            "benchmark.tasks.more: writes 'acc/synthetic@rkuprune' like benchmark.tasks.synthetic",
        ),
        (
            ["model.arch.max_position_embeddings=512"],
            "benchmark.tasks.synthetic.shots: the longest prompt (",
        ),
    ],
)
def test_bad_input_fails_in_one_line_before_the_model_loads(args, message, tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["model=tiny-llama", "logger=none", f"hydra.run.dir={run_dir}", *args], monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert lines == [lines[0]] and lines[0].startswith(f"error: {message}"), err
    assert not (run_dir / "results.json").exists()


def test_a_run_dir_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    code, _, err = run_cli([*FAST, f"hydra.run.dir={taken}"], monkeypatch, capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"error: hydra.run.dir: {taken} is a file, not a folder; choose another path"]


@pytest.mark.slow
def test_a_tiny_model_runs_the_default_benchmark(tmp_path, monkeypatch, capsys) -> None:
    """The default suite's 2-shot synthetic prompt (~520 byte tokens) once outgrew the tiny models' context."""
    run_dir = tmp_path / "run"
    args = ["model=tiny-llama", "logger=none", "scorer=magnitude", "benchmark.tasks.synthetic.num_problems=4"]
    args.append("benchmark.tasks.ppl_pydoc.max_windows=1")
    code, _, err = run_cli([*args, f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    assert code == 0, err
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert set(metrics) == {
        "ppl/pydoc@256",
        "acc/synthetic@rkuprune",
        "acc/synthetic@rkuprune/strict",
        "acc/synthetic@rkuprune/lenient",
    }
