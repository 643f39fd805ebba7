"""Issue 24, section 1: a side artifact that fails (the plan picture, a cache, W&B) is a warning in
results.json, never a lost run; calibration longer than the context is refused; saved weights follow
the umask. Each test fails on the code before its fix."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import matplotlib.figure
import pytest

from rkuprune.data.calibration import CALIBRATION_SOURCES, CalibrationConfig
from rkuprune.errors import ConfigError
from rkuprune.models import loading
from rkuprune.models.adapters import adapter_for
from rkuprune.models.io import save_pruned
from rkuprune.models.loading import ModelConfig
from rkuprune.models.plan import PruningPlan
from rkuprune.models.surgery import apply_plan
from rkuprune.models.tokenizer import byte_tokenizer
from rkuprune.tracking import atomic
from rkuprune.tracking.side import take_warnings
from tests.conftest import stub_gguf_package, tiny
from tests.test_app import run_cli

RUN = [
    "model=tiny-llama",
    "logger=none",
    "scorer=magnitude",
    "benchmark=none",
    "benchmark.speed.enabled=false",
    "+benchmark.tasks.ppl={task:perplexity,dataset:pydoc,seqlen:64,max_windows:2}",
]


def test_a_full_disk_at_the_plan_picture_keeps_the_metrics_and_records_a_warning(tmp_path, monkeypatch, capsys) -> None:
    """Disk full while drawing pruning_plan.png once made results.json say failed, with metrics {}."""

    def disk_full(self: object, path: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full)
    run_dir = tmp_path / "run"
    code, _, err = run_cli([*RUN, f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and set(results["metrics"]) == {"ppl/pydoc@64"}
    (warning,) = results["warnings"]
    assert warning.startswith(f"plan picture {run_dir / 'pruning_plan.png'}: not written (OSError: ")
    assert "No space left on device" in warning and (run_dir / "pruning_plan.json").is_file()


def test_a_read_only_cache_is_a_warning_and_the_run_goes_on(tmp_path, monkeypatch, capsys) -> None:
    """A read-only ~/.cache/rkuprune (or RKUPRUNE_CACHE) once failed every run right after the dense evaluation."""
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    monkeypatch.setenv("RKUPRUNE_CACHE", str(cache))
    if os.access(cache, os.W_OK):  # root: the mode does not stop it, so the write refuses as the folder would
        real = atomic.write_text

        def read_only(path: str | Path, text: str) -> None:
            if Path(path).is_relative_to(cache):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            real(path, text)

        monkeypatch.setattr(atomic, "write_text", read_only)
    run_dir = tmp_path / "run"
    try:
        code, _, err = run_cli([*RUN, "dense_cache=true", f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    finally:
        cache.chmod(0o755)
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and "ppl/pydoc@64" in results["dense_metrics"]
    (warning,) = results["warnings"]
    assert warning.startswith(f"dense-metric cache {cache / 'dense'}") and "PermissionError" in warning
    assert not list(cache.rglob("*.json"))


def test_calibration_longer_than_the_context_is_one_line_before_loading(tmp_path, monkeypatch, capsys) -> None:
    """calibration.seqlen=2048 on a 1024-token model once scored windows past the context, silently."""
    run_dir = tmp_path / "run"
    args = ["model=tiny-llama", "logger=none", "scorer=wanda_sp", "benchmark=none", "calibration=pydoc"]
    args += ["calibration.seqlen=2048", "calibration.num_tokens=4096", f"hydra.run.dir={run_dir}"]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2
    assert err.strip().splitlines() == ["error: calibration.seqlen: 2048 exceeds the model's context of 1024 tokens"]
    assert not (run_dir / "results.json").exists()
    source = CALIBRATION_SOURCES.build(CalibrationConfig(name="synthetic", seqlen=1025), "calibration")
    with pytest.raises(ConfigError, match=r"^calibration\.seqlen: 1025 exceeds the model's context of 1024 tokens$"):
        source.check_model(1024)  # the check on the loaded model, for models that cannot be peeked at
    source.check_model(None)  # an unknown context is not refused


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]}


def test_saved_and_converted_weights_follow_the_umask(tmp_path, monkeypatch) -> None:
    """model/model.safetensors (and the converted GGUF cache's copy) were 0600 under umask 022."""
    monkeypatch.setenv("RKUPRUNE_CACHE", str(tmp_path / "cache"))
    stub_gguf_package(tmp_path, monkeypatch)
    previous = os.umask(0o022)
    try:
        loaded = tiny("tiny-llama")
        plan = PruningPlan.dense(adapter_for(loaded.model).structures(), base_model="tiny")
        apply_plan(loaded.model, plan, "slice")
        saved = save_pruned(loaded.model, byte_tokenizer(), plan, tmp_path / "model")
        converted = loading.converted_gguf_folder(ModelConfig())
    finally:
        os.umask(previous)
    for folder in (saved, converted):
        found = modes(folder)
        assert found["model.safetensors"] == 0o644, found
        assert {mode for name, mode in found.items() if (folder / name).is_dir()} == {0o755}, found
        assert {mode for name, mode in found.items() if (folder / name).is_file()} == {0o644}, found


def test_a_gguf_conversion_with_a_read_only_cache_loads_from_a_temporary_folder(tmp_path, monkeypatch) -> None:
    """An unconverted GGUF with a read-only cache once failed the run: the conversion had nowhere to go."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    cache = locked / "cache"
    if os.access(locked, os.W_OK):  # root: a cache under a file is unwritable for everyone
        (tmp_path / "a_file").write_text("")
        cache = tmp_path / "a_file" / "cache"
    monkeypatch.setenv("RKUPRUNE_CACHE", str(cache))
    stub_gguf_package(tmp_path, monkeypatch)
    take_warnings()
    try:
        loaded = loading.load_model(ModelConfig(device="cpu"))
    finally:
        locked.chmod(0o755)
    assert loaded.model is not None
    (warning,) = take_warnings()
    assert (
        warning.startswith(f"GGUF cache {cache / 'gguf' / 'model'}: not written (") and "for this run only" in warning
    )
    scratch = Path(warning.split(" converted into ", 1)[1].split(" for this run only", 1)[0])
    assert scratch.name.startswith("rkuprune-gguf-model-") and not scratch.exists()  # removed once loaded
