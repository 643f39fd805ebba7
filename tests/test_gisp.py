"""GISP/RESP scores equal |W * mean gradient| computed directly with autograd."""

from __future__ import annotations

import pytest
import torch

from rkuprune.data.calibration import CALIBRATION_SOURCES, CalibrationConfig, CalibrationSet
from rkuprune.data.sources import DataConfig
from rkuprune.errors import ConfigError
from rkuprune.models.adapters import adapter_for
from rkuprune.models.loading import LoadedModel, load_model
from rkuprune.scoring import SCORERS
from rkuprune.scoring.base import LayerScores, Scores
from rkuprune.scoring.gisp import GispConfig
from tests.conftest import model_config, tiny


def mha_llama() -> LoadedModel:
    """tiny-llama with one KV head per query head (MHA)."""
    arch = dict(model_config("tiny-llama").arch)
    return load_model(model_config("tiny-llama", arch={**arch, "num_key_value_heads": arch["num_attention_heads"]}))


@pytest.mark.parametrize("mha", [False, True], ids=["gqa", "mha"])
def test_gisp_equals_a_direct_computation(mha: bool) -> None:
    """The reference's head score: q rows and o columns, plus the head's k and v rows on an MHA model only."""
    loaded = mha_llama() if mha else tiny("tiny-qwen3")
    model = loaded.model
    source = CALIBRATION_SOURCES.build(CalibrationConfig(name="synthetic", num_tokens=300, seqlen=64, batch_size=3))
    calibration = source.build(loaded.tokenizer, DataConfig())
    # Count only part of each row, as RESP's decode-only mask does, to check the mask is honoured.
    calibration.loss_mask[:, :10] = False
    scores = SCORERS.build(GispConfig(loss_weighting="pooled")).score(model, calibration)

    ids, attention, counted = calibration.input_ids, calibration.attention_mask, calibration.loss_mask
    logits = model(input_ids=ids, attention_mask=attention).logits.float()
    targets = (attention.bool() & counted)[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    loss = nll[targets].mean()
    adapter = adapter_for(model)
    layer = adapter.layers()[1]
    attn, mlp = adapter.attention(layer), adapter.mlp(layer)
    weights = [attn.q.weight, attn.k.weight, attn.v.weight, attn.o.weight, mlp.gate.weight, mlp.up.weight]
    weights.append(mlp.down.weight)
    grads = torch.autograd.grad(loss, weights)
    q, k, v, o, gate, up, down = ((w * g).abs() for w, g in zip(weights, grads, strict=True))
    s = adapter.structures()[1]
    assert (s.group_size == 1) == mha
    head = 5
    rows = slice(head * s.head_dim, (head + 1) * s.head_dim)
    saliency = q[rows].sum() + o[:, rows].sum() + ((k[rows].sum() + v[rows].sum()) if mha else 0.0)
    expected_head = saliency / (4 * s.head_dim * s.hidden_size)
    channel = 17
    expected_channel = (gate[channel].sum() + up[channel].sum() + down[:, channel].sum()) / (3 * s.intermediate_size)
    torch.testing.assert_close(scores.layers[1].heads[head], expected_head.detach(), rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(scores.layers[1].channels[channel], expected_channel.detach(), rtol=1e-4, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())


def test_gisp_and_resp_run_end_to_end_and_record_the_schedule(tmp_path, monkeypatch, capsys) -> None:
    import json

    from tests.test_app import run_cli

    monkeypatch.setenv("RKUPRUNE_CACHE", str(tmp_path / "cache"))
    common = ["model=tiny-qwen2", "logger=none", "benchmark=none", "pruning.steps=4", "pruning.sparsity=0.4"]
    common += ["pruning.trajectory_end=0.5"]  # the tiny models cannot reach GISP's 0.7
    resp_dir, gisp_dir = tmp_path / "resp", tmp_path / "gisp"
    resp_args = ["scorer=resp", "calibration.num_prompts=4"]  # offline default: the project's word problems
    resp_args += ["calibration.max_new_tokens=8", f"hydra.run.dir={resp_dir}"]
    code, _, err = run_cli([*common, *resp_args], monkeypatch, capsys)
    assert code == 0, err
    code, _, err = run_cli([*common, "scorer=gisp", f"hydra.run.dir={gisp_dir}"], monkeypatch, capsys)
    assert code == 0, err
    resp = json.loads((resp_dir / "results.json").read_text())
    gisp = json.loads((gisp_dir / "results.json").read_text())
    for results in (resp, gisp):
        pruning = results["pruning"]
        history = pruning["schedule_history"]
        assert pruning["schedule"] == "iterative" and len(history) == 4
        assert [row["target"] for row in history] == pytest.approx([0.125, 0.25, 0.375, 0.5])
        assert [row["measured_sparsity"] for row in history] == sorted(row["measured_sparsity"] for row in history)
        # the plan of the step closest to 0.4, sliced from the dense weights (the model was masked further)
        assert pruning["plan_step"] == 3 and pruning["trajectory_end"] == 0.5 and not pruning["trajectory_cached"]
        assert pruning["measured_sparsity"] == pytest.approx(history[2]["measured_sparsity"])
        assert pruning["milestones_reached"] == [
            m for m in (0.1, 0.2, 0.3, 0.4, 0.5) if m <= history[-1]["measured_sparsity"]
        ]
    crossings = [row["step"] for row in resp["pruning"]["schedule_history"] if row.get("regenerated")]
    assert resp["pruning"]["regenerations"] == len(crossings) == len(resp["calibration"]["regenerated"]) >= 1
    assert gisp["pruning"]["regenerations"] == 0
    assert resp["calibration"]["source"] == "self_generated" and resp["calibration"]["generated_tokens"] > 0
    assert resp["calibration"]["questions"] == "synthetic"
    assert sorted(p.name for p in (resp_dir / "plans").iterdir()) == [
        f"plan_at_{m:g}.json" for m in resp["pruning"]["milestones_reached"]
    ]


def test_a_sweep_reads_every_target_from_one_cached_trajectory(tmp_path, monkeypatch, capsys) -> None:
    import json

    from rkuprune.allocation.schedule import Trajectory
    from rkuprune.models.plan import PruningPlan
    from rkuprune.scoring.gisp import GispScorer
    from tests.test_app import run_cli

    monkeypatch.setenv("RKUPRUNE_CACHE", str(tmp_path / "cache"))
    common = ["model=tiny-llama", "logger=none", "benchmark=none", "scorer=gisp", "pruning.steps=5"]
    common += ["pruning.trajectory_end=0.5", "calibration.num_tokens=256", "calibration.seqlen=64"]
    code, _, err = run_cli([*common, "pruning.sparsity=0.2", f"hydra.run.dir={tmp_path / 'a'}"], monkeypatch, capsys)
    assert code == 0, err

    def no_scoring(*args: object, **kwargs: object) -> None:
        raise AssertionError("scored again despite the cached trajectory")

    monkeypatch.setattr(GispScorer, "score", no_scoring)
    code, _, err = run_cli([*common, "pruning.sparsity=0.3", f"hydra.run.dir={tmp_path / 'b'}"], monkeypatch, capsys)
    assert code == 0, err
    (cached,) = (tmp_path / "cache" / "trajectories").glob("*.json")
    trajectory = Trajectory.load(cached)
    for run, target in (("a", 0.2), ("b", 0.3)):
        pruning = json.loads((tmp_path / run / "results.json").read_text())["pruning"]
        assert pruning["trajectory_cached"] == (run == "b")
        assert pruning["plan_step"] == trajectory.closest_step(target)
        plan = PruningPlan.load(tmp_path / run / "pruning_plan.json")
        assert plan.layers == trajectory.plan(pruning["plan_step"]).layers
        assert plan.metadata["trajectory_step"] == pruning["plan_step"]
    # another schedule is another trajectory: scoring is needed (and refused here)
    with pytest.raises(AssertionError, match="scored again"):
        run_cli([*common, "pruning.steps=4", f"hydra.run.dir={tmp_path / 'c'}"], monkeypatch, capsys)


def test_regeneration_with_a_fixed_calibration_is_refused_before_loading(tmp_path, monkeypatch, capsys) -> None:
    from tests.test_app import run_cli

    args = ["model=tiny-llama", "logger=none", "scorer=resp", "calibration=synthetic", f"hydra.run.dir={tmp_path}"]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2
    assert err.startswith("error: pruning.regenerate_at: calibration 'synthetic' cannot regenerate")
    assert not (tmp_path / "results.json").exists()


def reference_scores(model: torch.nn.Module, rows: list[list[int]], answer_start: int, weighting: str) -> Scores:
    """GISP's estimator written from its reference, one unpadded sample at a time: the causal-LM
    loss of a sample is the mean over its answer tokens; ``per_sample`` averages the samples'
    gradients (each sample weighs the same), ``pooled`` divides the summed token losses by the
    token count of the whole set. Then |W * g| summed per unit over q rows, o columns, gate and up
    rows and down columns, divided by 4*head_dim*hidden (heads) and 3*intermediate (channels)."""
    adapter = adapter_for(model)
    params = [
        p
        for layer in adapter.layers()
        for p in (
            adapter.attention(layer).q.weight,
            adapter.attention(layer).o.weight,
            adapter.mlp(layer).gate.weight,
            adapter.mlp(layer).up.weight,
            adapter.mlp(layer).down.weight,
        )
    ]
    sums = [torch.zeros_like(p) for p in params]
    counted = sum(len(row) - answer_start for row in rows)
    for row in rows:
        ids = torch.tensor([row])
        logits = model(input_ids=ids).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")[answer_start - 1 :]
        loss = nll.mean() / len(rows) if weighting == "per_sample" else nll.sum() / counted
        for total, grad in zip(sums, torch.autograd.grad(loss, params), strict=True):
            total += grad
    layers = []
    for index, s in enumerate(adapter.structures().layers):
        q, o, gate, up, down = (
            (w * g).abs()
            for w, g in zip(params[5 * index : 5 * index + 5], sums[5 * index : 5 * index + 5], strict=True)
        )
        heads = torch.stack(
            [
                q[h * s.head_dim : (h + 1) * s.head_dim].sum() + o[:, h * s.head_dim : (h + 1) * s.head_dim].sum()
                for h in range(s.num_q_heads)
            ]
        )
        channels = gate.sum(dim=1) + up.sum(dim=1) + down.sum(dim=0)
        layers.append(
            LayerScores(
                heads=heads.detach() / (4 * s.head_dim * s.hidden_size),
                channels=channels.detach() / (3 * s.intermediate_size),
            )
        )
    return Scores(layers)


def assert_scores_equal(actual: Scores, expected: Scores) -> None:
    """The scorer computes in float64 on a float64 model and rounds once to fp32 at the end: equal to
    the float64 reference up to that rounding (a few fp32 ulps, since summation orders differ)."""
    for mine, theirs in zip(actual.layers, expected.layers, strict=True):
        torch.testing.assert_close(mine.heads, theirs.heads.float(), rtol=4 * 2**-24, atol=0)
        torch.testing.assert_close(mine.channels, theirs.channels.float(), rtol=4 * 2**-24, atol=0)


@pytest.mark.parametrize("lengths", [(12, 40, 25), (24, 24, 24)], ids=["unequal", "equal"])
def test_loss_weighting_matches_the_reference_per_sample_and_pooled(lengths: tuple[int, ...]) -> None:
    loaded = tiny("tiny-llama")
    model = loaded.model.double()
    generator = torch.Generator().manual_seed(3)
    vocab = model.config.vocab_size
    rows = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]
    answer_start = 6  # the loss counts the tokens from here on, as for a question + answer row
    calibration = CalibrationSet.right_padded(rows, 0, batch_size=2, loss_starts=[answer_start] * len(rows))
    scores = {}
    for weighting in ("per_sample", "pooled"):
        scores[weighting] = SCORERS.build(GispConfig(loss_weighting=weighting)).score(model, calibration)
        assert_scores_equal(scores[weighting], reference_scores(model, rows, answer_start, weighting))
    gap = max(
        float(((a.channels - b.channels).abs() / b.channels.abs()).max())
        for a, b in zip(scores["per_sample"].layers, scores["pooled"].layers, strict=True)
    )
    if len(set(lengths)) == 1:
        assert gap <= 8 * 2**-24  # the same estimator: equal up to fp32 rounding
    else:
        assert gap > 1e-3  # long rows no longer dominate: a different estimator


def test_an_unknown_loss_weighting_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"scorer\.loss_weighting: 'tokens' is not one of per_sample, pooled"):
        SCORERS.build(GispConfig(loss_weighting="tokens")).check()


def test_gradient_accumulators_are_counted_and_a_run_they_cannot_fit_stops_before_evaluating(
    tmp_path, monkeypatch, capsys
) -> None:
    import json

    from rkuprune.scoring.taylor import TaylorConfig
    from tests.test_app import run_cli

    model = tiny("tiny-qwen3").model.to(torch.bfloat16)
    c = model.config
    q_rows, kv_rows = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    gisp_weights = 2 * q_rows * c.hidden_size + 3 * c.intermediate_size * c.hidden_size  # q, o, gate, up, down
    taylor_weights = gisp_weights + 2 * kv_rows * c.hidden_size  # and k, v
    fp32, cpu, layers = 4, torch.device("cpu"), c.num_hidden_layers  # fp32 accumulators for a bf16 model
    assert SCORERS.build(GispConfig()).buffer_bytes(model) == {cpu: fp32 * gisp_weights * layers}
    assert SCORERS.build(TaylorConfig()).buffer_bytes(model) == {cpu: fp32 * taylor_weights * layers}
    assert SCORERS.build(SCORERS.get("rku").config()).buffer_bytes(model) == {}
    mha = mha_llama().model  # GISP scores k and v too when there is one KV head per query head
    m = mha.config
    mha_weights = 4 * m.num_attention_heads * m.head_dim * m.hidden_size + 3 * m.intermediate_size * m.hidden_size
    assert SCORERS.build(GispConfig()).buffer_bytes(mha) == {cpu: fp32 * mha_weights * m.num_hidden_layers}

    monkeypatch.setattr("rkuprune.scoring.base.free_memory", lambda device: 1000)
    args = ["model=tiny-qwen3", "logger=none", "scorer=gisp", "pruning.steps=2", f"hydra.run.dir={tmp_path}"]
    code, _, err = run_cli([*args, "pruning.trajectory_end=0.5"], monkeypatch, capsys)
    results = json.loads((tmp_path / "results.json").read_text())
    assert code != 0 and results["status"] == "failed"
    assert set(results["efficiency"]) == {"load_s"} and results["dense_metrics"] == {}  # stopped right after loading
    assert results["error"].startswith("ConfigError: scorer: 'gisp' needs 0.0 GiB of fp32 gradient accumulators on cpu")
    assert "scorer=rku" in err.splitlines()[-1]
