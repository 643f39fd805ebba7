"""Experiment trackers. W&B runs offline unless ``logger.mode=online``; a tracker never fails a run:
if W&B cannot start or log, the run goes on and logs a warning saying so."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkuprune.errors import check_choice
from rkuprune.registry import Registry
from rkuprune.tracking.side import side_warning

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")


@dataclass
class LoggerConfig:
    """``logger`` group."""

    name: str = "wandb"
    project: str = "rkuprune"
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None
    tags: list[str] = field(default_factory=list)


class Tracker:
    """No-op tracker (``logger=none``); the W&B tracker overrides what it supports."""

    def __init__(self, cfg: LoggerConfig) -> None:
        self.cfg = cfg

    def check(self) -> None:
        check_choice("logger.mode", self.cfg.mode, MODES)

    def start(self, run_dir: Path, config: dict[str, Any], name: str, group: str | None, tags: list[str]) -> None:
        pass

    def log_summary(self, metrics: dict[str, Any]) -> None:
        pass

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        pass

    def log_series(self, step_key: str, rows: list[dict[str, float]]) -> None:
        """Log a curve (e.g. a training loss), one row per point, against its own x-axis ``step_key``."""

    def finish(self, failed: bool = False) -> None:
        pass

    @property
    def url(self) -> str | None:
        return None


TRACKERS: Registry[Tracker] = Registry("logger")
TRACKERS.register("none", LoggerConfig)(Tracker)


def _warn(what: str, exc: BaseException) -> None:
    side_warning(f"W&B {what} failed ({type(exc).__name__}: {exc}); the run continues without it", log)


@TRACKERS.register("wandb", LoggerConfig)
class WandbTracker(Tracker):
    """One W&B run per job: config as a plain dict, summary metrics, tags, a group per sweep."""

    run: Any = None

    def start(self, run_dir: Path, config: dict[str, Any], name: str, group: str | None, tags: list[str]) -> None:
        try:
            import wandb

            self.run = wandb.init(
                project=self.cfg.project,
                entity=self.cfg.entity,
                mode=self.cfg.mode,
                dir=str(run_dir),
                name=name,
                group=self.cfg.group or group,
                tags=sorted({*self.cfg.tags, *tags}),
                config=config,
                reinit="finish_previous",
                settings=wandb.Settings(init_timeout=60, silent=True),
            )
            self.run.define_metric("pruning/measured_sparsity")
            self.run.define_metric("*", step_metric="pruning/measured_sparsity")
        except Exception as exc:  # noqa: BLE001 - tracking must never fail the run
            _warn("init", exc)
            self.run = None

    def log_summary(self, metrics: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics)
            self.run.summary.update(metrics)
        except Exception as exc:  # noqa: BLE001
            _warn("log", exc)

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        if self.run is None or not rows:
            return
        try:
            import wandb

            columns = list(rows[0])
            self.run.log({key: wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])})
        except Exception as exc:  # noqa: BLE001
            _warn("table", exc)

    def log_series(self, step_key: str, rows: list[dict[str, float]]) -> None:
        if self.run is None or not rows:
            return
        try:
            self.run.define_metric(step_key)
            for key in rows[0]:
                if key != step_key:
                    self.run.define_metric(key, step_metric=step_key)
            for row in rows:
                self.run.log(row)
        except Exception as exc:  # noqa: BLE001
            _warn("series", exc)

    def finish(self, failed: bool = False) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as exc:  # noqa: BLE001
            _warn("finish", exc)

    @property
    def url(self) -> str | None:
        return getattr(self.run, "dir", None) if self.run is not None else None
