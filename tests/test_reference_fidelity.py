"""Each scorer against its reference, written here as plain tensor code from the reference algorithm
(FLAP's prune_flap and prune_wanda_sp, LLM-Pruner's TaylorImportance, the project's RKU and magnitude
definitions), on a float64 tiny model, independently of the project's capture and allocation code.

Scores are compared to the fp32 rounding the project's ``Scores`` carry (relative 2^-24, plus float64
noise); plans are compared exactly. The models are multi-head (one query head per KV head), the
attention the FLAP and LLM-Pruner references were written for, so a reference "head" is a ``kv_group``
unit of ours and the reference's removal order is a plain ascending sweep charged with real parameter costs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rkuprune.allocation import allocate
from rkuprune.allocation.allocators import PruningConfig
from rkuprune.data.calibration import CalibrationSet
from rkuprune.models.loading import load_model
from rkuprune.models.plan import PruningPlan
from rkuprune.models.structures import Structures
from rkuprune.scoring.base import Scores
from rkuprune.scoring.flap import FLAPConfig, FLAPScorer
from rkuprune.scoring.magnitude import MagnitudeConfig, MagnitudeScorer
from rkuprune.scoring.rku import RKUConfig, RKUScorer
from rkuprune.scoring.taylor import TaylorConfig, TaylorScorer
from rkuprune.scoring.wanda_sp import WandaSPConfig, WandaSPScorer
from tests.conftest import model_config
from tests.test_capture import padded_calibration

FP32_ROUNDING = 2.0**-24  # relative error of rounding a float64 score to the fp32 ``Scores`` hold
RTOL, ATOL = 2 * FP32_ROUNDING, 1e-12


def mha(name: str = "tiny-llama", kv_heads: int = 8) -> nn.Module:
    base = model_config(name).arch
    arch = {**base, "num_hidden_layers": 3, "num_key_value_heads": kv_heads}
    model = load_model(model_config(name, arch=arch)).model.double().eval()
    return model.requires_grad_(False)  # the scorers pick what they differentiate; references use autograd.grad


def parts(model: nn.Module, i: int) -> dict[str, nn.Linear]:
    layer = model.model.layers[i]
    a, m = layer.self_attn, layer.mlp
    return {
        "q": a.q_proj,
        "k": a.k_proj,
        "v": a.v_proj,
        "o": a.o_proj,
        "gate": m.gate_proj,
        "up": m.up_proj,
        "down": m.down_proj,
    }


def counted_tokens(calibration: CalibrationSet, skip_first: bool) -> torch.Tensor:
    counted = calibration.attention_mask.bool() & calibration.loss_mask
    if skip_first:
        counted &= calibration.attention_mask.cumsum(dim=1) != 1
    return counted


def projection_inputs(model: nn.Module, calibration: CalibrationSet, counted: torch.Tensor) -> dict:
    """Inputs of every o_proj and down_proj at the counted tokens, by plain hooks and one forward."""
    store, handles = {}, []
    for i in range(len(model.model.layers)):
        for key in ("o", "down"):
            hook = lambda m, a, o, k=(i, key): store.__setitem__(k, a[0].detach())  # noqa: E731
            handles.append(parts(model, i)[key].register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=calibration.input_ids, attention_mask=calibration.attention_mask)
    for handle in handles:
        handle.remove()
    return {key: x[counted] for key, x in store.items()}


def assert_scores(got: Scores, heads: list[torch.Tensor], channels: list[torch.Tensor]) -> None:
    for layer, h, c in zip(got.layers, heads, channels, strict=True):
        torch.testing.assert_close(layer.heads.double(), h, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(layer.channels.double(), c, rtol=RTOL, atol=ATOL)


def removed(plan: PruningPlan, structures: Structures) -> set[tuple[int, str, int]]:
    out = set()
    for lp in plan.layers:
        s = structures[lp.index]
        out |= {(lp.index, "head", h) for h in set(range(s.num_q_heads)) - set(lp.q_heads)}
        out |= {(lp.index, "channel", c) for c in set(range(s.intermediate_size)) - set(lp.mlp_channels)}
    return out


def ascending_sweep(heads: list[torch.Tensor], channels: list[torch.Tensor], structures: Structures, target: float):
    """The references' global selection (FLAP AL-AM, RKU): remove heads (with their k, v) and channels from the
    lowest score up, each charged its parameters, until the target share of parameters is removed."""
    s = structures[0]
    head_cost, channel_cost = s.kv_head_cost + s.q_head_cost, s.channel_cost
    ranked = sorted(
        [(v, i, "head", u, head_cost) for i, h in enumerate(heads) for u, v in enumerate(h.tolist())]
        + [(v, i, "channel", u, channel_cost) for i, c in enumerate(channels) for u, v in enumerate(c.tolist())]
    )
    budget, freed, out = target * structures.prunable_params, 0, set()
    for _, layer, kind, unit, cost in ranked:
        if freed >= budget:
            break
        out.add((layer, kind, unit))
        freed += cost
    return out


def structures_of(model: nn.Module) -> Structures:
    from rkuprune.models.adapters import adapter_for

    return adapter_for(model).structures()


# --- FLAP: prune_flap with metrics WIFV, structure AL-AM ------------------------------------------------


@pytest.mark.parametrize("square_attention", [True, False])
def test_flap_matches_prune_flap(square_attention: bool) -> None:
    model = mha()
    calibration = padded_calibration(batch_size=2)
    got = FLAPScorer(FLAPConfig(square_attention=square_attention)).score(model, calibration)
    inputs = projection_inputs(model, calibration, counted_tokens(calibration, skip_first=False))
    heads, channels = [], []
    for i in range(3):
        p = parts(model, i)
        standardise = lambda x: (x - x.mean()) / x.std()  # noqa: E731  (torch.std: n - 1, as the reference)
        attn = inputs[(i, "o")].var(dim=0) * p["o"].weight.pow(2).sum(dim=0)
        attn = attn**2 if square_attention else attn
        heads.append(standardise(attn).view(8, -1).mean(dim=1))
        channels.append(standardise(inputs[(i, "down")].var(dim=0) * p["down"].weight.pow(2).sum(dim=0)))
    assert_scores(got, heads, channels)
    structures = structures_of(model)
    plan = allocate(PruningConfig(sparsity=0.3, granularity="kv_group"), got, structures)
    assert removed(plan, structures) == ascending_sweep(heads, channels, structures, 0.3)


# --- Wanda-sp: prune_wanda_sp, layer by layer on the pruned earlier layers --------------------------------


def test_wanda_sp_matches_prune_wanda_sp_sequentially() -> None:
    model = mha()
    reference = copy.deepcopy(model)
    calibration = padded_calibration(batch_size=2)
    ratio, rows = 0.25, len(calibration)
    cfg = PruningConfig(sparsity=ratio, granularity="kv_group", allocation="uniform")
    scorer = WandaSPScorer(WandaSPConfig())
    scorer.bind(cfg)
    got = scorer.score(model, calibration)

    counted = counted_tokens(calibration, skip_first=False)
    heads, channels, gone = [], [], set()
    for i in range(3):
        inputs = projection_inputs(reference, calibration, counted)  # earlier layers already pruned
        p = parts(reference, i)
        scaler = {key: inputs[(i, key)].pow(2).sum(dim=0) / rows for key in ("o", "down")}  # WrappedGPT.scaler_row
        head = (p["o"].weight.abs() * scaler["o"].sqrt()).mean(dim=0).view(8, -1).sum(dim=1)
        channel = (p["down"].weight.abs() * scaler["down"].sqrt()).mean(dim=0)
        heads.append(head * rows**0.5)  # the project leaves out the reference's 1/rows, one global constant
        channels.append(channel * rows**0.5)
        cut_heads = head.argsort()[: int(ratio * 8)].tolist()
        cut_channels = channel.argsort()[: int(ratio * 96)].tolist()
        gone |= {(i, "head", h) for h in cut_heads} | {(i, "channel", c) for c in cut_channels}
        with torch.no_grad():  # compress(): the head's q, k, v rows and o columns; the channel's rows and column
            for h in cut_heads:
                for key in ("q", "k", "v"):
                    p[key].weight[h * 16 : (h + 1) * 16] = 0
                p["o"].weight[:, h * 16 : (h + 1) * 16] = 0
            p["gate"].weight[cut_channels] = 0
            p["up"].weight[cut_channels] = 0
            p["down"].weight[:, cut_channels] = 0
    assert_scores(got, heads, channels)
    structures = structures_of(model)
    assert removed(allocate(cfg, got, structures), structures) == gone
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(mine, theirs)  # the scorer left the model masked exactly as the reference prunes it


def test_wanda_sp_dense_flow_scores_the_dense_model() -> None:
    model = mha()
    calibration = padded_calibration(batch_size=3)
    dense = copy.deepcopy(model)
    got = WandaSPScorer(WandaSPConfig(flow="dense")).score(model, calibration)
    inputs = projection_inputs(dense, calibration, counted_tokens(calibration, skip_first=False))
    heads, channels = [], []
    for i in range(3):
        p = parts(dense, i)
        norm = {key: inputs[(i, key)].pow(2).sum(dim=0).sqrt() for key in ("o", "down")}
        heads.append((p["o"].weight.abs() * norm["o"]).mean(dim=0).view(8, -1).sum(dim=1))
        channels.append((p["down"].weight.abs() * norm["down"]).mean(dim=0))
    assert_scores(got, heads, channels)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), dense.parameters(), strict=True))


# --- Taylor: LLM-Pruner TaylorImportance(param_first, sum), one gradient of one batch ----------------------


def test_taylor_matches_llm_pruner_on_kv_groups_layer_by_layer() -> None:
    model = mha(kv_heads=4)  # GQA, two query heads per KV head: LLM-Pruner's Llama-3 grouping
    calibration = padded_calibration(batch_size=2)  # three micro-batches: ḡ must be accumulated signed
    got = TaylorScorer(TaylorConfig()).score(model, calibration)
    per_layer = TaylorScorer(TaylorConfig(scope="layer")).score(model, calibration)

    reference = copy.deepcopy(model).requires_grad_(True)
    ids, attention = calibration.input_ids, calibration.attention_mask
    after_real = torch.zeros_like(calibration.loss_mask)
    after_real[:, 1:] = attention[:, :-1].bool()
    labels = ids.masked_fill(~(calibration.loss_mask & attention.bool() & after_real), -100)
    reference(input_ids=ids, attention_mask=attention, labels=labels).loss.backward()  # one batch, as hf_prune.py
    heads, channels, group_scores = [], [], []
    for i in range(3):
        sal = {key: (lin.weight * lin.weight.grad).abs() for key, lin in parts(reference, i).items()}
        q = sal["q"].view(8, -1).sum(dim=1) + sal["o"].view(64, 8, 16).sum(dim=(0, 2))
        kv = (sal["k"] + sal["v"]).view(4, -1).sum(dim=1)
        heads.append(q + kv.repeat_interleave(2) / 2)
        channels.append(sal["gate"].sum(dim=1) + sal["up"].sum(dim=1) + sal["down"].sum(dim=0))
        group_scores.append(q.view(4, 2).sum(dim=1) + kv)  # the whole KV group: k, v, and its q rows and o columns
    assert_scores(got, heads, channels)
    for mine, layer in zip(per_layer.layers, got.layers, strict=True):
        total = layer.heads.sum() + layer.channels.sum()
        torch.testing.assert_close(mine.heads, layer.heads / total)
        torch.testing.assert_close(mine.channels, layer.channels / total)
    # Block-wise pruning, the same ratio in every layer: int(ratio * groups) KV groups, int(ratio * 96) channels.
    structures = structures_of(model)
    cfg = PruningConfig(sparsity=0.25, granularity="kv_group", allocation="uniform")
    plan = allocate(cfg, got, structures)
    for lp, groups, c in zip(plan.layers, group_scores, channels, strict=True):
        assert set(range(4)) - set(lp.kv_heads) == set(groups.argsort()[:1].tolist())
        assert set(range(96)) - set(lp.mlp_channels) == set(c.argsort()[:24].tolist())


# --- RKU: the project's definition (docs/design.md section 3) --------------------------------------------------


def test_rku_matches_its_definition_and_global_selection() -> None:
    model = mha()
    calibration = padded_calibration(batch_size=2)
    got = RKUScorer(RKUConfig(normalisation="block_relative")).score(model, calibration)
    model.requires_grad_(True)  # so that the reference's activations are part of a graph
    store, handles = {}, []
    for i in range(3):
        for key in ("o", "down"):
            hook = lambda m, a, o, k=(i, key): store.__setitem__(k, a[0])  # noqa: E731
            handles.append(parts(model, i)[key].register_forward_hook(hook))
    counted = counted_tokens(calibration, skip_first=True)
    hidden = model.model(input_ids=calibration.input_ids, attention_mask=calibration.attention_mask).last_hidden_state
    for handle in handles:
        handle.remove()
    real = calibration.attention_mask.bool() & calibration.loss_mask
    phi = 0.5 * hidden.pow(2).sum(dim=-1)[real].mean()  # energy over the real tokens
    keys = sorted(store)
    grads = dict(zip(keys, torch.autograd.grad(phi, [store[k] for k in keys]), strict=True))
    heads, channels = [], []
    for i in range(3):
        kinetic = {key: (store[(i, key)] * grads[(i, key)]).detach()[counted] for key in ("o", "down")}
        head = kinetic["o"].view(-1, 8, 16).sum(dim=-1).abs().mean(dim=0)
        channel = kinetic["down"].abs().mean(dim=0)
        heads.append(head / head.mean())  # block-relative
        channels.append(channel / channel.mean())
    assert_scores(got, heads, channels)
    structures = structures_of(model)
    plan = allocate(PruningConfig(sparsity=0.3, granularity="kv_group"), got, structures)
    assert removed(plan, structures) == ascending_sweep(heads, channels, structures, 0.3)


# --- magnitude: the L2 norm of every weight a unit owns --------------------------------------------------


def test_magnitude_matches_the_l2_norm_of_each_unit() -> None:
    model = mha()
    got = MagnitudeScorer(MagnitudeConfig()).score(model, None)
    heads, channels = [], []
    for i in range(3):
        p = parts(model, i)
        heads.append(
            (p["q"].weight.view(8, -1).pow(2).sum(1) + p["o"].weight.view(64, 8, 16).pow(2).sum((0, 2))).sqrt()
        )
        channels.append(
            (p["gate"].weight.pow(2).sum(1) + p["up"].weight.pow(2).sum(1) + p["down"].weight.pow(2).sum(0)).sqrt()
        )
    assert_scores(got, heads, channels)
    structures = structures_of(model)
    plan = allocate(PruningConfig(sparsity=0.3, granularity="kv_group"), got, structures)
    assert removed(plan, structures) == ascending_sweep(heads, channels, structures, 0.3)


# --- the shipped presets select the faithful settings --------------------------------------------------------


def test_shipped_scorer_presets_are_the_references_settings() -> None:
    from tests.test_app import compose_run

    wanda = compose_run(["scorer=wanda_sp"])
    assert (wanda.scorer.flow, wanda.scorer.skip_first_token, wanda.pruning.allocation) == (
        "sequential",
        False,
        "uniform",
    )
    flap = compose_run(["scorer=flap"])
    assert (flap.scorer.square_attention, flap.scorer.skip_first_token) == (True, False)
    assert compose_run(["scorer=rku"]).scorer.skip_first_token is True
    llm_pruner = compose_run(["scorer=taylor_llmpruner"])
    assert llm_pruner.scorer.name == "taylor"
    assert (llm_pruner.pruning.granularity, llm_pruner.pruning.allocation, llm_pruner.pruning.protection_rule) == (
        "kv_group",
        "uniform",
        "llm_pruner",
    )
