"""The evaluation-fidelity presets: RESP's protocol, ppl@128, and the suites with gold-solution perplexity."""

from __future__ import annotations

import pytest

from rkuprune.evaluation.base import build_tasks
from tests.conftest import SHARED_DATA
from tests.test_app import compose_run, run_cli


def test_resp_protocol_has_resps_published_settings() -> None:
    run = compose_run(["benchmark=resp_protocol"])
    judge = run.benchmark.judge  # off; when on, RESP's judge: Qwen3-30B-A3B-Instruct-2507, greedy, 150 tokens
    assert judge.enabled is False and judge.model.path == "Qwen/Qwen3-30B-A3B-Instruct-2507"
    assert judge.max_new_tokens == 150 and judge.enable_thinking is None
    for key in ("gsm8k", "mathqa"):
        task = run.benchmark.tasks[key]
        assert task["chat"] is True and task["enable_thinking"] is True and task["do_sample"] is True
        assert task["think_end_token"] == "</think>"  # lm-eval's HFLM requires it with thinking on
        assert (task["temperature"], task["top_p"], task["top_k"]) == (0.6, 0.95, 20)
    # RESP's configs/section5/main/resp_gsm8k.yaml and resp_mathqa.yaml
    gsm8k, mathqa = run.benchmark.tasks["gsm8k"], run.benchmark.tasks["mathqa"]
    assert (gsm8k["shots"], gsm8k["max_new_tokens"], gsm8k["batch_size"]) == (8, 2048, 32)
    assert (mathqa["shots"], mathqa["max_new_tokens"], mathqa["batch_size"]) == (0, 4096, 16)


def test_ppl128_measures_at_128_tokens() -> None:
    tasks = compose_run(["benchmark=ppl128"]).benchmark.tasks
    assert {t["dataset"]: t["seqlen"] for t in tasks.values()} == {"wikitext2": 128, "c4": 128}
    assert tasks["ppl_c4"]["max_windows"] == 256


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
@pytest.mark.parametrize("benchmark", ["reasoning", "offline_plus", "solution_small"])
def test_suites_with_gold_solution_perplexity(benchmark: str) -> None:
    run = compose_run([f"benchmark={benchmark}", f"data.root={SHARED_DATA}"])
    tasks = build_tasks(run.benchmark, run.data)
    solution = {t.cfg.dataset for t in tasks.values() if t.cfg.task == "solution_ppl"}
    assert solution >= {"gsm8k", "mathqa", "aqua"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["benchmark=offline_plus"], "error: data.root: benchmark.tasks.gsm8k_solution.dataset=gsm8k needs gsm8k/test"),
        (
            ["benchmark=resp_protocol", "benchmark.judge.enabled=true", "benchmark.judge.batch_size=0"],
            "error: benchmark.judge.batch_size: must be at least 1",
        ),
    ],
)
def test_refused_before_the_model_loads(args, message, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["model=tiny-llama", "logger=none", f"hydra.run.dir={run_dir}", *args], monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines == [lines[0]] and lines[0].startswith(message), err
    assert not (run_dir / "results.json").exists()


def test_the_paper_suite_runs_lm_evals_own_gsm8k_for_the_cells_beside_published_numbers() -> None:
    tasks = compose_run(["benchmark=paper"]).benchmark.tasks
    assert tasks["lm_eval_gsm8k"]["task"] == "lm_eval_gen" and list(tasks["lm_eval_gsm8k"]["tasks"]) == [
        "gsm8k",
        "gsm8k_cot",
    ]
    assert {"gsm8k", "mathqa", "aqua"} <= set(tasks)  # the project's own protocol stays beside it (mean3)
