"""``alpaca``: yahma/alpaca-cleaned, the instruction data LLM-Pruner recovers pruned models on.

Rows are built as LLM-Pruner's ``post_training.py`` builds them (``generate_and_tokenize_prompt``):
the Alpaca prompt of ``LLMPruner/utils/prompter.py`` (with an ``### Input:`` section only when the
row's input is non-empty) followed by the output, tokenised with the tokenizer's own special tokens
and cut at ``seqlen`` (the reference's ``cutoff_len``); EOS is appended when the row was not cut and
does not already end with it. With ``train_on_inputs`` false (the reference's default) the loss mask
starts after as many tokens as the prompt has when tokenised on its own, so only the response and EOS
count. The reference's validation rows (``val_set_size`` rows of datasets' ``train_test_split`` with
seed 42) are held out and never read, so recovery trains on the same rows as the reference.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rkuprune.data import sources
from rkuprune.data.calibration import CALIBRATION_SOURCES, CalibrationConfig, CalibrationSet, CalibrationSource
from rkuprune.data.sources import DataConfig
from rkuprune.errors import ConfigError, DataError

HUB_ID = "yahma/alpaca-cleaned"
# post_training.py: data["train"].train_test_split(test_size=val_set_size, shuffle=True, seed=42)
VAL_SPLIT_SEED = 42
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass
class AlpacaConfig(CalibrationConfig):
    name: str = "alpaca"
    seqlen: int = 256  # LLM-Pruner's cutoff_len
    val_set_size: int = 2000  # rows held out as the reference's validation split; never read
    train_on_inputs: bool = False  # the reference's default: the loss counts the response and EOS only


def alpaca_prompt(instruction: str, input_text: str | None = None) -> str:
    """LLM-Pruner's Alpaca prompt, ending where the response begins."""
    if input_text:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return PROMPT_WITHOUT_INPUT.format(instruction=instruction)


def local_file(data: DataConfig) -> Path | None:
    """``data.root/alpaca/alpaca_data_cleaned.json`` (the hub's file) when it exists; else the hub is read."""
    path = sources.local_path(data, "alpaca", "train")
    return path if path is not None and path.is_file() else None


def alpaca_rows(data: DataConfig) -> list[dict[str, str]]:
    """Every row of alpaca-cleaned's train split, from the local file (a JSON list of
    ``{instruction, input, output}``) or the hub."""
    path = local_file(data)
    if path is None:
        from datasets import load_dataset

        return list(load_dataset(HUB_ID, split="train"))
    try:
        rows = json.loads(sources.read_utf8(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of {{instruction, input, output}} objects")
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or not all(isinstance(row.get(key), str) for key in ("instruction", "output")):
            raise DataError(f"{path}: row {index} needs string fields 'instruction' and 'output'")
    return rows


@CALIBRATION_SOURCES.register("alpaca", AlpacaConfig)
class Alpaca(CalibrationSource):
    """One instruction row per sequence, shuffled by seed, until ``num_tokens`` real tokens."""

    cfg: AlpacaConfig

    def check(self, data: DataConfig) -> None:
        super().check(data)
        if self.cfg.val_set_size < 0:
            raise ConfigError("calibration.val_set_size", f"{self.cfg.val_set_size} must be at least 0")
        if local_file(data) is None and sources.hub_offline():
            missing = "data.root has no such file" if data.root else "data.root is unset"
            raise ConfigError(
                "data.root",
                f"the alpaca source needs alpaca/alpaca_data_cleaned.json under data.root ({HUB_ID}'s file) or the "
                f"hub, but {missing} and the hub is offline; put the file there or go online",
            )

    def train_rows(self, data: DataConfig) -> list[dict[str, str]]:
        """The rows the reference trains on: all but its ``val_set_size`` validation rows."""
        rows = alpaca_rows(data)
        if self.cfg.val_set_size >= len(rows):
            raise ConfigError(
                "calibration.val_set_size",
                f"holding out {self.cfg.val_set_size} validation rows leaves none of the {len(rows)} alpaca rows; lower it",
            )
        order = np.random.default_rng(VAL_SPLIT_SEED).permutation(len(rows))
        return [rows[i] for i in order[self.cfg.val_set_size :]]

    def encode(self, tokenizer: Any, row: dict[str, str]) -> tuple[list[int], int]:
        """Token ids of prompt + output (+ EOS), cut at ``seqlen``, and the index where the loss starts."""
        prompt = alpaca_prompt(row["instruction"], row.get("input"))
        ids = tokenizer(prompt + row["output"], truncation=True, max_length=self.cfg.seqlen).input_ids
        if ids[-1] != tokenizer.eos_token_id and len(ids) < self.cfg.seqlen:
            ids = [*ids, tokenizer.eos_token_id]
        if self.cfg.train_on_inputs:
            return ids, 0
        return ids, len(tokenizer(prompt, truncation=True, max_length=self.cfg.seqlen).input_ids)

    def build(self, tokenizer: Any, data: DataConfig, *, model: Any = None, plan: Any = None) -> CalibrationSet:
        if tokenizer.eos_token_id is None:
            raise ConfigError("calibration", "alpaca appends EOS to each response, and this tokenizer has none")
        rows = self.train_rows(data)
        random.Random(self.cfg.seed).shuffle(rows)
        encoded: list[list[int]] = []
        starts: list[int] = []
        total = skipped = 0
        for row in rows:
            ids, start = self.encode(tokenizer, row)
            if start >= len(ids):  # the prompt fills the cutoff: the reference masks every token of the row
                skipped += 1
                continue
            encoded.append(ids)
            starts.append(start)
            total += len(ids)
            if total >= self.cfg.num_tokens:
                break
        if not encoded:
            raise ConfigError("calibration.seqlen", f"every alpaca prompt fills {self.cfg.seqlen} tokens; raise it")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        calibration = CalibrationSet.right_padded(encoded, pad, self.cfg.batch_size, loss_starts=starts)
        return self._require_budget(
            self._provenance(
                calibration,
                origin=str(local_file(data) or HUB_ID),
                rows_available=len(rows),
                held_out=self.cfg.val_set_size,
                rows_without_response=skipped,
                loss_tokens=int(calibration.loss_mask.sum()),
            )
        )
