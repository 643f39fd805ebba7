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
