"""lm-eval's own generative tasks on the in-memory model: equal to lm-eval's CLI question by question."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rkuprune.data.sources import DataConfig
from rkuprune.errors import ConfigError
from rkuprune.evaluation.base import BenchmarkConfig, EvalContext, build_tasks
from tests.conftest import tiny

log = logging.getLogger(__name__)
TASKS = ("gsm8k", "gsm8k_cot")
MAX_GEN_TOKS = 24


def write_gsm8k(root: Path, train: int = 8, test: int = 3) -> DataConfig:
    """A data.root with tiny gsm8k/{train,test}.jsonl in openai/gsm8k's form (answer ends "#### n")."""

    def rows(n: int, base: int) -> str:
        return "".join(
            json.dumps(
                {
                    "question": f"Tom has {base + i} apples and buys {i + 2} more. How many apples does he have?",
                    "answer": f"Tom has {base + i} + {i + 2} = <<{base + i}+{i + 2}={base + 2 * i + 2}>>"
                    f"{base + 2 * i + 2} apples.\n#### {base + 2 * i + 2}",
                }
            )
            + "\n"
            for i in range(n)
        )

    (root / "gsm8k").mkdir(parents=True)
    (root / "gsm8k" / "train.jsonl").write_text(rows(train, 3), encoding="utf-8")
    (root / "gsm8k" / "test.jsonl").write_text(rows(test, 40), encoding="utf-8")
    return DataConfig(root=str(root))


def digit_model() -> tuple[torch.nn.Module, object]:
    """The tiny random Llama made to write only digits, '#', spaces and newlines, so lm-eval's filters
    extract numbers (a random model's bytes would all be '[invalid]' and compare nothing)."""
    loaded = tiny("tiny-llama")
    allowed = [loaded.tokenizer(c, add_special_tokens=False).input_ids[0] for c in "0123456789# \n"]
    with torch.no_grad():
        weight = loaded.model.lm_head.weight
        keep = torch.zeros(weight.shape[0], dtype=torch.bool)
        keep[allowed] = True
        weight[~keep] = 0
        weight[keep] *= 20
    return loaded.model, loaded.tokenizer


def cli_samples(out: Path, task: str) -> dict[tuple[int, str], dict]:
    """The CLI's logged samples of ``task``, by (doc_id, filter)."""
    (path,) = [p for p in out.rglob("samples_*.jsonl") if re.fullmatch(rf"samples_{task}_\d{{4}}-.*", p.name)]
    return {(s["doc_id"], s["filter"]): s for s in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def test_in_memory_lm_eval_equals_the_lm_eval_cli_question_by_question(tmp_path) -> None:
    start = time.perf_counter()
    data = write_gsm8k(tmp_path / "data")
    model, tokenizer = digit_model()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    suite = BenchmarkConfig(
        name="t",
        limit=3,
        tasks={"lm": {"task": "lm_eval_gen", "tasks": list(TASKS), "batch_size": 3, "max_gen_toks": MAX_GEN_TOKS}},
    )
    task = build_tasks(suite, data)["lm"]
    metrics = task.evaluate(model, tokenizer, EvalContext(run_dir=tmp_path / "run"))

    out = tmp_path / "cli"
    command = [
        *(sys.executable, "-m", "lm_eval", "--model", "hf"),
        *("--model_args", f"pretrained={folder},dtype=float32", "--tasks", ",".join(TASKS)),
        *("--include_path", str(task.include_path), "--limit", "3", "--log_samples"),
        *("--output_path", str(out), "--device", "cpu", "--batch_size", "3"),
        *("--gen_kwargs", f"max_gen_toks={MAX_GEN_TOKS}"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run(command, check=True, cwd=tmp_path, env=env, capture_output=True, timeout=600)
    (results_file,) = out.rglob("results_*.json")
    results = json.loads(results_file.read_text(encoding="utf-8"))

    extracted = set()
    for name in TASKS:
        assert results["configs"][name]["dataset_path"] == "json"  # the CLI ran the local task
        rows = [json.loads(line) for line in (tmp_path / "run" / "predictions" / f"{name}@lm_eval.jsonl").open()]
        samples = cli_samples(out, name)
        assert len(rows) == 3 and len(samples) == 6  # 3 questions x 2 filters
        for doc_id, row in enumerate(rows):
            for filter_name in ("strict-match", "flexible-extract"):
                sample = samples[(doc_id, filter_name)]
                assert row["question"] == sample["arguments"]["gen_args_0"]["arg_0"]
                assert row["generation"] == sample["resps"][0][0]
                assert row["gold"] == sample["target"]
                assert row[f"extracted/{filter_name}"] == sample["filtered_resps"][0]
                assert row[f"correct/{filter_name}"] == bool(sample["exact_match"])
                extracted.add(row[f"extracted/{filter_name}"])
        for filter_name in ("strict-match", "flexible-extract"):
            key = f"acc/{name}@lm_eval/{filter_name}"
            assert metrics[key] == results["results"][name][f"exact_match,{filter_name}"]
            assert metrics[key] == sum(row[f"correct/{filter_name}"] for row in rows) / len(rows)
    assert extracted - {"[invalid]"}, "the filters extracted nothing: the comparison would be vacuous"
    assert set(metrics) == {f"acc/{n}@lm_eval/{f}" for n in TASKS for f in ("strict-match", "flexible-extract")}
    settings = task.settings()
    assert settings["num_fewshot"] == {"gsm8k": 5, "gsm8k_cot": 8} == results["n-shot"]
    assert (settings["limit"], settings["batch_size"], settings["max_gen_toks"]) == (3, 3, MAX_GEN_TOKS)
    assert (settings["apply_chat_template"], settings["fewshot_as_multiturn"]) == (False, False)
    assert settings["lm_eval"] == results["lm_eval_version"]
    log.info("equality test: %.1f s", time.perf_counter() - start)


def test_an_unknown_lm_eval_task_names_the_field(tmp_path) -> None:
    suite = BenchmarkConfig(name="t", tasks={"lm": {"task": "lm_eval_gen", "tasks": ["gsm8k", "gsm8k_plus"]}})
    with pytest.raises(ConfigError) as error:
        build_tasks(suite, write_gsm8k(tmp_path))
    assert str(error.value) == (
        "benchmark.tasks.lm.tasks: unknown lm-eval task 'gsm8k_plus'; choose from gsm8k, gsm8k_cot, gsm8k_cot_zeroshot"
    )


def test_a_local_task_without_its_files_names_the_field_and_the_files(tmp_path) -> None:
    data = write_gsm8k(tmp_path)
    (tmp_path / "gsm8k" / "train.jsonl").unlink()
    suite = BenchmarkConfig(name="t", tasks={"lm": {"task": "lm_eval_gen", "tasks": ["gsm8k"]}})
    with pytest.raises(ConfigError) as error:
        build_tasks(suite, data)
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(
        f"benchmark.tasks.lm.tasks: 'gsm8k' with data.root={tmp_path} reads gsm8k/test.jsonl, gsm8k/train.jsonl "
        f"there, but {tmp_path / 'gsm8k' / 'train.jsonl'} is missing"
    )
    # gsm8k_cot's exemplars are in its YAML: it reads only the test split, so it still builds
    build_tasks(BenchmarkConfig(name="t", tasks={"lm": {"task": "lm_eval_gen", "tasks": ["gsm8k_cot"]}}), data)


def test_offline_without_data_root_is_the_one_line_data_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    suite = BenchmarkConfig(name="t", tasks={"lm": {"task": "lm_eval_gen", "tasks": ["gsm8k_cot_zeroshot"]}})
    with pytest.raises(
        ConfigError, match=r"^data\.root: benchmark\.tasks\.lm\.tasks=gsm8k_cot_zeroshot needs gsm8k/test"
    ):
        build_tasks(suite, DataConfig())
