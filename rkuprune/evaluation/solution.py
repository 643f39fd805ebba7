"""Gold-solution perplexity (docs/design.md section 7): ``ppl/<dataset>_solution``.

Teacher-forced perplexity of the reference solution given its question, on the evaluated split: the
model reads the prompt and the human-written solution, and only the solution's tokens count
(exp of their mean NLL over all solutions). It needs no generation, so it is cheap on a CPU, and it
stays far from the floor on a 135M model that scores 0% on GSM8K: a reasoning signal that can rank
scorers by how much math reasoning text they preserve.

The prompt is the one the generative task would use for zero shots (``Question: ...\\nAnswer:`` with
the solution after a space, or with ``chat=true`` one user turn of the model's chat template and the
solution as the assistant's reply). The solution is written as the generative tasks' exemplars are
(:func:`rkuprune.evaluation.reasoning.format_answer`: the worked solution, then "The answer is N.").
As in lm-eval's log-likelihood requests, prompt and prompt+solution are tokenised whole and the
solution tokens are those after the prompt's; a plain prompt gets the tokenizer's BOS first when it has
one, as the perplexity stream does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rkuprune.data import reasoning as data
from rkuprune.data.reasoning import Question
from rkuprune.data.sources import require_available
from rkuprune.errors import ConfigError, DataError, check_choice
from rkuprune.evaluation.base import TASKS, EvalContext, Task, TaskConfig
from rkuprune.evaluation.reasoning import format_answer, format_question
from rkuprune.precision import at_least_fp32

# The evaluated split of each dataset (synthetic: the held-out test problems).
SPLITS = {"gsm8k": "test", "mathqa": "test", "aqua": "test", "synthetic": "test"}


@dataclass
class SolutionPerplexityConfig(TaskConfig):
    task: str = "solution_ppl"
    dataset: str = "gsm8k"
    chat: bool = False  # prompt in the model's chat template (recorded), else plain "Question: ... Answer:"
    max_solutions: int | None = None  # the first N solutions of the split; None: all
    batch_size: int = 8
    synthetic_problems: int = 200  # dataset=synthetic only: how many held-out problems to generate
    synthetic_seed: int = 1234  # the held-out seed of the synthetic test problems (as task synthetic)


@dataclass(frozen=True)
class Scored:
    """Token ids of one prompt+solution and where its solution starts."""

    ids: list[int]
    start: int


def solution_tokens(tokenizer: Any, prompt: str, solution: str, add_bos: bool) -> Scored:
    """Tokenise prompt and prompt+solution whole (lm-eval's context/continuation split); the solution
    tokens are those past the prompt's."""
    bos = getattr(tokenizer, "bos_token_id", None)
    head = [bos] if add_bos and bos is not None else []
    context = head + tokenizer(prompt, add_special_tokens=False).input_ids
    whole = head + tokenizer(prompt + solution, add_special_tokens=False).input_ids
    if whole[: len(context)] != context:  # the boundary merged into one token: split at the prompt instead
        whole = context + tokenizer(solution, add_special_tokens=False).input_ids
    if len(whole) == len(context):
        raise DataError(f"a solution has no tokens: {solution[:60]!r}")
    return Scored(whole, len(context))


@torch.no_grad()
def solution_nll(model: nn.Module, items: list[Scored], batch_size: int) -> tuple[float, int]:
    """Summed NLL of every solution token given everything before it, and the number of such tokens."""
    device = next(model.parameters()).device
    order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
    total, count = 0.0, 0
    for first in range(0, len(order), batch_size):
        batch = [items[i] for i in order[first : first + batch_size]]
        width = max(len(item.ids) for item in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        counted = torch.zeros((len(batch), width), dtype=torch.bool)  # the target token of each position
        for row, item in enumerate(batch):
            ids[row, : len(item.ids)] = torch.tensor(item.ids)
            mask[row, : len(item.ids)] = 1
            counted[row, item.start : len(item.ids)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logp = torch.log_softmax(at_least_fp32(logits[:, :-1]), dim=-1)
        target = ids[:, 1:].to(device)
        nll = -logp.gather(-1, target[..., None])[..., 0]
        keep = counted[:, 1:].to(device)
        total += nll[keep].double().sum().item()
        count += int(keep.sum())
    return total, count


@TASKS.register("solution_ppl", SolutionPerplexityConfig)
class SolutionPerplexity(Task):
    cfg: SolutionPerplexityConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.questions: list[Question] = []

    def check(self) -> None:
        cfg, where = self.cfg, self.field
        check_choice(f"{where}.dataset", cfg.dataset, SPLITS)
        if cfg.max_solutions is not None and cfg.max_solutions < 1:
            raise ConfigError(
                f"{where}.max_solutions", f"must be at least 1 (or null for all), got {cfg.max_solutions}"
            )
        if cfg.batch_size < 1:
            raise ConfigError(f"{where}.batch_size", f"must be at least 1, got {cfg.batch_size}")
        if cfg.dataset == "synthetic":
            if cfg.synthetic_problems < 1:
                raise ConfigError(f"{where}.synthetic_problems", "must be at least 1")
            questions = data.synthetic_questions(cfg.synthetic_problems, cfg.synthetic_seed, "test")
        else:
            require_available(self.data, cfg.dataset, SPLITS[cfg.dataset], f"{where}.dataset={cfg.dataset}")
            questions = data.load_questions(cfg.dataset, SPLITS[cfg.dataset], self.data)
        questions = [q for q in questions if q.solution.strip()]
        if not questions:
            raise DataError(f"{cfg.dataset}/{SPLITS[cfg.dataset]} has no reference solutions (needed by {where})")
        self.questions = questions[: cfg.max_solutions]

    def prompt(self, q: Question, tokenizer: Any) -> tuple[str, str]:
        """(prompt, solution) as strings."""
        answer = format_answer(q)
        if not self.cfg.chat:
            return f"Question: {format_question(q)}\nAnswer:", f" {answer}"
        messages = [{"role": "user", "content": format_question(q)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), answer

    def evaluate(self, model: nn.Module, tokenizer: Any, ctx: EvalContext) -> dict[str, float]:
        if not self.questions:
            raise DataError(f"{self.field}: no solutions to score (was check() run?)")
        if self.cfg.chat and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"{self.field}.chat", "the tokenizer has no chat template; set it to false")
        items = [
            solution_tokens(tokenizer, *self.prompt(q, tokenizer), add_bos=not self.cfg.chat) for q in self.questions
        ]
        context = getattr(model.config, "max_position_embeddings", None)
        longest = max(len(item.ids) for item in items)
        if context is not None and longest > context:
            raise ConfigError(
                f"{self.field}.max_solutions",
                f"a question+solution has {longest} tokens, past the context of {context}",
            )
        total, count = solution_nll(model, items, self.cfg.batch_size)
        return {f"ppl/{self.cfg.dataset}_solution": math.exp(total / count)}

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "split": f"{self.cfg.dataset}/{SPLITS[self.cfg.dataset]}",
            "num_solutions": len(self.questions),
            "prompt": "chat" if self.cfg.chat else "plain",
            "counted": "solution tokens only",
        }
