"""Sweep tables: rows = model and scorer (variant), columns = target sparsity x metric, a dense row per
model, and each published value in one cell of the runs of its model, method and sparsity (``cell_for``):
unmarked beside the key measured as the source measured it, otherwise beside the nearest one with a
footnote saying how the source measured it and how we did."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from rkuprune.report.collect import Collection, Run
from rkuprune.report.published import Published, cell_for, published_for

PERCENT_PREFIXES = ("acc/", "mean3")


def is_accuracy(metric: str) -> bool:
    return metric.startswith(PERCENT_PREFIXES)


def shown(metric: str, value: float | None) -> str:
    """Accuracies as percentages (stored as fractions), unit counts whole, perplexities with two decimals."""
    if value is None:
        return ""
    if metric.startswith("removed/"):
        return f"{value:.0f}"
    return f"{100 * value:.2f}" if is_accuracy(metric) else f"{value:.2f}"


@dataclass
class Table:
    columns: list[tuple[float, str]]  # (target sparsity, metric); sparsity 0.0 = dense
    rows: list[tuple[str, str, dict[tuple[float, str], str]]]  # (model, label, cells)
    notes: list[str] = field(default_factory=list)  # footnotes, marked in cells by their number

    def header(self) -> list[str]:
        return ["model", "method", *[f"{'dense' if s == 0 else f's={s:g}'} {m}" for s, m in self.columns]]

    def body(self) -> list[list[str]]:
        return [[model, label, *[cells.get(c, "") for c in self.columns]] for model, label, cells in self.rows]


def build_table(collection: Collection, metrics: list[str] | None = None) -> Table:
    """The whole sweep, or only ``metrics`` (``by_metric``: one narrow table per metric, as papers print)."""
    metrics = collection.metrics if metrics is None else metrics
    sparsities = sorted({r.target for r in collection.runs})
    columns = [(s, m) for s in sparsities for m in metrics]
    rows: list[tuple[str, str, dict[tuple[float, str], str]]] = []
    notes: list[str] = []
    for model in collection.models:
        runs = [r for r in collection.runs if r.model == model]
        dense = {k: v for r in runs for k, v in r.dense.items()}
        rows.append((model, "dense", {(s, m): shown(m, dense.get(m)) for s in sparsities for m in metrics}))
        for label in sorted({r.label for r in runs}):
            cells: dict[tuple[float, str], str] = {}
            for run in (r for r in runs if r.label == label):
                for metric in metrics:
                    text = shown(metric, run.metrics.get(metric))
                    paper, same_scoring = paper_beside(run, metric)
                    if paper is not None:
                        mark = ""
                        if not same_scoring:
                            if paper.note not in notes:
                                notes.append(paper.note)
                            mark = f"[{notes.index(paper.note) + 1}]"
                        text = f"{text} (paper {paper.value:g}{mark})"
                    cells[(run.target, metric)] = text
            rows.append((model, label, cells))
    return Table(columns, rows, notes)


def paper_beside(run: Run, metric: str) -> tuple[Published | None, bool]:
    """The published value shown in this run's ``metric`` cell, and whether it was measured as ours (then
    it carries no footnote)."""
    granularity = run.config.get("pruning", {}).get("granularity")
    for paper in published_for(run.model, run.method, run.target, granularity):
        if cell_for(paper, run.metrics) == metric:
            return paper, metric == paper.same_as
    return None, False


def by_metric(collection: Collection) -> str:
    """Markdown with one section per metric: rows = model and method, columns = target sparsity."""
    sections = [f"## {metric}\n\n{to_markdown(build_table(collection, [metric]))}" for metric in collection.metrics]
    return "\n".join(sections)


def footnotes(table: Table) -> list[str]:
    return [f"[{i}] {note}." for i, note in enumerate(table.notes, start=1)]


def to_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(table.header())
    writer.writerows(table.body())
    return buffer.getvalue()


def to_markdown(table: Table) -> str:
    header = table.header()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table.body()]
    legend = (
        "Accuracies in %, perplexities as exp(mean NLL); (paper x) = published value; speedup/* = pruned/dense "
        "throughput measured in the run (speedup/ideal: dense/pruned weight bytes)."
    )
    return "\n".join([*lines, "", legend, *footnotes(table)]) + "\n"


def _tex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text


def to_latex(table: Table) -> str:
    header = table.header()
    lines = [
        r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}",
        r"\toprule",
        " & ".join(_tex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(_tex_escape(cell) for cell in row) + r" \\" for row in table.body()]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [_tex_escape(note) + r"\\" for note in footnotes(table)]
    return "\n".join(lines) + "\n"
