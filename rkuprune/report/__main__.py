"""``python -m rkuprune.report DIR``: tables (md, csv, tex; and one per metric), plots and plan pictures of every
results.json under DIR."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from rkuprune.models.plan import PruningPlan
from rkuprune.report import compare
from rkuprune.report.collect import Collection, collect
from rkuprune.report.plan_picture import plot_plan
from rkuprune.report.plots import plot_all, slug
from rkuprune.report.tables import build_table, by_metric, to_csv, to_latex, to_markdown
from rkuprune.tracking.atomic import write_text


def log_to_wandb(out: Path, table_csv: str, plots: list[Path], mode: str, group: str) -> None:
    """One summary run holding the table and the plots (offline unless --wandb-mode online)."""
    import csv

    import wandb

    rows = list(csv.reader(table_csv.splitlines()))
    run = wandb.init(
        project="rkuprune", mode=mode, dir=str(out), name=f"report-{group}", group=group, job_type="report"
    )
    run.log({"report/table": wandb.Table(columns=rows[0], data=rows[1:])})
    run.log({f"report/{p.stem}": wandb.Image(str(p)) for p in plots})
    run.finish()


def plot_plans(collection: Collection, out: Path) -> list[Path]:
    """One plan picture per run that saved its plan, under ``out/plans``."""
    pictures = []
    for run in collection.runs:
        plan_file = run.path.parent / "pruning_plan.json"
        if plan_file.is_file():
            name = slug(f"{run.model}__{run.label}__s{run.target:g}__{run.path.parent.name}")
            title = f"{run.model} {run.label} (target {run.target:g})"
            try:
                plan = PruningPlan.load(plan_file)
            except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:  # PlanError is a ValueError
                print(f"skipped {plan_file}: not a readable plan ({type(exc).__name__}); no picture", file=sys.stderr)
                continue
            pictures.append(plot_plan(plan, out / "plans" / f"{name}.png", title))
    return pictures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rkuprune.report", description=__doc__)
    parser.add_argument("folder", type=Path, help="a sweep folder (e.g. multirun_outputs/smoke) or any folder of runs")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: FOLDER/report)")
    parser.add_argument("--wandb", action="store_true", help="also log one W&B summary run with the table and plots")
    parser.add_argument("--wandb-mode", default="offline", choices=["offline", "online"])
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="A,B",
        help="paired per-seed comparison of two methods (repeatable): comparisons.md and compare_A_vs_B.csv",
    )
    args = parser.parse_args(argv)
    out = args.out or args.folder / "report"
    collection = collect(args.folder)
    for reason in collection.skipped:
        print(f"skipped {reason}", file=sys.stderr)
    if not collection.runs:
        print(f"error: no completed results.json under {args.folder}", file=sys.stderr)
        return 1
    for run in collection.runs:
        odd = sorted(k for k, v in {**run.metrics, **run.dense}.items() if not math.isfinite(v))
        if odd:
            print(f"note: {run.path}: {', '.join(odd)} not finite (shown as nan or inf, left out of plots)")
    if len(collection.models) > 1:
        print(f"note: {len(collection.models)} models ({', '.join(collection.models)}): rows and plots per model")
    try:
        comparisons = [compare.parse_compare(value, collection) for value in args.compare]
    except compare.CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = build_table(collection)
    table_csv = to_csv(table)
    write_text(out / "table.csv", table_csv)
    write_text(out / "table.md", to_markdown(table))
    write_text(out / "table.tex", to_latex(table))
    write_text(out / "by_metric.md", by_metric(collection))
    if comparisons:
        sections = []
        for first, second in comparisons:
            found = compare.pairs(collection, first, second)
            left_out = compare.unpaired(collection, first, second)
            sections.append(compare.to_markdown(first, second, found, left_out))
            write_text(out / f"compare_{slug(first)}_vs_{slug(second)}.csv", compare.to_csv(first, second, found))
        write_text(out / "comparisons.md", "\n".join(sections))
    plots = plot_all(collection, out)
    plans = plot_plans(collection, out)
    if args.wandb:
        log_to_wandb(out, table_csv, plots, args.wandb_mode, group=args.folder.name)
    print(
        f"{len(collection.runs)} runs -> {out}/table.md, table.csv, table.tex, by_metric.md, {len(plots)} plots "
        f"and {len(plans)} plan pictures"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
