"""``gsm8k_gold_chat``: the question in the chat template, the human solution + EOS as the answer, and a
loss mask on exactly the answer and EOS."""

from __future__ import annotations

from typing import Any

import pytest

from rkuprune.data.calibration import CALIBRATION_SOURCES
from rkuprune.data.gold_chat import GoldChatConfig
from rkuprune.data.self_generated import chat_prompt
from rkuprune.data.sources import DataConfig, gsm8k_rows
from rkuprune.errors import ConfigError
from tests.conftest import SHARED_DATA, tiny

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")


def check_rows(tokenizer: Any) -> None:
    data = DataConfig(root=str(SHARED_DATA))
    source = CALIBRATION_SOURCES.build(GoldChatConfig(num_prompts=3, seqlen=2048))
    source.check(data)
    calibration = source.build(tokenizer, data)
    solutions = {row["question"]: row["answer"] for row in gsm8k_rows(data, "train")}
    assert len(calibration) == 3
    for ids, mask, real in zip(calibration.input_ids, calibration.loss_mask, calibration.attention_mask, strict=True):
        ids = ids[real.bool()]
        mask = mask[real.bool()]
        context = tokenizer.decode(ids[~mask])
        (question,) = [q for q in solutions if q in context]
        # the unmasked part is exactly the chat prompt, ending where the assistant's answer begins
        prompt = tokenizer(chat_prompt(tokenizer, question, True), add_special_tokens=False).input_ids
        assert ids[~mask].tolist() == prompt and mask[len(prompt) :].all()
        # the masked part is exactly the human solution and one EOS
        answer = tokenizer(solutions[question], add_special_tokens=False).input_ids
        assert ids[mask].tolist() == [*answer, tokenizer.eos_token_id]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-qwen3"])
def test_the_loss_mask_covers_the_solution_and_eos_on_the_tiny_models_templates(name: str) -> None:
    check_rows(tiny(name).tokenizer)


@pytest.mark.slow
def test_the_loss_mask_covers_the_solution_and_eos_on_smollm2s_template() -> None:
    from tests.test_smollm2 import smollm2

    tokenizer = smollm2().tokenizer
    check_rows(tokenizer)
    assert tokenizer.eos_token == "<|im_end|>"  # the chat template's end of turn


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"calibration\.num_prompts: must be at least 1"):
        CALIBRATION_SOURCES.build(GoldChatConfig(num_prompts=0)).check(DataConfig(root=str(SHARED_DATA)))


def test_packed_rows_are_the_rows_tokens_end_to_end_in_full_windows_every_token_counted() -> None:
    """RESP's Wanda-sp statistics: prompt and answer tokens alike, 256-token windows (here 64)."""
    tokenizer = tiny("tiny-qwen3").tokenizer
    data = DataConfig(root=str(SHARED_DATA))
    rows = CALIBRATION_SOURCES.build(GoldChatConfig(num_prompts=4, seqlen=4096)).build(tokenizer, data)
    stream = [int(t) for ids, real in zip(rows.input_ids, rows.attention_mask, strict=True) for t in ids[real.bool()]]
    packed = CALIBRATION_SOURCES.build(GoldChatConfig(num_prompts=4, seqlen=64, pack=True)).build(tokenizer, data)
    assert len(packed) == len(stream) // 64 > 1
    assert packed.input_ids.flatten().tolist() == stream[: len(packed) * 64]
    assert packed.attention_mask.all() and packed.loss_mask.all()
    with pytest.raises(ConfigError, match=r"calibration\.seqlen: 100000 is longer than the \d+ tokens"):
        CALIBRATION_SOURCES.build(GoldChatConfig(num_prompts=4, seqlen=100_000, pack=True)).build(tokenizer, data)
