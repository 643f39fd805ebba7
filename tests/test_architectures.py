"""Architectures: the adapter is the only place that knows a layout, every family is in the test matrix,
and fused projections (Phi-3) are split into roles exactly where the model splits them."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import rkuprune
from rkuprune import apply_plan, load_pruned, save_pruned
from rkuprune.allocation import allocate
from rkuprune.allocation.allocators import PruningConfig
from rkuprune.models.adapters import adapter_for, supported_model_types
from rkuprune.models.plan import PruningPlan
from rkuprune.scoring import SCORERS
from rkuprune.scoring.gisp import GispConfig
from tests.conftest import CONF, TINY_ARCHS, in_float64, tiny
from tests.test_scorers import GRANULARITIES, synthetic

PACKAGE = Path(rkuprune.__file__).parent
PROJECTION = re.compile(r"_proj\b")  # q_proj, qkv_proj, gate_up_proj, ... and the "_proj" of f"{name}_proj"


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (prose may name projections)."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            found.add(id(first.value))
    return found


def test_no_module_outside_the_adapters_names_a_projection_attribute() -> None:
    offenders = []
    for file in sorted(PACKAGE.rglob("*.py")):
        if file.relative_to(PACKAGE).as_posix().startswith("models/adapters"):
            continue
        tree = ast.parse(file.read_text())
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                name = node.value
            else:
                continue
            if PROJECTION.search(name):
                offenders.append(f"{file.relative_to(PACKAGE)}:{node.lineno}: {name!r}")
    assert not offenders, "projection names outside models/adapters*: " + "; ".join(offenders)


def test_every_supported_family_has_a_tiny_config_in_the_matrix() -> None:
    matrix = {OmegaConf.load(CONF / "model" / f"{name}.yaml").arch.model_type for name in TINY_ARCHS}
    assert set(supported_model_types()) <= matrix


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_gisp_prunes_every_architecture_at_every_granularity(arch: str) -> None:
    loaded = tiny(arch)
    scores = SCORERS.build(GispConfig()).score(loaded.model, synthetic(loaded.tokenizer))
    structures = adapter_for(loaded.model).structures()
    scores.check(structures, "gisp")
    ids = torch.randint(3, 259, (2, 16))
    for granularity in GRANULARITIES:
        model = copy.deepcopy(loaded.model)
        plan = allocate(PruningConfig(sparsity=0.3, granularity=granularity), scores, structures)
        apply_plan(model, plan, "slice")
        assert plan.sparsity(structures) >= 0.3
        with torch.no_grad():
            assert torch.isfinite(model(input_ids=ids).logits).all()


def test_phi3_fused_gradients_are_split_where_the_model_splits_them() -> None:
    """GISP on Phi-3 equals |W ⊙ grad| of the fused weights, split by hand: q rows first, then k, v;
    gate rows first, then up (Phi3MLP's chunk). float64, so only summation order differs."""
    loaded = tiny("tiny-phi3")
    model = in_float64(loaded.model)
    calibration = synthetic(loaded.tokenizer)
    scores = SCORERS.build(GispConfig(loss_weighting="pooled")).score(model, calibration)

    ids, attention, counted = calibration.input_ids, calibration.attention_mask, calibration.loss_mask
    logits = model(input_ids=ids, attention_mask=attention).logits
    targets = (attention.bool() & counted)[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    layer = model.model.layers[2]
    qkv, o = layer.self_attn.qkv_proj.weight, layer.self_attn.o_proj.weight
    gate_up, down = layer.mlp.gate_up_proj.weight, layer.mlp.down_proj.weight
    grads = torch.autograd.grad(nll[targets].mean(), [qkv, o, gate_up, down])
    fused_qkv, o, fused_gate_up, down = (
        (w * g).abs().detach() for w, g in zip([qkv, o, gate_up, down], grads, strict=True)
    )
    s = adapter_for(model).structures()[2]
    q = fused_qkv[: s.num_q_heads * s.head_dim]
    gate, up = fused_gate_up[: s.intermediate_size], fused_gate_up[s.intermediate_size :]
    heads = q.view(s.num_q_heads, -1).sum(dim=1) + o.view(-1, s.num_q_heads, s.head_dim).sum(dim=(0, 2))
    channels = gate.sum(dim=1) + up.sum(dim=1) + down.sum(dim=0)
    # scores are returned in float32: compare to float32 resolution
    torch.testing.assert_close(
        scores.layers[2].heads.double(), heads / (4 * s.head_dim * s.hidden_size), rtol=2**-22, atol=0
    )
    torch.testing.assert_close(
        scores.layers[2].channels.double(), channels / (3 * s.intermediate_size), rtol=2**-22, atol=0
    )


def test_a_hub_config_naming_custom_code_still_saves_a_loadable_folder(tmp_path) -> None:
    """Phi-3's hub config carries ``auto_map``; the model runs transformers' own code, so the folder must not
    ask for custom code (``load_pruned`` refuses folders that do)."""
    loaded = tiny("tiny-phi3")
    loaded.model.config.auto_map = {"AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"}
    plan = PruningPlan.dense(adapter_for(loaded.model).structures(), base_model="tiny-phi3")
    apply_plan(loaded.model, plan, "slice")
    save_pruned(loaded.model, loaded.tokenizer, plan, tmp_path / "pruned")
    reloaded, _ = load_pruned(tmp_path / "pruned")
    assert "auto_map" not in reloaded.config.to_dict()
    assert loaded.model.config.auto_map  # the model in hand keeps its config
