"""The LLM judge of RESP's evaluation protocol (arXiv 2512.02185).

RESP scores its GSM8K and MathQA generations with ``Qwen/Qwen3-30B-A3B-Instruct-2507`` (its README,
"Extract answers"; ``modules/eval/answer_extract_gsm8k.py`` and ``answer_extract_mathqa.py``,
``ask_true_false``). This module asks the same question the same way:

- **What the judge sees**: a system turn with RESP's instructions (one text for number answers, one
  for multiple choice) and a user turn ``Return answer and reasoning in the specified format.\\nDATA:\\n``
  followed by the JSON ``{"target": ..., "resps": [...]}``. ``target`` is the gold answer as RESP's
  lm-eval tasks write it (GSM8K: the number after ``####``; MathQA: ``Options: <options>\\n Correct:
  <letter>``); ``resps`` holds the model's whole generation, thinking included, in the form RESP passes
  it: lm-eval's logged ``resps`` entry (a one-element list) turned into a string by ``str()``. The judge
  is not shown the question.
- **Decoding**: greedy (RESP: ``temperature=0``), at most 150 new tokens, through the judge's chat template.
- **Verdict**: the last line starting ``ANSWER:`` (any case); ``true`` is correct, ``false`` incorrect,
  anything else or no such line is *unparsed* (RESP counts it incorrect, so do we, and we count it).
  Text before a ``</think>`` is ignored, so a thinking judge's deliberation cannot be read as its verdict.

The judge runs once per run, after every generation it judges exists (dense reference, pruned model,
and the pruned model before recovery when a recovery runs): tasks queue their generations in a
:class:`JudgeQueue`, and the pipeline answers the queue with one load of the judge, freed afterwards.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import OmegaConf

from rkuprune.errors import ConfigError
from rkuprune.evaluation.extraction import THINK_END, answer_part
from rkuprune.generation import Sampling, generate
from rkuprune.models.loading import ModelConfig, check_model_config, load_model, peek_model

log = logging.getLogger(__name__)

FIELD = "benchmark.judge"
REFERENCE_JUDGE = "Qwen/Qwen3-30B-A3B-Instruct-2507"

# RESP's system instructions, verbatim (they are the protocol): answer_extract_gsm8k.py for number
# answers, answer_extract_mathqa.py for multiple choice.
NUMBER_INSTRUCTIONS = """You are an answer checker.
Return your answer in this EXACT format:
ANSWER: true/false
REASON: [your reasoning]

Task:
Given a JSON payload with `target` (string) and `resps` (list of strings),
return true if ANY element of `resps` contains a representation of the value as `target` in their final answer. \
Otherwise return false. You do not have to be very restrict. Treat matching in a commonsense manner (do not need \
to check format and unit)."""
CHOICE_INSTRUCTIONS = """Return your answer in this EXACT format:
ANSWER: true/false
REASON: [your reasoning]

Task:
You are an expert evaluator for multiple-choice question answering tasks.
Given a question, a correct option with the specific value (target), and a model's solution, you must determine \
whether the solution is correct.
You should strictly judge correctness based on the meaning — if the solution matches the correct choice or \
expresses the same answer (even if written differently), mark it as true. Otherwise, mark it as false.
The model's solution may either mention the option letter (e.g., "B") or the actual value (e.g., "30 mph"). \
Both count as correct if they match in meaning.
Ignore case, punctuation, and minor phrasing differences when judging equivalence."""
REQUEST = "Return answer and reasoning in the specified format.\nDATA:\n"
VERDICT = "answer:"


def reference_judge() -> ModelConfig:
    """RESP's judge as a model config: the hub id in bfloat16 on one GPU."""
    return ModelConfig(
        name="qwen3-30b-a3b-instruct-2507",
        source="hub",
        path=REFERENCE_JUDGE,
        gguf_package=None,
        gguf_file=None,
        dtype="bfloat16",
        device="cuda",
    )


@dataclass
class JudgeConfig:
    """``benchmark.judge``: an LLM that decides whether a generation reaches the gold answer, as RESP's
    protocol does. Off by default (a 30B judge is the user's choice); with it off only the lm-eval regex
    scores are reported. ``model`` is a full model config (hub id or local folder, dtype, device,
    device_map; ``+model@benchmark.judge.model=<preset>`` takes one of conf/model)."""

    enabled: bool = False
    model: ModelConfig = field(default_factory=reference_judge)
    max_new_tokens: int = 150  # RESP: max_tokens=150
    batch_size: int = 16
    enable_thinking: bool | None = None  # passed to the judge's chat template when set (Qwen3 hybrids)


def check(cfg: JudgeConfig) -> None:
    """Fail before any model loads when an enabled judge cannot work (one line naming the field)."""
    if not cfg.enabled:
        return
    for name in ("max_new_tokens", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{FIELD}.{name}", f"must be at least 1, got {getattr(cfg, name)}")
    check_model_config(cfg.model, f"{FIELD}.model")
    peeked = peek_model(cfg.model)
    if peeked is not None:
        require_chat_template(peeked[1], cfg)


def require_chat_template(tokenizer: Any, cfg: JudgeConfig) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"{FIELD}.model", f"'{cfg.model.name}' has no chat template; the judge is asked in chat turns"
        )


def settings(cfg: JudgeConfig) -> dict[str, Any]:
    """What decides a verdict (recorded with each judged task, and part of the dense-metric cache key)."""
    return {**OmegaConf.to_container(OmegaConf.structured(cfg)), "protocol": "RESP ask_true_false"}


def judge_key(metric: str) -> str:
    """The judge-scored twin of an accuracy key: ``acc/gsm8k@rkuprune`` -> ``acc/gsm8k@rkuprune/judge``."""
    return f"{metric}/judge"


def choice_target(choices: tuple[str, ...], gold: str) -> str:
    """RESP's MathQA target (its lm-eval task's ``doc_to_target``): the options in MathQA's own
    ``a ) x , b ) y`` form and the lowercase correct letter."""
    options = " , ".join(f"{chr(ord('a') + i)} ) {text}" for i, text in enumerate(choices))
    return f"Options: {options}\n Correct: {gold.lower()}"


def conversation(target: str, generation: str, multiple_choice: bool) -> list[dict[str, str]]:
    """The judge's two chat turns for one generation, as RESP's ``ask_true_false`` builds them."""
    # lm-eval logs a request's responses as a list; RESP passes str() of it, brackets and quotes included.
    payload = {"target": target.strip(), "resps": [str([generation]).strip()]}
    return [
        {"role": "system", "content": CHOICE_INSTRUCTIONS if multiple_choice else NUMBER_INSTRUCTIONS},
        {"role": "user", "content": REQUEST + json.dumps(payload, ensure_ascii=False)},
    ]


def parse_verdict(output: str) -> bool | None:
    """True/False from the last ``ANSWER:`` line after any thinking; None when there is none or it says
    neither true nor false (RESP reads only an exact ``true`` as correct)."""
    verdict: bool | None = None
    for line in answer_part(output, THINK_END).strip().splitlines():
        line = line.strip()
        if line.lower().startswith(VERDICT):
            value = line[len(VERDICT) :].strip().lower()
            verdict = {"true": True, "false": False}.get(value)
    return verdict


@dataclass
class JudgeResult:
    """One task's judge metrics and how many verdicts could not be read."""

    metrics: dict[str, float]
    unparsed: int


@dataclass
class JudgeRequest:
    """The generations of one task in one phase (``dense``, ``pruned``, ``before_recovery``), waiting
    for the judge; ``answer`` turns the judge's outputs into the task's result, ``then`` runs after."""

    phase: str
    task: str
    conversations: list[list[dict[str, str]]]
    answer: Callable[[list[str]], JudgeResult]
    then: list[Callable[[JudgeResult], None]] = field(default_factory=list)


class JudgeQueue:
    """Judge requests of one run, answered together by one load of the judge."""

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self.requests: list[JudgeRequest] = []

    def ask(self, request: JudgeRequest) -> None:
        self.requests.append(request)

    def waiting(self, phase: str, task: str) -> JudgeRequest | None:
        return next((r for r in self.requests if (r.phase, r.task) == (phase, task)), None)

    def answer(self) -> list[tuple[JudgeRequest, JudgeResult]]:
        """Load the judge, judge every queued generation, free the judge; return each request's result."""
        requests, self.requests = self.requests, []
        if not requests:
            return []
        outputs = self.judge([c for r in requests for c in r.conversations])
        results = []
        start = 0
        for request in requests:
            result = request.answer(outputs[start : start + len(request.conversations)])
            start += len(request.conversations)
            for follow in request.then:
                follow(result)
            results.append((request, result))
        return results

    def judge(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        """The judge's output for every conversation, greedy (RESP asks at temperature 0)."""
        cfg = self.cfg
        log.info("loading the judge %s for %d generations", cfg.model.name, len(conversations))
        loaded = load_model(cfg.model)
        model, tokenizer = loaded.model, loaded.tokenizer
        del loaded
        try:
            require_chat_template(tokenizer, cfg)  # a hub judge could not be checked before it loaded
            extra = {} if cfg.enable_thinking is None else {"enable_thinking": cfg.enable_thinking}
            prompts = [
                tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True, **extra)
                for c in conversations
            ]
            completions, stats = generate(
                model,
                tokenizer,
                prompts,
                Sampling(max_new_tokens=cfg.max_new_tokens, do_sample=False),
                cfg.batch_size,
                add_special_tokens=False,
                desc="judge",
            )
        finally:  # the judge is the largest model of the run: nothing may hold it afterwards
            del model
            free_accelerator_memory()
        log.info("judged %d generations in %.1f s", stats.num_prompts, stats.seconds)
        return [c.text for c in completions]


def free_accelerator_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
