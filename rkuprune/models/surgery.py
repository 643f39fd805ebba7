"""Apply a pruning plan to a dense model: ``mask`` (zero removed units in place) or ``slice``
(physically remove their rows and columns so the model shrinks).

Both start from the dense model, whose shapes match the plan's original numbering. A masked model
and the same model sliced give the same logits (the core test of this module): a removed query head
loses its q rows and o columns, a removed KV head its k and v rows, a removed MLP channel its gate
and up rows and its down column, and a removed layer becomes the identity (masked: its o and down
are zero) or disappears (sliced). Rows and columns are those of the adapter's roles, so a fused Linear
(Phi-3's qkv_proj) is masked at each role's offset and sliced once.
"""

from __future__ import annotations

from typing import Literal

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import PretrainedConfig

from rkuprune.models.adapters import OUTPUT_ROLES, DecoderAdapter, Projection, adapter_for
from rkuprune.models.plan import LayerPlan, PruningPlan
from rkuprune.models.structures import LayerStructure

Mode = Literal["mask", "slice"]
SIZES_KEY = "rkuprune_layers"  # per-layer sizes stored in config.json of a sliced model


def head_rows(heads: list[int], head_dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Row indices of the given heads in a projection laid out head after head."""
    index = torch.as_tensor(heads, dtype=torch.long, device=device)
    return (index[:, None] * head_dim + torch.arange(head_dim, device=device)).reshape(-1)


def apply_plan(model: nn.Module, plan: PruningPlan, mode: Mode) -> nn.Module:
    """Prune ``model`` in place according to ``plan`` and return it."""
    adapter = adapter_for(model)
    structures = adapter.structures()
    plan.validate(structures)
    with torch.no_grad():
        for layer_plan in plan.layers:
            layer = adapter.layers()[layer_plan.index]
            if mode == "mask":
                _mask_layer(adapter, layer, structures[layer_plan.index], layer_plan)
            else:
                _slice_layer(adapter, layer, structures[layer_plan.index], layer_plan)
        for index in plan.removed_layers:
            if mode == "mask":
                _mask_whole_layer(adapter, adapter.layers()[index])
        if mode == "slice":
            if plan.removed_layers:
                adapter.remove_layers(plan.removed_layers)
            _record_sizes(adapter, plan)
    return model


def add_output_bias(linear: nn.Linear, delta: torch.Tensor) -> None:
    """Add ``delta`` to the output bias of ``linear``, creating the bias when the layer has none.

    Used for compensation (FLAP): the bias is an ordinary parameter afterwards, counted in the sparsity
    and listed in the per-layer ``biases`` that ``save_pruned``/``load_pruned`` rebuild.
    """
    with torch.no_grad():
        if linear.bias is None:
            zeros = torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device)
            linear.bias = nn.Parameter(zeros, requires_grad=linear.weight.requires_grad)
        linear.bias.add_(delta.to(dtype=linear.bias.dtype, device=linear.bias.device))


def _complement(kept: list[int], size: int) -> list[int]:
    keep = set(kept)
    return [i for i in range(size) if i not in keep]


def _zero_rows(projection: Projection, rows: torch.Tensor) -> None:
    rows = rows + projection.start
    projection.linear.weight.index_fill_(0, rows, 0.0)
    if projection.linear.bias is not None:
        projection.linear.bias.index_fill_(0, rows, 0.0)


def _unit_indices(
    structure: LayerStructure, plan: LayerPlan, device: torch.device, removed: bool
) -> dict[str, torch.Tensor]:
    """Per role, the rows (input roles) or columns (o, down) of the kept units, or of the removed ones,
    counted within the role (a fused Linear adds the role's ``start``)."""

    def pick(kept: list[int], size: int) -> list[int]:
        return _complement(kept, size) if removed else kept

    q = head_rows(pick(plan.q_heads, structure.num_q_heads), structure.head_dim, device)
    kv = head_rows(pick(plan.kv_heads, structure.num_kv_heads), structure.head_dim, device)
    channels = torch.as_tensor(pick(plan.mlp_channels, structure.intermediate_size), dtype=torch.long, device=device)
    return {"q": q, "k": kv, "v": kv, "o": q, "gate": channels, "up": channels, "down": channels}


def _mask_layer(adapter: DecoderAdapter, layer: nn.Module, structure: LayerStructure, plan: LayerPlan) -> None:
    roles = adapter.roles(layer)
    removed = _unit_indices(structure, plan, roles["q"].linear.weight.device, removed=True)
    for role, projection in roles.items():
        if role in OUTPUT_ROLES:
            projection.linear.weight.index_fill_(1, removed[role], 0.0)
        else:
            _zero_rows(projection, removed[role])


def _mask_whole_layer(adapter: DecoderAdapter, layer: nn.Module) -> None:
    """Zero the layer's two residual writers, making the layer the identity."""
    roles = adapter.roles(layer)
    for role in OUTPUT_ROLES:
        linear = roles[role].linear
        linear.weight.zero_()
        if linear.bias is not None:
            linear.bias.zero_()


def _slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    weight = linear.weight.data
    if rows is not None:
        weight = weight.index_select(0, rows)
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.data.index_select(0, rows), linear.bias.requires_grad)
    if cols is not None:
        weight = weight.index_select(1, cols)
    linear.weight = nn.Parameter(weight.contiguous(), linear.weight.requires_grad)
    linear.out_features, linear.in_features = weight.shape


def _slice_layer(adapter: DecoderAdapter, layer: nn.Module, structure: LayerStructure, plan: LayerPlan) -> None:
    """Slice each Linear once: the kept rows of every role it holds, in row order, or the kept columns."""
    groups = adapter.linears(layer)
    kept = _unit_indices(structure, plan, groups[0][0].weight.device, removed=False)
    for linear, held in groups:
        output = [role for role in held if role in OUTPUT_ROLES]
        if output:
            _slice_linear(linear, cols=kept[output[0]])
        else:
            _slice_linear(linear, rows=torch.cat([kept[role] + p.start for role, p in held.items()]))
    adapter.set_attention_heads(layer, len(plan.q_heads), len(plan.kv_heads))
    adapter.set_intermediate_size(layer, len(plan.mlp_channels))


def layer_sizes(adapter: DecoderAdapter) -> list[dict[str, object]]:
    """Per-layer head counts, MLP width and which projections carry a bias, read from the modules."""
    sizes = []
    for position, layer in enumerate(adapter.layers()):
        structure = adapter.layer_structure(position)
        sizes.append(
            {
                "num_attention_heads": structure.num_q_heads,
                "num_key_value_heads": structure.num_kv_heads,
                "intermediate_size": structure.intermediate_size,
                "biases": sorted(role for role, p in adapter.roles(layer).items() if p.bias is not None),
            }
        )
    return sizes


def _record_sizes(adapter: DecoderAdapter, plan: PruningPlan) -> None:
    """Describe the sliced shapes in the model config, so that the saved config.json rebuilds them.

    The explicit ``head_dim`` keeps head_dim fixed when the head count changes. When every layer has
    the same sizes the top-level fields say so too, and plain ``from_pretrained`` can load the folder,
    unless a layer carries a bias the architecture's config would not create (a compensation bias):
    plain loading would silently drop it, so the top-level fields then keep their base values and plain
    loading fails on the shapes instead.
    """
    config = adapter.config
    config.head_dim = adapter.head_dim
    sizes = layer_sizes(adapter)
    setattr(config, SIZES_KEY, sizes)
    config.rkuprune_kept_layers = [lp.index for lp in plan.layers]
    first = {k: v for k, v in sizes[0].items() if k != "biases"}
    native = adapter.native_bias_roles()
    extra_bias = any(set(s["biases"]) - native for s in sizes)
    if not extra_bias and all({k: v for k, v in s.items() if k != "biases"} == first for s in sizes):
        _set_uniform_sizes(config, first)


def _set_uniform_sizes(config: PretrainedConfig, sizes: dict[str, object]) -> None:
    """Write uniform sizes into the top-level fields, unless the config class refuses them.

    transformers' LlamaConfig insists on hidden_size % num_attention_heads == 0 even with an explicit
    head_dim; such a model keeps the base values there and loads with ``load_pruned`` only.
    """
    previous = {key: getattr(config, key) for key in sizes}
    for key, value in sizes.items():
        setattr(config, key, value)
    try:
        config.validate()
    except StrictDataclassError:
        for key, value in previous.items():
            setattr(config, key, value)
