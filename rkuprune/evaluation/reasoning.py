"""Generative chain-of-thought benchmarks: ``gsm8k``, ``mathqa``, ``aqua`` and the offline ``synthetic``
arithmetic problems, the project's own protocol (docs/design.md section 7; lm-eval's own generative
tasks are ``lm_eval_gen``).

The protocol: fixed exemplars drawn once per task (``fewshot_seed``), their worked solutions ending as
the strict rule of ``answer_style`` reads them, greedy decoding to "Question:" or EOS. The answer is
extracted and compared with lm-eval's filters (:mod:`rkuprune.evaluation.extraction`). Keys name the
protocol: ``acc/<dataset>@rkuprune`` (lm-eval's flexible-extract), ``acc/<dataset>@rkuprune/strict``
(strict-match) and ``acc/<dataset>@rkuprune/lenient`` (the project's lenient rule), as **fractions in
[0, 1]** like lm-eval's ``acc`` (reports multiply by 100). Every question is recorded in
``<run_dir>/predictions/<dataset>.jsonl`` and as a tracker table.

Why by hand and not lm-eval's ``generate_until``: generation itself is one ``model.generate`` call;
what lm-eval cannot do is the rest: its tasks cannot read the project's local files without a Python
module beside each YAML, it has no generative MathQA or AQuA task, and it does not write the
per-question records this project keeps. Its answer filters are reproduced exactly, and checked
against lm-eval's own filter objects in the tests. Log-likelihood tasks, which lm-eval does fully, go
through it (``lm_eval_bridge``).

Prompts: ``shots`` exemplars from a train/dev split (never the evaluated split: any exemplar whose
text also occurs in the evaluated split is dropped from the pool), either as plain text
("Question: ... Answer: ...") or, with ``chat=true``, as turns of the model's chat template, where
``enable_thinking`` is passed to the template (Qwen3's switch).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from rkuprune.data import reasoning as data
from rkuprune.data.reasoning import Question
from rkuprune.data.sources import DataConfig, require_available
from rkuprune.errors import ConfigError, DataError
from rkuprune.evaluation import extraction, judge
from rkuprune.evaluation.base import TASKS, BenchmarkConfig, EvalContext, Task, TaskConfig
from rkuprune.evaluation.judge import JudgeRequest, JudgeResult
from rkuprune.generation import Sampling, generate
from rkuprune.tracking.atomic import write_text

log = logging.getLogger(__name__)

NUMBER_INSTRUCTIONS = {
    "answer_is": 'Solve the problem step by step, then finish with "The answer is N." where N is the final number.',
    "hashes": 'Solve the problem step by step, then finish with a line "#### N" where N is the final number.',
}
LETTER_INSTRUCTION = (
    'Solve the problem step by step, then finish with "The answer is (X)." where X is the letter of the correct option.'
)
# Exemplars with longer worked solutions are left out of the pool so that k shots fit a small context.
MAX_EXEMPLAR_CHARS = 700
# A plain prompt's generation ends where the model starts a new question, as lm-eval's gsm8k stops
# ("Question:"). Not at a blank line: a model that writes one mid-solution would lose its answer.
PLAIN_STOP = ("Question:",)
PROTOCOL = "rkuprune"  # in every accuracy key of these tasks


@dataclass
class ReasoningConfig(TaskConfig):
    """Prompt and decoding settings of one generative benchmark; all recorded in results.json."""

    task: str = "gsm8k"
    shots: int = 5
    chat: bool = False  # wrap the prompt in the model's chat template (exemplars as earlier turns)
    system_prompt: str | None = None  # chat only; None keeps the template's default system turn
    enable_thinking: bool | None = None  # chat only; passed to the template (Qwen3), None = not passed
    max_new_tokens: int = 256
    do_sample: bool = False  # greedy by default; the three below apply only when sampling
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    batch_size: int = 8
    fewshot_seed: int = 0  # which exemplars are drawn from the pool
    # How exemplars state a number answer, and so lm-eval's strict rule: "answer_is" ("The answer is N.",
    # gsm8k_cot) or "hashes" ("#### N", gsm8k). Option answers are always "The answer is (X)."
    answer_style: str = "answer_is"
    # Where a thinking model's answer starts: None judges the whole generation (lm-eval's default);
    # "</think>" judges what follows its last occurrence (lm-eval's think_end_token).
    think_end_token: str | None = None


@dataclass
class SyntheticConfig(ReasoningConfig):
    task: str = "synthetic"
    num_problems: int = 100
    problem_seed: int = 1234  # held out: calibration=synthetic draws train problems with the run seed


def format_question(q: Question) -> str:
    if not q.choices:
        return q.question
    options = " ".join(f"({letter}) {text}" for letter, text in zip(data.LETTERS, q.choices, strict=False))
    return f"{q.question}\nAnswer Choices: {options}"


def format_answer(q: Question, answer_style: str = "answer_is") -> str:
    """An exemplar's worked solution ending the way lm-eval's strict rule for the style reads it."""
    if q.choices:
        return f"{q.solution.strip()}\nThe answer is ({q.gold})."
    if answer_style == "hashes":
        return f"{q.solution.strip()}\n#### {q.gold}"
    return f"{q.solution.strip()}\nThe answer is {q.gold}."


class ReasoningTask(Task):
    """One generative benchmark; subclasses say which questions and which exemplar pool."""

    cfg: ReasoningConfig
    dataset = ""
    eval_split = "test"

    def __init__(self, key: str, cfg: ReasoningConfig, data_cfg: DataConfig, suite: BenchmarkConfig) -> None:
        super().__init__(key, cfg, data_cfg, suite)
        self.questions: list[Question] = []
        self.exemplars: list[Question] = []
        self.split_size = 0

    # -- data ---------------------------------------------------------------------------------
    def required_splits(self) -> list[tuple[str, str]]:
        return [(self.dataset, self.eval_split)]

    def eval_questions(self) -> list[Question]:
        return data.load_questions(self.dataset, self.eval_split, self.data)

    def exemplar_pool(self) -> list[Question]:
        raise NotImplementedError

    @property
    def multiple_choice(self) -> bool:
        return bool(self.questions and self.questions[0].choices)

    def check(self) -> None:
        """Validate settings, then read the data now (a malformed file fails before the model loads)."""
        cfg, where = self.cfg, self.field
        for name, value, low in (("shots", cfg.shots, 0), ("max_new_tokens", cfg.max_new_tokens, 1)):
            if value < low:
                raise ConfigError(f"{where}.{name}", f"must be at least {low}, got {value}")
        if cfg.batch_size < 1:
            raise ConfigError(f"{where}.batch_size", f"must be at least 1, got {cfg.batch_size}")
        if cfg.do_sample and cfg.temperature <= 0:
            raise ConfigError(f"{where}.temperature", "must be positive when do_sample=true")
        if cfg.do_sample and not 0 < cfg.top_p <= 1:
            raise ConfigError(f"{where}.top_p", "must be in (0, 1]")
        if cfg.do_sample and cfg.top_k < 0:
            raise ConfigError(f"{where}.top_k", f"must be at least 0 (0 = no top-k cut), got {cfg.top_k}")
        if cfg.answer_style not in extraction.STRICT_NUMBER_RULES:
            styles = ", ".join(extraction.STRICT_NUMBER_RULES)
            raise ConfigError(f"{where}.answer_style", f"'{cfg.answer_style}' is not one of {styles}")
        if not cfg.chat and (cfg.enable_thinking is not None or cfg.system_prompt is not None):
            field = "enable_thinking" if cfg.enable_thinking is not None else "system_prompt"
            raise ConfigError(f"{where}.{field}", f"applies to chat prompts only; set {where}.chat=true")
        if cfg.enable_thinking and not cfg.think_end_token:
            raise ConfigError(  # lm-eval's HFLM refuses the same: the answer must not be read from the thinking
                f"{where}.think_end_token",
                f"is required with enable_thinking=true; set {where}.think_end_token='</think>' (Qwen3)",
            )
        limit = self.suite.limit
        if limit is not None and limit < 1:
            raise ConfigError("benchmark.limit", f"must be at least 1 (or null for every question), got {limit}")
        for dataset, split in self.required_splits():
            require_available(self.data, dataset, split, f"{where}.task={cfg.task}")
        questions = self.eval_questions()
        if not questions:
            raise DataError(f"{self.dataset}/{self.eval_split} has no questions (needed by {where})")
        self.split_size = len(questions)
        if questions[0].choices and cfg.answer_style != "answer_is":
            raise ConfigError(f"{where}.answer_style", "option answers use answer_is; hashes is for number answers")
        if limit is not None and limit > len(questions):
            log.warning(
                "benchmark.limit=%d exceeds the %d questions of %s/%s; %s uses all %d",
                limit,
                len(questions),
                self.dataset,
                self.eval_split,
                where,
                len(questions),
            )
        self.questions = questions[:limit] if limit is not None else questions
        self.exemplars = self.pick_exemplars({_norm(q.question) for q in questions})

    def pick_exemplars(self, evaluated: set[str]) -> list[Question]:
        if self.cfg.shots == 0:
            return []
        pool = [
            q
            for q in self.exemplar_pool()
            if q.solution and len(q.solution) <= MAX_EXEMPLAR_CHARS and _norm(q.question) not in evaluated
        ]
        if self.cfg.shots > len(pool):
            raise ConfigError(f"{self.field}.shots", f"{self.cfg.shots} exceeds the {len(pool)} exemplars available")
        return random.Random(self.cfg.fewshot_seed).sample(pool, self.cfg.shots)

    def outputs(self) -> set[str]:
        keys = {self.accuracy_key, f"predictions/{self.dataset}.jsonl"}
        return keys | ({judge.judge_key(self.accuracy_key)} if self.suite.judge.enabled else set())

    @property
    def accuracy_key(self) -> str:
        """``acc/<dataset>@rkuprune``: the protocol is in the key (lm-eval's own tasks write ``@lm_eval``)."""
        return f"acc/{self.dataset}@{PROTOCOL}"

    def settings(self) -> dict[str, Any]:
        limit = self.suite.limit
        return {
            **super().settings(),
            "split": f"{self.dataset}/{self.eval_split}",
            "split_size": self.split_size,
            "limit": limit,
            "num_questions": len(self.questions),
            "limit_exceeds_split": limit is not None and limit > self.split_size,
            "exemplars": [q.id for q in self.exemplars],
            "prompt": "chat" if self.cfg.chat else "plain",
            "instruction": self.instruction if self.cfg.chat or not self.exemplars else None,
            "stop": ["<eos>"] if self.cfg.chat else ["<eos>", *PLAIN_STOP],
            "answer_rules": self.answer_rules(),
            **({"judge": judge.settings(self.suite.judge)} if self.suite.judge.enabled else {}),
        }

    def answer_rules(self) -> dict[str, str]:
        """Which rule each accuracy key used (recorded, so a number says how it was scored)."""
        key = self.accuracy_key
        if self.multiple_choice:
            lm_eval = "lm-eval bbh_cot_zeroshot rules (strict 'The answer is (X)', flexible MultiChoiceRegexFilter)"
        else:
            task = "gsm8k_cot" if self.cfg.answer_style == "answer_is" else "gsm8k"
            lm_eval = f"lm-eval {task} rules ({extraction.STRICT_NUMBER_RULES[self.cfg.answer_style]!r} first)"
        return {
            key: f"{lm_eval}: flexible-extract",
            f"{key}/strict": f"{lm_eval}: strict-match",
            f"{key}/lenient": "project lenient rule (last explicit answer, boxed, last number; decimals compared)",
        }

    # -- prompts ------------------------------------------------------------------------------
    @property
    def instruction(self) -> str:
        return LETTER_INSTRUCTION if self.multiple_choice else NUMBER_INSTRUCTIONS[self.cfg.answer_style]

    def prompt(self, q: Question, tokenizer: Any) -> str:
        if not self.cfg.chat:
            shots = "".join(
                f"Question: {format_question(e)}\nAnswer: {format_answer(e, self.cfg.answer_style)}\n\n"
                for e in self.exemplars
            )
            header = "" if self.exemplars else f"{self.instruction}\n\n"
            return f"{header}{shots}Question: {format_question(q)}\nAnswer:"
        messages = [] if self.cfg.system_prompt is None else [{"role": "system", "content": self.cfg.system_prompt}]
        for e in self.exemplars:
            messages.append({"role": "user", "content": f"{format_question(e)}\n{self.instruction}"})
            messages.append({"role": "assistant", "content": format_answer(e, self.cfg.answer_style)})
        messages.append({"role": "user", "content": f"{format_question(q)}\n{self.instruction}"})
        extra = {} if self.cfg.enable_thinking is None else {"enable_thinking": self.cfg.enable_thinking}
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)

    # -- scoring ------------------------------------------------------------------------------
    def score(self, text: str, q: Question) -> dict[str, Any]:
        """One generation's answers and correctness under lm-eval's flexible and strict rules and the
        project's lenient rule (the record's fields)."""
        text = extraction.answer_part(text, self.cfg.think_end_token)
        if q.choices:
            rules = extraction.lm_eval_letter(text, q.choices)
            lenient = extraction.flexible_letter(text, q.choices)
            correct = extraction.letter_is_correct
            lenient_correct = lenient == q.gold
        else:
            rules = extraction.lm_eval_number(text, self.cfg.answer_style)
            lenient = extraction.flexible_number(text)
            correct = extraction.number_is_correct
            lenient_correct = extraction.same_number(lenient, q.gold)
        return {
            "extracted": rules.flexible,
            "correct": correct(rules.flexible, q.gold),
            "extracted_strict": rules.strict,
            "correct_strict": correct(rules.strict, q.gold),
            "extracted_lenient": lenient,
            "correct_lenient": lenient_correct,
        }

    def evaluate(self, model: nn.Module, tokenizer: Any, ctx: EvalContext) -> dict[str, float]:
        if not self.questions:
            raise DataError(f"{self.field}: no questions to evaluate (was check() run?)")
        if self.cfg.chat and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"{self.field}.chat",
                "the model's tokenizer has no chat template; set it to false for a plain few-shot prompt",
            )
        prompts = [self.prompt(q, tokenizer) for q in self.questions]
        cfg = self.cfg
        self.check_context(getattr(getattr(model, "config", None), "max_position_embeddings", None), tokenizer, prompts)
        sampling = Sampling(cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k)
        completions, stats = generate(
            model,
            tokenizer,
            prompts,
            sampling,
            cfg.batch_size,
            stop=() if cfg.chat else PLAIN_STOP,
            add_special_tokens=not cfg.chat,
            seed=ctx.seed,
            desc=self.dataset,
        )
        rows = []
        for q, completion in zip(self.questions, completions, strict=True):
            rows.append(
                {
                    "id": q.id,
                    "question": q.question,
                    "generation": completion.text,
                    "gold": q.gold,
                    **self.score(completion.text, q),
                }
            )
        log.info(
            "%s: %d questions, %d new tokens in %.1f s (%.1f tokens/s, batch %d)",
            self.dataset,
            stats.num_prompts,
            stats.new_tokens,
            stats.seconds,
            stats.tokens_per_s,
            cfg.batch_size,
        )
        if all(row["extracted"] is None and row["extracted_lenient"] is None for row in rows):
            log.warning(
                "%s: no answer could be extracted from any of the %d generations; "
                "the accuracy of 0 reflects unparseable output (see the predictions)",
                self.field,
                len(rows),
            )
        n = len(rows)
        metrics = {
            self.accuracy_key: sum(r["correct"] for r in rows) / n,
            f"{self.accuracy_key}/strict": sum(r["correct_strict"] for r in rows) / n,
            f"{self.accuracy_key}/lenient": sum(r["correct_lenient"] for r in rows) / n,
        }
        if ctx.judge is None:
            self.record(rows, prompts[0], ctx)
        else:  # recorded once the judge has spoken, with its verdicts
            conversations = [
                judge.conversation(self.judge_target(q), row["generation"], bool(q.choices))
                for q, row in zip(self.questions, rows, strict=True)
            ]
            ctx.judge.ask(JudgeRequest(ctx.phase, self.key, conversations, partial(self.judged, rows, prompts[0], ctx)))
        return metrics

    @staticmethod
    def judge_target(q: Question) -> str:
        """The gold answer as RESP's judge is given it (the number; the options and the correct letter)."""
        return judge.choice_target(q.choices, q.gold) if q.choices else q.gold

    def judged(
        self, rows: list[dict[str, Any]], first_prompt: str, ctx: EvalContext, outputs: list[str]
    ) -> JudgeResult:
        """Add the judge's output and verdict to every row, record the rows, and score: an unreadable
        verdict counts as incorrect, and is counted."""
        verdicts = [judge.parse_verdict(output) for output in outputs]
        for row, output, verdict in zip(rows, outputs, verdicts, strict=True):
            row["judge_output"] = output
            row["judge_correct"] = verdict is True
        unparsed = sum(verdict is None for verdict in verdicts)
        if unparsed:
            log.warning(
                "%s (%s): the judge's verdict could not be read for %d of %d generations (counted incorrect); "
                "see judge_output in the predictions",
                self.field,
                ctx.phase,
                unparsed,
                len(rows),
            )
        self.record(rows, first_prompt, ctx)
        accuracy = sum(row["judge_correct"] for row in rows) / len(rows)
        return JudgeResult({judge.judge_key(self.accuracy_key): accuracy}, unparsed)

    def check_model(self, context: int | None, tokenizer: Any) -> None:
        if self.cfg.chat and not getattr(tokenizer, "chat_template", None):
            return  # evaluate() names the missing chat template
        self.check_context(context, tokenizer, [self.prompt(q, tokenizer) for q in self.questions])

    def check_context(self, context: int | None, tokenizer: Any, prompts: list[str]) -> None:
        """A prompt plus its generation must fit the model's context; past it a model only babbles."""
        if context is None:
            return
        longest = max(len(tokenizer(p, add_special_tokens=not self.cfg.chat).input_ids) for p in prompts)
        if longest + self.cfg.max_new_tokens > context:
            raise ConfigError(
                f"{self.field}.shots",
                f"the longest prompt ({longest} tokens) plus max_new_tokens={self.cfg.max_new_tokens} exceeds the "
                f"model's context of {context} tokens; lower shots or max_new_tokens",
            )

    def record(self, rows: list[dict[str, Any]], first_prompt: str, ctx: EvalContext) -> None:
        """predictions/<dataset>.jsonl (and the first full prompt, for reproducing the format)."""
        name = f"predictions/{self.dataset}"
        if ctx.run_dir is not None:
            write_text(ctx.run_dir / f"{name}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
            write_text(ctx.run_dir / f"{name}.prompt.txt", first_prompt)
        if ctx.tracker is not None:
            ctx.tracker.log_table(name, rows)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


@TASKS.register("gsm8k", ReasoningConfig)
class GSM8K(ReasoningTask):
    """GSM8K test; exemplars from GSM8K train with calculator annotations stripped."""

    dataset = "gsm8k"

    def required_splits(self) -> list[tuple[str, str]]:
        return [("gsm8k", "test"), *([("gsm8k", "train")] if self.cfg.shots else [])]

    def exemplar_pool(self) -> list[Question]:
        return data.load_questions("gsm8k", "train", self.data)


@TASKS.register("aqua", ReasoningConfig)
class AQuA(ReasoningTask):
    """AQuA-RAT test; exemplars from the dev split (rationale, then "The answer is X.")."""

    dataset = "aqua"

    def required_splits(self) -> list[tuple[str, str]]:
        return [("aqua", "test"), *([("aqua", "dev")] if self.cfg.shots else [])]

    def exemplar_pool(self) -> list[Question]:
        return data.load_questions("aqua", "dev", self.data)


@TASKS.register("mathqa", ReasoningConfig)
class MathQA(ReasoningTask):
    """MathQA test. Only the test split is local, so few-shot exemplars are the project's own
    (``MATHQA_EXEMPLARS``, at most 4); zero-shot chat is the preset."""

    dataset = "mathqa"

    def exemplar_pool(self) -> list[Question]:
        return list(data.MATHQA_EXEMPLARS)


@TASKS.register("synthetic", SyntheticConfig)
class Synthetic(ReasoningTask):
    """The project's arithmetic word problems: test split with a held-out seed, exemplars from train."""

    cfg: SyntheticConfig
    dataset = "synthetic"

    def required_splits(self) -> list[tuple[str, str]]:
        return []

    def check(self) -> None:
        if self.cfg.num_problems < 1:
            raise ConfigError(f"{self.field}.num_problems", "must be at least 1")
        super().check()

    def eval_questions(self) -> list[Question]:
        return data.synthetic_questions(self.cfg.num_problems, self.cfg.problem_seed, "test")

    def exemplar_pool(self) -> list[Question]:
        return data.synthetic_questions(max(50, self.cfg.shots), self.cfg.fewshot_seed, "train")
