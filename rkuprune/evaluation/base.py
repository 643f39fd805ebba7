"""The benchmark suite: a named set of tasks, each a registered plug-in with a typed config.

A suite YAML (``conf/benchmark/<name>.yaml``) lists tasks under ``tasks:`` by key, each with a
``task:`` field naming the plug-in; a task's fields are checked against its dataclass when the suite
is built, before any model is loaded, and errors name ``benchmark.tasks.<key>.<field>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from rkuprune.data.sources import DataConfig
from rkuprune.errors import ConfigError
from rkuprune.evaluation.judge import JudgeConfig, JudgeQueue
from rkuprune.evaluation.judge import check as check_judge
from rkuprune.evaluation.speed import SpeedConfig
from rkuprune.registry import Registry


@dataclass
class TaskConfig:
    """Fields every task has; a task's own dataclass subclasses this."""

    task: str = "perplexity"


@dataclass
class BenchmarkConfig:
    """``benchmark`` group: a suite name, its tasks, a cap on questions for generative tasks, the LLM judge
    of generative answers (``judge``, off by default), and the inference-speed measurement of the dense
    and pruned model (``speed``)."""

    name: str = "offline"
    tasks: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)


@dataclass
class EvalContext:
    """What a task may use besides the model: where to write predictions, a tracker for tables, and the
    queue where generative tasks leave their answers for the LLM judge (None: no judging) with the
    phase of the run they belong to (``dense``, ``pruned`` or ``before_recovery``)."""

    run_dir: Path | None = None
    tracker: Any = None
    seed: int = 0
    judge: JudgeQueue | None = None
    phase: str = "pruned"


class Task:
    """One evaluation. ``check`` runs before model loading; ``evaluate`` returns metric keys."""

    def __init__(self, key: str, cfg: TaskConfig, data: DataConfig, suite: BenchmarkConfig) -> None:
        self.key = key
        self.cfg = cfg
        self.data = data
        self.suite = suite

    def check(self) -> None:
        """Fail early when data or settings cannot work."""

    @property
    def field(self) -> str:
        """The config path of this task, for error messages."""
        return f"benchmark.tasks.{self.key}"

    def evaluate(self, model: nn.Module, tokenizer: Any, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError

    def check_model(self, context: int | None, tokenizer: Any) -> None:
        """Fail before the model loads when inputs cannot fit its context (``context`` may be None)."""

    def outputs(self) -> set[str]:
        """The metric keys (or key prefixes) and files this task writes; two tasks of a suite must not
        share one, or one's results would silently overwrite the other's."""
        return set()

    def settings(self) -> dict[str, Any]:
        """Settings recorded in results.json next to the metrics."""
        return OmegaConf.to_container(OmegaConf.structured(self.cfg)) if self.cfg is not None else {}


TASKS: Registry[Task] = Registry("task")

MEAN3 = ("acc/gsm8k@rkuprune", "acc/mathqa@rkuprune", "acc/aqua@rkuprune")


def derived_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics computed from others once every task has run: ``mean3`` when all three of its parts exist
    (no task sees the others' results, so no task can compute it)."""
    if all(key in metrics for key in MEAN3):
        return {"mean3": sum(metrics[key] for key in MEAN3) / len(MEAN3)}
    return {}


def build_tasks(suite: BenchmarkConfig, data: DataConfig) -> dict[str, Task]:
    """Instantiate and check every task of the suite (before any model is loaded)."""
    check_judge(suite.judge)
    tasks: dict[str, Task] = {}
    owners: dict[str, str] = {}
    for key, raw in (suite.tasks or {}).items():
        if raw is None:  # a preset or override removed this task (benchmark.tasks.<key>=null)
            continue
        raw = OmegaConf.to_container(raw) if OmegaConf.is_config(raw) else dict(raw)
        name = raw.get("task")
        entry = TASKS.get(str(name), f"benchmark.tasks.{key}.task")
        try:
            typed = OmegaConf.merge(OmegaConf.structured(entry.config), raw)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"benchmark.tasks.{key}.{exc.key}", str(exc).splitlines()[0]) from exc
        task = entry.cls(key, OmegaConf.to_object(typed), data, suite)
        task.check()
        for output in sorted(task.outputs()):
            if output in owners:
                raise ConfigError(
                    f"benchmark.tasks.{key}",
                    f"writes '{output}' like benchmark.tasks.{owners[output]}, so one would overwrite the other; "
                    "change its settings or remove one of them",
                )
            owners[output] = key
        tasks[key] = task
    return tasks
