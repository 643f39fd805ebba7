"""Save and load pruned models as plain ``save_pretrained`` folders (safetensors, never pickles).

A folder holds the weights, ``config.json`` extended with per-layer sizes, ``pruning_plan.json`` and
the tokenizer. ``load_pruned`` rebuilds the architecture from the config, resizes each layer and
loads the weights, refusing any tensor that does not match. When every layer has the same sizes the
top-level config fields describe them, so ``AutoModelForCausalLM.from_pretrained`` loads it too.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from rkuprune.errors import CheckpointError
from rkuprune.models.adapters import adapter_for
from rkuprune.models.plan import PruningPlan
from rkuprune.models.surgery import SIZES_KEY
from rkuprune.versions import versions

PLAN_FILE = "pruning_plan.json"


def save_pruned(model: PreTrainedModel, tokenizer: Any, plan: PruningPlan, path: str | Path) -> Path:
    """Write a sliced model, its plan and tokenizer to ``path`` (replaced atomically)."""
    path = Path(path)
    if getattr(model.config, SIZES_KEY, None) is None:
        raise CheckpointError("save_pruned expects a sliced model: call apply_plan(model, plan, 'slice') first")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        plan.metadata.setdefault("versions", versions())
        plan.save(staging / PLAN_FILE)
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no .safetensors weights found")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def _resize_linear(linear: nn.Linear, out_features: int, in_features: int, bias: bool) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=bias, dtype=linear.weight.dtype)


def _resize_layers(model: PreTrainedModel, sizes: list[dict[str, Any]]) -> None:
    """Replace each layer's projections by empty ones of the saved shapes (inside init_empty_weights)."""
    adapter = adapter_for(model)
    head_dim, hidden = adapter.head_dim, model.config.hidden_size
    if len(sizes) != len(adapter.layers()):
        raise CheckpointError(f"config has {len(adapter.layers())} layers but {SIZES_KEY} describes {len(sizes)}")
    for layer, size in zip(adapter.layers(), sizes, strict=True):
        q_dim = size["num_attention_heads"] * head_dim
        kv_dim = size["num_key_value_heads"] * head_dim
        width = size["intermediate_size"]
        biases = set(size["biases"])
        shapes = {"q": (q_dim, hidden), "k": (kv_dim, hidden), "v": (kv_dim, hidden), "o": (hidden, q_dim)}
        attn_module = adapter.attention_module(layer)
        for name, (out_f, in_f) in shapes.items():
            old = getattr(attn_module, f"{name}_proj")
            setattr(attn_module, f"{name}_proj", _resize_linear(old, out_f, in_f, name in biases))
        mlp_module = adapter.mlp_module(layer)
        for name, (out_f, in_f) in {"gate": (width, hidden), "up": (width, hidden), "down": (hidden, width)}.items():
            old = getattr(mlp_module, f"{name}_proj")
            setattr(mlp_module, f"{name}_proj", _resize_linear(old, out_f, in_f, name in biases))
        adapter.set_attention_heads(layer, size["num_attention_heads"], size["num_key_value_heads"])
        adapter.set_intermediate_size(layer, width)


def load_pruned(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, Any]:
    """Rebuild a pruned model saved by ``save_pruned`` and return ``(model, tokenizer)``."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json; is this a folder written by save_pruned?")
    config = AutoConfig.from_pretrained(path)
    sizes = getattr(config, SIZES_KEY, None)
    if sizes is None:
        raise CheckpointError(f"{path}/config.json has no '{SIZES_KEY}'; it was not written by save_pruned")
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
        _resize_layers(model, sizes)
    state = _read_weights(path)
    expected = model.state_dict()
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    for name, tensor in expected.items():
        if name not in state and name not in tied:
            raise CheckpointError(f"{path}: tensor '{name}' is missing from the weights")
        if name in state and tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: tensor '{name}' has shape {tuple(state[name].shape)} but the plan in config.json "
                f"needs {tuple(tensor.shape)}"
            )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path}: tensor '{unexpected[0]}' in the weights has no place in the model")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path) if (path / "tokenizer_config.json").is_file() else None
    return model, tokenizer


def load_plan(path: str | Path) -> PruningPlan:
    return PruningPlan.load(Path(path) / PLAN_FILE)


def read_config(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "config.json").read_text())
