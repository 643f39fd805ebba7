"""RESP calibration: decode-only loss masks, traces from the current (pruned) model, disk cache."""

from __future__ import annotations

import copy

import pytest
import torch

from rkuprune.data.self_generated import SelfGenerated, SelfGeneratedConfig, chat_prompt, decode_only_batch
from rkuprune.data.sources import DataConfig
from rkuprune.errors import ConfigError
from rkuprune.models.adapters import adapter_for
from rkuprune.models.surgery import apply_plan
from tests.conftest import random_plan, tiny


def source(**overrides: object) -> SelfGenerated:
    settings = {"questions": "synthetic", "num_prompts": 3, "max_new_tokens": 12, "seqlen": 512, **overrides}
    cfg = SelfGeneratedConfig(**settings)
    src = SelfGenerated(cfg)
    src.check(DataConfig())
    return src


@pytest.mark.slow
def test_decode_only_mask_covers_exactly_the_answer_on_a_real_chat_template() -> None:
    from tests.test_smollm2 import smollm2

    tokenizer = smollm2().tokenizer
    question = "Ava has 3 apples and buys 4 more. How many apples does she have?"
    answer = "She has 3 + 4 = 7 apples.\n#### 7"
    prompt = tokenizer(chat_prompt(tokenizer, question, True), add_special_tokens=False).input_ids
    reply = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    batch = decode_only_batch([prompt], [reply], tokenizer.pad_token_id, seqlen=512)
    ids, mask = batch.input_ids[0], batch.loss_mask[0]
    assert tokenizer.decode(ids[mask]) == answer + tokenizer.eos_token
    context = tokenizer.decode(ids[~mask])
    assert context.endswith("<|im_start|>assistant\n") and question in context and "<|im_start|>user" in context


def test_traces_come_from_the_model_in_hand(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RKUPRUNE_CACHE", str(tmp_path))
    loaded = tiny("tiny-llama")
    dense = source(cache=False).build(loaded.tokenizer, DataConfig(), model=loaded.model)
    again = source(cache=False).build(loaded.tokenizer, DataConfig(), model=loaded.model)
    pruned_model = copy.deepcopy(loaded.model)
    plan = random_plan(adapter_for(pruned_model).structures(), "q_head", seed=0)
    apply_plan(pruned_model, plan, "mask")
    pruned = source(cache=False).build(loaded.tokenizer, DataConfig(), model=pruned_model, plan=plan)
    assert torch.equal(dense.input_ids, again.input_ids)  # same seed, same model: same traces
    assert not torch.equal(dense.input_ids, pruned.input_ids) or dense.input_ids.shape != pruned.input_ids.shape
    assert dense.provenance["generated_tokens"] > 0 and dense.provenance["loss_tokens"] > 0
    assert int(dense.loss_mask.sum()) == dense.provenance["loss_tokens"]


def test_traces_are_cached_by_weights_plan_and_settings(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RKUPRUNE_CACHE", str(tmp_path))
    loaded = tiny("tiny-qwen2")
    first = source().build(loaded.tokenizer, DataConfig(), model=loaded.model)
    assert len(list((tmp_path / "traces").glob("*.json"))) == 1

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("generated again despite the cache")

    monkeypatch.setattr("rkuprune.generation.generate", no_generation)
    second = source().build(loaded.tokenizer, DataConfig(), model=loaded.model)
    assert torch.equal(first.input_ids, second.input_ids)
    with pytest.raises(AssertionError, match="generated again"):
        source(temperature=0.9).build(loaded.tokenizer, DataConfig(), model=loaded.model)
    other_weights = tiny("tiny-qwen2", seed=1)  # same config and (empty) name, other weights: its own traces
    assert other_weights.model.config._name_or_path == loaded.model.config._name_or_path
    with pytest.raises(AssertionError, match="generated again"):
        source().build(other_weights.tokenizer, DataConfig(), model=other_weights.model)


def test_a_model_without_a_chat_template_is_refused() -> None:
    loaded = tiny("tiny-llama")
    loaded.tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="calibration: self_generated needs a chat template"):
        source().build(loaded.tokenizer, DataConfig(), model=loaded.model)


def test_empty_generations_are_an_error(monkeypatch) -> None:
    from rkuprune import generation

    loaded = tiny("tiny-llama")
    empty = ([generation.Completion("", 0)] * 3, generation.GenerationStats(3, 0, 1.0))
    monkeypatch.setattr(generation, "generate", lambda *a, **k: empty)
    with pytest.raises(ConfigError, match=r"calibration\.max_new_tokens: every generated trace was empty"):
        source(cache=False).build(loaded.tokenizer, DataConfig(), model=loaded.model)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"questions": "poems"}, r"calibration\.questions"), ({"num_prompts": 0}, r"calibration\.num_prompts")],
)
def test_bad_settings_name_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        source(**overrides)


def test_traces_keep_the_generated_ids_and_end_with_eos_only_when_the_model_generated_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RKUPRUNE_CACHE", str(tmp_path))
    loaded = tiny("tiny-qwen2")
    model, tokenizer = loaded.model, loaded.tokenizer
    settings = {"num_prompts": 1, "max_new_tokens": 10, "do_sample": False, "cache": False}
    (question,) = source(**settings).questions(DataConfig())
    prompt = tokenizer(chat_prompt(tokenizer, question, True), add_special_tokens=False).input_ids
    limit = model.generation_config.eos_token_id
    # What the model generates for this prompt, straight from transformers (greedy, no EOS met in 10 tokens)
    direct = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=limit)
    generated = direct[0, len(prompt) :].tolist()
    assert len(generated) == 10 and tokenizer.eos_token_id not in generated

    cut = source(**settings).build(tokenizer, DataConfig(), model=model)
    assert cut.input_ids[0][cut.loss_mask[0]].tolist() == generated  # the ids themselves, and no EOS added

    # Make the fourth generated token end the turn: the trace stops there and keeps it as its EOS.
    stop_token = generated[3]
    first = generated.index(stop_token)
    monkeypatch.setattr(model.generation_config, "eos_token_id", stop_token)
    ended = source(**settings).build(tokenizer, DataConfig(), model=model)
    assert ended.input_ids[0][ended.loss_mask[0]].tolist() == generated[: first + 1]
