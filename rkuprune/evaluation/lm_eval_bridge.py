"""Log-likelihood multiple choice through lm-eval on the in-memory (pruned) model: ``acc/mathqa/mc``,
``acc/aqua/mc`` and the zero-shot commonsense suite (docs/design.md section 7).

lm-eval does the whole job (prompts, scoring every option, acc and acc_norm) via ``HFLM`` wrapping
the model object; this module only chooses tasks, feeds the project's data and renames keys:

* commonsense tasks are lm-eval's own; only their folders are indexed (indexing every built-in task
  costs ~15 s). They read the hub, so offline they fail in ``check`` unless the hub cache has them.
* ``mathqa_mc`` / ``aqua_mc`` are project YAMLs (``evaluation/tasks``). lm-eval has no AQuA task of
  this form and its mathqa task reads only the hub and parses one of MathQA's two option layouts, so
  the rows come from :mod:`rkuprune.data.reasoning` (local files or hub) as lm-eval's
  ``custom_dataset``, which also avoids data paths that lm-eval would resolve from the working directory.

Keys: ``acc/<task>`` and ``acc/<task>_norm`` (fractions), ``mathqa_mc`` -> ``acc/mathqa/mc``.
Per-question rows (the prompt, the chosen option, the gold option) go to ``predictions/<task>.jsonl``.
``LMEvalTask`` is what this and lm-eval's generative tasks (:mod:`.lm_eval_generative`) share.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from rkuprune.data import reasoning as data
from rkuprune.data.sources import hub_offline, require_available
from rkuprune.errors import ConfigError
from rkuprune.evaluation.base import TASKS, EvalContext, Task, TaskConfig
from rkuprune.tracking.atomic import write_text

log = logging.getLogger(__name__)

# lm-eval task name -> its folder under lm_eval/tasks.
COMMONSENSE = {
    "piqa": "piqa",
    "arc_easy": "arc",
    "arc_challenge": "arc",
    "winogrande": "winogrande",
    "hellaswag": "hellaswag",
    "boolq": "super_glue/boolq",
    "openbookqa": "openbookqa",
}
# Project task -> the dataset its rows come from (always the test split).
LOCAL = {"mathqa_mc": "mathqa", "aqua_mc": "aqua"}
YAML_DIR = Path(__file__).parent / "tasks"


@dataclass
class LMEvalConfig(TaskConfig):
    """Zero-shot log-likelihood tasks run in one lm-eval call; ``batch_size`` is HFLM's."""

    task: str = "lm_eval"
    tasks: list[str] = field(default_factory=lambda: list(COMMONSENSE))
    batch_size: int = 8


def metric_prefix(name: str) -> str:
    """``mathqa_mc`` -> ``acc/mathqa/mc``; ``piqa`` -> ``acc/piqa``."""
    return f"acc/{LOCAL[name]}/mc" if name in LOCAL else f"acc/{name}"


def local_task_config(name: str, questions: list[data.Question]) -> dict[str, Any]:
    """The project YAML of ``name`` with its rows attached as lm-eval's ``custom_dataset``."""
    from datasets import Dataset, DatasetDict

    config = yaml.safe_load((YAML_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    rows = [
        {"id": q.id, "question": q.question, "choices": list(q.choices), "gold": data.LETTERS.index(q.gold)}
        for q in questions
    ]

    def dataset(**_: Any) -> DatasetDict:
        return DatasetDict({"test": Dataset.from_list(rows)})

    return {**config, "custom_dataset": dataset}


def _hub_cached(dataset_path: str) -> bool:
    from huggingface_hub.constants import HF_HUB_CACHE

    return (Path(HF_HUB_CACHE) / f"datasets--{dataset_path.replace('/', '--')}").is_dir()


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def builtin_folder(name: str) -> Path:
    """A folder of lm-eval's built-in tasks, to index only it (indexing them all costs ~15 s)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / name


class LMEvalTask(Task):
    """What the lm-eval task types share: names checked against a known list, lm-eval's tasks built in
    ``check`` (so a missing dataset or a download happens before the model is loaded), one
    ``simple_evaluate`` call through ``HFLM`` on the model object, and one predictions row per question."""

    cfg: Any  # a TaskConfig with ``tasks`` (names) and ``batch_size``

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lm_tasks: dict[str, Any] = {}  # our name -> lm-eval Task, built by check()
        self.sizes: dict[str, int] = {}
        self.manager: Any = None

    def known(self) -> list[str]:
        """The task names this type accepts."""
        raise NotImplementedError

    def prepare(self) -> tuple[Any, dict[str, Any]]:
        """The lm-eval ``TaskManager`` to load from and, per our name, what it loads (a name or a config)."""
        raise NotImplementedError

    def check(self) -> None:
        where = f"{self.field}.tasks"
        known = self.known()
        if not self.cfg.tasks:
            raise ConfigError(where, f"is empty; choose from {', '.join(known)}")
        for name in self.cfg.tasks:
            if name not in known:
                raise ConfigError(where, f"unknown lm-eval task '{name}'; choose from {', '.join(known)}")
        if self.cfg.batch_size < 1:
            raise ConfigError(f"{self.field}.batch_size", f"must be at least 1, got {self.cfg.batch_size}")
        if self.suite.limit is not None and self.suite.limit < 1:
            raise ConfigError("benchmark.limit", f"must be at least 1 (or null), got {self.suite.limit}")
        self.manager, specs = self.prepare()
        loaded = self.manager.load(list(specs.values()))["tasks"]
        for name, spec in specs.items():
            task = loaded[spec["task"] if isinstance(spec, dict) else spec]
            self.lm_tasks[name] = task
            self.sizes[name] = len(task.eval_docs)
            if self.suite.limit is not None and self.suite.limit > self.sizes[name]:
                log.warning(
                    "benchmark.limit=%d exceeds the %d questions of %s; %s uses all of them",
                    self.suite.limit,
                    self.sizes[name],
                    name,
                    self.field,
                )

    def run_options(self, ctx: EvalContext) -> dict[str, Any]:
        """Further ``simple_evaluate`` arguments of this task type."""
        return {}

    def evaluate(self, model: nn.Module, tokenizer: Any, ctx: EvalContext) -> dict[str, float]:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.cfg.batch_size)
        # Global RNGs are left alone (None): seeding them here would change what later stages draw.
        out = simple_evaluate(
            model=lm,
            tasks=list(self.lm_tasks.values()),
            task_manager=self.manager,
            limit=self.suite.limit,
            bootstrap_iters=0,
            log_samples=True,
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
            **self.run_options(ctx),
        )
        metrics: dict[str, float] = {}
        for name, task in self.lm_tasks.items():
            metrics.update(self.metrics(name, out["results"][task.task_name]))
            rows = self.rows(name, out["samples"][task.task_name])
            key = self.predictions_key(name)
            if ctx.run_dir is not None:
                text = "".join(json.dumps(row, default=str) + "\n" for row in rows)
                write_text(ctx.run_dir / f"{key}.jsonl", text)
            if ctx.tracker is not None:
                ctx.tracker.log_table(key, rows)
        return metrics

    def metrics(self, name: str, result: dict[str, Any]) -> dict[str, float]:
        """Our metric keys from lm-eval's results of one task."""
        raise NotImplementedError

    def rows(self, name: str, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One predictions row per question from lm-eval's logged samples of one task."""
        raise NotImplementedError

    def predictions_key(self, name: str) -> str:
        return f"predictions/{name}"


@TASKS.register("lm_eval", LMEvalConfig)
class LMEval(LMEvalTask):
    cfg: LMEvalConfig

    def known(self) -> list[str]:
        return [*COMMONSENSE, *LOCAL]

    def prepare(self) -> tuple[Any, dict[str, Any]]:
        from lm_eval.tasks import TaskManager

        folders = sorted({str(builtin_folder(COMMONSENSE[n])) for n in self.cfg.tasks if n in COMMONSENSE})
        manager = TaskManager(include_path=folders or None, include_defaults=False)
        specs: dict[str, Any] = {}
        for name in self.cfg.tasks:
            if name in LOCAL:
                require_available(self.data, LOCAL[name], "test", f"{self.field}.tasks={name}")
                specs[name] = local_task_config(name, data.load_questions(LOCAL[name], "test", self.data))
            else:
                self.require_hub(name, manager)
                specs[name] = name
        return manager, specs

    def require_hub(self, name: str, manager: Any) -> None:
        """Offline, a hub dataset must already be in the hub cache; say which field to change if not."""
        if not hub_offline():
            return
        from lm_eval.tasks._yaml_loader import load_yaml

        entry = manager.task_index.get(name)
        if entry is None:
            raise ConfigError(f"{self.field}.tasks", f"lm-eval {lm_eval_version()} has no task '{name}'")
        path = load_yaml(entry.yaml_path, resolve_func=False).get("dataset_path", "")
        if not _hub_cached(path):
            raise ConfigError(
                f"{self.field}.tasks",
                f"'{name}' needs the hub dataset {path}, but the hub is offline (HF_HUB_OFFLINE=1) and it is "
                "not cached; run with hub access or drop it from the list",
            )

    def outputs(self) -> set[str]:
        return {metric_prefix(name) for name in self.cfg.tasks}

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "num_fewshot": 0,
            "limit": self.suite.limit,
            "split_sizes": dict(self.sizes),
            "lm_eval": lm_eval_version(),
        }

    def run_options(self, ctx: EvalContext) -> dict[str, Any]:
        return {"fewshot_random_seed": ctx.seed}

    def metrics(self, name: str, result: dict[str, Any]) -> dict[str, float]:
        prefix = metric_prefix(name)
        metrics = {prefix: float(result["acc,none"])}
        if "acc_norm,none" in result:
            metrics[f"{prefix}_norm"] = float(result["acc_norm,none"])
        return metrics

    def rows(self, name: str, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The prompt, the option with the highest log-likelihood, the gold one."""
        rows = []
        for sample in samples:
            scores = [float(resp[0]) for resp in sample["filtered_resps"]]
            chosen = max(range(len(scores)), key=scores.__getitem__)
            rows.append(
                {
                    "id": sample["doc"].get("id", f"{name}/{sample['doc_id']}"),
                    "question": sample["arguments"][0][0],
                    "generation": None,
                    "extracted": chosen,
                    "gold": sample["target"],
                    "correct": bool(sample["acc"]),
                }
            )
        return rows
