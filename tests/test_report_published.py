"""Published numbers beside ours: RESP's judge-scored accuracies carry a footnote beside a regex score, and none
beside a judge column; others never do."""

from __future__ import annotations

from pathlib import Path

from rkuprune.evaluation.base import BenchmarkConfig
from rkuprune.report.collect import Collection, Run
from rkuprune.report.published import RESP_JUDGED
from rkuprune.report.tables import build_table, to_latex, to_markdown


def run(model: str, scorer: str, metrics: dict[str, float]) -> Run:
    return Run(Path("."), model, scorer, scorer, "", 0.4, 0.4, metrics, {}, {})


def test_judge_scored_paper_values_are_footnoted() -> None:
    collection = Collection(
        runs=[
            run("qwen3-8b", "resp", {"acc/gsm8k@rkuprune": 0.5, "acc/mathqa@rkuprune": 0.25}),
            run("llama3-8b", "gisp", {"ppl/wikitext2@128": 50.0}),
        ]
    )
    table = build_table(collection)
    cells = {(m, label): cells for m, label, cells in table.rows}
    assert cells[("qwen3-8b", "resp")][(0.4, "acc/gsm8k@rkuprune")] == "50.00 (paper 81.3[1])"
    assert cells[("qwen3-8b", "resp")][(0.4, "acc/mathqa@rkuprune")] == "25.00 (paper 59.6[1])"  # one note, one number
    assert cells[("llama3-8b", "gisp")][(0.4, "ppl/wikitext2@128")] == "50.00 (paper 46.1)"  # not judged
    assert table.notes == [RESP_JUDGED]
    assert to_markdown(table).rstrip().endswith(f"[1] {RESP_JUDGED}.")
    assert "judge-scored" in to_latex(table)


def test_tables_without_judged_numbers_have_no_footnote() -> None:
    table = build_table(Collection(runs=[run("llama3-8b", "gisp", {"ppl/wikitext2@128": 50.0})]))
    assert table.notes == [] and to_markdown(table).endswith("(speedup/ideal: dense/pruned weight bytes).\n")


def test_with_a_judge_column_the_paper_value_sits_beside_it_unmarked() -> None:
    metrics = {
        "acc/gsm8k@rkuprune": 0.5,
        "acc/gsm8k@rkuprune/judge": 0.75,
        "acc/mathqa@rkuprune": 0.25,
    }  # MathQA not judged in this run
    table = build_table(Collection(runs=[run("qwen3-8b", "resp", metrics)]))
    (cells,) = [cells for _, label, cells in table.rows if label == "resp"]
    assert cells[(0.4, "acc/gsm8k@rkuprune/judge")] == "75.00 (paper 81.3)"
    assert cells[(0.4, "acc/gsm8k@rkuprune")] == "50.00"  # the regex score: no paper value beside it
    assert cells[(0.4, "acc/mathqa@rkuprune")] == "25.00 (paper 59.6[1])"  # still regex-only: footnoted
    assert table.notes == [RESP_JUDGED]
    judged_only = build_table(
        Collection(runs=[run("qwen3-8b", "resp", {"acc/gsm8k@rkuprune/judge": 0.75, "acc/gsm8k@rkuprune": 0.5})])
    )
    assert judged_only.notes == [] and "[1]" not in to_markdown(judged_only)


def test_the_judge_is_off_by_default() -> None:
    assert BenchmarkConfig().judge.enabled is False


def test_the_published_rku_number_sits_beside_global_rku_on_channels_only() -> None:
    """RKU's paper number is Global RKU on FFN channels: not beside RKU with heads, nor RKU in GISP's schedule."""

    def rku_run(method: str, granularity: str) -> Run:
        config = {"pruning": {"granularity": granularity}}
        return Run(
            Path("."),
            "qwen2.5-7b",
            "rku",
            method,
            f"granularity={granularity}",
            0.4,
            0.4,
            {"acc/gsm8k@rkuprune": 0.1},
            {},
            config,
        )

    runs = [rku_run("rku", "none"), rku_run("rku", "q_head"), rku_run("rku_iterative", "q_head")]
    cells = {label: cells[(0.4, "acc/gsm8k@rkuprune")] for _, label, cells in build_table(Collection(runs=runs)).rows}
    assert cells["rku (granularity=none)"] == "10.00 (paper 13.34)"
    assert cells["rku (granularity=q_head)"] == "10.00"
    assert cells["rku_iterative (granularity=q_head)"] == "10.00"
