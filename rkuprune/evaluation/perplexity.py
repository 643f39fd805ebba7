"""Perplexity (docs/design.md section 7) as GPTQ, SparseGPT and Wanda compute it.

The evaluation text is built as they build it: WikiText-2 test rows joined with blank lines; C4's first
1,100 ``en`` validation documents joined with a single space (GPTQ's ``' '.join(valdata[:1100]['text'])``),
of which the first 256 windows count (``max_windows`` in the presets); pydoc topics joined with blank
lines. It is tokenised once and cut into non-overlapping windows of ``seqlen`` tokens; the result is
exp(mean NLL over every predicted token).

``bos`` says what starts the stream. ``tokenizer`` (default) is GPTQ's ``tokenizer(text)`` exactly:
whatever special tokens the tokenizer itself adds (LLaMA-3's ``<|begin_of_text|>``; nothing for Qwen or
SmolLM2). ``once`` prepends ``bos_token_id`` once even where the tokenizer adds none (lm-eval's prefix
token; the project's rule before 2026-12-03, so earlier evidence in docs/ used it): on SmolLM2, whose
BOS is the chat opener ``<|im_start|>``, it changes the dense WikiText-2 number (30.64 against 30.36).
On LLaMA-3 the two are the same stream.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rkuprune.data import sources
from rkuprune.errors import ConfigError, check_choice, check_context
from rkuprune.evaluation.base import TASKS, EvalContext, Task, TaskConfig
from rkuprune.precision import at_least_fp32
from rkuprune.tracking.progress import progress

log = logging.getLogger(__name__)

DATASETS = ("wikitext2", "c4", "pydoc")
BOS_RULES = ("tokenizer", "once")


@dataclass
class PerplexityConfig(TaskConfig):
    task: str = "perplexity"
    dataset: str = "pydoc"
    seqlen: int = 2048
    max_windows: int | None = None  # None: every full window of the text
    batch_size: int = 1
    bos: str = "tokenizer"  # tokenizer (GPTQ's tokenizer(text)) | once (bos_token_id prepended once)


# How each dataset's documents are joined into one stream (recorded in the task settings).
JOINERS = {"wikitext2": "\n\n", "c4": " ", "pydoc": "\n\n"}


def evaluation_text(dataset: str, data: sources.DataConfig) -> str:
    if dataset == "wikitext2":
        return sources.wikitext2_text(data, "test")
    if dataset == "c4":
        return JOINERS["c4"].join(sources.c4_documents(data, "validation"))
    return sources.pydoc_text("test")


def token_stream(tokenizer: Any, text: str, bos: str = "tokenizer") -> torch.Tensor:
    """The text's token ids, started as ``bos`` says (module docstring); never a BOS per window."""
    if bos == "tokenizer":
        return torch.tensor(list(tokenizer(text).input_ids), dtype=torch.long)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    bos_id = getattr(tokenizer, "bos_token_id", None)
    return torch.tensor(([bos_id] if bos_id is not None else []) + list(ids), dtype=torch.long)


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, seqlen: int, max_windows: int | None, batch_size: int) -> float:
    """exp of the mean next-token NLL over non-overlapping windows of ``seqlen`` tokens."""
    n = ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    windows = ids[: n * seqlen].view(n, seqlen)
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in progress(range(0, n, batch_size), f"ppl@{seqlen}", log):
        batch = windows[start : start + batch_size].to(device)
        logits = at_least_fp32(model(input_ids=batch).logits)
        nll = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
    mean_nll = total_nll / total_tokens
    return math.exp(mean_nll) if mean_nll < math.log(sys.float_info.max) else math.inf  # exp overflows past ~709.78


@TASKS.register("perplexity", PerplexityConfig)
class Perplexity(Task):
    cfg: PerplexityConfig

    def check(self) -> None:
        where = self.field
        check_choice(f"{where}.dataset", self.cfg.dataset, DATASETS)
        check_choice(f"{where}.bos", self.cfg.bos, BOS_RULES)
        if self.cfg.seqlen < 2:
            raise ConfigError(f"{where}.seqlen", "must be at least 2")
        if self.cfg.max_windows is not None and self.cfg.max_windows < 1:
            raise ConfigError(
                f"{where}.max_windows", f"must be at least 1 (or null for every window), got {self.cfg.max_windows}"
            )
        if self.cfg.batch_size < 1:
            raise ConfigError(f"{where}.batch_size", f"must be at least 1, got {self.cfg.batch_size}")
        if self.cfg.dataset != "pydoc":
            split = "test" if self.cfg.dataset == "wikitext2" else "validation"
            sources.require_available(self.data, self.cfg.dataset, split, f"{where}.dataset={self.cfg.dataset}")

    def outputs(self) -> set[str]:
        return {self.metric_key}

    @property
    def metric_key(self) -> str:
        return f"ppl/{self.cfg.dataset}@{self.cfg.seqlen}"

    def evaluate(self, model: nn.Module, tokenizer: Any, ctx: EvalContext) -> dict[str, float]:
        check_context(f"{self.field}.seqlen", self.cfg.seqlen, getattr(model.config, "max_position_embeddings", None))
        ids = token_stream(tokenizer, evaluation_text(self.cfg.dataset, self.data), self.cfg.bos)
        if ids.numel() < self.cfg.seqlen:
            raise ConfigError(f"{self.field}.seqlen", f"{self.cfg.seqlen} exceeds the text length")
        value = perplexity(model, ids, self.cfg.seqlen, self.cfg.max_windows, self.cfg.batch_size)
        return {self.metric_key: value}

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "joined_with": JOINERS[self.cfg.dataset]}
