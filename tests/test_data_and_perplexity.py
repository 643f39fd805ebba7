"""Calibration sets and perplexity: deterministic, disjoint from evaluation splits, hand-checkable."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rkuprune.data.calibration import CALIBRATION_SOURCES, CalibrationConfig
from rkuprune.data.sources import DataConfig, pydoc_text, pydoc_topics
from rkuprune.data.synthetic import word_problems
from rkuprune.errors import ConfigError
from rkuprune.evaluation import perplexity as perplexity_module
from rkuprune.evaluation.base import BenchmarkConfig, EvalContext, build_tasks
from rkuprune.evaluation.perplexity import evaluation_text, perplexity, token_stream
from rkuprune.evaluation.solution import solution_nll, solution_tokens
from rkuprune.models.tokenizer import byte_tokenizer
from rkuprune.precision import at_least_fp32
from tests.conftest import SHARED_DATA, in_float64, tiny


def build(name: str, data: DataConfig | None = None, **overrides: object):
    cfg = CalibrationConfig(name=name, **{"num_tokens": 1024, "seqlen": 64, "batch_size": 4, **overrides})
    source = CALIBRATION_SOURCES.build(cfg)
    source.check(data or DataConfig())
    return source.build(byte_tokenizer(), data or DataConfig())


@pytest.mark.parametrize("name", ["synthetic", "pydoc"])
def test_offline_sources_are_deterministic_and_record_token_counts(name: str) -> None:
    first, second, other = build(name), build(name), build(name, seed=1)
    assert torch.equal(first.input_ids, second.input_ids)
    assert not torch.equal(first.input_ids[:2], other.input_ids[:2])
    assert first.provenance["num_tokens"] == int(first.attention_mask.sum()) >= 1024 - 64
    assert first.provenance["source"] == name and first.provenance["seed"] == 0


def test_pydoc_calibration_and_evaluation_halves_do_not_overlap() -> None:
    from pydoc_data.topics import topics

    train, test = pydoc_topics("train"), pydoc_topics("test")
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(topics)
    assert pydoc_text("test") == "\n\n".join(test.values())


def test_synthetic_train_and_test_never_share_a_problem() -> None:
    train = {p.question for p in word_problems(3000, 0, "train")}
    test = {p.question for p in word_problems(3000, 0, "test")}
    assert not train & test


def test_question_source_pads_right_and_masks_padding() -> None:
    calibration = build("synthetic", seqlen=256)
    lengths = calibration.attention_mask.sum(1)
    assert (lengths < calibration.input_ids.shape[1]).any()
    for row, n in zip(calibration.attention_mask, lengths, strict=True):
        assert row[:n].all() and not row[n:].any()
    assert torch.equal(calibration.loss_mask, calibration.attention_mask.bool())


def test_batches_drop_only_columns_that_are_padding_in_every_row_of_the_batch() -> None:
    calibration = build("synthetic", seqlen=256)
    widths, real = [], 0
    for start, batch in zip(range(0, len(calibration), 4), calibration.batches(), strict=True):
        lengths = calibration.attention_mask[start : start + 4].sum(1)
        assert batch["input_ids"].shape[1] == lengths.max()
        assert torch.equal(batch["input_ids"], calibration.input_ids[start : start + 4, : int(lengths.max())])
        widths.append(batch["input_ids"].shape[1])
        real += int(batch["attention_mask"].sum())
    assert real == calibration.num_tokens and min(widths) < calibration.input_ids.shape[1]


def test_too_few_tokens_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"calibration\.num_tokens: 32 is fewer than one sequence"):
        build("synthetic", num_tokens=32, seqlen=64)


def test_q16k_needs_data_offline() -> None:
    with pytest.raises(ConfigError, match=r"data\.root: calibration=q16k needs gsm8k/train"):
        build("q16k")


def test_wiki16k_refuses_a_root_with_only_the_test_split(tmp_path) -> None:
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text(" \n = Title = \n")
    with pytest.raises(ConfigError, match="an evaluation split that calibration never reads"):
        build("wiki16k", DataConfig(root=str(tmp_path)))


def test_q16k_reads_gsm8k_train_from_data_root(tmp_path) -> None:
    (tmp_path / "gsm8k").mkdir()
    rows = [
        {"question": f"Q{i}: what is {i} + {i}?", "answer": f"{i}+{i}=<<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
        for i in range(200)
    ]
    (tmp_path / "gsm8k" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    calibration = build("q16k", DataConfig(root=str(tmp_path)), num_tokens=256)
    text = byte_tokenizer().decode(calibration.input_ids[0][calibration.attention_mask[0].bool()])
    assert text.startswith("Q") and "####" not in text
    gold = build("gsm8k_gold", DataConfig(root=str(tmp_path)), num_tokens=256)
    gold_text = byte_tokenizer().decode(gold.input_ids[0][gold.attention_mask[0].bool()])
    assert "####" in gold_text and "<<" not in gold_text


def test_perplexity_matches_a_direct_computation_in_float64() -> None:
    """A float64 model is scored in float64: windows run in batches of 2 agree with each window run alone
    and a hand log-softmax to float64 round-off (~1e-14 here); float32 NLL would be off by ~1e-7."""
    model = in_float64(tiny("tiny-qwen2").model)
    ids = torch.randint(3, 259, (3 * 32 + 5,))
    got = perplexity(model, ids, seqlen=32, max_windows=None, batch_size=2)
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in range(3):
            window = ids[w * 32 : (w + 1) * 32]
            logp = torch.log_softmax(model(input_ids=window[None]).logits[0], -1)
            assert logp.dtype == torch.float64
            nll -= logp[torch.arange(31), window[1:]].sum().item()
            count += 31
    assert got == pytest.approx(math.exp(nll / count), rel=1e-12, abs=0)


def test_half_precision_logits_are_raised_to_float32_and_float64_stays() -> None:
    for dtype, expected in [
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ]:
        assert at_least_fp32(torch.zeros(2, 3, dtype=dtype)).dtype == expected


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
def test_local_wikitext2_rows_match_the_published_layout() -> None:
    from rkuprune.data.sources import wikitext2_text

    text = wikitext2_text(DataConfig(root=str(SHARED_DATA)), "test")
    assert text.startswith("\n\n = Robert Boulter = \n")
    assert len(text.split()) == 241_211


# -- the GPTQ/Wanda stream: what the tokenizer adds (or BOS once), C4 joined with a space ----------------


def with_bos_post_processor(tokenizer):
    """The byte tokenizer made to add <s> itself, as LLaMA-3's adds <|begin_of_text|>."""
    from tokenizers.processors import TemplateProcessing

    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    return tokenizer


def test_bos_rules_tokenizer_adds_what_the_tokenizer_adds_and_once_prepends_it_once() -> None:
    text = pydoc_text("test")[:2000]
    tokenizer = byte_tokenizer()
    plain = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer(text).input_ids == plain  # this tokenizer adds nothing (as Qwen's and SmolLM2's)
    assert token_stream(tokenizer, text, "tokenizer").tolist() == plain
    once = token_stream(tokenizer, text, "once")
    assert once[0].item() == tokenizer.bos_token_id and once[1:].tolist() == plain  # shifted by one
    assert (once == tokenizer.bos_token_id).sum() == 1  # once, not per window
    adding = with_bos_post_processor(byte_tokenizer())
    assert torch.equal(token_stream(adding, text, "tokenizer"), once)  # LLaMA-3: the two rules agree
    assert torch.equal(token_stream(adding, text, "once"), once)
    tokenizer.bos_token = None  # a tokenizer without a BOS token: "once" has nothing to add
    assert token_stream(tokenizer, text, "once").tolist() == plain


def gptq_perplexity(model, tokenizer, text: str, seqlen: int) -> float:
    """GPTQ's datautils/llama_eval, written out independently: tokenizer(text), full windows, mean loss × seqlen."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    nsamples = ids.numel() // seqlen
    nlls = []
    with torch.no_grad():
        for i in range(nsamples):
            batch = ids[:, i * seqlen : (i + 1) * seqlen]
            logits = model(batch).logits
            loss = torch.nn.CrossEntropyLoss()(logits[0, :-1], batch[0, 1:])
            nlls.append(loss.double() * seqlen)
    return math.exp(torch.stack(nlls).sum().item() / (nsamples * seqlen))


@pytest.mark.parametrize("bos", ["tokenizer", "once"])
def test_the_perplexity_task_with_bos_tokenizer_equals_an_independent_gptq_script(bos: str, monkeypatch) -> None:
    loaded = tiny("tiny-llama")
    in_float64(loaded.model)
    text = pydoc_text("test")[:3000]
    monkeypatch.setattr(perplexity_module, "evaluation_text", lambda dataset, data: text)
    task = build_tasks(
        BenchmarkConfig(tasks={"p": {"task": "perplexity", "dataset": "pydoc", "seqlen": 64, "bos": bos}}),
        DataConfig(),
    )["p"]
    got = task.evaluate(loaded.model, loaded.tokenizer, EvalContext())["ppl/pydoc@64"]
    reference = gptq_perplexity(loaded.model, loaded.tokenizer, text, 64)
    if bos == "tokenizer":
        assert got == pytest.approx(reference, rel=1e-12)  # float64: the two sums differ only in rounding
    else:  # the extra BOS shifts every window by one token: a different number
        assert got != pytest.approx(reference, rel=1e-6)
    assert task.settings()["bos"] == bos


def test_an_unknown_bos_rule_is_an_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="'always' is not one of tokenizer, once") as error:
        build_tasks(BenchmarkConfig(tasks={"p": {"task": "perplexity", "bos": "always"}}), DataConfig())
    assert error.value.field == "benchmark.tasks.p.bos"


def test_c4_is_the_first_1100_documents_joined_with_a_space(tmp_path) -> None:
    (tmp_path / "c4").mkdir()
    rows = [{"text": f"document {i}\nline two", "timestamp": "", "url": ""} for i in range(1200)]
    (tmp_path / "c4" / "c4_validation_2k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = evaluation_text("c4", DataConfig(root=str(tmp_path)))
    assert text == " ".join(r["text"] for r in rows[:1100])


# -- gold-solution perplexity ---------------------------------------------------------------------


def test_solution_nll_counts_only_solution_tokens() -> None:
    """Hand-computed in float64: each sequence run alone, log-softmax, summed over the solution positions."""
    loaded = tiny("tiny-llama")
    model, tokenizer = loaded.model.double(), loaded.tokenizer
    pairs = [("Question: 2+2?\nAnswer:", " 2+2=4\nThe answer is 4."), ("Q: a longer question here?\nA:", " 7.")]
    items = [solution_tokens(tokenizer, prompt, solution, add_bos=True) for prompt, solution in pairs]
    total, count = solution_nll(model, items, batch_size=2)  # padded together: padding must not count
    expected, expected_count = 0.0, 0
    with torch.no_grad():
        for item, (_, solution) in zip(items, pairs, strict=True):
            assert item.ids[0] == tokenizer.bos_token_id
            assert len(item.ids) - item.start == len(tokenizer(solution, add_special_tokens=False).input_ids)
            ids = torch.tensor([item.ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
            for t in range(item.start, len(item.ids)):  # token t predicted from position t-1
                expected -= logp[t - 1, item.ids[t]].item()
                expected_count += 1
    assert count == expected_count
    assert total == pytest.approx(expected, rel=1e-10)
    # and the prompt's tokens are not in it: all-token NLL is larger
    with torch.no_grad():
        everything = sum(
            -torch.log_softmax(model(input_ids=torch.tensor([i.ids])).logits[0], -1)[:-1]
            .gather(-1, torch.tensor(i.ids[1:])[:, None])
            .sum()
            .item()
            for i in items
        )
    assert everything > total + 1


def test_solution_ppl_task_on_synthetic_problems() -> None:
    suite = BenchmarkConfig(
        tasks={"s": {"task": "solution_ppl", "dataset": "synthetic", "synthetic_problems": 6, "max_solutions": 4}}
    )
    task = build_tasks(suite, DataConfig())["s"]
    loaded = tiny("tiny-qwen2")
    model = loaded.model.double()
    value = task.evaluate(model, loaded.tokenizer, EvalContext())["ppl/synthetic_solution"]
    items = [solution_tokens(loaded.tokenizer, *task.prompt(q, loaded.tokenizer), add_bos=True) for q in task.questions]
    total, count = solution_nll(model, items, batch_size=1)  # batched or not: the same value
    assert value == pytest.approx(math.exp(total / count), rel=1e-10)
    assert task.settings()["num_solutions"] == 4 and task.settings()["prompt"] == "plain"
    chat = build_tasks(BenchmarkConfig(tasks={"s": {**suite.tasks["s"], "chat": True}}), DataConfig())["s"]
    prompt, solution = chat.prompt(chat.questions[0], loaded.tokenizer)
    assert (
        solution.endswith(f"The answer is {chat.questions[0].gold}.")
        and prompt != task.prompt(task.questions[0], None)[0]
    )


@pytest.mark.parametrize("dataset", ["gsm8k", "mathqa", "aqua"])
def test_solution_ppl_without_data_stops_before_the_model_loads(dataset: str, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    suite = BenchmarkConfig(tasks={"s": {"task": "solution_ppl", "dataset": dataset}})
    with pytest.raises(ConfigError, match=r"data\.root.*benchmark\.tasks\.s\.dataset="):
        build_tasks(suite, DataConfig())


@pytest.mark.parametrize(
    ("fields", "where"),
    [({"dataset": "math"}, "dataset"), ({"max_solutions": 0}, "max_solutions"), ({"batch_size": 0}, "batch_size")],
)
def test_solution_ppl_rejects_bad_settings(fields: dict[str, object], where: str) -> None:
    suite = BenchmarkConfig(tasks={"s": {"task": "solution_ppl", "dataset": "synthetic", **fields}})
    with pytest.raises(ConfigError, match=rf"benchmark\.tasks\.s\.{where}"):
        build_tasks(suite, DataConfig())
