"""``gsm8k_gold_chat``: the calibration of RESP's baselines (GISP, Wanda-sp) in its paper.

Each GSM8K train question goes through the model's chat template as the user turn, and its human
solution, as the dataset writes it, follows as the assistant's answer with EOS appended; the loss
counts the answer and EOS only (the same decode-only mask as ``self_generated``, so the baselines
and RESP differ only in who wrote the answer). Rows are drawn per sample (``num_prompts``), as the
reference's sample-wise budget.

``pack`` (RESP's Wanda-sp baseline, ``baseline_uniform_wanda`` with ``seq_len: 256``): the rows' tokens,
prompt and answer, are laid end to end and cut into windows of ``seqlen`` tokens, every token counted;
the tail shorter than a window is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rkuprune.data import sources
from rkuprune.data.calibration import CALIBRATION_SOURCES, CalibrationConfig, CalibrationSet, CalibrationSource
from rkuprune.data.self_generated import chat_prompt, decode_only_batch, gsm8k_train_rows, require_chat_template
from rkuprune.data.sources import DataConfig
from rkuprune.errors import ConfigError


@dataclass
class GoldChatConfig(CalibrationConfig):
    name: str = "gsm8k_gold_chat"
    num_prompts: int = 128
    enable_thinking: bool = True  # Qwen3's switch, as the reference's default; templates without it ignore it
    pack: bool = False  # true: every token of the rows, end to end, in seqlen windows (RESP's Wanda-sp statistics)


@CALIBRATION_SOURCES.register("gsm8k_gold_chat", GoldChatConfig)
class GSM8KGoldChat(CalibrationSource):
    cfg: GoldChatConfig

    def check(self, data: DataConfig) -> None:
        super().check(data)
        if self.cfg.num_prompts < 1:
            raise ConfigError("calibration.num_prompts", "must be at least 1")
        sources.require_available(data, "gsm8k", "train", "calibration=gsm8k_gold_chat")

    def build(self, tokenizer: Any, data: DataConfig, *, model: Any = None, plan: Any = None) -> CalibrationSet:
        require_chat_template(tokenizer, self.cfg.name)
        if tokenizer.eos_token_id is None:
            raise ConfigError("calibration", "gsm8k_gold_chat appends EOS and this tokenizer has none; use gsm8k_gold")
        rows = gsm8k_train_rows(data, self.cfg.num_prompts, self.cfg.seed)
        prompts = [
            tokenizer(
                chat_prompt(tokenizer, row["question"], self.cfg.enable_thinking), add_special_tokens=False
            ).input_ids
            for row in rows
        ]
        answers = [
            tokenizer(row["answer"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for row in rows
        ]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if self.cfg.pack:
            stream = [token for p, a in zip(prompts, answers, strict=True) for token in p + a]
            n = self.cfg.seqlen
            if len(stream) < n:
                raise ConfigError(
                    "calibration.seqlen",
                    f"{n} is longer than the {len(stream)} tokens of the {len(rows)} packed rows; "
                    "lower it or raise calibration.num_prompts",
                )
            calibration = CalibrationSet.right_padded(
                [stream[i : i + n] for i in range(0, len(stream) - n + 1, n)], pad, 1
            )
        else:
            calibration = decode_only_batch(prompts, answers, pad, self.cfg.seqlen)
        calibration.batch_size = self.cfg.batch_size
        return self._provenance(calibration, prompts=len(rows), loss_tokens=int(calibration.loss_mask.sum()))
