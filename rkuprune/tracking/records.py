"""results.json: written atomically at the start (status "running"), on success ("completed") and on
failure ("failed", with the error), so a run directory always says what happened.

Metrics that are NaN or infinite are written as ``null`` (strict JSON) and named with their value in
``nonfinite_metrics``; side artifacts that failed are named in ``warnings``. ``read_results`` is the one reader (sweep skip logic and reports alike): it
names what is wrong with a file instead of letting a malformed one crash or count as finished.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rkuprune.tracking.atomic import write_json
from rkuprune.tracking.side import take_warnings
from rkuprune.versions import versions

RESULTS_FILE = "results.json"
METRIC_SECTIONS = ("metrics", "dense_metrics")
OPTIONAL_SECTIONS = ("efficiency", "metrics_before_recovery", "evaluation", "calibration")  # objects when present


class RunRecord:
    def __init__(self, run_dir: Path, config: dict[str, Any], config_hash: str) -> None:
        self.path = run_dir / RESULTS_FILE
        take_warnings()  # an earlier run's (a sweep's jobs share the process)
        self.data: dict[str, Any] = {
            "status": "running",
            "config_hash": config_hash,
            "model": {},
            "pruning": {},
            "calibration": {},
            "metrics": {},
            "dense_metrics": {},
            "nonfinite_metrics": {},
            "efficiency": {},
            "evaluation": {},
            "warnings": [],  # side artifacts that failed (tracking.side): the run went on without them
            "versions": versions(),
            "config": config,
        }
        self.write()

    def write(self) -> None:
        self.data.setdefault("warnings", []).extend(take_warnings())
        write_json(self.path, self.data)

    def write_warnings(self) -> None:
        """Write again if side artifacts failed since the last write (W&B's finish comes last)."""
        pending = take_warnings()
        if pending:
            self.data.setdefault("warnings", []).extend(pending)
            write_json(self.path, self.data)

    def update(self, section: str, values: dict[str, Any]) -> None:
        self.data[section].update(values)
        if section in METRIC_SECTIONS:
            for key, value in values.items():
                if isinstance(value, float) and not math.isfinite(value):
                    self.data["nonfinite_metrics"][f"{section}/{key}"] = str(value)
        self.write()

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Record the wall time of a stage in ``efficiency``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.data["efficiency"][key] = round(time.perf_counter() - start, 3)

    def complete(self) -> None:
        self.data["status"] = "completed"
        self.write()

    def fail(self, exc: BaseException) -> None:
        self.data["status"] = "failed"
        self.data["error"] = f"{type(exc).__name__}: {exc}"
        self.data["traceback"] = traceback.format_exc()
        self.write()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"bare {name} is not JSON")


def read_results(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(results, None)`` for a completed, well-formed results.json, else ``(None, why not)``.

    Non-finite metrics come back as floats (``nan``, ``inf``) from their ``nonfinite_metrics`` flag.
    """
    try:
        results = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        return None, f"not readable JSON ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    if not isinstance(results, dict):
        return None, "not a JSON object"
    if results.get("status") != "completed":
        return None, f"status {results.get('status')!r}, not completed"
    problem = _problem(results)
    return (None, problem) if problem else (results, None)


def _problem(results: dict[str, Any]) -> str | None:
    """What makes a completed record unusable, or None."""
    for section in ("model", "pruning", "config", *METRIC_SECTIONS):
        if not isinstance(results.get(section), dict):
            return f"'{section}' is missing or not an object"
    for section in OPTIONAL_SECTIONS:
        if section in results and not isinstance(results[section], dict):
            return f"'{section}' is not an object"
    if not isinstance(results["model"].get("name"), str):
        return "'model.name' is missing or not a string"
    if not isinstance(results["pruning"].get("scorer"), str):
        return "'pruning.scorer' is missing or not a string"
    for key in ("target_sparsity", "measured_sparsity"):
        if not _is_number(results["pruning"].get(key)):
            return f"'pruning.{key}' is missing or not a number"
    flags = results.get("nonfinite_metrics") or {}
    if not isinstance(flags, dict):
        return "'nonfinite_metrics' is not an object"
    for section in METRIC_SECTIONS:
        for key, value in results[section].items():
            flag = flags.get(f"{section}/{key}")
            if value is None and flag in {"nan", "inf", "-inf"}:
                results[section][key] = float(flag)
            elif not _is_number(value):
                return f"'{section}.{key}' is {value!r}, not a number"
    return None
