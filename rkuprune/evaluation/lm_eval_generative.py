"""lm-eval's own generative tasks (``gsm8k``, ``gsm8k_cot``, ``gsm8k_cot_zeroshot``) run by lm-eval on the
in-memory (pruned) model, so that an accuracy can sit beside a published lm-eval number
(docs/design.md section 7, docs/reasoning.md).

lm-eval does everything (its prompts, its exemplar sampling with its sampler seed, its stop strings,
filters and metrics); this module only indexes the needed task folders, points the tasks at local
files when ``data.root`` is set, and renames keys:

* With ``data.root``, each task is a generated YAML in a temporary folder that ``include``s lm-eval's
  own YAML and overrides only ``dataset_path: json``, ``dataset_name`` and ``dataset_kwargs.data_files``
  (absolute paths: lm-eval resolves relative ones from the working directory). The same folder,
  passed to the ``lm_eval`` CLI as ``--include_path``, runs the same task (the equality test).
* Without it, lm-eval's own hub datasets; offline, the one-line ``data.root`` error of
  :func:`rkuprune.data.sources.require_available`, before the model loads.

Keys: ``acc/<task>@lm_eval/<filter>`` (lm-eval's ``exact_match`` of each filter, ``strict-match`` and
``flexible-extract``, as fractions). Per question, the prompt, the generation, each filter's answer and
score go to ``predictions/<task>@lm_eval.jsonl`` (named apart from the project's own
``predictions/<dataset>.jsonl`` so both protocols can run in one suite).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rkuprune.data.sources import LOCAL_FILES, DataConfig, local_path, require_available
from rkuprune.errors import ConfigError
from rkuprune.evaluation.base import TASKS, EvalContext, TaskConfig
from rkuprune.evaluation.lm_eval_bridge import LMEvalTask, builtin_folder, lm_eval_version

# lm-eval task -> (its folder under lm_eval/tasks, the data.root dataset its hub dataset is).
GENERATIVE = {
    "gsm8k": ("gsm8k", "gsm8k"),
    "gsm8k_cot": ("gsm8k", "gsm8k"),
    "gsm8k_cot_zeroshot": ("gsm8k", "gsm8k"),
}
SPLIT_FIELDS = ("training_split", "validation_split", "test_split", "fewshot_split")
PROTOCOL = "lm_eval"


@dataclass
class LMEvalGenerativeConfig(TaskConfig):
    """lm-eval generative tasks run in one lm-eval call. Everything else is the task's own config; these
    are the run settings lm-eval's CLI takes, with its defaults."""

    task: str = "lm_eval_gen"
    tasks: list[str] = field(default_factory=lambda: ["gsm8k", "gsm8k_cot"])
    batch_size: int = 8
    # None: the task's own (HFLM's 256 for GSM8K); a number is the CLI's --gen_kwargs max_gen_toks=N
    max_gen_toks: int | None = None
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool | None = None  # None: as apply_chat_template (the CLI's default)
    fewshot_seed: int = 1234  # lm-eval's sampler seed (the 4th of the CLI's --seed)


def splits(config: dict[str, Any]) -> list[str]:
    """The dataset splits an lm-eval task config reads (gsm8k_cot's exemplars are in its YAML: test only)."""
    return sorted({config[key] for key in SPLIT_FIELDS if config.get(key)})


def lm_eval_yaml(name: str, manager: Any, where: str) -> tuple[Path, dict[str, Any]]:
    """lm-eval's own YAML of ``name`` and its config (includes resolved, functions not)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(name)
    if entry is None or entry.yaml_path is None:
        raise ConfigError(where, f"lm-eval {lm_eval_version()} has no task '{name}'")
    return entry.yaml_path, load_yaml(entry.yaml_path, resolve_func=False)


def local_files(name: str, config: dict[str, Any], data: DataConfig, where: str) -> dict[str, str]:
    """split -> absolute local file for every split the task reads; a missing one is a ConfigError
    naming the field and all the files expected."""
    dataset = GENERATIVE[name][1]
    files = {split: local_path(data, dataset, split).resolve() for split in splits(config)}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        expected = ", ".join(LOCAL_FILES[(dataset, split)] for split in files)
        raise ConfigError(
            where,
            f"'{name}' with data.root={data.root} reads {expected} there, but {', '.join(missing)} is missing; "
            "point data.root at a folder with them (layout: docs/design.md section 6) or unset it for the hub",
        )
    return {split: str(path) for split, path in files.items()}


@TASKS.register("lm_eval_gen", LMEvalGenerativeConfig)
class LMEvalGenerative(LMEvalTask):
    cfg: LMEvalGenerativeConfig

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.datasets: dict[str, Any] = {}  # our name -> the hub dataset or the local files it reads
        self.folder: tempfile.TemporaryDirectory[str] | None = None  # the generated YAMLs (data.root)

    def known(self) -> list[str]:
        return list(GENERATIVE)

    @property
    def multiturn(self) -> bool:
        """fewshot_as_multiturn as lm-eval's CLI resolves it."""
        return self.cfg.apply_chat_template if self.cfg.fewshot_as_multiturn is None else self.cfg.fewshot_as_multiturn

    def prepare(self) -> tuple[Any, dict[str, Any]]:
        from lm_eval.tasks import TaskManager

        where = f"{self.field}.tasks"
        if self.cfg.fewshot_as_multiturn and not self.cfg.apply_chat_template:
            raise ConfigError(
                f"{self.field}.fewshot_as_multiturn", "true needs apply_chat_template=true (as in lm-eval)"
            )
        if self.cfg.max_gen_toks is not None and self.cfg.max_gen_toks < 1:
            raise ConfigError(
                f"{self.field}.max_gen_toks", f"must be at least 1 (or null), got {self.cfg.max_gen_toks}"
            )
        folders = sorted({str(builtin_folder(GENERATIVE[name][0])) for name in self.cfg.tasks})
        builtin = TaskManager(include_path=folders, include_defaults=False)
        configs = {name: lm_eval_yaml(name, builtin, where) for name in self.cfg.tasks}
        specs = {name: name for name in self.cfg.tasks}
        if not self.data.root:
            for name, (_, config) in configs.items():
                for split in splits(config):
                    require_available(self.data, GENERATIVE[name][1], split, f"{where}={name}")
                self.datasets[name] = config.get("dataset_path")
            return builtin, specs
        self.folder = tempfile.TemporaryDirectory(prefix="rkuprune-lm_eval-")
        for name, (path, config) in configs.items():
            self.datasets[name] = local_files(name, config, self.data, where)
            override = {
                "include": str(path),
                "dataset_path": "json",
                "dataset_name": None,
                "dataset_kwargs": {"data_files": self.datasets[name]},
            }
            (self.include_path / f"{name}.yaml").write_text(yaml.safe_dump(override, sort_keys=False), encoding="utf-8")
        return TaskManager(include_path=[str(self.include_path)], include_defaults=False), specs

    @property
    def include_path(self) -> Path:
        """The folder of generated task YAMLs (data.root set): lm-eval's ``--include_path`` for the same tasks."""
        if self.folder is None:
            raise ValueError("no generated tasks: data.root is unset or check() has not run")
        return Path(self.folder.name)

    def run_options(self, ctx: EvalContext) -> dict[str, Any]:
        return {
            "fewshot_random_seed": self.cfg.fewshot_seed,
            "apply_chat_template": self.cfg.apply_chat_template,
            "fewshot_as_multiturn": self.multiturn,
            "gen_kwargs": None if self.cfg.max_gen_toks is None else {"max_gen_toks": self.cfg.max_gen_toks},
        }

    def outputs(self) -> set[str]:
        return {f"acc/{name}@{PROTOCOL}" for name in self.cfg.tasks} | {
            f"{self.predictions_key(name)}.jsonl" for name in self.cfg.tasks
        }

    def predictions_key(self, name: str) -> str:
        return f"predictions/{name}@{PROTOCOL}"

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "fewshot_as_multiturn": self.multiturn,
            "limit": self.suite.limit,
            "num_fewshot": {name: task.get_config("num_fewshot") for name, task in self.lm_tasks.items()},
            "split_sizes": dict(self.sizes),
            "datasets": dict(self.datasets),
            "lm_eval": lm_eval_version(),
        }

    def metrics(self, name: str, result: dict[str, Any]) -> dict[str, float]:
        """``exact_match,<filter>`` -> ``acc/<task>@lm_eval/<filter>``."""
        metrics = {}
        for key, value in result.items():
            metric, _, filter_name = key.partition(",")
            if metric == "exact_match":
                metrics[f"acc/{name}@{PROTOCOL}/{filter_name}"] = float(value)
        return metrics

    def rows(self, name: str, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """lm-eval logs one sample per question and filter; a row joins a question's filters:
        ``extracted/<filter>`` (the filtered answer) and ``correct/<filter>`` (its exact_match)."""
        rows: dict[int, dict[str, Any]] = {}
        for sample in samples:
            row = rows.setdefault(
                sample["doc_id"],
                {
                    "id": f"{name}/{sample['doc_id']}",
                    "question": sample["arguments"][0][0],
                    "generation": sample["resps"][0][0],
                    "gold": sample["target"],
                },
            )
            row[f"extracted/{sample['filter']}"] = sample["filtered_resps"][0]
            row[f"correct/{sample['filter']}"] = bool(sample["exact_match"])
        return list(rows.values())
