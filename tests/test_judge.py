"""The LLM judge of RESP's protocol: verdict parsing, the prompt it is given, bad input, and runs end to end
with a tiny judge whose answer is fixed by its weights (no mocks)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from rkuprune.data.reasoning import Question
from rkuprune.data.sources import DataConfig
from rkuprune.errors import ConfigError
from rkuprune.evaluation import judge
from rkuprune.evaluation.base import BenchmarkConfig, EvalContext, build_tasks
from rkuprune.evaluation.judge import JudgeConfig, conversation, parse_verdict
from rkuprune.models.tokenizer import byte_tokenizer
from tests.conftest import model_config, tiny
from tests.test_app import run_cli

VERDICTS = [
    ("ANSWER: true\nREASON: 18 is the final answer", True),
    ("ANSWER: false\nREASON: it says 17", False),
    ("answer: TRUE", True),  # RESP lower-cases the value
    ("  ANSWER:   false  \n", False),
    ("REASON: first\nANSWER: true\nANSWER: false", False),  # the last ANSWER line decides, as in RESP
    ("ANSWER: true.", None),  # RESP reads only an exact "true"; anything else is unparsed here
    ("ANSWER: **true**", None),
    ("The answer is true", None),  # no ANSWER line
    ("", None),
    ("<think>ANSWER: true would be wrong</think>\nANSWER: false", False),  # thinking is not the verdict
    ("<think>ANSWER: true, I think</think>", None),
    ("The verdict ANSWER: true", None),  # the line must start with it
]


@pytest.mark.parametrize(("output", "verdict"), VERDICTS)
def test_verdicts_are_read_as_resp_reads_them(output: str, verdict: bool | None) -> None:
    assert parse_verdict(output) is verdict


def test_the_judge_sees_the_target_and_the_whole_generation_as_resp_passes_them() -> None:
    generation = "<think>2+2</think>\nShe has 4 apples. The answer is 4."
    system, user = conversation("4", generation, multiple_choice=False)
    assert system == {"role": "system", "content": judge.NUMBER_INSTRUCTIONS}
    assert judge.NUMBER_INSTRUCTIONS.startswith("You are an answer checker.\nReturn your answer in this EXACT format:")
    assert user == {
        "role": "user",
        "content": "Return answer and reasoning in the specified format.\nDATA:\n"
        '{"target": "4", "resps": ["[\'<think>2+2</think>\\\\nShe has 4 apples. The answer is 4.\']"]}',
    }
    # The payload is JSON whose one response is str() of lm-eval's one-element list of generations.
    assert json.loads(user["content"].split("DATA:\n", 1)[1])["resps"] == [str([generation])]


def test_a_multiple_choice_target_is_mathqas_options_and_the_lowercase_letter() -> None:
    q = Question("mathqa/test/0", "q?", "C", ("38", "1 , 200", "30 mph"))
    assert judge.choice_target(q.choices, q.gold) == "Options: a ) 38 , b ) 1 , 200 , c ) 30 mph\n Correct: c"
    system, user = conversation(judge.choice_target(q.choices, q.gold), "(C)", multiple_choice=True)
    assert system["content"] == judge.CHOICE_INSTRUCTIONS
    assert json.loads(user["content"].split("DATA:\n", 1)[1]) == {
        "target": "Options: a ) 38 , b ) 1 , 200 , c ) 30 mph\n Correct: c",
        "resps": ["['(C)']"],
    }


def synthetic_suite(**judge_fields: object) -> BenchmarkConfig:
    tasks = {"syn": {"task": "synthetic", "num_problems": 4, "shots": 0, "max_new_tokens": 4, "batch_size": 4}}
    return BenchmarkConfig(tasks=tasks, judge=JudgeConfig(**judge_fields))


def test_an_enabled_judge_lists_its_key_and_keys_the_dense_cache() -> None:
    off = build_tasks(synthetic_suite(), DataConfig())["syn"]
    on = build_tasks(synthetic_suite(enabled=True, model=model_config("tiny-llama")), DataConfig())["syn"]
    assert "acc/synthetic@rkuprune/judge" not in off.outputs() and "judge" not in off.settings()
    assert "acc/synthetic@rkuprune/judge" in on.outputs()
    assert on.settings()["judge"]["max_new_tokens"] == 150  # part of the dense-cache key and of results.json


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_new_tokens": 0}, r"^benchmark\.judge\.max_new_tokens: must be at least 1, got 0$"),
        ({"batch_size": 0}, r"^benchmark\.judge\.batch_size: must be at least 1, got 0$"),
        ({"model": {"dtype": "float8"}}, r"^benchmark\.judge\.model\.dtype: 'float8' is not one of"),
        ({"model": {"source": "hub", "path": None}}, r"^benchmark\.judge\.model\.path: set a hub id or a local folder"),
    ],
)
def test_a_bad_judge_field_is_named(fields: dict, message: str) -> None:
    model = model_config("tiny-llama")
    for key, value in fields.pop("model", {}).items():
        setattr(model, key, value)
    with pytest.raises(ConfigError, match=message):
        build_tasks(synthetic_suite(enabled=True, model=model, **fields), DataConfig())
    build_tasks(synthetic_suite(enabled=False, model=model, **fields), DataConfig())  # off: not checked


def test_rows_gain_the_verdicts_and_the_accuracy_is_their_mean(caplog) -> None:
    task = build_tasks(synthetic_suite(enabled=True, model=model_config("tiny-llama")), DataConfig())["syn"]
    rows = [{"id": str(i), "generation": "g"} for i in range(4)]
    outputs = ["ANSWER: true", "ANSWER: false", "nothing", "ANSWER: true\nREASON: same value"]
    with caplog.at_level(logging.WARNING):
        result = task.judged(rows, "prompt", EvalContext(phase="dense"), outputs)
    assert [r["judge_correct"] for r in rows] == [True, False, False, True]
    assert [r["judge_output"] for r in rows] == outputs
    assert result.metrics == {"acc/synthetic@rkuprune/judge": 0.5} and result.unparsed == 1
    assert "benchmark.tasks.syn (dense): the judge's verdict could not be read for 1 of 4" in caplog.text


VERDICT = "ANSWER: true"


def bigram_judge(folder: Path) -> Path:
    """A tiny Llama whose next token depends only on the current one (attention and MLP outputs zeroed,
    one basis vector per chain token, the LM head pointing to its successor): after the chat template's
    final newline it writes exactly ``ANSWER: true`` and ends its turn, whatever the question."""
    loaded = tiny("tiny-llama")
    model, tokenizer = loaded.model, byte_tokenizer()
    chain = [tokenizer.convert_tokens_to_ids(t) for t in tokenizer.tokenize("\n" + VERDICT)] + [tokenizer.eos_token_id]
    assert len(set(chain[:-1])) == len(chain) - 1  # every token of the chain has one successor
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for i, (token, successor) in enumerate(zip(chain, chain[1:], strict=False)):
            model.model.embed_tokens.weight[token, i] = 1.0
            model.lm_head.weight[successor, i] = 1.0  # logit sqrt(hidden) = 8 after the norm, 0 for the rest
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def judged_run(tmp_path: Path, monkeypatch, capsys, judge_args: list[str]) -> dict:
    monkeypatch.setenv("RKUPRUNE_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    code, out, err = run_cli(
        [
            "model=tiny-llama",
            "scorer=magnitude",
            "logger=none",
            "benchmark.tasks.ppl_pydoc=null",
            "benchmark.limit=3",
            "benchmark.tasks.synthetic.max_new_tokens=8",
            "benchmark.speed.enabled=false",
            "benchmark.judge.enabled=true",
            *judge_args,
            f"hydra.run.dir={run_dir}",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "predictions" / "synthetic.jsonl").read_text().splitlines()]
    return {"results": results, "rows": rows, "log": out + err}


def test_a_run_reports_judge_accuracy_for_the_pruned_and_the_dense_model(tmp_path, monkeypatch, capsys) -> None:
    folder = bigram_judge(tmp_path / "judge")
    args = ["benchmark.judge.model.source=hub", f"benchmark.judge.model.path={folder}"]
    args += ["benchmark.judge.model.dtype=float32", "benchmark.judge.model.device=cpu"]
    args += ["recovery=lora", "recovery.steps=1", "recovery.batch_size=2", "recovery.seqlen=32"]
    run = judged_run(tmp_path, monkeypatch, capsys, args)
    results, rows = run["results"], run["rows"]
    assert [row["judge_output"] for row in rows] == [VERDICT] * 3
    assert (
        results["metrics"]["acc/synthetic@rkuprune/judge"] == sum(r["judge_correct"] for r in rows) / len(rows) == 1.0
    )
    assert results["dense_metrics"]["acc/synthetic@rkuprune/judge"] == 1.0
    assert results["metrics_before_recovery"]["acc/synthetic@rkuprune/judge"] == 1.0
    assert "acc/synthetic@rkuprune" in results["metrics"]  # the regex score stays
    phases = {"dense": 0, "before_recovery": 0, "pruned": 0}
    assert results["evaluation"]["synthetic"]["judge_unparsed"] == phases
    assert run["log"].count("loading the judge") == 1  # one load for the three phases' generations
    assert results["evaluation"]["synthetic"]["judge"]["model"]["path"] == str(folder)
    # The dense values were cached once judged, judge metric included.
    cached = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "dense").glob("*.json")]
    assert [c["acc/synthetic@rkuprune/judge"] for c in cached] == [1.0]


def test_unreadable_verdicts_count_as_incorrect_and_are_counted(tmp_path, monkeypatch, capsys) -> None:
    # A random tiny judge writes two arbitrary bytes: never an "ANSWER:" line.
    args = ["+model@benchmark.judge.model=tiny-llama", "benchmark.judge.max_new_tokens=2"]
    run = judged_run(tmp_path, monkeypatch, capsys, args)
    results, rows = run["results"], run["rows"]
    assert all(len(row["judge_output"]) <= 2 and row["judge_correct"] is False for row in rows)
    assert (
        results["metrics"]["acc/synthetic@rkuprune/judge"]
        == 0.0
        == results["dense_metrics"]["acc/synthetic@rkuprune/judge"]
    )
    assert results["evaluation"]["synthetic"]["judge_unparsed"] == {"dense": 3, "pruned": 3}
    assert run["log"].count("the judge's verdict could not be read for 3 of 3 generations") == 2  # dense, pruned


def test_a_bad_judge_setting_stops_the_run_before_any_model_loads(tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["model=tiny-llama", "logger=none", f"hydra.run.dir={run_dir}", "benchmark.judge.enabled=true"]
    code, _, err = run_cli([*args, "benchmark.judge.model.dtype=float8"], monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: benchmark.judge.model.dtype: 'float8'"), err
    assert not (run_dir / "results.json").exists()


def test_a_local_judge_without_a_chat_template_is_refused_before_loading(tmp_path) -> None:
    tiny("tiny-llama").model.save_pretrained(tmp_path)
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    model = model_config("tiny-llama", source="hub", path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"^benchmark\.judge\.model: 'tiny-llama' has no chat template"):
        build_tasks(synthetic_suite(enabled=True, model=model), DataConfig())
