"""Sweeps rerun only what is unfinished; reports rebuild tables and plots from the results files."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from rkuprune import cli, pipeline
from rkuprune.config import job_dirname
from rkuprune.models.adapters import adapter_for
from rkuprune.report.__main__ import main as report_main
from rkuprune.report.collect import collect, variant_label
from rkuprune.report.plots import read_series
from rkuprune.report.tables import shown
from tests.conftest import CONF, tiny

pytestmark = pytest.mark.slow
METRIC = "ppl/pydoc@64"


def multirun(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    monkeypatch.setattr(sys, "argv", ["rkuprune", "--multirun", *args])
    cli.main()
    return capsys.readouterr().out


def sweep_args(sweep_dir: Path, model: str = "tiny-llama") -> list[str]:
    return [
        f"model={model}",
        "scorer=random,magnitude",
        "pruning.sparsity=0.2,0.4",
        "logger=none",
        "benchmark=none",
        "benchmark.speed.enabled=false",
        "+benchmark.tasks.ppl={task:perplexity,dataset:pydoc,seqlen:64,max_windows:2}",
        f"hydra.sweep.dir={sweep_dir}",
    ]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sweep")


def results_of(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("results.json"))]


def test_sweep_writes_one_result_per_job_and_a_rerun_skips_them(sweep: Path, monkeypatch, capsys) -> None:
    multirun(sweep_args(sweep), monkeypatch, capsys)
    results = results_of(sweep)
    assert len(results) == 4 and {r["status"] for r in results} == {"completed"}
    assert {(r["pruning"]["scorer"], r["pruning"]["target_sparsity"]) for r in results} == {
        (s, t) for s in ("random", "magnitude") for t in (0.2, 0.4)
    }

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished job loaded a model")

    monkeypatch.setattr(pipeline, "load_model", no_loading)
    out = multirun(sweep_args(sweep), monkeypatch, capsys)
    assert out.count("skipped:") == 4


def test_a_failed_job_is_redone(sweep: Path, monkeypatch, capsys) -> None:
    path = sorted(sweep.rglob("results.json"))[0]
    data = json.loads(path.read_text())
    data["status"] = "failed"
    path.write_text(json.dumps(data))
    out = multirun(sweep_args(sweep), monkeypatch, capsys)
    assert out.count("skipped:") == 3
    assert json.loads(path.read_text())["status"] == "completed"


def test_report_tables_and_plots_hold_the_results(sweep: Path, capsys) -> None:
    assert report_main([str(sweep)]) == 0
    out_dir = sweep / "report"
    assert f"-> {out_dir}/table.md" in capsys.readouterr().out
    rows = list(csv.reader((out_dir / "table.csv").read_text().splitlines()))
    header, body = rows[0], {row[1]: row for row in rows[1:]}
    for result in results_of(sweep):
        column = header.index(f"s={result['pruning']['target_sparsity']:g} {METRIC}")
        assert body[result["pruning"]["scorer"]][column] == shown(METRIC, result["metrics"][METRIC])
        assert body["dense"][column] == shown(METRIC, result["dense_metrics"][METRIC])
    (png,) = list(out_dir.glob("*ppl_pydoc*.png"))  # one plot per metric; the speedups have their own
    series = read_series(png)
    assert sorted(series["series"]) == ["magnitude", "random"]
    for result in results_of(sweep):
        points = series["series"][result["pruning"]["scorer"]]
        assert [result["pruning"]["measured_sparsity"], result["metrics"][METRIC]] in points
    assert series["dense"] == pytest.approx(results_of(sweep)[0]["dense_metrics"][METRIC])
    assert (out_dir / "table.tex").read_text().startswith("\\begin{tabular}")
    assert "| tiny-llama | dense |" in (out_dir / "table.md").read_text()
    # by_metric.md: the same cells, one section (and table) per metric
    section = (out_dir / "by_metric.md").read_text().split(f"## {METRIC}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| tiny-llama |")]
    cells = {line.split(" | ")[1]: line.strip("| ").split(" | ")[2:] for line in lines}
    for result in results_of(sweep):
        assert shown(METRIC, result["metrics"][METRIC]) in cells[result["pruning"]["scorer"]]


def test_report_passes_over_a_corrupt_file_and_names_it(sweep: Path, tmp_path, capsys) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("report"))
    broken = sorted(copy.rglob("results.json"))[0]
    broken.write_text("{not json")
    assert report_main([str(copy)]) == 0
    captured = capsys.readouterr()
    assert f"skipped {broken}: not readable JSON" in captured.err
    assert "3 runs ->" in captured.out


def test_report_with_no_results_says_so(tmp_path, capsys) -> None:
    assert report_main([str(tmp_path)]) == 1
    assert f"error: no completed results.json under {tmp_path}" in capsys.readouterr().err


def test_report_over_several_models_makes_rows_and_plots_per_model(sweep: Path, tmp_path, monkeypatch, capsys) -> None:
    import shutil

    both = tmp_path / "both"
    shutil.copytree(sweep, both / "llama", ignore=shutil.ignore_patterns("report"))
    multirun(sweep_args(both / "qwen2", model="tiny-qwen2"), monkeypatch, capsys)
    assert report_main([str(both)]) == 0
    assert "note: 2 models (tiny-llama, tiny-qwen2)" in capsys.readouterr().out
    assert sorted(p.name for p in (both / "report").glob("*ppl_pydoc*.png")) == [
        "tiny-llama__ppl_pydoc_64.png",
        "tiny-qwen2__ppl_pydoc_64.png",
    ]


def test_slurm_launcher_configs_compose() -> None:
    """Both SLURM launchers compose: the GPU cluster one and the one-node CPU cluster of scripts/slurm_local.sh."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        gpu = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        local = compose(config_name="config", overrides=["hydra/launcher=slurm_local"], return_hydra_config=True)
    assert gpu.hydra.launcher._target_.endswith("SlurmLauncher")
    assert gpu.hydra.launcher.gpus_per_node == 1
    assert local.hydra.launcher._target_.endswith("SlurmLauncher")
    assert local.hydra.launcher.partition == "cpu" and local.hydra.launcher.gpus_per_node is None


def test_job_folder_names_fit_a_file_name_and_stay_stable() -> None:
    short = "model=tiny-llama,pruning.sparsity=0.2"
    assert job_dirname(short) == short
    long = ",".join(f"recovery.field_{i}=value_{i}" for i in range(20))
    name = job_dirname(long)
    assert len(name.encode()) <= 200 and name.startswith("recovery.field_0=value_0")
    assert job_dirname(long) == name  # a rerun finds the same folder
    assert job_dirname(long.replace("value_19", "value_X")) != name


def test_a_sweep_with_long_overrides_runs_and_a_rerun_skips_it(tmp_path, monkeypatch, capsys) -> None:
    """A GISP + LoRA sweep's overrides once made a folder name longer than 255 bytes (OSError)."""
    args = [*sweep_args(tmp_path / "long"), "scorer=random", "pruning.sparsity=0.2", f"+tags=[{'x' * 260}]"]
    multirun(args, monkeypatch, capsys)
    (result,) = [p for p in (tmp_path / "long").rglob("results.json")]
    assert len(result.parent.name.encode()) <= 200
    assert json.loads(result.read_text())["status"] == "completed"
    assert multirun(args, monkeypatch, capsys).count("skipped:") == 1


def test_a_switched_config_group_is_labelled_by_its_name_and_its_own_differences() -> None:
    def run(granularity: str, recovery: str, **fields: object) -> dict[str, object]:
        return {
            "pruning.granularity": granularity,
            "recovery.name": recovery,
            **{f"recovery.{k}": v for k, v in fields.items()},
        }

    plain = run("q_head", "none")
    short = run("q_head", "lora", steps=80, rank=8)
    long = run("q_head", "lora", steps=200, rank=8)
    layer = run("layer", "none")
    peers = [plain, short, long, layer]
    assert variant_label(plain, peers) == "granularity=q_head, recovery=none"
    assert variant_label(short, peers) == "granularity=q_head, recovery=lora, steps=80"
    assert variant_label(long, peers) == "granularity=q_head, recovery=lora, steps=200"
    assert variant_label(layer, peers) == "granularity=layer, recovery=none"
    assert variant_label(plain, [plain]) == ""


def test_a_run_is_labelled_by_its_scorer_preset(sweep: Path, tmp_path) -> None:
    """scorer=rku_iterative composes scorer.name=rku: the report names the preset, read from Hydra's record."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    hydra_files = sorted(copy.glob("*scorer=random*/.hydra/hydra.yaml"))
    assert hydra_files, "the sweep fixture keeps Hydra's record beside each results.json"
    for hydra_file in hydra_files:
        record = yaml.safe_load(hydra_file.read_text())
        assert record["hydra"]["runtime"]["choices"]["scorer"] == "random"
        record["hydra"]["runtime"]["choices"]["scorer"] = "random_preset"
        hydra_file.write_text(yaml.safe_dump(record))
    runs = collect(copy).runs
    assert {(r.scorer, r.label) for r in runs} == {("random", "random_preset"), ("magnitude", "magnitude")}
    for folder in copy.glob("*scorer=magnitude*"):
        shutil.rmtree(folder / ".hydra")
    assert {r.label for r in collect(copy).runs} == {"random_preset", "magnitude"}  # no record: the scorer's name


def test_rows_that_prune_different_units_say_so_and_count_the_heads_removed(tmp_path, monkeypatch, capsys) -> None:
    """RKU on channels beside a scorer that also cuts heads: the labels name each row's granularity, the
    heads column counts what the plan removed (heads and channels account for every parameter freed)."""
    base = [a for a in sweep_args(tmp_path / "mixed") if not a.startswith(("scorer=", "pruning.sparsity="))]
    multirun([*base, "scorer=random", "pruning.sparsity=0.3", "pruning.granularity=q_head"], monkeypatch, capsys)
    multirun([*base, "scorer=magnitude", "pruning.sparsity=0.3", "pruning.granularity=none"], monkeypatch, capsys)
    collection = collect(tmp_path / "mixed")
    labels = {r.scorer: r.label for r in collection.runs}
    assert labels == {"random": "random (granularity=q_head)", "magnitude": "magnitude (granularity=none)"}
    s = adapter_for(tiny("tiny-llama").model).structures()[0]
    for run in collection.runs:
        result = json.loads(run.path.read_text())
        pruning, model = result["pruning"], result["model"]
        freed = pruning["removed_q_heads"] * s.q_head_cost + pruning["removed_mlp_channels"] * s.channel_cost
        assert freed == model["params_prunable_before"] - model["params_prunable_after"]
        if run.scorer == "random":
            assert run.metrics["removed/q_heads"] == pruning["removed_q_heads"] > 0
        else:
            assert "removed/q_heads" not in run.metrics and pruning["removed_q_heads"] == 0


def seed_stats(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def test_runs_differing_only_in_seeds_share_a_cell_as_mean_sd_and_n(tmp_path, monkeypatch, capsys) -> None:
    """A sweep seed=0,1 model.seed=0,1 once became one row showing the last run: now the cell holds the mean,
    the sample sd and n of the four runs, the dense row those of the two dense models, the plot the same."""
    base = [a for a in sweep_args(tmp_path / "seeds") if not a.startswith(("scorer=", "pruning.sparsity="))]
    multirun([*base, "scorer=random", "pruning.sparsity=0.3", "seed=0,1", "model.seed=0,1"], monkeypatch, capsys)
    results = results_of(tmp_path / "seeds")
    assert len(results) == 4 and len({r["metrics"][METRIC] for r in results}) > 1
    assert report_main([str(tmp_path / "seeds")]) == 0
    rows = list(csv.reader((tmp_path / "seeds" / "report" / "table.csv").read_text().splitlines()))
    assert [row[1] for row in rows[1:]] == ["dense", "random"]
    column = rows[0].index(f"s=0.3 {METRIC}")
    mean, sd = seed_stats([r["metrics"][METRIC] for r in results])
    assert rows[2][column] == f"{shown(METRIC, mean)} ± {shown(METRIC, sd)} (n=4)"
    dense_by_weights = {r["config"]["model"]["seed"]: r["dense_metrics"][METRIC] for r in results}
    assert len(set(dense_by_weights.values())) == 2
    dense_mean, dense_sd = seed_stats(list(dense_by_weights.values()))
    assert rows[1][column] == f"{shown(METRIC, dense_mean)} ± {shown(METRIC, dense_sd)} (n=2)"
    by_metric = (tmp_path / "seeds" / "report" / "by_metric.md").read_text()
    assert f"| tiny-llama | random | {shown(METRIC, mean)} ± {shown(METRIC, sd)} (n=4) |" in by_metric
    (png,) = list((tmp_path / "seeds" / "report").glob("*ppl_pydoc*.png"))
    series = read_series(png)
    measured = sum(r["pruning"]["measured_sparsity"] for r in results) / 4
    assert series["series"]["random"] == [[pytest.approx(measured), pytest.approx(mean)]]
    assert series["sd"]["random"] == [[pytest.approx(measured), pytest.approx(sd), 4]]
    assert series["dense"] == pytest.approx(dense_mean)


def test_runs_differing_in_a_hidden_field_get_rows_of_their_own(sweep: Path, tmp_path) -> None:
    """Two runs that differ only in data.root (a field the labels never show) once shared a cell, the last
    one read winning: each now has a row labelled by the field, and so has each dense reference."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("report"))
    original = next(p for p in sorted(copy.rglob("results.json")) if "scorer=random" in str(p))
    twin = copy / "twin" / "results.json"
    shutil.copytree(original.parent, twin.parent)
    data = json.loads(twin.read_text())
    data["config"]["data"]["root"] = "/elsewhere"
    data["metrics"][METRIC] += 1.0
    data["dense_metrics"][METRIC] += 2.0
    twin.write_text(json.dumps(data))
    collection = collect(copy)
    labels = {r.path: r.label for r in collection.runs}
    assert labels[twin] == "random (data.root=/elsewhere)" and labels[original] == "random (data.root=None)"
    assert report_main([str(copy)]) == 0
    rows = list(csv.reader((copy / "report" / "table.csv").read_text().splitlines()))
    column = rows[0].index(f"s={data['pruning']['target_sparsity']:g} {METRIC}")
    body = {row[1]: row for row in rows[1:]}
    assert body["random (data.root=/elsewhere)"][column] == shown(METRIC, data["metrics"][METRIC])
    first = json.loads(original.read_text())
    assert body["random (data.root=None)"][column] == shown(METRIC, first["metrics"][METRIC])
    assert body["dense (data.root=/elsewhere)"][column] == shown(METRIC, data["dense_metrics"][METRIC])
    assert body["dense (data.root=None)"][column] == shown(METRIC, first["dense_metrics"][METRIC])
    assert "±" not in (copy / "report" / "table.md").read_text()
