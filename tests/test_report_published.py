"""Published numbers beside ours: unmarked only beside the key measured as the source measured it; beside
any other key with a footnote saying how the source measured it. One cell per published value and run."""

from __future__ import annotations

from pathlib import Path

from rkuprune.evaluation.base import BenchmarkConfig
from rkuprune.report.collect import Collection, Run
from rkuprune.report.published import PUBLISHED, RESP_GSM8K, RESP_MATHQA
from rkuprune.report.tables import build_table, to_latex, to_markdown


def run(model: str, scorer: str, metrics: dict[str, float], granularity: str | None = None) -> Run:
    config = {"pruning": {"granularity": granularity}} if granularity else {}
    return Run(Path("."), model, scorer, scorer, "", 0.4, 0.4, metrics, {}, config)


def cells_of(*runs: Run) -> tuple[dict[tuple[str, str], dict], list[str]]:
    table = build_table(Collection(runs=list(runs)))
    return {(m, label): cells for m, label, cells in table.rows}, table.notes


def test_a_value_measured_another_way_is_footnoted_with_the_sources_protocol() -> None:
    resp = run("qwen3-8b", "resp", {"acc/gsm8k@rkuprune": 0.5, "acc/mathqa@rkuprune": 0.25})
    gisp = run("llama3-8b", "gisp", {"ppl/wikitext2@128": 50.0})
    cells, notes = cells_of(resp, gisp)
    assert cells[("qwen3-8b", "resp")][(0.4, "acc/gsm8k@rkuprune")] == "50.00 (paper 81.3[1])"
    assert cells[("qwen3-8b", "resp")][(0.4, "acc/mathqa@rkuprune")] == "25.00 (paper 59.6[2])"
    assert cells[("llama3-8b", "gisp")][(0.4, "ppl/wikitext2@128")] == "50.00 (paper 46.1)"  # measured as ours
    assert notes == [f"RESP (arXiv 2512.02185): {RESP_GSM8K}", f"RESP (arXiv 2512.02185): {RESP_MATHQA}"]
    table = build_table(Collection(runs=[resp]))
    assert to_markdown(table).rstrip().endswith(f"[2] RESP (arXiv 2512.02185): {RESP_MATHQA}.")
    assert "lm-eval's gsm8k\\_cot\\_sample, 8-shot" in to_latex(table)  # escaped for LaTeX


def test_tables_without_published_values_measured_differently_have_no_footnote() -> None:
    table = build_table(Collection(runs=[run("llama3-8b", "gisp", {"ppl/wikitext2@128": 50.0})]))
    assert table.notes == [] and to_markdown(table).endswith("(speedup/ideal: dense/pruned weight bytes).\n")


def test_a_judged_value_sits_beside_the_judge_column_and_nowhere_else() -> None:
    metrics = {"acc/gsm8k@rkuprune": 0.5, "acc/gsm8k@rkuprune/judge": 0.75, "acc/mathqa@rkuprune": 0.25}
    cells, _ = cells_of(run("qwen3-8b", "resp", metrics))  # MathQA not judged in this run
    resp = cells[("qwen3-8b", "resp")]
    assert resp[(0.4, "acc/gsm8k@rkuprune/judge")].startswith("75.00 (paper 81.3[")  # prompts still differ
    assert resp[(0.4, "acc/gsm8k@rkuprune")] == "50.00"  # one cell per published value
    assert resp[(0.4, "acc/mathqa@rkuprune")].startswith("25.00 (paper 59.6[")


def test_the_rku_number_goes_beside_lm_evals_own_gsm8k_when_a_run_has_it() -> None:
    """The paper presets run lm-eval's gsm8k: RKU's number sits there (footnoted: the abstract does not say
    which task and shots), not beside the project's own protocol."""
    metrics = {
        "acc/gsm8k@rkuprune": 0.1,
        "acc/gsm8k@lm_eval/strict-match": 0.12,
        "acc/gsm8k@lm_eval/flexible-extract": 0.2,
    }
    cells, notes = cells_of(run("qwen2.5-7b", "rku", metrics, "none"))
    rku = cells[("qwen2.5-7b", "rku")]
    assert rku[(0.4, "acc/gsm8k@lm_eval/strict-match")] == "12.00 (paper 13.34[1])"
    assert rku[(0.4, "acc/gsm8k@rkuprune")] == "10.00" and rku[(0.4, "acc/gsm8k@lm_eval/flexible-extract")] == "20.00"
    assert notes == [
        "RKU (arXiv 2605.09008): GSM8K accuracy; the abstract names neither the lm-eval task nor the shots"
    ]


def test_the_judge_is_off_by_default() -> None:
    assert BenchmarkConfig().judge.enabled is False


def test_the_published_rku_number_sits_beside_global_rku_on_channels_only() -> None:
    """RKU's paper number is Global RKU on FFN channels: not beside RKU with heads, nor RKU in GISP's schedule."""

    def rku_run(method: str, granularity: str) -> Run:
        config = {"pruning": {"granularity": granularity}}
        metrics = {"acc/gsm8k@rkuprune": 0.1}
        return Run(Path("."), "qwen2.5-7b", "rku", method, f"granularity={granularity}", 0.4, 0.4, metrics, {}, config)

    runs = [rku_run("rku", "none"), rku_run("rku", "q_head"), rku_run("rku_iterative", "q_head")]
    cells = {label: cells[(0.4, "acc/gsm8k@rkuprune")] for _, label, cells in build_table(Collection(runs=runs)).rows}
    assert cells["rku (granularity=none)"] == "10.00 (paper 13.34[1])"
    assert cells["rku (granularity=q_head)"] == "10.00"
    assert cells["rku_iterative (granularity=q_head)"] == "10.00"


def test_every_published_value_says_how_it_was_measured() -> None:
    for paper in PUBLISHED:
        assert paper.protocol and (paper.same_as is None or paper.same_as.startswith(paper.quantity))
