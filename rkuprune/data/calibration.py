"""Calibration sets: token batches, attention masks, a loss mask and provenance.

A source is registered with its config dataclass (``conf/calibration/<name>.yaml``). Text sources cut
seeded windows of ``seqlen`` tokens from a train split; question sources tokenise one question (or
question and solution) per row until ``num_tokens`` real tokens are collected. No source reads an
evaluation split.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from rkuprune.data import sources
from rkuprune.data.sources import DataConfig
from rkuprune.data.synthetic import word_problems
from rkuprune.errors import ConfigError, check_context
from rkuprune.registry import Registry


@dataclass
class CalibrationConfig:
    """``calibration`` group. ``num_tokens`` is the budget of real (non-pad) tokens. ``seed`` draws the
    windows or questions; ``None`` follows the run's top-level ``seed`` (as Wanda's ``--seed``
    draws both the calibration set and torch), so a sweep over ``seed`` resamples calibration."""

    name: str = "synthetic"
    num_tokens: int = 16384
    seqlen: int = 256
    batch_size: int = 8
    seed: int | None = None


def check_seqlen(cfg: CalibrationConfig) -> None:
    """Rows are cut to ``seqlen`` tokens: zero or less would silently empty every row."""
    if cfg.seqlen < 1:
        raise ConfigError("calibration.seqlen", f"must be at least 1 token, got {cfg.seqlen}")


@dataclass
class CalibrationSet:
    """Right-padded token batches; ``loss_mask`` marks the tokens a loss or a statistic counts."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    batch_size: int
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def right_padded(
        cls, rows: list[list[int]], pad_id: int, batch_size: int, loss_starts: list[int] | None = None
    ) -> CalibrationSet:
        """Rows padded on the right to the longest; the loss mask covers each row from its
        ``loss_starts`` entry (default 0: every real token) to its end."""
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention[i, : len(row)] = 1
            loss_mask[i, (loss_starts[i] if loss_starts else 0) : len(row)] = True
        return cls(input_ids, attention, loss_mask, batch_size)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batches(self, device: torch.device | str = "cpu") -> Iterator[dict[str, torch.Tensor]]:
        """Batches cut after their last column with a real token: the set is padded to its longest
        row overall, and running that padding through the model was 1.6x the token positions on
        ``q16k``."""
        for start in range(0, len(self), self.batch_size):
            end = start + self.batch_size
            used = self.attention_mask[start:end].any(dim=0).nonzero()
            width = int(used[-1]) + 1 if len(used) else self.input_ids.shape[1]
            yield {
                "input_ids": self.input_ids[start:end, :width].to(device),
                "attention_mask": self.attention_mask[start:end, :width].to(device),
                "loss_mask": self.loss_mask[start:end, :width].to(device),
            }


class CalibrationSource:
    """Base class: ``check`` fails before model loading, ``build`` tokenises.

    ``build`` also receives the model and its current plan; only sources that generate their text
    with the model (``regenerates``) use them.
    """

    split = "train"
    regenerates: ClassVar[bool] = False

    def __init__(self, cfg: CalibrationConfig) -> None:
        # A run has set ``seed`` from its top-level one (RunConfig); a source built on its own draws with 0.
        self.cfg = cfg if cfg.seed is not None else replace(cfg, seed=0)

    def check(self, data: DataConfig) -> None:
        check_seqlen(self.cfg)
        if self.cfg.num_tokens < self.cfg.seqlen:
            raise ConfigError(
                "calibration.num_tokens",
                f"{self.cfg.num_tokens} is fewer than one sequence ({self.cfg.seqlen} tokens); raise it",
            )
        if self.cfg.batch_size < 1:
            raise ConfigError("calibration.batch_size", "must be at least 1")
        check_build_memory(self.cfg.num_tokens)

    def check_model(self, context: int | None) -> None:
        """Fail when rows of ``seqlen`` tokens cannot fit the model's context (before loading, where known)."""
        check_context("calibration.seqlen", self.cfg.seqlen, context)

    def build(self, tokenizer: Any, data: DataConfig, *, model: Any = None, plan: Any = None) -> CalibrationSet:
        raise NotImplementedError

    def _provenance(self, calibration: CalibrationSet, **extra: Any) -> CalibrationSet:
        calibration.provenance = {
            "source": self.cfg.name,
            "split": self.split,
            "seed": self.cfg.seed,
            "num_sequences": len(calibration),
            "num_tokens": calibration.num_tokens,
            **extra,
        }
        return calibration

    def _require_budget(self, calibration: CalibrationSet) -> CalibrationSet:
        """Sources with a token budget must fill at least one sequence of it."""
        if calibration.num_tokens < self.cfg.seqlen:
            raise ConfigError(
                "calibration.num_tokens",
                f"only {calibration.num_tokens} tokens could be built; the source is too small",
            )
        return calibration


CALIBRATION_SOURCES: Registry[CalibrationSource] = Registry("calibration")
BUILD_BYTES_PER_TOKEN = 50  # peak memory while building, measured (tracemalloc) on synthetic, 2e5 tokens


def check_build_memory(num_tokens: int) -> None:
    """Refuse a token budget whose calibration set cannot fit in this machine's memory: building it would
    grow memory for minutes towards an out-of-memory kill (``calibration.num_tokens=1e9``: ~50 GB)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: nothing to compare with
        return
    needed = num_tokens * BUILD_BYTES_PER_TOKEN
    if needed > memory:
        raise ConfigError(
            "calibration.num_tokens",
            f"{num_tokens} tokens need about {needed / 2**30:.0f} GiB to build ({BUILD_BYTES_PER_TOKEN} bytes a "
            f"token), more than this machine's {memory / 2**30:.0f} GiB of memory; lower it (the presets use 16384 to 262144)",
        )


class TextWindows(CalibrationSource):
    """Seeded windows of ``seqlen`` tokens from a train-split text (GPTQ-style sampling)."""

    def text(self, data: DataConfig) -> str:
        raise NotImplementedError

    def build(self, tokenizer: Any, data: DataConfig, *, model: Any = None, plan: Any = None) -> CalibrationSet:
        ids = tokenizer(self.text(data), return_tensors="pt", add_special_tokens=False).input_ids[0]
        n = self.cfg.num_tokens // self.cfg.seqlen
        if ids.numel() <= self.cfg.seqlen:
            raise ConfigError("calibration.seqlen", f"{self.cfg.seqlen} is longer than the whole source text")
        rng = random.Random(self.cfg.seed)
        starts = [rng.randrange(0, ids.numel() - self.cfg.seqlen) for _ in range(n)]
        input_ids = torch.stack([ids[s : s + self.cfg.seqlen] for s in starts])
        ones = torch.ones_like(input_ids)
        return self._require_budget(self._provenance(CalibrationSet(input_ids, ones, ones.bool(), self.cfg.batch_size)))


class Questions(CalibrationSource):
    """One row per sequence (a question, or question and solution), until ``num_tokens`` real tokens."""

    def texts(self, data: DataConfig) -> list[str]:
        raise NotImplementedError

    def build(self, tokenizer: Any, data: DataConfig, *, model: Any = None, plan: Any = None) -> CalibrationSet:
        texts = self.texts(data)
        random.Random(self.cfg.seed).shuffle(texts)
        rows: list[list[int]] = []
        total = 0
        for text in texts:
            ids = tokenizer(text, add_special_tokens=True).input_ids[: self.cfg.seqlen]
            rows.append(ids)
            total += len(ids)
            if total >= self.cfg.num_tokens:
                break
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        calibration = CalibrationSet.right_padded(rows, pad, self.cfg.batch_size)
        return self._require_budget(self._provenance(calibration, rows_available=len(texts)))


@CALIBRATION_SOURCES.register("synthetic", CalibrationConfig)
class SyntheticQuestions(Questions):
    """The project's own arithmetic word problems (questions only): offline, no download."""

    def texts(self, data: DataConfig) -> list[str]:
        return [p.question for p in word_problems(4 * self.cfg.num_tokens // 32 + 64, self.cfg.seed, "train")]


@CALIBRATION_SOURCES.register("pydoc", CalibrationConfig)
class PydocText(TextWindows):
    """CPython documentation topics (the half not used by ``ppl/pydoc``): offline, no download."""

    def text(self, data: DataConfig) -> str:
        return sources.pydoc_text("train")


@CALIBRATION_SOURCES.register("wiki16k", CalibrationConfig)
class WikiText2(TextWindows):
    """WikiText-2 train split (``wikitext2/wiki.train.raw`` under data.root, or the hub)."""

    def check(self, data: DataConfig) -> None:
        super().check(data)
        path = sources.local_path(data, "wikitext2", "train")
        if path is not None and not path.is_file():
            raise ConfigError(
                "calibration",
                f"wiki16k needs the WikiText-2 train split, but {data.root} has only wikitext2/wiki.test.raw, "
                "an evaluation split that calibration never reads; add wikitext2/wiki.train.raw or use the hub",
            )
        sources.require_available(data, "wikitext2", "train", "calibration=wiki16k")

    def text(self, data: DataConfig) -> str:
        return sources.wikitext2_text(data, "train")


@CALIBRATION_SOURCES.register("c4", CalibrationConfig)
class C4(TextWindows):
    """C4 ``en``: the hub's train shard, or the local documents that ``ppl/c4`` does not evaluate on."""

    split = "train (local: validation documents after the evaluation ones)"

    def check(self, data: DataConfig) -> None:
        super().check(data)
        sources.require_available(data, "c4", "validation" if data.root else "train", "calibration=c4")

    def text(self, data: DataConfig) -> str:
        return "\n\n".join(sources.c4_documents(data, "train"))


@CALIBRATION_SOURCES.register("q16k", CalibrationConfig)
class GSM8KQuestions(Questions):
    """Questions only from GSM8K train (about 16K tokens by default)."""

    def check(self, data: DataConfig) -> None:
        super().check(data)
        sources.require_available(data, "gsm8k", "train", f"calibration={self.cfg.name}")

    def texts(self, data: DataConfig) -> list[str]:
        return [row["question"] for row in sources.gsm8k_rows(data, "train")]


@CALIBRATION_SOURCES.register("gsm8k_gold", CalibrationConfig)
class GSM8KGold(GSM8KQuestions):
    """GSM8K train question followed by its human solution (calculator annotations removed)."""

    def texts(self, data: DataConfig) -> list[str]:
        return [
            f"{row['question']}\n{re.sub(r'<<[^>]*>>', '', row['answer'])}" for row in sources.gsm8k_rows(data, "train")
        ]
