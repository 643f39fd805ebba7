"""Architecture adapters: the only place that knows where a model keeps its layers and projections.

An adapter is chosen by ``config.model_type``. Llama, Qwen2 and Qwen3 share the Hugging Face layout
(``model.layers[i].self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``), so they share one class;
biases are read from the modules, never assumed. Qwen3's ``q_norm``/``k_norm`` act per head_dim and
need no change when heads are removed. To add an architecture, subclass ``DecoderAdapter`` in a new
module of this package and register it for its ``model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from rkuprune.errors import ConfigError
from rkuprune.models.structures import LayerStructure, Structures


@dataclass(frozen=True)
class AttentionParts:
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear


@dataclass(frozen=True)
class MLPParts:
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear


class DecoderAdapter:
    """Where things live in a Llama-style decoder (pre-norm, rotary, gated MLP)."""

    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config

    # --- locations -----------------------------------------------------------------------------
    def decoder(self) -> nn.Module:
        return self.model.model

    def layers(self) -> nn.ModuleList:
        return self.decoder().layers

    def final_norm(self) -> nn.Module:
        return self.decoder().norm

    def attention_module(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def mlp_module(self, layer: nn.Module) -> nn.Module:
        return layer.mlp

    def attention(self, layer: nn.Module) -> AttentionParts:
        attn = self.attention_module(layer)
        return AttentionParts(attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)

    def mlp(self, layer: nn.Module) -> MLPParts:
        mlp = self.mlp_module(layer)
        return MLPParts(mlp.gate_proj, mlp.up_proj, mlp.down_proj)

    # --- sizes -----------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        head_dim = getattr(self.config, "head_dim", None)
        return int(head_dim or self.config.hidden_size // self.config.num_attention_heads)

    def layer_structure(self, position: int, original_index: int | None = None) -> LayerStructure:
        """Structure of the layer at ``position``, read from its modules (so it is right after slicing)."""
        layer = self.layers()[position]
        attn, mlp = self.attention(layer), self.mlp(layer)
        head_dim = self.head_dim
        return LayerStructure(
            index=position if original_index is None else original_index,
            hidden_size=attn.q.in_features,
            head_dim=head_dim,
            num_q_heads=attn.q.out_features // head_dim,
            num_kv_heads=attn.k.out_features // head_dim,
            intermediate_size=mlp.gate.out_features,
            qkv_bias=attn.q.bias is not None,
            o_bias=attn.o.bias is not None,
            gate_up_bias=mlp.gate.bias is not None,
            down_bias=mlp.down.bias is not None,
        )

    def structures(self) -> Structures:
        return Structures(tuple(self.layer_structure(i) for i in range(len(self.layers()))))

    def set_attention_heads(self, layer: nn.Module, num_q_heads: int, num_kv_heads: int) -> None:
        """Tell the attention module its new head counts (it infers them from shapes, except the GQA group)."""
        attn = self.attention_module(layer)
        attn.num_key_value_groups = num_q_heads // num_kv_heads
        for name, value in (("num_heads", num_q_heads), ("num_key_value_heads", num_kv_heads)):
            if hasattr(attn, name):
                setattr(attn, name, value)

    def set_intermediate_size(self, layer: nn.Module, size: int) -> None:
        mlp = self.mlp_module(layer)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = size

    def renumber_layers(self) -> None:
        """After whole layers are removed, give attention modules consecutive cache indices."""
        for position, layer in enumerate(self.layers()):
            self.attention_module(layer).layer_idx = position
            if hasattr(layer, "layer_idx"):
                layer.layer_idx = position


_ADAPTERS: dict[str, type[DecoderAdapter]] = {}


def register_adapter(cls: type[DecoderAdapter]) -> type[DecoderAdapter]:
    for model_type in cls.model_types:
        _ADAPTERS[model_type] = cls
    return cls


@register_adapter
class LlamaAdapter(DecoderAdapter):
    """Llama 2/3 and SmolLM2 (GQA, optional ``attention_bias``/``mlp_bias``); also Mistral's layout."""

    model_types = ("llama", "mistral")


@register_adapter
class Qwen2Adapter(DecoderAdapter):
    """Qwen2/2.5: q/k/v biases, no o bias."""

    model_types = ("qwen2",)


@register_adapter
class Qwen3Adapter(DecoderAdapter):
    """Qwen3: explicit ``head_dim`` and per-head ``q_norm``/``k_norm`` (left unchanged by pruning)."""

    model_types = ("qwen3",)


@register_adapter
class Gemma2Adapter(DecoderAdapter):
    """Gemma-2: explicit ``head_dim``; its extra norms, soft-capping and sliding windows need no change.

    The pre/post feed-forward norms act on the hidden size, which pruning never changes; attention
    logits are scaled by ``query_pre_attn_scalar`` (not by the head count) and soft-capped element by
    element, as are the final logits, so removing heads or channels leaves both as they are. Whether a
    layer slides is ``config.layer_types[i]``, which surgery keeps in step when it removes layers.
    """

    model_types = ("gemma2",)


@register_adapter
class Gemma3Adapter(Gemma2Adapter):
    """Gemma-3 text decoder (``gemma3_text``, e.g. gemma-3-1b): Gemma-2's layout plus per-head q/k norms."""

    model_types = ("gemma3_text",)


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_for(model: nn.Module) -> DecoderAdapter:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in _ADAPTERS:
        raise ConfigError(
            "model",
            f"architecture '{model_type}' has no adapter; supported: {', '.join(supported_model_types())} "
            "(add one in rkuprune/models/adapters.py)",
        )
    return _ADAPTERS[model_type](model)
