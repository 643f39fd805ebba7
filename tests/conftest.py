"""Shared fixtures: tiny random models built from the shipped conf/model YAMLs, offline settings."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from rkuprune.models.loading import LoadedModel, ModelConfig, load_model
from rkuprune.models.plan import PruningPlan
from rkuprune.models.structures import Structures

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"
# Every architecture the adapters support, as a tiny random model: the surgery, scorer and depth tests
# run on each. A new family joins the matrix by adding its conf/model/tiny-<family>.yaml here.
TINY_ARCHS = (
    "tiny-llama",
    "tiny-mistral",
    "tiny-qwen2",
    "tiny-qwen3",
    "tiny-gemma2",
    "tiny-gemma3",
    "tiny-phi3",
    "tiny-granite",
)
EAGER_FLOAT64 = "eager_float64"


def _eager_float64(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None = None,
    **_: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention (with Gemma-2's soft-capping) computed in the inputs' dtype. transformers' eager
    softmax runs in float32, which turns the float64 mask minimum into -inf and a fully masked padding
    row into NaN that then leaks into real tokens (0 * NaN)."""
    key = key.repeat_interleave(module.num_key_value_groups, dim=1)
    value = value.repeat_interleave(module.num_key_value_groups, dim=1)
    scores = query @ key.transpose(2, 3) * scaling
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = scores.softmax(dim=-1)
    return (weights @ value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(EAGER_FLOAT64, _eager_float64)
AttentionMaskInterface.register(EAGER_FLOAT64, eager_mask)  # additive float masks, as for eager


def in_float64(model: nn.Module) -> nn.Module:
    """The model in float64, so comparisons do not depend on the CPU's kernels (eager attention kept exact)."""
    model.double()
    if model.config._attn_implementation == "eager":  # noqa: SLF001 - transformers keeps the choice there
        model.set_attn_implementation(EAGER_FLOAT64)
    return model


def model_config(name: str, **overrides: object) -> ModelConfig:
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"))
    raw.pop("defaults", None)
    raw.update(overrides)
    return ModelConfig(**raw)


def tiny(name: str, seed: int = 0) -> LoadedModel:
    return load_model(model_config(name, seed=seed))


def random_plan(structures: Structures, granularity: str, seed: int = 0) -> PruningPlan:
    """A valid, non-uniform plan: different counts per layer, GQA groups kept evenly."""
    rng = random.Random(seed)
    plan = PruningPlan.dense(structures, base_model="tiny")
    for layer_plan in plan.layers:
        s = structures[layer_plan.index]
        n_channels = rng.randint(1, s.intermediate_size - 1)
        layer_plan.mlp_channels = sorted(rng.sample(range(s.intermediate_size), n_channels))
        if granularity == "kv_group":
            kv = sorted(rng.sample(range(s.num_kv_heads), rng.randint(1, s.num_kv_heads)))
            layer_plan.kv_heads = kv
            layer_plan.q_heads = [h for h in range(s.num_q_heads) if s.kv_of(h) in kv]
        elif granularity == "q_head":
            per_group = rng.randint(1, s.group_size)
            layer_plan.q_heads = sorted(
                h
                for kv in range(s.num_kv_heads)
                for h in rng.sample(range(kv * s.group_size, (kv + 1) * s.group_size), per_group)
            )
    return plan


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the project's cache (converted GGUF, dense metrics) where the user's is, but allow overriding."""
    return Path(os.environ.get("RKUPRUNE_CACHE", Path.home() / ".cache" / "rkuprune"))


def stub_gguf_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenizer: object | None = None) -> Path:
    """The default model's GGUF source, stubbed: an empty file "converted" by transformers into a tiny
    Llama (and ``tokenizer``, the byte tokenizer by default), so the conversion's file handling is tested
    without the package."""
    from rkuprune.models import loading
    from rkuprune.models.tokenizer import byte_tokenizer

    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"")
    monkeypatch.setattr(loading, "_gguf_path", lambda cfg: gguf)
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny("tiny-llama").model)
    made = byte_tokenizer() if tokenizer is None else tokenizer
    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", lambda *a, **k: made)
    return gguf


def save_random_pruned(folder: Path) -> Path:
    """A non-uniform pruned tiny Llama (query heads, seed 3) with its plan and tokenizer, as save_pruned writes it."""
    from rkuprune.models.adapters import adapter_for
    from rkuprune.models.io import save_pruned
    from rkuprune.models.surgery import apply_plan
    from rkuprune.models.tokenizer import byte_tokenizer

    loaded = tiny("tiny-llama")
    plan = random_plan(adapter_for(loaded.model).structures(), "q_head", seed=3)
    apply_plan(loaded.model, plan, "slice")
    return save_pruned(loaded.model, byte_tokenizer(), plan, folder)
