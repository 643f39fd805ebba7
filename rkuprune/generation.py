"""Batched text generation for chain-of-thought evaluation.

Prompts are sorted by length and cut into batches, padded so that every row ends at the last
position (a decoder continues from there), generated greedily or by sampling, stopped at EOS or a
stop string, and returned in the caller's order with the number of tokens each one generated.

Few-shot prompts share their exemplars, often 90% of the tokens. With ``reuse_prefix`` the tokens
common to every prompt are run through the model once and their key/value cache is copied into each
batch; the padding then sits between that prefix and each question (positions come from the
attention mask, so every token keeps the position it has without padding). On a CPU this removes
most of the prompt cost.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from rkuprune.tracking.progress import progress

log = logging.getLogger(__name__)

# transformers 5.x renamed the key/value cache from past_key_values to cache (the old name warns until 6.0).
CACHE_KEY = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; ``do_sample=False`` is greedy and ignores the rest."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    ids: tuple[int, ...] = ()  # the generated ids, EOS included when the model ended its turn (stop strings not cut)


@dataclass(frozen=True)
class GenerationStats:
    num_prompts: int
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the model's generation config may list several (chat models)."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stop if s in text), default=len(text))
    return text[:cut]


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens shared by the start of every sequence, leaving each at least one token of its own."""
    if len(sequences) < 2:
        return 0
    first, limit = sequences[0], min(len(seq) for seq in sequences) - 1
    n = 0
    while n < limit and all(seq[n] == first[n] for seq in sequences):
        n += 1
    return n


@torch.inference_mode()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    sampling: Sampling,
    batch_size: int,
    stop: Sequence[str] = (),
    add_special_tokens: bool = True,
    seed: int = 0,
    desc: str = "generate",
    reuse_prefix: bool = True,
) -> tuple[list[Completion], GenerationStats]:
    """Complete every prompt; ``add_special_tokens=False`` for chat-formatted prompts, whose template
    already wrote the special tokens."""
    eos = eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    config = GenerationConfig(
        max_new_tokens=sampling.max_new_tokens,
        do_sample=sampling.do_sample,
        temperature=sampling.temperature if sampling.do_sample else None,
        top_p=sampling.top_p if sampling.do_sample else None,
        top_k=sampling.top_k if sampling.do_sample else None,
        eos_token_id=eos,
        pad_token_id=pad_id,
        stop_strings=list(stop) or None,
    )
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens).input_ids for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    device = next(model.parameters()).device
    start = time.perf_counter()
    shared = common_prefix_length(encoded) if reuse_prefix else 0
    prefix_cache = model(input_ids=torch.tensor([encoded[0][:shared]], device=device))[CACHE_KEY] if shared else None
    torch.manual_seed(seed)
    results: list[Completion | None] = [None] * len(prompts)
    total = 0
    for first in progress(range(0, len(order), batch_size), desc, log):
        batch = order[first : first + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            own = encoded[i][shared:]
            ids[row, :shared] = torch.tensor(encoded[i][:shared], dtype=torch.long)
            ids[row, width - len(own) :] = torch.tensor(own, dtype=torch.long)
            mask[row, :shared] = 1
            mask[row, width - len(own) :] = 1
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            **{CACHE_KEY: cache},
            generation_config=config,
            tokenizer=tokenizer if stop else None,
        )
        for row, i in enumerate(batch):
            # A row ends at EOS (counted) or where generate padded it after a stop string (not
            # counted). When the pad id is an EOS id only the text tells them apart: a row whose
            # text already holds a stop string was padded, since generation halts at the first one.
            new = out[row, width:].tolist()
            ended = next((k for k, t in enumerate(new) if t in eos or t == pad_id), None)
            if ended is None:
                count = len(new)
            else:
                before = tokenizer.decode(new[:ended]) if stop else ""
                stopped = any(s in before for s in stop)
                count = ended + (new[ended] in eos and not stopped)
            text = tokenizer.decode(new[:count], skip_special_tokens=True)
            results[i] = Completion(truncate_at_stop(text, stop), count, tuple(new[:count]))
            total += count
    stats = GenerationStats(len(prompts), total, time.perf_counter() - start)
    return [r for r in results if r is not None], stats
