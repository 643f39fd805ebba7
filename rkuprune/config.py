"""The run configuration: one structured dataclass per config group, stored in Hydra's ConfigStore.

Group YAMLs start with ``defaults: [<schema>]`` so Hydra type-checks them at composition; plug-ins
(scorers, calibration sources, tasks, loggers) store their own schemas when they register.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

import rkuprune.evaluation  # noqa: F401 - registers tasks
import rkuprune.recovery  # noqa: F401 - registers recovery methods
import rkuprune.scoring  # noqa: F401 - registers scorers
from rkuprune.allocation import PruningConfig
from rkuprune.data.calibration import CalibrationConfig
from rkuprune.data.sources import DataConfig
from rkuprune.evaluation.base import BenchmarkConfig
from rkuprune.models.loading import ModelConfig
from rkuprune.recovery import RecoveryConfig
from rkuprune.registry import import_submodules
from rkuprune.scoring.base import ScorerConfig
from rkuprune.tracking.trackers import LoggerConfig

import_submodules("rkuprune.data")  # registers calibration sources, wherever they live in the package


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    scorer: ScorerConfig = MISSING
    calibration: CalibrationConfig = MISSING
    pruning: PruningConfig = MISSING
    benchmark: BenchmarkConfig = MISSING
    logger: LoggerConfig = MISSING
    recovery: RecoveryConfig = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    save_model: bool = False
    dense_cache: bool = True  # reuse dense reference metrics computed earlier for the same model and task
    sweep_name: str = "sweep"
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.calibration is not MISSING and self.calibration.seed is None:
            self.calibration.seed = self.seed


# File systems refuse names over 255 bytes; a sweep job's folder is named by its overrides.
MAX_DIRNAME_BYTES = 200


def job_dirname(overrides: str) -> str:
    """A sweep job's folder name: its overrides, or where they are too long for one file name, their
    start and a hash of all of them, so that a rerun still finds (and skips) the same job's folder."""
    raw = overrides.encode()
    if len(raw) <= MAX_DIRNAME_BYTES:
        return overrides
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return f"{raw[: MAX_DIRNAME_BYTES - 17].decode(errors='ignore')}-{digest}"


def register_configs() -> None:
    # A short random id in the default run folder: two runs started in the same instant never share one.
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", job_dirname)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="pruning", name="base_pruning", node=PruningConfig)
    cs.store(group="benchmark", name="base_benchmark", node=BenchmarkConfig)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python (what results.json and W&B record)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of the settings that decide a result (tracking and naming fields excluded)."""
    relevant = {k: v for k, v in config.items() if k not in {"logger", "sweep_name", "tags", "save_model"}}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]
