"""LoRA recovery: merging leaves the adapter model's logits, a run evaluates before and after recovery,
the loss curve reaches W&B, and bad settings fail in one line before the model loads."""

from __future__ import annotations

import json

import pytest
import torch

from rkuprune import apply_plan, load_pruned
from rkuprune.data.sources import DataConfig
from rkuprune.errors import ConfigError
from rkuprune.models.adapters import adapter_for
from rkuprune.recovery import RECOVERY
from rkuprune.recovery.lora import LoRAConfig
from rkuprune.report.collect import collect
from tests.conftest import random_plan, tiny
from tests.test_app import run_cli
from tests.test_surgery import padded_batch
from tests.wandb_records import offline_history, offline_summary

# Merging adds α/r·B·A to W: the merged and adapter forwards differ only by float64 round-off of one
# extra matmul per projection (~1e-15 relative on these |logits| < 10); a wrong merge is off by ~1e-3.
MERGE_ATOL = 1e-10

FAST = LoRAConfig(steps=4, batch_size=2, seqlen=32, warmup_steps=1, learning_rate=1e-2)


def test_merged_weights_give_the_adapter_models_logits() -> None:
    loaded = tiny("tiny-qwen2")
    loaded.model.double()
    structures = adapter_for(loaded.model).structures()
    apply_plan(loaded.model, random_plan(structures, "q_head", seed=6), "slice")
    shapes = {name: p.shape for name, p in loaded.model.named_parameters()}
    recovery = RECOVERY.build(FAST)
    peft_model, losses, info = recovery.train(loaded.model, loaded.tokenizer, DataConfig())
    assert len(losses) == FAST.steps and info["trainable_params"] > 0
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)  # trained: the adapters are not the identity
    batch = padded_batch(loaded.tokenizer)
    with torch.no_grad():
        adapted = peft_model(**batch).logits
        merged = peft_model.merge_and_unload()
        torch.testing.assert_close(merged(**batch).logits, adapted, atol=MERGE_ATOL, rtol=0)
    assert {name: p.shape for name, p in merged.named_parameters()} == shapes  # plain weights, pruned shapes


def test_recovery_keeps_the_models_gradient_flags_and_moves_the_weights() -> None:
    loaded = tiny("tiny-llama")
    before = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}
    result = RECOVERY.build(FAST).recover(loaded.model, loaded.tokenizer, DataConfig())
    after = dict(result.model.named_parameters())
    assert set(after) == set(before)
    assert all(p.requires_grad for p in after.values())
    changed = [name for name, p in after.items() if not torch.equal(p, before[name])]
    assert changed and all(name.split(".")[-2].endswith("_proj") for name in changed)  # only adapted linears


@pytest.mark.slow
def test_a_recovery_run_writes_both_metric_sets_and_the_loss_curve(tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    code, _, err = run_cli(
        [
            "model=tiny-llama",
            "scorer=shortgpt",
            "pruning.granularity=layer",
            "pruning.sparsity=0.3",
            "recovery=lora",
            "recovery.steps=3",
            "recovery.batch_size=2",
            "recovery.seqlen=32",
            "recovery.learning_rate=1e-2",
            "logger=wandb",
            "logger.mode=offline",
            "save_model=true",
            "benchmark.tasks.ppl_pydoc.seqlen=64",
            "benchmark.tasks.synthetic=null",
            f"hydra.run.dir={run_dir}",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())
    key = "ppl/pydoc@64"
    assert results["status"] == "completed"
    assert results["metrics"][key] != results["metrics_before_recovery"][key]
    assert len(results["recovery"]["losses"]) == 3 and results["recovery"]["data"]["split"] == "train"
    assert {"eval_before_recovery_s", "recover_s"} <= set(results["efficiency"])
    model, _ = load_pruned(run_dir / "model")
    assert model.config.num_hidden_layers == 4 - len(results["pruning"]["removed_layers"])
    history = [row for row in offline_history(run_dir / "wandb") if "recovery/loss" in row]
    assert [row["recovery/loss"] for row in history] == pytest.approx(results["recovery"]["losses"])
    summary = offline_summary(run_dir / "wandb")
    assert summary[f"before_recovery/{key}"] == pytest.approx(results["metrics_before_recovery"][key])
    (run,) = collect(run_dir).runs  # the report shows both metric sets
    assert run.metrics[f"before_recovery/{key}"] == results["metrics_before_recovery"][key]
    assert run.metrics[key] == results["metrics"][key]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["recovery.rank=0"], "error: recovery.rank: 0 must be at least 1"),
        (["recovery.steps=0"], "error: recovery.steps: 0 must be at least 1"),
        (["recovery.source=wikitext2"], "error: recovery.source: 'wikitext2' is an evaluation split"),
        (["recovery.source=gsm8k"], "error: recovery.source: 'gsm8k' is an evaluation split"),
        (["recovery.target_modules=[q,qkv]"], "error: recovery.target_modules: 'qkv' is not one of"),
    ],
)
def test_bad_recovery_input_is_one_line_before_loading(args, message, tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    argv = ["model=tiny-llama", "logger=none", "recovery=lora", f"hydra.run.dir={run_dir}", *args]
    code, _, err = run_cli(argv, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert lines == [lines[0]] and lines[0].startswith(message), err
    assert not (run_dir / "results.json").exists()


def test_every_calibration_source_is_a_valid_recovery_source() -> None:
    """The data options are exactly the fixed-text calibration sources; their splits are train splits."""
    recovery = RECOVERY.build(LoRAConfig(source="synthetic"))
    recovery.check(DataConfig())
    assert recovery.data_source().split == "train"
    with pytest.raises(ConfigError, match="recovery.source: unknown source 'dolly'"):
        RECOVERY.build(LoRAConfig(source="dolly")).check(DataConfig())
