"""Paired per-seed comparisons in the report (``--compare A,B``), on hand-written records whose differences
and seed counts are computed here by hand."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rkuprune.report.__main__ import main as report_main

PPL = "ppl/wikitext2@256"
ACC = "acc/gsm8k@rkuprune"


def record(
    folder: Path,
    scorer: str,
    seed: int,
    target: float,
    ppl: float,
    acc: float,
    calibration: str = "c4",
    recovery: str = "none",
    granularity: str = "q_head",
) -> None:
    """A completed results.json as the pipeline writes it, reduced to what the report reads."""
    config = {
        "seed": seed,
        "model": {"name": "m", "seed": 0},
        "calibration": {"name": calibration},
        "scorer": {"name": scorer},
        "pruning": {"sparsity": target, "granularity": granularity},
        "recovery": {"name": recovery},
    }
    run = folder / f"{scorer}_{seed}_{target}_{calibration}_{recovery}"
    run.mkdir(parents=True)
    results = {
        "status": "completed",
        "model": {"name": "m"},
        "pruning": {"scorer": scorer, "target_sparsity": target, "measured_sparsity": target},
        "config": config,
        "metrics": {PPL: ppl, ACC: acc},
        "dense_metrics": {PPL: 10.0, ACC: 0.5},
    }
    (run / "results.json").write_text(json.dumps(results))


def sweep(folder: Path) -> None:
    # seed:   rku ppl / gisp ppl     rku acc / gisp acc
    # 0:      20 / 22  (rku)         0.30 / 0.25 (rku)
    # 1:      21 / 20  (gisp)        0.30 / 0.30 (tie)
    # 2:      19 / 25  (rku)         0.20 / 0.40 (gisp)
    for seed, (a, b, acc_a, acc_b) in enumerate([(20, 22, 0.30, 0.25), (21, 20, 0.30, 0.30), (19, 25, 0.20, 0.40)]):
        record(folder, "rku", seed, 0.3, a, acc_a)
        record(folder, "gisp", seed, 0.3, b, acc_b)
    record(folder, "gisp", 0, 0.4, 30, 0.1)  # no rku run at 0.4: must not pair with anything
    record(folder, "rku", 3, 0.3, 18, 0.2, calibration="wiki")  # other calibration: no partner


def test_compare_gives_per_seed_differences_and_seed_counts(tmp_path) -> None:
    sweep(tmp_path)
    assert report_main([str(tmp_path), "--compare", "rku,gisp"]) == 0
    rows = list(csv.DictReader((tmp_path / "report" / "compare_rku_vs_gisp.csv").read_text().splitlines()))
    ppl = [r for r in rows if r["metric"] == PPL]
    assert [(r["seeds"], float(r["difference"]), r["favours"]) for r in ppl] == [
        ("seed=0", -2.0, "rku"),
        ("seed=1", 1.0, "gisp"),
        ("seed=2", -6.0, "rku"),
    ]
    acc = [r for r in rows if r["metric"] == ACC]
    assert [r["favours"] for r in acc] == ["rku", "tie", "gisp"]
    assert {r["sparsity"] for r in rows} == {"0.3"}  # gisp at 0.4 and rku on other calibration left out
    text = (tmp_path / "report" / "comparisons.md").read_text()
    mean = (-2.0 + 1.0 - 6.0) / 3
    sd = (sum((d - mean) ** 2 for d in (-2.0, 1.0, -6.0)) / 2) ** 0.5
    assert (
        f"| m | 0.3 | {PPL} | 3 | seed=0: -2.00; seed=1: +1.00; seed=2: -6.00 | -{abs(mean):.2f} ± {sd:.2f} | 2 | 1 | 0 |"
        in text
    )
    assert "Over all 6 seed-metric comparisons: 3 favour rku, 2 favour gisp, 1 ties." in text
    assert "and seeds): rku 1, gisp 1." in text  # rku on wiki, gisp at 0.4


def test_compare_names_an_unknown_method_in_one_line(tmp_path, capsys) -> None:
    sweep(tmp_path)
    assert report_main([str(tmp_path), "--compare", "rku,wanda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --compare: 'wanda' is not a method of these runs") and "gisp" in err
    assert len(err.splitlines()) == 1
    assert report_main([str(tmp_path), "--compare", "rku"]) == 2


def test_compare_refuses_a_method_with_two_rows_and_pairs_the_row_named(tmp_path, capsys) -> None:
    """rku with and without recovery are two rows on the same task: ``--compare rku,gisp`` once paired both
    with one gisp run, so each seed appeared twice in one cell (n=6 for 3 seeds). Such a name is refused,
    naming the rows; a row's label picks one."""
    for seed, (a, b) in enumerate([(20, 22), (21, 20), (19, 25)]):
        record(tmp_path, "rku", seed, 0.3, a, 0.3)
        record(tmp_path, "gisp", seed, 0.3, b, 0.3)
        record(tmp_path, "rku", seed, 0.3, a - 10, 0.3, recovery="lora")
    assert report_main([str(tmp_path), "--compare", "rku,gisp"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: --compare: 'rku' names 2 rows run on the same task") and "rku (recovery=lora)" in err
    assert report_main([str(tmp_path), "--compare", "rku (recovery=lora),gisp"]) == 0
    rows = list(
        csv.DictReader((tmp_path / "report" / "compare_rku_recovery_lora_vs_gisp.csv").read_text().splitlines())
    )
    ppl = [(r["seeds"], float(r["difference"])) for r in rows if r["metric"] == PPL]
    assert ppl == [("seed=0", -12.0), ("seed=1", -9.0), ("seed=2", -16.0)]


def test_compare_splits_labels_holding_commas(tmp_path) -> None:
    """Labels such as ``rku (granularity=none, recovery=lora)`` hold a comma: the split is the one whose
    halves both name rows."""
    for seed, (a, b) in enumerate([(20, 22), (21, 20)]):
        record(tmp_path, "rku", seed, 0.3, a, 0.3, recovery="lora", granularity="none")
        record(tmp_path, "rku", seed, 0.3, a + 1, 0.3, granularity="none")
        record(tmp_path, "gisp", seed, 0.3, b, 0.3, granularity="q_head")
    value = "rku (granularity=none, recovery=lora),gisp (granularity=q_head)"
    assert report_main([str(tmp_path), "--compare", value]) == 0
    text = (tmp_path / "report" / "comparisons.md").read_text()
    assert "Over all 4 seed-metric comparisons" in text
