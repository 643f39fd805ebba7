"""results.json: written atomically at the start (status "running"), on success ("completed") and on
failure ("failed", with the error), so a run directory always says what happened."""

from __future__ import annotations

import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rkuprune.tracking.atomic import write_json
from rkuprune.versions import versions

RESULTS_FILE = "results.json"


class RunRecord:
    def __init__(self, run_dir: Path, config: dict[str, Any], config_hash: str) -> None:
        self.path = run_dir / RESULTS_FILE
        self.data: dict[str, Any] = {
            "status": "running",
            "config_hash": config_hash,
            "model": {},
            "pruning": {},
            "calibration": {},
            "metrics": {},
            "dense_metrics": {},
            "efficiency": {},
            "evaluation": {},
            "versions": versions(),
            "config": config,
        }
        self.write()

    def write(self) -> None:
        write_json(self.path, self.data)

    def update(self, section: str, values: dict[str, Any]) -> None:
        self.data[section].update(values)
        self.write()

    @contextmanager
    def timed(self, key: str):
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
