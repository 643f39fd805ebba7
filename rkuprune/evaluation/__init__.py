"""Evaluation: benchmark tasks that turn a model into flat ``{"key": float}`` metrics.

Each task module registers itself with ``TASKS``; ``import_submodules`` loads them all.
"""

from rkuprune.evaluation.base import TASKS, BenchmarkConfig, EvalContext, Task, TaskConfig, build_tasks
from rkuprune.registry import import_submodules

import_submodules(__name__)

__all__ = ["TASKS", "BenchmarkConfig", "EvalContext", "Task", "TaskConfig", "build_tasks"]
