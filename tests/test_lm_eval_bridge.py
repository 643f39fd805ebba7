"""The lm-eval bridge: project multiple-choice tasks on local data, run on the in-memory model."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch

from rkuprune import cli
from rkuprune.data.reasoning import LETTERS, load_questions
from rkuprune.errors import ConfigError
from rkuprune.evaluation import lm_eval_bridge
from rkuprune.evaluation.base import BenchmarkConfig, EvalContext, build_tasks
from rkuprune.evaluation.lm_eval_bridge import metric_prefix
from tests.conftest import tiny
from tests.test_reasoning import write_root


def option_logprob(model: torch.nn.Module, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | context), computed directly."""
    n = len(tokenizer(context).input_ids)
    whole = tokenizer(context + continuation).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
    return sum(logp[i - 1, whole[i]].item() for i in range(n, len(whole)))


def test_local_multiple_choice_tasks_run_through_lm_eval_on_the_model_object(tmp_path) -> None:
    data = write_root(tmp_path / "data")
    loaded = tiny("tiny-llama")
    suite = BenchmarkConfig(
        name="t", tasks={"mc": {"task": "lm_eval", "tasks": ["mathqa_mc", "aqua_mc"], "batch_size": 4}}
    )
    task = build_tasks(suite, data)["mc"]
    metrics = task.evaluate(loaded.model, loaded.tokenizer, EvalContext(run_dir=tmp_path / "run"))
    assert set(metrics) == {"acc/mathqa/mc", "acc/mathqa/mc_norm", "acc/aqua/mc", "acc/aqua/mc_norm"}
    for name, dataset in (("mathqa_mc", "mathqa"), ("aqua_mc", "aqua")):
        path = tmp_path / "run" / "predictions" / f"{name}.jsonl"
        rows = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
        questions = load_questions(dataset, "test", data)
        assert set(rows) == {q.id for q in questions}
        for q in questions:
            row = rows[q.id]
            assert row["gold"] == LETTERS.index(q.gold)
            # lm-eval's choice is the option a direct log-likelihood computation on the same model prefers
            scores = [option_logprob(loaded.model, loaded.tokenizer, row["question"], " " + c) for c in q.choices]
            assert row["extracted"] == max(range(len(scores)), key=scores.__getitem__)
        assert metrics[f"acc/{dataset}/mc"] == sum(r["correct"] for r in rows.values()) / len(rows)
    assert task.settings()["split_sizes"] == {"mathqa_mc": 2, "aqua_mc": 2}
    # the tasks are built once and can run again (dense reference, then the pruned model)
    assert task.evaluate(loaded.model, loaded.tokenizer, EvalContext()) == metrics


def test_limit_caps_lm_eval_questions(tmp_path) -> None:
    data = write_root(tmp_path / "data")
    loaded = tiny("tiny-qwen2")
    suite = BenchmarkConfig(name="t", tasks={"mc": {"task": "lm_eval", "tasks": ["aqua_mc"]}}, limit=1)
    build_tasks(suite, data)["mc"].evaluate(loaded.model, loaded.tokenizer, EvalContext(run_dir=tmp_path))
    assert len((tmp_path / "predictions" / "aqua_mc.jsonl").read_text().splitlines()) == 1


def test_a_limit_larger_than_the_split_is_a_logged_warning(tmp_path, caplog) -> None:
    suite = BenchmarkConfig(name="t", tasks={"mc": {"task": "lm_eval", "tasks": ["aqua_mc"]}}, limit=5)
    with caplog.at_level(logging.WARNING, logger=lm_eval_bridge.__name__):
        build_tasks(suite, write_root(tmp_path))
    assert "benchmark.limit=5 exceeds the 2 questions of aqua_mc; benchmark.tasks.mc uses all of them" in caplog.text


def test_metric_keys() -> None:
    assert metric_prefix("mathqa_mc") == "acc/mathqa/mc" and metric_prefix("arc_easy") == "acc/arc_easy"


def test_unknown_lm_eval_task_names_the_field(tmp_path) -> None:
    suite = BenchmarkConfig(name="t", tasks={"cs": {"task": "lm_eval", "tasks": ["piqa", "mmlu"]}})
    with pytest.raises(
        ConfigError, match=r"benchmark\.tasks\.cs\.tasks: unknown lm-eval task 'mmlu'; choose from piqa"
    ):
        build_tasks(suite, write_root(tmp_path))


def test_commonsense_offline_without_a_cache_fails_early_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    run_dir = tmp_path / "run"
    argv = ["rkuprune", "model=tiny-llama", "logger=none", "benchmark=commonsense", f"hydra.run.dir={run_dir}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(
        "error: benchmark.tasks.commonsense.tasks: 'piqa' needs the hub dataset baber/piqa, but the hub is offline"
    )
    assert not (run_dir / "results.json").exists()  # refused before any model was loaded
