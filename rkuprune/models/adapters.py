"""Architecture adapters: the only place that knows where a model keeps its layers and projections.

An adapter is chosen by ``config.model_type``. The rest of the package speaks in *roles* (q, k, v, o,
gate, up, down), each a ``Projection``: a whole ``nn.Linear`` or a block of rows of one, when a model
fuses roles into one Linear (Phi-3's ``qkv_proj`` and ``gate_up_proj``). Llama, Mistral, Qwen2/3 and
Gemma-2/3 share the Hugging Face layout (``model.layers[i].self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``), the default of ``DecoderAdapter``; biases are read from the modules,
never assumed. Qwen3's and Gemma-3's ``q_norm``/``k_norm`` act per head_dim and need no change when
heads are removed. To add an architecture, subclass ``DecoderAdapter`` in this module (override only
what differs) and decorate it with ``@register_adapter`` for its ``model_type`` (README "Extending").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from rkuprune.errors import ConfigError
from rkuprune.models.structures import LayerStructure, Structures

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
OUTPUT_ROLES = ("o", "down")  # units are input columns; the other roles' units are output rows


@dataclass(frozen=True)
class Projection:
    """One role's weights: rows ``[start, stop)`` of ``linear`` (all of them unless the Linear is fused).

    Output roles (o, down) are always whole Linears: their units are columns.
    """

    linear: nn.Linear
    start: int = 0
    stop: int | None = None

    @property
    def rows(self) -> slice:
        return slice(self.start, self.linear.out_features if self.stop is None else self.stop)

    @property
    def out_features(self) -> int:
        return self.rows.stop - self.rows.start

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def whole(self) -> bool:
        """Whether the role is the whole Linear (then ``weight`` is the parameter itself, not a view)."""
        return self.rows == slice(0, self.linear.out_features)

    @property
    def weight(self) -> torch.Tensor:
        return self.of(self.linear.weight)

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.linear.bias is None else self.of(self.linear.bias)

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        """This role's rows of a tensor shaped like the Linear's weight (e.g. its gradient)."""
        return tensor if self.whole else tensor[self.rows]


@dataclass(frozen=True)
class AttentionParts:
    q: Projection
    k: Projection
    v: Projection
    o: Projection


@dataclass(frozen=True)
class MLPParts:
    gate: Projection
    up: Projection
    down: Projection


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
        return AttentionParts(*(Projection(linear) for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)))

    def mlp(self, layer: nn.Module) -> MLPParts:
        mlp = self.mlp_module(layer)
        return MLPParts(*(Projection(linear) for linear in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)))

    def roles(self, layer: nn.Module) -> dict[str, Projection]:
        """Every role of the layer, in ``ROLES`` order."""
        return {**vars(self.attention(layer)), **vars(self.mlp(layer))}

    def linears(self, layer: nn.Module) -> list[tuple[nn.Linear, dict[str, Projection]]]:
        """Each distinct Linear of the layer with the roles it holds, ordered by their rows."""
        groups: dict[int, tuple[nn.Linear, dict[str, Projection]]] = {}
        for role, projection in self.roles(layer).items():
            groups.setdefault(id(projection.linear), (projection.linear, {}))[1][role] = projection
        return [
            (linear, dict(sorted(held.items(), key=lambda item: item[1].start))) for linear, held in groups.values()
        ]

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

    def remove_layers(self, removed: list[int]) -> None:
        """Drop whole layers; per-layer config lists (``layer_types``: sliding or full attention) follow."""
        drop = set(removed)
        kept = [layer for i, layer in enumerate(self.layers()) if i not in drop]
        self.decoder().layers = nn.ModuleList(kept)
        if getattr(self.config, "layer_types", None) is not None:
            self.config.layer_types = [t for i, t in enumerate(self.config.layer_types) if i not in drop]
        self.config.num_hidden_layers = len(kept)
        self.renumber_layers()

    def native_bias_roles(self) -> set[str]:
        """Roles that carry a bias in a layer built from the config alone (built on the meta device)."""
        layer = self.layers()[0]
        with torch.device("meta"):
            fresh = type(layer)(self.config, 0)
        return {role for role, projection in self.roles(fresh).items() if projection.bias is not None}

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


@register_adapter
class GraniteAdapter(DecoderAdapter):
    """IBM Granite 3: the Llama layout; its embedding, attention, residual and logit multipliers are
    scalars, independent of the head count and MLP width, so pruning leaves them as they are."""

    model_types = ("granite",)


@register_adapter
class Phi3Adapter(DecoderAdapter):
    """Phi-3 / Phi-4-mini: q, k, v fused in ``qkv_proj`` (in that order) and gate, up in ``gate_up_proj``.

    The role ranges are read from the shapes (q width = o's input width), so they stay right after
    slicing. Phi-3's attention splits ``qkv_proj``'s output with ``config.num_attention_heads``, so each
    pruned attention module gets its own copy of the config with its head counts.
    """

    model_types = ("phi3",)

    def attention(self, layer: nn.Module) -> AttentionParts:
        attn = self.attention_module(layer)
        fused, q = attn.qkv_proj, attn.o_proj.in_features
        kv = (fused.out_features - q) // 2
        return AttentionParts(
            Projection(fused, 0, q), Projection(fused, q, q + kv), Projection(fused, q + kv), Projection(attn.o_proj)
        )

    def mlp(self, layer: nn.Module) -> MLPParts:
        mlp = self.mlp_module(layer)
        width = mlp.gate_up_proj.out_features // 2
        return MLPParts(
            Projection(mlp.gate_up_proj, 0, width), Projection(mlp.gate_up_proj, width), Projection(mlp.down_proj)
        )

    def set_attention_heads(self, layer: nn.Module, num_q_heads: int, num_kv_heads: int) -> None:
        super().set_attention_heads(layer, num_q_heads, num_kv_heads)
        attn = self.attention_module(layer)
        attn.config = copy.copy(attn.config)
        attn.config.num_attention_heads, attn.config.num_key_value_heads = num_q_heads, num_kv_heads


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
