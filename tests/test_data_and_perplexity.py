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
from rkuprune.evaluation.perplexity import perplexity
from rkuprune.models.tokenizer import byte_tokenizer
from tests.conftest import SHARED_DATA, tiny


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


def test_perplexity_matches_a_direct_computation() -> None:
    model = tiny("tiny-qwen2").model
    ids = torch.randint(3, 259, (3 * 32 + 5,))
    got = perplexity(model, ids, seqlen=32, max_windows=None, batch_size=2)
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in range(3):
            window = ids[w * 32 : (w + 1) * 32]
            logp = torch.log_softmax(model(input_ids=window[None]).logits[0].float(), -1)
            nll -= logp[torch.arange(31), window[1:]].sum().item()
            count += 31
    assert got == pytest.approx(math.exp(nll / count), rel=1e-5)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
def test_local_wikitext2_rows_match_the_published_layout() -> None:
    from rkuprune.data.sources import wikitext2_text

    text = wikitext2_text(DataConfig(root=str(SHARED_DATA)), "test")
    assert text.startswith("\n\n = Robert Boulter = \n")
    assert len(text.split()) == 241_211
