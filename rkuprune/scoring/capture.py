"""The one way calibration-based scorers read a model: hooks on the inputs of every layer's o_proj and
down_proj (the unit activations), optionally the gradients of an objective with respect to them or to
chosen weights, and per-unit reductions accumulated batch by batch in fp32.

A query head h is the slice ``[h * head_dim, (h + 1) * head_dim)`` of o_proj's input; MLP channel j is
feature j of down_proj's input. Statistics count the tokens of ``token_mask``: real (attention mask),
selected by the calibration's loss mask and, when the scorer asks (``skip_first_token``, RKU's
definition), not the first token of a sequence (whose activations are the attention sink's outliers,
not the unit's typical behaviour; FLAP and Wanda-sp count it, as their references do). Nothing of the
size of the activations outlives its batch; a reducer keeps only per-feature or per-unit vectors.

Two passes: ``run_calibration`` runs the whole model per micro-batch (dense statistics, gradients);
``run_sequential`` runs it layer by layer, letting the scorer prune each layer before the next one is
calibrated on its output (FLAP's ``prune_wanda_sp``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from rkuprune.data.calibration import CalibrationSet
from rkuprune.errors import ConfigError
from rkuprune.models.adapters import Projection, adapter_for
from rkuprune.models.structures import LayerStructure
from rkuprune.precision import at_least_fp32
from rkuprune.scoring.base import LayerScores, Scores
from rkuprune.scoring.objectives import Objective
from rkuprune.tracking.progress import progress

log = logging.getLogger(__name__)

Key = tuple[int, str]  # (layer index, "attention" | "mlp")


@dataclass(frozen=True)
class Site:
    """Where one block's units live: the output projection whose input holds their activations."""

    layer: int
    block: str  # "attention" (units = query heads) or "mlp" (units = channels)
    linear: nn.Linear  # o_proj or down_proj
    unit_size: int  # input features per unit: head_dim for a head, 1 for a channel

    @property
    def key(self) -> Key:
        return (self.layer, self.block)

    def units(self, features: torch.Tensor) -> torch.Tensor:
        """View a trailing per-feature dimension as ``[..., units, unit_size]``."""
        return features.unflatten(-1, (-1, self.unit_size))


def sites(model: nn.Module) -> list[Site]:
    adapter = adapter_for(model)
    found = []
    for index, layer in enumerate(adapter.layers()):
        found.append(Site(index, "attention", adapter.attention(layer).o.linear, adapter.head_dim))
        found.append(Site(index, "mlp", adapter.mlp(layer).down.linear, 1))
    return found


def to_scores(per_unit: dict[Key, torch.Tensor]) -> Scores:
    """Per-site unit vectors (heads from attention sites, channels from MLP sites) as ``Scores``."""
    num_layers = 1 + max(layer for layer, _ in per_unit)
    return Scores(
        [
            LayerScores(heads=per_unit[(i, "attention")].float(), channels=per_unit[(i, "mlp")].float())
            for i in range(num_layers)
        ]
    )


def token_mask(batch: dict[str, torch.Tensor], skip_first: bool = True) -> torch.Tensor:
    """Tokens a unit statistic counts: real, in the loss mask and, if ``skip_first``, not the row's first real token."""
    real = batch["attention_mask"].bool()
    counted = real & batch["loss_mask"].bool()
    if skip_first:
        counted &= ~(real & (batch["attention_mask"].cumsum(dim=1) == 1))
    return counted


class Reducer:
    """Receives each site's activations (and gradients) of the counted tokens, ``[tokens, features]``, at least fp32."""

    def forward(self, site: Site, acts: torch.Tensor) -> None:
        """Called during a forward-only pass."""

    def backward(self, site: Site, acts: torch.Tensor, grads: torch.Tensor) -> None:
        """Called during the backward of a gradient pass with dΦ/da for the same tokens."""


@dataclass
class FeatureStats(Reducer):
    """Per input feature of every site: token count, mean, sum of squared deviations and sum of squares.

    Batches are merged with Chan et al.'s parallel update, so the variance is exact and stable in fp32
    however the calibration is split into micro-batches.
    """

    count: dict[Key, int] = field(default_factory=dict)
    means: dict[Key, torch.Tensor] = field(default_factory=dict)
    m2: dict[Key, torch.Tensor] = field(default_factory=dict)
    sumsq: dict[Key, torch.Tensor] = field(default_factory=dict)

    def forward(self, site: Site, acts: torch.Tensor) -> None:
        n = acts.shape[0]
        if n == 0:
            return
        key = site.key
        mean = acts.mean(dim=0)
        m2 = (acts - mean).pow(2).sum(dim=0)
        sumsq = acts.pow(2).sum(dim=0)
        if key not in self.count:
            self.count[key], self.means[key], self.m2[key], self.sumsq[key] = n, mean, m2, sumsq
            return
        total = self.count[key] + n
        delta = mean - self.means[key]
        self.m2[key] += m2 + delta.pow(2) * (self.count[key] * n / total)
        self.means[key] += delta * (n / total)
        self.sumsq[key] += sumsq
        self.count[key] = total

    def mean(self, site: Site) -> torch.Tensor:
        return self.means[site.key]

    def variance(self, site: Site) -> torch.Tensor:
        """Sample variance (n - 1 in the denominator) over the counted tokens."""
        return self.m2[site.key] / max(self.count[site.key] - 1, 1)

    def squared_norm(self, site: Site) -> torch.Tensor:
        """Sum of squares over the counted tokens (the squared L2 norm of the feature's column of X)."""
        return self.sumsq[site.key]


@contextmanager
def frozen(model: nn.Module, trainable: Sequence[nn.Parameter] = ()) -> Iterator[None]:
    """Freeze every parameter except ``trainable`` (and switch to eval); restore the flags afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    keep = {id(p) for p in trainable}
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in keep)
        model.eval()
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


class Capture:
    """Forward pre-hooks on every site while active. ``mask`` must be set to the batch's token mask."""

    def __init__(self, model: nn.Module, reducer: Reducer, gradients: bool) -> None:
        self.model = model
        self.reducer = reducer
        self.gradients = gradients
        self.mask: torch.Tensor | None = None
        self.leaf: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Capture:
        for site in sites(self.model):
            self._handles.append(site.linear.register_forward_pre_hook(self._hook(site)))
        if self.gradients:
            # With every weight frozen, the graph must start somewhere: the embedding output becomes a leaf
            # that requires grad, so backprop reaches every unit activation without any weight gradient.
            embeddings = self.model.get_input_embeddings()
            self._handles.append(embeddings.register_forward_hook(self._make_leaf))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.leaf = None

    def _make_leaf(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        self.leaf = output.detach().requires_grad_(True)
        return self.leaf

    def _hook(self, site: Site) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            mask = self.mask.to(x.device)
            if not self.gradients:
                self.reducer.forward(site, at_least_fp32(x.detach()[mask]))
            else:  # register_hook fails loudly if no gradient can reach this activation
                acts = x.detach()

                def on_grad(grad: torch.Tensor) -> None:
                    self.reducer.backward(site, at_least_fp32(acts[mask]), at_least_fp32(grad[mask]))

                x.register_hook(on_grad)

        return hook


def _batches(model: nn.Module, calibration: CalibrationSet | None, skip_first: bool) -> list[dict[str, torch.Tensor]]:
    """The calibration's micro-batches on the model's device; refuse a set with no counted token."""
    if calibration is None:
        raise ConfigError("scorer", "this scorer needs a calibration set; the pipeline built none")
    device = model.get_input_embeddings().weight.device
    batches = list(calibration.batches(device))
    if sum(int(token_mask(b, skip_first).sum()) for b in batches) == 0:
        raise ConfigError(
            "calibration.num_tokens", "no calibration token counts (each row is a single token?); raise it"
        )
    return batches


def run_calibration(
    model: nn.Module,
    calibration: CalibrationSet | None,
    reducer: Reducer | None = None,
    objective: Objective | None = None,
    weights: Sequence[nn.Parameter] = (),
    on_weight_grad: Callable[[int, torch.Tensor], None] | None = None,
    skip_first: bool = True,
) -> None:
    """Pass the calibration set through ``model`` once, micro-batch by micro-batch.

    Without an objective: a no-grad forward; ``reducer.forward`` sees every site. With one: Φ of each
    batch (scaled so the batches sum to the calibration mean) is differentiated with every parameter
    frozen except ``weights``; ``reducer.backward`` sees dΦ/da at every site, and ``on_weight_grad(i, g)``
    gets dΦ/dW for ``weights[i]`` as soon as the backward pass has computed it, which is then released:
    only the weight gradients in flight are held, never all of them (on an 8B model that is the
    difference between a few layers' worth and 12 GiB). ``.grad`` of ``weights`` is as before
    afterwards. ``skip_first``: see ``token_mask``.
    """
    batches = _batches(model, calibration, skip_first)
    gradients = objective is not None
    capture = Capture(model, reducer, gradients) if reducer is not None else None
    total = sum(objective.count(b) for b in batches) if objective is not None else 0
    decoder = adapter_for(model).decoder()
    streamed = streaming_grads(weights, on_weight_grad) if gradients else nullcontext()
    with frozen(model, weights), capture or nullcontext(), torch.set_grad_enabled(gradients), streamed:
        for batch in progress(batches, "scoring" if gradients else "calibration forward", log):
            if capture is not None:
                capture.mask = token_mask(batch, skip_first)
            out = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            if objective is None:
                continue
            phi = objective.total(model, out.last_hidden_state, batch) / max(total, 1)
            targets = [*weights, *([capture.leaf] if capture is not None else [])]
            torch.autograd.backward(phi, inputs=targets)
            if capture is not None:
                capture.leaf.grad = None


@contextmanager
def streaming_grads(
    weights: Sequence[nn.Parameter], on_weight_grad: Callable[[int, torch.Tensor], None] | None
) -> Iterator[None]:
    """Hand each weight's gradient to ``on_weight_grad`` the moment backward accumulates it, then drop it
    (a post-accumulate-grad hook); ``.grad`` is cleared for the pass and given back afterwards."""
    saved = [w.grad for w in weights]

    def consume(index: int) -> Callable[[torch.Tensor], None]:
        def hook(weight: torch.Tensor) -> None:
            if on_weight_grad is not None:
                on_weight_grad(index, weight.grad)
            weight.grad = None

        return hook

    handles = []
    try:
        for index, weight in enumerate(weights):
            weight.grad = None
            handles.append(weight.register_post_accumulate_grad_hook(consume(index)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for weight, grad in zip(weights, saved, strict=True):
            weight.grad = grad


class _LayerCalls:
    """Forward pre-hooks (with kwargs) that record each decoder layer's call per micro-batch: the
    arguments other than the hidden states (shared tensors such as masks and position embeddings),
    and the hidden states of layer 0 only (later layers' inputs are recomputed, pruned)."""

    def __init__(self, layers: nn.ModuleList) -> None:
        self.calls: list[list[tuple[tuple, dict]]] = [[] for _ in layers]
        self.first_inputs: list[torch.Tensor] = []
        self._handles = [
            layer.register_forward_pre_hook(self._record(i), with_kwargs=True) for i, layer in enumerate(layers)
        ]

    def _record(self, index: int) -> Callable[[nn.Module, tuple, dict], None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            rest = dict(kwargs)
            hidden = args[0] if args else rest.pop("hidden_states")
            self.calls[index].append((args[1:], rest))
            if index == 0:
                self.first_inputs.append(hidden)

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _call_layer(layer: nn.Module, hidden: torch.Tensor, call: tuple[tuple, dict]) -> torch.Tensor:
    """Run one decoder layer on ``hidden`` with the other arguments it was called with in the full model."""
    args, kwargs = call
    out = layer(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def run_sequential(
    model: nn.Module,
    calibration: CalibrationSet | None,
    reducer: Reducer,
    after_layer: Callable[[int], None],
    skip_first: bool = True,
) -> None:
    """Calibrate layer by layer: layer i's statistics are taken on the outputs of layers < i as they are
    after ``after_layer`` has acted on each of them (e.g. masked its pruned units), as FLAP's
    ``prune_wanda_sp`` does. One full forward records every layer's call arguments (attention masks and
    position embeddings) and layer 0's input; each layer then runs twice per micro-batch: once with the
    capture hooks, once (after ``after_layer(i)``) to produce the input of layer i + 1.
    """
    batches = _batches(model, calibration, skip_first)
    adapter = adapter_for(model)
    layers = adapter.layers()
    recorder = _LayerCalls(layers)
    with frozen(model):
        try:
            for batch in batches:
                adapter.decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        finally:
            recorder.remove()
        hidden = recorder.first_inputs
        masks = [token_mask(batch, skip_first) for batch in batches]
        for index, layer in enumerate(layers):
            with Capture(model, reducer, gradients=False) as capture:
                for h, mask, call in zip(hidden, masks, recorder.calls[index], strict=True):
                    capture.mask = mask
                    _call_layer(layer, h, call)
            after_layer(index)
            hidden = [_call_layer(layer, h, call) for h, call in zip(hidden, recorder.calls[index], strict=True)]


def role_weights(model: nn.Module, roles: Sequence[str]) -> tuple[list[dict[str, Projection]], list[nn.Parameter]]:
    """Per layer the projections of ``roles``, and the distinct weights holding them (a fused Linear once)."""
    adapter = adapter_for(model)
    per_layer = [{r: p for r, p in adapter.roles(layer).items() if r in roles} for layer in adapter.layers()]
    weights = list({id(p.linear.weight): p.linear.weight for held in per_layer for p in held.values()}.values())
    return per_layer, weights


def accumulator_bytes(model: nn.Module, roles: Sequence[str]) -> dict[torch.device, int]:
    """Per device, the bytes of the full-size (at least fp32) gradient accumulators ``weight_saliency``
    allocates for ``roles``: known before any calibration token is seen."""
    per_device: dict[torch.device, int] = {}
    for weight in role_weights(model, roles)[1]:
        per_device[weight.device] = per_device.get(weight.device, 0) + weight.numel() * max(weight.element_size(), 4)
    return per_device


def weight_saliency(
    model: nn.Module, calibration: CalibrationSet | None, objective: Objective, roles: Sequence[str]
) -> Iterator[dict[str, torch.Tensor]]:
    """Per layer and role, |W ⊙ ḡ| (at least fp32), ḡ the objective's gradient with respect to the role's
    weight summed over the calibration batches (the objective is already a calibration mean).

    Gradients are taken with respect to the Linears that hold the roles (once for a fused Linear) and
    split into roles afterwards: a block of rows of a fused weight is not a leaf autograd can target.
    Layers are yielded one at a time (the pass runs at the first), each layer's ḡ released once its
    saliency is built: the full-size saliency of every layer never exists at once.
    """
    per_layer, weights = role_weights(model, roles)
    totals = [at_least_fp32(torch.zeros_like(w)) for w in weights]

    def accumulate(index: int, grad: torch.Tensor) -> None:
        totals[index] += grad

    run_calibration(model, calibration, objective=objective, weights=weights, on_weight_grad=accumulate)
    mean_grad = {id(w): total for w, total in zip(weights, totals, strict=True)}
    totals.clear()
    for held in per_layer:
        layer = {
            r: (at_least_fp32(p.weight.detach()) * p.of(mean_grad[id(p.linear.weight)])).abs() for r, p in held.items()
        }
        for p in held.values():
            mean_grad.pop(id(p.linear.weight), None)
        yield layer


def unit_saliency(structure: LayerStructure, per_role: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's per-weight saliency summed per unit: a query head over its q rows and o columns, an MLP
    channel over its gate and up rows and its down column (k and v, shared under GQA, are left to the caller)."""
    q, o, gate, up, down = (per_role[role] for role in ("q", "o", "gate", "up", "down"))
    n, head_dim = structure.num_q_heads, structure.head_dim
    heads = q.view(n, -1).sum(dim=1) + o.view(-1, n, head_dim).sum(dim=(0, 2))
    return heads, gate.sum(dim=1) + up.sum(dim=1) + down.sum(dim=0)


def kv_share(structure: LayerStructure, per_role: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per query head, its share of its KV head's k and v saliency: 1/group_size of it (all of it under MHA)."""
    kv = (per_role["k"] + per_role["v"]).view(structure.num_kv_heads, -1).sum(dim=1)
    return kv.repeat_interleave(structure.group_size) / structure.group_size
