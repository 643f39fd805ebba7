"""Inference efficiency of a model as it is: prefill and decode throughput, peak memory during decode,
weight bytes and KV-cache bytes per token. The pipeline measures the dense model before slicing and
the pruned one after, in the same process, device and dtype, and records the pruned/dense ratios next
to the ideal speedup that the weight bytes promise (decode is memory-bound: it reads every weight once
per step).

Dense figures are never cached across runs: throughput depends on the machine and on whatever else
runs on it, so a ratio is only meaningful when both sides are measured back to back.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during decode (tensors only); on CPU, the
process's resident set size sampled every few milliseconds during decode (``cpu_rss_sampled``: it
includes the Python runtime and whatever the allocator keeps, so it is an upper bound of what the
model needs, and ratios of it understate the saving).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
import torch
from torch import nn

from rkuprune.errors import ConfigError
from rkuprune.generation import CACHE_KEY
from rkuprune.models.adapters import adapter_for

log = logging.getLogger(__name__)


@dataclass
class SpeedConfig:
    """``benchmark.speed``: the inference-efficiency measurement of the dense and the pruned model."""

    enabled: bool = True
    prefill_batch: int = 1
    prompt_length: int = 32  # tokens per row, for prefill and as the decode prompt
    decode_batches: list[int] = field(default_factory=lambda: [1, 4])
    new_tokens: int = 8  # greedy decode steps with the KV cache on
    warmup: int = 1  # untimed repetitions before timing (the peak-memory pass is the largest batch's)
    repeats: int = 2  # timed repetitions; the median is kept
    seed: int = 0


SPEED_KEYS = ("prefill_tokens_per_s", "peak_memory_bytes", "weight_bytes", "kv_cache_bytes_per_token")


def decode_key(batch: int) -> str:
    return f"decode_tokens_per_s@b{batch}"


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (tied weights counted once)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def kv_cache_bytes_per_token(model: nn.Module) -> int:
    """K and V of one token in every layer: sum over layers of 2 x KV heads x head_dim x dtype bytes."""
    adapter = adapter_for(model)
    element = next(model.parameters()).element_size()
    return sum(2 * s.num_kv_heads * s.head_dim * element for s in adapter.structures().layers)


def input_device(model: nn.Module) -> torch.device:
    """Where input ids go: the device of the embedding (the first device of a device-mapped model)."""
    return model.get_input_embeddings().weight.device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(run: Callable[[], float], cfg: SpeedConfig, warmup: int | None = None) -> float:
    """Median of ``cfg.repeats`` timed calls of ``run`` (which returns its own seconds) after the warm-up."""
    for _ in range(cfg.warmup if warmup is None else warmup):
        run()
    times = sorted(run() for _ in range(max(cfg.repeats, 1)))
    return times[len(times) // 2]


def _timed(run: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def _prefill(model: nn.Module, ids: torch.Tensor) -> Any:
    return model(input_ids=ids, use_cache=True, logits_to_keep=1)


def _decode(model: nn.Module, ids: torch.Tensor, steps: int) -> tuple[Any, float]:
    """Prefill ``ids``, then ``steps`` greedy single-token steps with the cache; the decode seconds only."""
    out = _prefill(model, ids)
    cache, token = out[CACHE_KEY], out.logits[:, -1].argmax(-1, keepdim=True)
    synchronize(ids.device)
    start = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=token.to(ids.device), use_cache=True, **{CACHE_KEY: cache})
        cache, token = out[CACHE_KEY], out.logits[:, -1].argmax(-1, keepdim=True)
    synchronize(ids.device)
    return cache, time.perf_counter() - start


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Yield a dict that holds, on exit, ``peak_memory_bytes`` and what kind of figure it is."""
    result: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.update(
            peak_memory_bytes=int(torch.cuda.max_memory_allocated(device)), peak_memory_kind="cuda_max_allocated"
        )
        return
    process, stop, peak = psutil.Process(), threading.Event(), [0]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            stop.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
    result.update(peak_memory_bytes=max(peak[0], process.memory_info().rss), peak_memory_kind="cpu_rss_sampled")


@torch.no_grad()
def measure(model: nn.Module, cfg: SpeedConfig) -> dict[str, Any]:
    """Measure ``model`` as it is (dense or pruned) with the settings of ``cfg``; no speed is cached."""
    device = input_device(model)
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(cfg.seed)

    def tokens(batch: int) -> torch.Tensor:
        return torch.randint(0, vocab, (batch, cfg.prompt_length), generator=generator).to(device)

    was_training = model.training
    model.eval()
    figures: dict[str, Any] = {
        "weight_bytes": weight_bytes(model),
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(model),
    }
    prefill_ids = tokens(cfg.prefill_batch)
    seconds = _median_seconds(lambda: _timed(lambda: _prefill(model, prefill_ids), device), cfg)
    figures["prefill_tokens_per_s"] = prefill_ids.numel() / seconds
    peak: dict[str, Any] = {}
    for batch in cfg.decode_batches:
        ids = tokens(batch)
        warmup = cfg.warmup
        if batch == max(cfg.decode_batches):  # the largest batch sets the peak; that pass warms up too
            with peak_memory(device) as peak:
                _decode(model, ids, cfg.new_tokens)
            warmup = max(warmup - 1, 0)
        seconds = _median_seconds(lambda ids=ids: _decode(model, ids, cfg.new_tokens)[1], cfg, warmup)
        figures[decode_key(batch)] = batch * cfg.new_tokens / seconds
    figures.update(peak)
    model.train(was_training)
    return figures


def compare(dense: dict[str, Any], pruned: dict[str, Any]) -> dict[str, Any]:
    """Pruned/dense ratio of every numeric figure, the weight-bytes ideal speedup, and decode speedup / ideal."""
    ratio = {
        key: pruned[key] / dense[key]
        for key, value in dense.items()
        if isinstance(value, int | float) and key in pruned and value
    }
    ideal = dense["weight_bytes"] / pruned["weight_bytes"]
    out: dict[str, Any] = {"ratio": ratio, "ideal_speedup": ideal}
    out["decode_speedup_vs_ideal"] = {key: ratio[key] / ideal for key in ratio if key.startswith("decode_tokens_per_s")}
    return out


def settings(cfg: SpeedConfig, model: nn.Module) -> dict[str, Any]:
    """What the figures depend on besides the model: the settings, device and dtype."""
    parameter = next(model.parameters())
    return {**asdict(cfg), "device": str(input_device(model)), "dtype": str(parameter.dtype).removeprefix("torch.")}


def flat_numbers(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numeric figures as ``a/b/c`` keys (what a tracker summary takes); strings and lists dropped."""
    flat: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flat_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def describe(figures: dict[str, Any]) -> str:
    """One log line of the headline figures."""
    decode = ", ".join(f"{k.split('@')[1]} {v:.1f}" for k, v in figures.items() if k.startswith("decode_tokens"))
    return (
        f"prefill {figures['prefill_tokens_per_s']:.1f} tok/s, decode {decode} tok/s, "
        f"peak {figures.get('peak_memory_bytes', 0) / 2**20:.0f} MiB, weights {figures['weight_bytes'] / 2**20:.1f} MiB, "
        f"KV {figures['kv_cache_bytes_per_token']} B/token"
    )


def check(cfg: SpeedConfig) -> None:
    """Refuse settings that cannot be measured, before the model loads."""
    for name in ("prefill_batch", "prompt_length", "new_tokens", "repeats"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"benchmark.speed.{name}", f"must be at least 1, got {getattr(cfg, name)}")
    if cfg.warmup < 0:
        raise ConfigError("benchmark.speed.warmup", f"must be 0 or more, got {cfg.warmup}")
    if not cfg.decode_batches or min(cfg.decode_batches) < 1:
        raise ConfigError(
            "benchmark.speed.decode_batches", f"needs batch sizes of at least 1, got {cfg.decode_batches}"
        )


def report_columns(efficiency: dict[str, Any]) -> dict[str, float]:
    """What a sweep table shows next to the sparsity: pruned/dense throughput and the weight-bytes ideal."""
    block = efficiency.get("speed") or {}
    columns = {
        f"speedup/{key.replace('_tokens_per_s', '')}": value
        for key, value in block.get("ratio", {}).items()
        if "_tokens_per_s" in key
    }
    if "ideal_speedup" in block:
        columns["speedup/ideal"] = block["ideal_speedup"]
    return columns
