"""Generative reasoning benchmarks: data formats, prompts, records and bad input."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from rkuprune.data.reasoning import MATHQA_EXEMPLARS, load_questions, parse_mathqa_options
from rkuprune.data.sources import DataConfig
from rkuprune.errors import ConfigError, DataError
from rkuprune.evaluation import reasoning
from rkuprune.evaluation.base import BenchmarkConfig, EvalContext, build_tasks, derived_metrics
from rkuprune.generation import Completion, GenerationStats, Sampling, common_prefix_length, generate
from tests.conftest import SHARED_DATA, tiny

GSM8K_TRAIN = [
    {
        "question": f"Tom has {i} cats and buys 2 more. How many cats?",
        "answer": f"{i}+2=<<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}",
    }
    for i in range(1, 9)
]
GSM8K_TEST = [
    {
        "question": "A box holds 1,000 pens. How many pens are in 2 boxes?",
        "answer": "2*1000=<<2*1000=2000>>2000\n#### 2,000",
    },
    {"question": "It is -3 degrees and drops 2. What now?", "answer": "-3-2=-5\n#### -5"},
    {"question": "Half of 7?", "answer": "7/2=3.5\n#### 3.5"},
    # The same text as the first train question: that one must never be an exemplar.
    {"question": GSM8K_TRAIN[0]["question"], "answer": "#### 3"},
]
AQUA = [
    {"question": "2+2?", "options": ["A)4", "B)5", "C)6", "D)7", "E)8"], "rationale": "2+2=4", "correct": "A"},
    {"question": "3*3?", "options": ["A) 6", "B) 9", "C) 12", "D) 3", "E) 0"], "rationale": "9", "correct": "B"},
]
MATHQA = [
    {
        "question": "q one ?",
        "rationale": "r",
        "options": "a ) 38 , b ) 1 , 200 , c ) 30 , d ) data , e ) none",
        "answer": "b",
    },
    {
        "question": "q two ?",
        "rationale": "r",
        "options": "['a ) 12', 'b ) 15', 'c ) 10', 'd ) 8', 'e ) 14']",
        "answer": "e",
    },
]


def write_root(root: Path) -> DataConfig:
    """A data.root with every reasoning file, in the layout and formats of ../shared/data."""
    for sub in ("gsm8k", "aqua", "mathqa"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = lambda rows: "".join(json.dumps(r) + "\n" for r in rows)  # noqa: E731
    (root / "gsm8k" / "train.jsonl").write_text(lines(GSM8K_TRAIN))
    (root / "gsm8k" / "test.jsonl").write_text(lines(GSM8K_TEST))
    (root / "aqua" / "test.json").write_text(lines(AQUA))
    (root / "aqua" / "dev.json").write_text(lines([{**AQUA[0], "question": f"What is {i} + 5?"} for i in range(3)]))
    (root / "mathqa" / "test.json").write_text(json.dumps(MATHQA, indent=4))
    return DataConfig(root=str(root))


def tasks_for(data: DataConfig, limit: int | None = None, **tasks: dict[str, Any]) -> dict[str, Any]:
    return build_tasks(BenchmarkConfig(name="t", tasks=tasks, limit=limit), data)


# -- data -----------------------------------------------------------------------------------------


def test_gold_answers_parse_in_every_local_format(tmp_path) -> None:
    data = write_root(tmp_path)
    assert [q.gold for q in load_questions("gsm8k", "test", data)] == ["2000", "-5", "3.5", "3"]
    train = load_questions("gsm8k", "train", data)
    assert train[1].solution == "2+2=4" and "<<" not in "".join(q.solution for q in train)
    aqua = load_questions("aqua", "test", data)
    assert [q.gold for q in aqua] == ["A", "B"] and aqua[1].choices == ("6", "9", "12", "3", "0")
    mathqa = load_questions("mathqa", "test", data)
    assert [q.gold for q in mathqa] == ["B", "E"]
    assert mathqa[0].choices == ("38", "1 , 200", "30", "data", "none")  # a comma inside an option
    assert mathqa[1].choices == ("12", "15", "10", "8", "14")  # the list-shaped layout


def test_both_mathqa_option_layouts_give_the_same_options() -> None:
    plain = parse_mathqa_options("a ) 2 : 3 , b ) 4 : 5 , c ) 16 : 9 , d ) 7 : 9 , e ) 8 : 5")
    listed = parse_mathqa_options("['a ) 2 : 3', 'b ) 4 : 5', 'c ) 16 : 9', 'd ) 7 : 9', 'e ) 8 : 5']")
    assert plain == listed == ("2 : 3", "4 : 5", "16 : 9", "7 : 9", "8 : 5")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
def test_every_row_of_the_shared_data_parses() -> None:
    data = DataConfig(root=str(SHARED_DATA))
    sizes = {("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319, ("aqua", "dev"): 254, ("aqua", "test"): 254}
    for (dataset, split), n in sizes.items():
        assert len(load_questions(dataset, split, data)) == n
    aqua = load_questions("aqua", "test", data)
    assert Counter(q.gold for q in aqua) == {"A": 63, "B": 58, "C": 46, "D": 53, "E": 34}  # the README's counts
    mathqa = load_questions("mathqa", "test", data)
    assert len(mathqa) == 2985 and all(len(q.choices) == 5 and all(q.choices) for q in mathqa)
    assert Counter(q.gold for q in mathqa) == {"A": 614, "B": 605, "C": 676, "D": 628, "E": 462}
    assert mathqa[0].question.startswith("a shopkeeper sold an article offering a discount of 5 %")
    tests = {q.question for q in mathqa}
    assert not tests & {q.question for q in MATHQA_EXEMPLARS}


@pytest.mark.parametrize(
    ("dataset", "filename", "content", "message"),
    [
        ("aqua", "test.json", json.dumps(AQUA[0]) + "\n\n{not json\n", r"aqua/test\.json:3: not valid JSON"),
        (
            "gsm8k",
            "test.jsonl",
            '{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n',
            r"test\.jsonl:2: missing",
        ),
        (
            "gsm8k",
            "test.jsonl",
            '{"question": "q", "answer": "no marker"}\n',
            r"test\.jsonl:1: the answer has no '####",
        ),
        ("aqua", "test.json", json.dumps({**AQUA[0], "correct": "F"}) + "\n", r"test\.json:1: 'correct' is 'F'"),
        (
            "mathqa",
            "test.json",
            json.dumps([MATHQA[0], {**MATHQA[1], "options": "38 or 12"}], indent=2),
            r"mathqa/test\.json:8: options '38 or 12' are not of the form",
        ),
        (
            "mathqa",
            "test.json",
            '[\n{"question": "q", "options": "a ) 1 , b ) 2", "answer": "a"},\n{"x": 1,,}\n]',
            r"test\.json:3: not valid JSON",
        ),
        ("mathqa", "test.json", '{"question": "q"}', r"test\.json:1: expected one JSON array"),
    ],
)
def test_a_malformed_file_names_the_file_and_line(tmp_path, dataset, filename, content, message) -> None:
    data = write_root(tmp_path)
    (tmp_path / dataset / filename).write_text(content)
    with pytest.raises(DataError, match=message):
        load_questions(dataset, "test", data)
    with pytest.raises(DataError, match=message):  # and the benchmark fails before any model is loaded
        tasks_for(data, t={"task": dataset, "shots": 0})


# -- prompts --------------------------------------------------------------------------------------


def test_few_shot_prompts_never_contain_a_test_question(tmp_path) -> None:
    data = write_root(tmp_path)
    tok = tiny("tiny-llama").tokenizer
    suites = {
        "gsm8k": {"task": "gsm8k", "shots": 7},  # the whole pool: the copy of a test question is excluded
        "aqua": {"task": "aqua", "shots": 2, "chat": True},
        "mathqa": {"task": "mathqa", "shots": 4},
        "synthetic": {"task": "synthetic", "shots": 5, "num_problems": 20},
    }
    tasks = tasks_for(data, **suites)
    for key, task in tasks.items():
        every_test_question = {q.question for q in task.eval_questions()}
        assert len(task.exemplars) == suites[key]["shots"]
        assert not every_test_question & {e.question for e in task.exemplars}
        for q in task.questions:
            prompt = task.prompt(q, tok)
            assert prompt.count(q.question) == 1, key
            assert all(other not in prompt for other in every_test_question - {q.question}), key
    assert tasks["gsm8k"].settings()["exemplars"][0].startswith("gsm8k/train/")


def test_too_many_shots_is_an_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"benchmark\.tasks\.t\.shots: 8 exceeds the 7 exemplars"):
        tasks_for(write_root(tmp_path), t={"task": "gsm8k", "shots": 8})


def test_plain_and_chat_prompts(tmp_path) -> None:
    data = write_root(tmp_path)  # two suites: in one, both tasks would write acc/aqua@rkuprune (refused)
    tasks = {
        **tasks_for(data, plain={"task": "aqua", "shots": 1}),
        **tasks_for(data, chat={"task": "aqua", "shots": 1, "chat": True}),
    }
    tok = tiny("tiny-llama").tokenizer
    q = tasks["plain"].questions[0]
    plain = tasks["plain"].prompt(q, tok)
    assert plain.startswith("Question: What is ") and plain.endswith(
        "Question: 2+2?\nAnswer Choices: (A) 4 (B) 5 (C) 6 (D) 7 (E) 8\nAnswer:"
    )
    assert "The answer is " in plain
    chat = tasks["chat"].prompt(q, tok)
    assert chat.count("<s>user\n") == 2 and chat.count("<s>assistant\n") == 2 and chat.endswith("<s>assistant\n")


def test_the_thinking_switch_reaches_the_chat_template(tmp_path) -> None:
    tok = tiny("tiny-qwen3").tokenizer
    tok.chat_template = "{{ messages[-1]['content'] }}|thinking={{ enable_thinking }}"
    for value in (True, False):
        cfg = {"task": "gsm8k", "shots": 0, "chat": True, "enable_thinking": value, "think_end_token": "</think>"}
        task = tasks_for(write_root(tmp_path), t=cfg)["t"]
        assert task.prompt(task.questions[0], tok).endswith(f"|thinking={value}")
    with pytest.raises(ConfigError, match=r"benchmark\.tasks\.t\.enable_thinking: applies to chat prompts only"):
        tasks_for(write_root(tmp_path), t={"task": "gsm8k", "shots": 0, "enable_thinking": True})
    # as lm-eval's HFLM: thinking on needs the token after which the answer is read
    with pytest.raises(ConfigError, match=r"benchmark\.tasks\.t\.think_end_token: is required with enable_thinking"):
        tasks_for(write_root(tmp_path), t={"task": "gsm8k", "shots": 0, "chat": True, "enable_thinking": True})


def test_the_answer_is_read_from_the_whole_generation_unless_a_think_end_token_is_set(tmp_path) -> None:
    answered, unanswered = "<think>The answer is 3.</think>\nSo the answer is 5.", "<think>3 + 2 = 5</think>\nNo idea."
    for think_end, strict, flexible in ((None, "3.", "5"), ("</think>", None, None)):  # raw, as lm-eval keeps it
        task = tasks_for(write_root(tmp_path), t={"task": "gsm8k", "shots": 0, "think_end_token": think_end})["t"]
        q = task.questions[0]
        assert task.score(answered, q)["extracted_strict"] == strict  # gsm8k_cot's rule: the first "The answer is"
        assert task.score(unanswered, q)["extracted"] == flexible  # flexible-extract: the last number


def test_the_answer_style_sets_the_exemplar_ending_and_the_strict_rule(tmp_path, monkeypatch) -> None:
    """Exemplars end the way lm-eval's strict rule for the style reads: "The answer is N." (gsm8k_cot),
    "#### N" (gsm8k), "The answer is (X)." for options."""
    data = write_root(tmp_path)
    tasks = {  # one suite each: two tasks writing acc/gsm8k@rkuprune cannot share a suite
        **tasks_for(data, cot={"task": "gsm8k", "shots": 1}, aqua={"task": "aqua", "shots": 1}),
        **tasks_for(data, hashes={"task": "gsm8k", "shots": 1, "answer_style": "hashes"}),
    }
    prompt = {key: task.prompt(task.questions[0], None) for key, task in tasks.items()}
    gold = tasks["cot"].exemplars[0].gold
    assert f"\nThe answer is {gold}.\n\nQuestion:" in prompt["cot"] and "####" not in prompt["cot"]
    assert f"\n#### {gold}\n\nQuestion:" in prompt["hashes"] and "The answer is" not in prompt["hashes"]
    assert f"\nThe answer is ({tasks['aqua'].exemplars[0].gold}).\n\nQuestion:" in prompt["aqua"]
    text = "#### 2000 and then The answer is 7."
    assert tasks["cot"].score(text, tasks["cot"].questions[0])["extracted_strict"] == "7"
    assert tasks["hashes"].score(text, tasks["hashes"].questions[0])["extracted_strict"] == "2000"
    with pytest.raises(
        ConfigError, match=r"benchmark\.tasks\.t\.answer_style: 'boxed' is not one of answer_is, hashes"
    ):
        tasks_for(data, t={"task": "gsm8k", "answer_style": "boxed"})
    with pytest.raises(ConfigError, match=r"benchmark\.tasks\.t\.answer_style: option answers use answer_is"):
        tasks_for(data, t={"task": "aqua", "shots": 0, "answer_style": "hashes"})


# -- limits and bad input -------------------------------------------------------------------------


def test_a_limit_larger_than_the_split_uses_it_all_and_says_so(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=reasoning.__name__):
        task = tasks_for(write_root(tmp_path), limit=50, t={"task": "aqua", "shots": 0})["t"]
    assert len(task.questions) == 2
    assert "benchmark.limit=50 exceeds the 2 questions of aqua/test" in caplog.text
    settings = task.settings()
    assert settings["num_questions"] == 2 and settings["limit_exceeds_split"] and settings["split_size"] == 2
    assert tasks_for(write_root(tmp_path), limit=1, t={"task": "aqua", "shots": 0})["t"].questions == task.questions[:1]


def test_unknown_task_and_bad_settings_name_the_field(tmp_path) -> None:
    data = write_root(tmp_path)
    with pytest.raises(ConfigError, match=r"benchmark\.tasks\.t\.task: unknown task 'gsm9k'; choose one of: .*gsm8k"):
        tasks_for(data, t={"task": "gsm9k"})
    with pytest.raises(ConfigError, match=r"benchmark\.tasks\.t\.shot"):
        tasks_for(data, t={"task": "gsm8k", "shot": 3})
    with pytest.raises(ConfigError, match=r"benchmark\.limit: must be at least 1"):
        tasks_for(data, limit=0, t={"task": "gsm8k"})
    with pytest.raises(
        ConfigError, match=r"data\.root: benchmark\.tasks\.t\.task=gsm8k needs gsm8k/test but the hub is offline"
    ):
        tasks_for(DataConfig(), t={"task": "gsm8k"})


def test_a_chat_prompt_without_a_chat_template_is_an_error(tmp_path) -> None:
    loaded = tiny("tiny-llama")
    loaded.tokenizer.chat_template = None
    task = tasks_for(write_root(tmp_path), t={"task": "gsm8k", "shots": 0, "chat": True})["t"]
    with pytest.raises(ConfigError, match=r"benchmark\.tasks\.t\.chat: the model's tokenizer has no chat template"):
        task.evaluate(loaded.model, loaded.tokenizer, EvalContext())


# -- scoring and records --------------------------------------------------------------------------


class TableTracker:
    def __init__(self) -> None:
        self.tables: dict[str, list[dict[str, Any]]] = {}

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        self.tables[key] = rows


def test_accuracy_is_the_mean_of_the_recorded_correct_flags(tmp_path, monkeypatch) -> None:
    # gold 2000, -5, 3.5, 3: lm-eval compares strings ("3.50" is not 3.5) and its strict rule needs a
    # character after the number; the lenient rule compares decimals and reads the last number.
    answers = iter(
        [
            "2 boxes hold 2,000 pens.\nThe answer is 2,000.",
            "It is -5 now",
            "The answer is 3.50 dollars.",
            "The answer is 3",
        ]
    )

    def canned(model, tokenizer, prompts, *args, stop, **kwargs):
        # lm-eval's gsm8k stops at "Question:", not at a blank line a solution may contain
        assert tuple(stop) == ("Question:",)
        return [Completion(next(answers), 5) for _ in prompts], GenerationStats(len(prompts), 5 * len(prompts), 1.0)

    monkeypatch.setattr(reasoning, "generate", canned)
    task = tasks_for(write_root(tmp_path / "data"), t={"task": "gsm8k", "shots": 2})["t"]
    tracker = TableTracker()
    metrics = task.evaluate(None, None, EvalContext(run_dir=tmp_path / "run", tracker=tracker))
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions" / "gsm8k.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, True, False, True]
    assert [r["correct_strict"] for r in rows] == [True, False, False, False]
    assert [r["correct_lenient"] for r in rows] == [True, True, True, True]
    assert metrics == {"acc/gsm8k@rkuprune": 0.75, "acc/gsm8k@rkuprune/strict": 0.25, "acc/gsm8k@rkuprune/lenient": 1.0}
    assert metrics["acc/gsm8k@rkuprune"] == sum(r["correct"] for r in rows) / len(rows)
    assert set(rows[0]) >= {"id", "question", "generation", "extracted", "gold", "correct"}
    assert rows[0]["id"] == "gsm8k/test/0" and rows[0]["extracted"] == "2,000." and rows[0]["gold"] == "2000"
    assert tracker.tables["predictions/gsm8k"] == rows
    assert (tmp_path / "run" / "predictions" / "gsm8k.prompt.txt").read_text().startswith("Question: Tom has")


def test_unparseable_output_is_flagged_not_silent(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(
        reasoning,
        "generate",
        lambda m, t, prompts, *a, **k: ([Completion("no idea", 2)] * len(prompts), GenerationStats(1, 2, 1.0)),
    )
    task = tasks_for(write_root(tmp_path), t={"task": "aqua", "shots": 0})["t"]
    with caplog.at_level(logging.WARNING, logger=reasoning.__name__):
        assert task.evaluate(None, None, EvalContext())["acc/aqua@rkuprune"] == 0
    assert "no answer could be extracted from any of the 2 generations" in caplog.text


def test_mean3_needs_all_three_parts() -> None:
    parts = {
        "acc/gsm8k@rkuprune": 0.2,
        "acc/mathqa@rkuprune": 0.3,
        "acc/aqua@rkuprune": 0.4,
        "acc/synthetic@rkuprune": 1.0,
    }
    assert derived_metrics(parts) == {"mean3": pytest.approx(0.3)}
    assert derived_metrics({"acc/gsm8k@rkuprune": 0.2, "acc/aqua@rkuprune": 0.4}) == {}


# -- generation on a tiny model -------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-qwen3"])
@pytest.mark.parametrize("shared", ["", "Question: 2+2?\nAnswer: 4.\n\n"])
def test_batched_padded_generation_matches_one_at_a_time(arch: str, shared: str) -> None:
    """Left padding, or padding after a shared prefix whose cache is computed once: same greedy text."""
    loaded = tiny(arch)
    prompts = [shared + p for p in ("Question: 1+1?\nAnswer:", "Q: a much longer prompt, padded?", "Hi")]
    sampling = Sampling(max_new_tokens=6)
    batched, stats = generate(loaded.model, loaded.tokenizer, prompts, sampling, batch_size=3)
    single = [generate(loaded.model, loaded.tokenizer, [p], sampling, batch_size=1)[0][0] for p in prompts]
    assert batched == single
    assert stats.new_tokens == sum(c.num_tokens for c in batched) and 0 < stats.new_tokens <= 18


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_a_row_halted_by_a_stop_string_counts_the_same_tokens_in_a_batch(pad_is_eos: bool) -> None:
    """In a batch, a row stopped by a stop string is padded while the others go on; the padding is
    not a generated token, also when the pad id is the EOS id (as in SmolLM2)."""
    loaded = tiny("tiny-llama")
    if pad_is_eos:
        loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
    prompts = ["Question: 1+1?\nAnswer:", "Q: a much longer prompt, padded?", "Hi"]
    early = generate(loaded.model, loaded.tokenizer, prompts[:1], Sampling(max_new_tokens=3), batch_size=1)[0][0]
    stop = [early.text[-2:]]
    sampling = Sampling(max_new_tokens=10)
    batched, _ = generate(loaded.model, loaded.tokenizer, prompts, sampling, batch_size=3, stop=stop)
    single = [generate(loaded.model, loaded.tokenizer, [p], sampling, batch_size=1, stop=stop)[0][0] for p in prompts]
    assert batched[0].num_tokens <= 3 < max(c.num_tokens for c in batched)  # row 0 was padded
    assert batched == single


def test_common_prefix_leaves_every_prompt_a_token() -> None:
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2], [3]]) == 0 and common_prefix_length([[1, 2, 3]]) == 0


def test_sampling_is_seeded() -> None:
    loaded = tiny("tiny-qwen2")
    sampling = Sampling(max_new_tokens=8, do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    first = generate(loaded.model, loaded.tokenizer, ["abc", "de"], sampling, batch_size=2, seed=3)[0]
    again = generate(loaded.model, loaded.tokenizer, ["abc", "de"], sampling, batch_size=2, seed=3)[0]
    other = generate(loaded.model, loaded.tokenizer, ["abc", "de"], sampling, batch_size=2, seed=4)[0]
    assert first == again and first != other


def test_synthetic_runs_end_to_end_on_a_tiny_model(tmp_path) -> None:
    loaded = tiny("tiny-qwen2")
    suite = {"task": "synthetic", "num_problems": 3, "shots": 0, "max_new_tokens": 4, "batch_size": 2, "chat": True}
    task = tasks_for(DataConfig(), s=suite)["s"]
    torch.manual_seed(0)
    metrics = task.evaluate(loaded.model, loaded.tokenizer, EvalContext(run_dir=tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "predictions" / "synthetic.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and [r["id"] for r in rows] == [f"synthetic/test/1234/{i}" for i in range(3)]
    assert metrics["acc/synthetic@rkuprune"] == sum(r["correct"] for r in rows) / 3
    assert task.settings()["exemplars"] == [] and task.settings()["prompt"] == "chat"


def test_the_reasoning_suite_runs_from_the_cli_and_records_everything(tmp_path, monkeypatch, capsys) -> None:
    import sys

    from rkuprune import cli

    data, run_dir = write_root(tmp_path / "data"), tmp_path / "run"
    short = [
        f"benchmark.tasks.{t}.{k}={v}"
        for t in ("gsm8k", "mathqa", "aqua")
        for k, v in (("shots", 1), ("max_new_tokens", 4))
    ]
    argv = ["model=tiny-llama", "logger=none", "benchmark=reasoning", f"data.root={data.root}", "benchmark.limit=2"]
    monkeypatch.setattr(sys, "argv", ["rkuprune", *argv, *short, "dense_cache=false", f"hydra.run.dir={run_dir}"])
    cli.main()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    for section in ("metrics", "dense_metrics"):
        values = results[section]
        assert set(values) >= {
            "acc/gsm8k@rkuprune",
            "acc/gsm8k@rkuprune/strict",
            "acc/mathqa@rkuprune",
            "acc/aqua@rkuprune",
            "acc/mathqa/mc",
            "acc/aqua/mc",
        }
        assert values["mean3"] == pytest.approx(
            (values["acc/gsm8k@rkuprune"] + values["acc/mathqa@rkuprune"] + values["acc/aqua@rkuprune"]) / 3
        )
    gsm8k = results["evaluation"]["gsm8k"]
    assert gsm8k["shots"] == 1 and gsm8k["num_questions"] == 2 and not gsm8k["do_sample"]
    for name in ("gsm8k", "mathqa", "aqua", "mathqa_mc", "aqua_mc"):
        assert len((run_dir / "predictions" / f"{name}.jsonl").read_text().splitlines()) == 2


def test_a_prompt_longer_than_the_context_is_an_error(tmp_path) -> None:
    loaded = tiny("tiny-llama")  # 1024 positions; 7 byte-token shots plus 1000 new tokens cannot fit
    task = tasks_for(write_root(tmp_path), t={"task": "gsm8k", "shots": 7, "max_new_tokens": 1000})["t"]
    with pytest.raises(
        ConfigError, match=r"benchmark\.tasks\.t\.shots: the longest prompt \(\d+ tokens\) plus max_new_tokens=1000"
    ):
        task.evaluate(loaded.model, loaded.tokenizer, EvalContext())
