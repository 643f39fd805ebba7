"""Inference efficiency: the record's keys, the KV-cache bytes of a pruned model, and the settings checks.

Speed itself is never asserted: it depends on the machine. Only figures that follow from the shapes
(weight bytes, KV-cache bytes, their ratios) are compared exactly.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from typing import Any

import pytest
import torch

from rkuprune import apply_plan
from rkuprune.evaluation import speed
from rkuprune.models.adapters import adapter_for
from rkuprune.report.collect import collect
from rkuprune.report.tables import build_table
from tests.conftest import REPO, TINY_ARCHS, random_plan, tiny
from tests.test_app import run_cli

TINY_SPEED = ["benchmark.speed.prompt_length=8", "benchmark.speed.new_tokens=2", "benchmark.speed.repeats=1"]


def cache_bytes(cache: object) -> int:
    """Bytes of every key and value tensor the model put in its cache."""
    tensors = [t for t in torch.utils._pytree.tree_leaves(cache) if isinstance(t, torch.Tensor)]  # noqa: SLF001
    if not tensors:  # a Cache object: read its layers
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("name", TINY_ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_bytes_of_a_pruned_model_follow_its_plan(name: str, dtype: torch.dtype) -> None:
    loaded = tiny(name)
    loaded.model.to(dtype)
    adapter = adapter_for(loaded.model)
    plan = random_plan(adapter.structures(), "kv_group", seed=3)
    plan.layers = [lp for lp in plan.layers if lp.index != 1]
    plan.removed_layers = [1]
    apply_plan(loaded.model, plan, "slice")
    element = torch.tensor([], dtype=dtype).element_size()
    # read from the plan: only the kept KV heads of the kept layers hold a cache (K and V)
    expected = sum(2 * c.kv_heads * adapter.head_dim * element for c in plan.layer_counts())
    assert speed.kv_cache_bytes_per_token(loaded.model) == expected
    # and the cache the pruned model really fills holds exactly that many bytes per token
    batch, length = 2, 5
    ids = torch.randint(0, loaded.model.config.vocab_size, (batch, length))
    with torch.no_grad():
        cache, _ = speed._decode(loaded.model, ids, steps=1)
    assert cache_bytes(cache) == expected * batch * (length + 1)


def test_dense_kv_bytes_are_the_textbook_formula() -> None:
    model = tiny("tiny-qwen3").model  # head_dim 24 set explicitly, not hidden / heads
    config = model.config
    expected = config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * 4
    assert speed.kv_cache_bytes_per_token(model) == expected
    assert speed.weight_bytes(model) == 4 * sum(p.numel() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )


def test_a_run_records_the_efficiency_block(tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["model=tiny-qwen3", "scorer=rku", "pruning.sparsity=0.4", "pruning.granularity=kv_group"]
    args += ["calibration.num_tokens=256", "calibration.seqlen=64", "benchmark=none", "logger=none"]
    code, _, err = run_cli([*args, *TINY_SPEED, f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    assert code == 0, err
    efficiency = json.loads((run_dir / "results.json").read_text())["efficiency"]
    assert efficiency["scoring_tokens_per_s"] > 0
    block = efficiency["speed"]
    figures = {*speed.SPEED_KEYS, speed.decode_key(1), speed.decode_key(4)}
    assert figures <= set(block["dense"]) and figures <= set(block["pruned"])
    assert {"settings", "ratio", "ideal_speedup", "decode_speedup_vs_ideal"} <= set(block)
    assert block["settings"]["device"] == "cpu" and block["settings"]["dtype"] == "float32"
    assert block["dense"]["peak_memory_kind"] == "cpu_rss_sampled"
    dense, pruned, ratio = block["dense"], block["pruned"], block["ratio"]
    for key in figures:
        assert ratio[key] == pytest.approx(pruned[key] / dense[key])
    assert block["ideal_speedup"] == pytest.approx(dense["weight_bytes"] / pruned["weight_bytes"])
    assert block["ideal_speedup"] > 1
    plan = json.loads((run_dir / "pruning_plan.json").read_text())
    kept_kv = sum(len(layer["kv_heads"]) for layer in plan["layers"])
    total_kv = 4 * 2  # tiny-qwen3: 4 layers, 2 KV heads
    assert ratio["kv_cache_bytes_per_token"] == pytest.approx(kept_kv / total_kv)
    # the sweep table shows the speedups next to the sparsity
    table = build_table(collect(tmp_path))
    row = next(cells for _, label, cells in table.rows if label == "rku")
    assert row[(0.4, "speedup/decode@b1")] == f"{ratio[speed.decode_key(1)]:.2f}"
    assert row[(0.4, "speedup/ideal")] == f"{block['ideal_speedup']:.2f}"


def test_speed_can_be_switched_off(tmp_path, monkeypatch, capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["model=tiny-llama", "scorer=magnitude", "benchmark=none", "logger=none", "benchmark.speed.enabled=false"]
    code, _, err = run_cli([*args, f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    assert code == 0, err
    assert "speed" not in json.loads((run_dir / "results.json").read_text())["efficiency"]


@pytest.mark.parametrize(
    ("override", "field"),
    [("new_tokens=0", "benchmark.speed.new_tokens"), ("decode_batches=[]", "benchmark.speed.decode_batches")],
)
def test_bad_speed_settings_fail_in_one_line(override, field, tmp_path, monkeypatch, capsys) -> None:
    args = ["model=tiny-llama", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", f"benchmark.speed.{override}"]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and err.startswith(f"error: {field}:")


def test_ratios_and_flattening() -> None:
    dense = {"weight_bytes": 100, "decode_tokens_per_s@b1": 10.0, "peak_memory_kind": "x"}
    pruned = {"weight_bytes": 50, "decode_tokens_per_s@b1": 18.0, "peak_memory_kind": "x"}
    out = speed.compare(dense, pruned)
    assert out["ratio"] == {"weight_bytes": 0.5, "decode_tokens_per_s@b1": 1.8}
    assert out["ideal_speedup"] == 2.0 and out["decode_speedup_vs_ideal"] == {"decode_tokens_per_s@b1": 0.9}
    flat = speed.flat_numbers({"speed": {"dense": dense, "ok": True}, "load_s": 1.5}, "efficiency/")
    assert flat == {
        "efficiency/speed/dense/weight_bytes": 100,
        "efficiency/speed/dense/decode_tokens_per_s@b1": 10.0,
        "efficiency/load_s": 1.5,
    }


def script(name: str) -> Any:
    """A module of scripts/, loaded from its file (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_cuda_says_so_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    gpu_check = script("gpu_check")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == gpu_check.NO_CUDA and "no CUDA device" in err
    assert not (tmp_path / "out").exists()


def test_bench_scale_on_cuda_without_cuda_says_so_in_one_line(tmp_path, monkeypatch) -> None:
    bench_scale = script("bench_scale")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["bench_scale.py", "--device", "cuda", "--out", str(tmp_path / "out")])
    with pytest.raises(
        SystemExit, match=r"^bench_scale: --device cuda but no CUDA device is visible; use --device cpu$"
    ):
        bench_scale.main()
    assert not (tmp_path / "out").exists()


def test_gpu_check_runs_its_stages_on_the_cpu_and_keeps_going_past_a_failed_one(tmp_path, monkeypatch) -> None:
    """The first GPU run must not be the script's first run: the same code on a tiny shape, with the
    gisp pass failing as an out-of-memory would, records the error and still prunes and measures."""
    gpu_check = script("gpu_check")
    from rkuprune.scoring.gisp import GispScorer

    def out_of_memory(*args: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(GispScorer, "score", out_of_memory)
    out = tmp_path / "out"
    argv = ["--device", "cpu", "--shape", "tiny-qwen3", "--tokens", "1024", "--out", str(out)]
    assert gpu_check.main([*argv, "--prompt-length", "16", "--new-tokens", "2"]) == 1  # a stage failed
    results = json.loads((out / "gpu_check.json").read_text())
    stages = results["stages"]
    assert list(stages) == [
        "build model",
        "dense speed",
        "gisp scoring pass (dense)",
        "rku scoring",
        "slice",
        "pruned speed",
    ]
    assert (
        stages["gisp scoring pass (dense)"]["error"]
        == "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
    )
    assert all("error" not in s and s["peak_gib"] > 0 for n, s in stages.items() if not n.startswith("gisp"))
    assert 0.3 < results["pruned"]["sparsity"] < 0.5  # pruned near the target (the budget is tested in test_allocation)
    assert results["speed"]["ideal_speedup"] > 1 and set(results["speed"]["ratio"]) >= {"decode_tokens_per_s@b16"}
    assert "failed: OutOfMemoryError" in (out / "gpu_check.md").read_text()


def test_progress_logs_an_eta_when_output_is_not_a_terminal(monkeypatch, caplog) -> None:
    from rkuprune.tracking import progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    log = logging.getLogger("test_progress")
    with caplog.at_level(logging.INFO, logger="test_progress"):
        assert list(progress.progress([1, 2, 3], "scoring", log)) == [1, 2, 3]
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(",")[0] for line in lines] == ["scoring: 1/3 done", "scoring: 2/3 done"]
    assert all("ETA" in line for line in lines)
