"""RESP calibration: the model answers train questions through its own chat template and the loss
counts only the tokens it generated (the "decode-only" loss mask).

The prompt is tokenised from the chat template and followed by the ids the model generated (never
re-tokenised from the decoded text), so the mask boundary is exact; a trace ends with EOS only when
the model generated it, not when the token limit cut it. Traces are cached on disk keyed by a
fingerprint of the model's weights, the plan it was pruned with and the generation settings; the
iterative schedule asks for new traces from the pruned model when sparsity crosses
``pruning.regenerate_at``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from rkuprune.data import sources
from rkuprune.data.calibration import (
    CALIBRATION_SOURCES,
    CalibrationConfig,
    CalibrationSet,
    CalibrationSource,
    check_seqlen,
)
from rkuprune.data.sources import DataConfig
from rkuprune.data.synthetic import word_problems
from rkuprune.errors import ConfigError, check_choice
from rkuprune.tracking.atomic import write_json
from rkuprune.tracking.side import side_artifact

log = logging.getLogger(__name__)
QUESTION_SOURCES = ("gsm8k", "synthetic")


@dataclass
class SelfGeneratedConfig(CalibrationConfig):
    """Defaults fit a CPU; the RESP paper's budget is 500 prompts and 2048-token traces (resp_table)."""

    name: str = "self_generated"
    questions: str = "synthetic"  # synthetic (offline default) | gsm8k (train split, as in the paper)
    num_prompts: int = 16
    max_new_tokens: int = 96
    do_sample: bool = True
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    enable_thinking: bool = True  # Qwen3's switch; templates without it ignore it
    generation_batch_size: int = 8
    cache: bool = True


def chat_prompt(tokenizer: Any, question: str, enable_thinking: bool) -> str:
    """The chat-formatted question, ending where the assistant's answer begins."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=enable_thinking,
    )


def require_chat_template(tokenizer: Any, source: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "calibration", f"{source} needs a chat template and this model's tokenizer has none; use q16k"
        )


def gsm8k_train_rows(data: DataConfig, n: int, seed: int) -> list[dict[str, str]]:
    """``n`` GSM8K train rows drawn by seed (every row when there are fewer)."""
    rows = sources.gsm8k_rows(data, "train")
    picked = random.Random(seed).sample(range(len(rows)), min(n, len(rows)))
    return [rows[i] for i in picked]


def decode_only_batch(prompts: list[list[int]], answers: list[list[int]], pad_id: int, seqlen: int) -> CalibrationSet:
    """Right-padded prompt+answer rows whose loss mask covers the answer tokens only."""
    rows = [(p + a)[:seqlen] for p, a in zip(prompts, answers, strict=True)]
    return CalibrationSet.right_padded(rows, pad_id, batch_size=1, loss_starts=[len(p) for p in prompts])


@CALIBRATION_SOURCES.register("self_generated", SelfGeneratedConfig)
class SelfGenerated(CalibrationSource):
    cfg: SelfGeneratedConfig
    regenerates: ClassVar[bool] = True

    def check(self, data: DataConfig) -> None:
        check_seqlen(self.cfg)
        check_choice("calibration.questions", self.cfg.questions, QUESTION_SOURCES)
        if self.cfg.num_prompts < 1 or self.cfg.max_new_tokens < 1:
            raise ConfigError("calibration.num_prompts", "num_prompts and max_new_tokens must be at least 1")
        if self.cfg.questions == "gsm8k":
            sources.require_available(data, "gsm8k", "train", "calibration.questions=gsm8k")

    def questions(self, data: DataConfig) -> list[str]:
        if self.cfg.questions == "synthetic":
            return [p.question for p in word_problems(self.cfg.num_prompts, self.cfg.seed, "train")]
        return [row["question"] for row in gsm8k_train_rows(data, self.cfg.num_prompts, self.cfg.seed)]

    def build(self, tokenizer: Any, data: DataConfig, *, model: Any = None, plan: Any = None) -> CalibrationSet:
        if model is None:
            raise ConfigError("calibration", "self_generated needs the model to answer its questions")
        require_chat_template(tokenizer, self.cfg.name)
        questions = self.questions(data)
        texts = [chat_prompt(tokenizer, q, self.cfg.enable_thinking) for q in questions]
        # generate() tokenises the same texts the same way, so these ids are exactly the prompt it saw
        prompts = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
        answers, generated_tokens = self._answers(model, tokenizer, texts, plan)
        kept = [(p, a) for p, a in zip(prompts, answers, strict=True) if a]
        if not kept:
            raise ConfigError(
                "calibration.max_new_tokens", "every generated trace was empty; raise max_new_tokens or check the model"
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        calibration = decode_only_batch([p for p, _ in kept], [a for _, a in kept], pad, self.cfg.seqlen)
        calibration.batch_size = self.cfg.batch_size
        return self._provenance(
            calibration,
            questions=self.cfg.questions,
            prompts=len(questions),
            empty_traces=len(questions) - len(kept),
            generated_tokens=generated_tokens,
            loss_tokens=int(calibration.loss_mask.sum()),
            sampling={
                k: v for k, v in asdict(self.cfg).items() if k not in {"name", "seqlen", "batch_size", "num_tokens"}
            },
        )

    def _answers(self, model: Any, tokenizer: Any, texts: list[str], plan: Any) -> tuple[list[list[int]], int]:
        """Generated token ids per question, cached on disk by weights, plan and settings: the weights'
        fingerprint, not the model's name, so new weights behind the same path (or two random-config
        models, which have no name) never share traces."""
        from rkuprune.generation import Sampling, generate
        from rkuprune.models.loading import cache_dir
        from rkuprune.models.params import weights_fingerprint

        key_data = {
            "format": 3,  # 3: keyed by weights; 2: by model name; 1 re-tokenised the text and always added EOS
            "model": getattr(model.config, "_name_or_path", ""),
            "weights": weights_fingerprint(model),
            "plan": plan.to_dict()["layers"] if plan is not None else "dense",
            "settings": asdict(self.cfg),
            "prompts": texts,
        }
        key = hashlib.sha256(json.dumps(key_data, sort_keys=True, default=str).encode()).hexdigest()[:20]
        path = cache_dir() / "traces" / f"{key}.json"
        if self.cfg.cache and path.is_file():
            cached = json.loads(path.read_text())
            return cached["answers"], cached["generated_tokens"]
        sampling = Sampling(
            max_new_tokens=self.cfg.max_new_tokens,
            do_sample=self.cfg.do_sample,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            top_k=self.cfg.top_k,
        )
        completions, stats = generate(
            model,
            tokenizer,
            texts,
            sampling,
            self.cfg.generation_batch_size,
            add_special_tokens=False,
            seed=self.cfg.seed,
            desc="self-generated traces",
        )
        answers = [list(c.ids) for c in completions]
        if self.cfg.cache:
            with side_artifact(f"trace cache {path}", log):
                write_json(path, {"answers": answers, "generated_tokens": stats.new_tokens})
        return answers, stats.new_tokens
