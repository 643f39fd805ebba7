"""Issue 24, section 3: faults that ended in a traceback or an unclear line.

Each is now one line naming the file or field and what to do (exit 2 for bad input, 1 for a runtime
fault), and a cache that would poison later runs is named in a warning and recomputed. Each test
reproduces one reported defect: it fails on the code before the fix (docs/reliability.md section 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_app import run_cli

ITERATIVE = ["model=tiny-llama", "logger=none", "benchmark=none", "scorer=magnitude", "pruning.schedule=iterative"]
ITERATIVE += ["pruning.steps=3", "pruning.sparsity=0.3"]


def one_error_line(err: str) -> str:
    """The one non-blank line of stderr, which must be an ``error:`` line (no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# -- caches that poisoned every later run ----------------------------------------------------------


@pytest.mark.parametrize("damage", [b'{"base_model": "tiny", "removed_at": [', b"{}"], ids=["truncated", "empty"])
def test_a_corrupt_trajectory_cache_is_named_and_recomputed(damage, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RKUPRUNE_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli([*ITERATIVE, f"hydra.run.dir={tmp_path / 'a'}"], monkeypatch, capsys)
    assert code == 0, err
    (cached,) = (tmp_path / "cache" / "trajectories").glob("*.json")
    good = json.loads(cached.read_text())
    cached.write_bytes(damage)
    code, _, err = run_cli([*ITERATIVE, f"hydra.run.dir={tmp_path / 'b'}"], monkeypatch, capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["status"] == "completed" and results["pruning"]["trajectory_cached"] is False
    [warning] = results["warnings"]
    assert warning.startswith(f"trajectory cache {cached} is corrupt (") and warning.endswith("recomputing it")
    assert json.loads(cached.read_text()) == good  # rewritten: the next run reads it again


def truncate_weights(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (truncate_weights, "model.safetensors is not a readable safetensors file"),
        (lambda folder: (folder / "tokenizer.json").write_text('{"model": '), "tokenizer.json is not readable JSON"),
    ],
    ids=["truncated weights", "corrupt tokenizer.json"],
)
def test_a_corrupt_converted_gguf_cache_is_named_and_converted_again(damage, named, tmp_path, monkeypatch) -> None:
    from rkuprune.models import loading
    from rkuprune.tracking.side import take_warnings
    from tests.conftest import stub_gguf_package

    monkeypatch.setenv("RKUPRUNE_CACHE", str(tmp_path / "cache"))
    stub_gguf_package(tmp_path, monkeypatch)
    target = loading.converted_gguf_folder(loading.ModelConfig())
    good = (target / "model.safetensors").read_bytes()
    damage(target)
    assert loading.folder_problem(target) is not None
    assert loading.peek_model(loading.ModelConfig()) is None  # prepare() no longer reads the corrupt folder
    take_warnings()
    assert loading.converted_gguf_folder(loading.ModelConfig()) == target
    (warning,) = take_warnings()
    assert warning.startswith(f"GGUF cache {target}: {target}/{named}") and warning.endswith(
        "converting the GGUF again"
    )
    assert loading.folder_problem(target) is None and (target / "model.safetensors").read_bytes() == good
    assert not list(target.parent.glob("*.corrupt*"))


# -- model.path folders ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama as save_pretrained writes it (what model.path points at), with a byte tokenizer."""
    from rkuprune.models.tokenizer import byte_tokenizer
    from tests.conftest import tiny

    folder = tmp_path_factory.mktemp("plain") / "model"
    tiny("tiny-llama").model.save_pretrained(folder, safe_serialization=True)
    byte_tokenizer().save_pretrained(folder)
    return folder


def edit_config(change) -> object:
    def apply(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))

    return apply


def empty(folder: Path) -> None:
    for file in folder.iterdir():
        file.unlink()


def pickle_only(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def saved_by_save_pruned(folder: Path) -> None:
    edit_config(lambda c: c.update(rkuprune_layers=[]))(folder)
    (folder / "pruning_plan.json").write_text("{}")


MODEL_PATH_FAULTS = {
    "empty folder": (empty, "has no config.json; point it at a folder written by save_pretrained"),
    "unknown model_type": (
        edit_config(lambda c: c.update(model_type="no-such-model")),
        "config.json: model_type 'no-such-model' is not one transformers",
    ),
    "truncated safetensors": (truncate_weights, "model.safetensors is not a readable safetensors file ("),
    "written by save_pruned": (saved_by_save_pruned, "load it with rkuprune.load_pruned; re-pruning a pruned model"),
    "nested auto_map": (
        edit_config(lambda c: c.update(text_config={"auto_map": {"AutoConfig": "x.Y"}})),
        "config.json: 'auto_map' asks to run the folder's own Python code",
    ),
    "pickle-only weights": (pickle_only, "holds only pickle weights (pytorch_model.bin), which rkuprune never loads"),
}


@pytest.mark.parametrize("fault", list(MODEL_PATH_FAULTS))
def test_a_model_path_folder_that_cannot_load_is_one_line(fault, plain_folder, tmp_path, monkeypatch, capsys) -> None:
    import shutil

    damage, message = MODEL_PATH_FAULTS[fault]
    folder = shutil.copytree(plain_folder, tmp_path / "model")
    damage(folder)
    args = ["model=tiny-llama", "model.source=hub", f"model.path={folder}", "logger=none", "benchmark=none"]
    code, _, err = run_cli([*args, "scorer=magnitude", f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith("error: model.path: ") and message in line, err


def test_a_model_path_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    args = ["model=tiny-llama", "model.source=hub", f"model.path={file}", "logger=none", "benchmark=none"]
    code, _, err = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert (
        code == 2
        and one_error_line(err)
        == f"error: model.path: {file} is a file, not a model folder; point it at a folder with config.json"
    )


# -- load_pruned: transformers' errors named by file ------------------------------------------------


@pytest.fixture(scope="module")
def pruned_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import save_random_pruned

    return save_random_pruned(tmp_path_factory.mktemp("pruned") / "model")


LOAD_PRUNED_FAULTS = {
    "unknown model_type": (edit_config(lambda c: c.update(model_type="no-such-model")), "config.json"),
    "dtype nonsense": (edit_config(lambda c: c.update(dtype="float33")), "config.json"),
    "corrupt tokenizer.json": (lambda f: (f / "tokenizer.json").write_text('{"model": '), "tokenizer.json"),
    "tokenizer.json nested 200,000 deep": (
        lambda f: (f / "tokenizer.json").write_text("[" * 200_000 + "]" * 200_000),
        "tokenizer.json",
    ),
}


@pytest.mark.parametrize("fault", list(LOAD_PRUNED_FAULTS))
def test_load_pruned_names_the_file_transformers_cannot_read(fault, pruned_folder, tmp_path) -> None:
    import shutil

    from rkuprune import load_pruned
    from rkuprune.errors import CheckpointError

    damage, file = LOAD_PRUNED_FAULTS[fault]
    folder = shutil.copytree(pruned_folder, tmp_path / "model")
    damage(folder)
    with pytest.raises(CheckpointError) as caught:
        load_pruned(folder)
    assert str(caught.value).startswith(f"{folder / file}: ") and "\n" not in str(caught.value)


# -- the report over one bad file ------------------------------------------------------------------


def test_the_report_names_and_skips_each_bad_file_and_reports_the_rest(tmp_path, capsys) -> None:
    from rkuprune.report.__main__ import main as report_main
    from rkuprune.tracking.atomic import write_json
    from tests.test_reliability import completed_record

    runs = {name: tmp_path / name for name in ("good", "efficiency", "nested", "plan")}
    for folder in runs.values():
        folder.mkdir()
        write_json(folder / "results.json", completed_record(folder))
    write_json(runs["good"] / "pruning_plan.json", {"base_model": "m", "layers": []})
    write_json(runs["efficiency"] / "results.json", {**completed_record(runs["efficiency"]), "efficiency": "fast"})
    (runs["nested"] / "results.json").write_text("[" * 200_000 + "]" * 200_000)
    (runs["plan"] / "pruning_plan.json").write_text('{"layers": [')
    assert report_main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    assert f"skipped {runs['efficiency'] / 'results.json'}: 'efficiency' is not an object" in err
    assert f"skipped {runs['nested'] / 'results.json'}: not readable JSON (RecursionError" in err
    assert f"skipped {runs['plan'] / 'pruning_plan.json'}: not a readable plan (JSONDecodeError); no picture" in err
    assert "Traceback" not in err and (tmp_path / "report" / "table.md").is_file()


def test_a_bar_or_a_newline_in_the_model_name_keeps_table_md_one_table(tmp_path) -> None:
    from rkuprune.report.collect import collect
    from rkuprune.report.tables import build_table, to_markdown
    from rkuprune.tracking.atomic import write_json
    from tests.test_reliability import completed_record

    record = completed_record(tmp_path)
    record["model"]["name"] = "a|b\nc"
    write_json(tmp_path / "run" / "results.json", record)
    lines = to_markdown(build_table(collect(tmp_path))).split("\n\n")[0].splitlines()
    assert len(lines) == 4  # header, rule, the dense row and the pruned row
    assert {line.replace(r"\|", "").count("|") for line in lines} == {lines[0].count("|")}
    assert r"a\|b c" in lines[2]


# -- bad input: one line naming the field or file --------------------------------------------------


def test_a_calibration_budget_that_cannot_fit_in_memory_is_refused_before_building(
    tmp_path, monkeypatch, capsys
) -> None:
    args = ["model=tiny-llama", "logger=none", "benchmark=none", "scorer=wanda_sp", "calibration=synthetic"]
    code, _, err = run_cli(
        [*args, "calibration.num_tokens=1000000000000", f"hydra.run.dir={tmp_path}"], monkeypatch, capsys
    )
    line = one_error_line(err)
    assert code == 2 and line.startswith("error: calibration.num_tokens: 1000000000000 tokens need about "), err
    assert "more than this machine's" in line and not (tmp_path / "results.json").exists()


def test_a_data_file_that_is_not_utf8_is_named_with_its_line(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "data" / "gsm8k").mkdir(parents=True)
    good = json.dumps({"question": "1+1?", "answer": "#### 2"})
    (tmp_path / "data" / "gsm8k" / "train.jsonl").write_bytes(f"{good}\n{good}\n".encode() + b'{"question": "\xff"}\n')
    args = ["model=tiny-llama", "logger=none", "benchmark=none", "scorer=wanda_sp", "calibration=gsm8k_gold"]
    args += [f"data.root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"]
    code, _, err = run_cli(args, monkeypatch, capsys)
    file = tmp_path / "data" / "gsm8k" / "train.jsonl"
    assert code == 2 and one_error_line(err).startswith(f"error: {file}:3: not UTF-8 text (byte 0xff"), err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.arch.num_hidden_layers=0"], "model.arch.num_hidden_layers: must be a positive integer, got 0"),
        (
            ["model.arch.num_key_value_heads=3"],
            "model.arch.num_key_value_heads: 3 does not divide num_attention_heads 8",
        ),
        (["model.device=tpu"], "model.device: 'tpu' is not a device torch knows; use cpu, cuda or cuda:N"),
        (["model.name=my", "model"], "override 'model' is not KEY=VALUE; a value with spaces must be quoted"),
    ],
    ids=["0 layers", "KV heads do not divide heads", "device tpu", "unquoted spaces"],
)
def test_bad_model_values_and_overrides_are_one_line(args, message, tmp_path, monkeypatch, capsys) -> None:
    base = ["model=tiny-llama", "logger=none", "benchmark=none", "scorer=magnitude"]
    code, _, err = run_cli([*base, *args, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 2 and one_error_line(err).startswith(f"error: {message}"), err
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_read_only_run_folder_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    """As root a folder's mode does not bind, so the refusal the kernel gives others is raised here."""
    run_dir = tmp_path / "locked" / "run"
    real_mkdir = Path.mkdir

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        if self == run_dir or run_dir in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    base = ["model=tiny-llama", "logger=none", "benchmark=none", "scorer=magnitude"]
    code, _, err = run_cli([*base, f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    assert code == 2
    assert one_error_line(err).startswith(f"error: hydra.run.dir: cannot write {run_dir}"), err
    assert one_error_line(err).endswith("(Permission denied); choose a writable folder")
