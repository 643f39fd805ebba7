"""Sweep tables: rows = model and scorer (variant), columns = target sparsity x metric, a dense row per
model (per setting of the model, data and benchmark fields, when they differ), and each published value
in one cell of the runs of its model, method and sparsity (``cell_for``): unmarked beside the key
measured as the source measured it, otherwise beside the nearest one with a footnote saying how the
source measured it and how we did. Runs differing only in seeds share a cell: ``mean ± sd (n=k)``, the
sample standard deviation; the dense cell counts each distinct dense measurement once."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
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


def mean_sd(values: list[float]) -> tuple[float, float | None, int]:
    """Mean, sample standard deviation (None for one value) and count of replicates."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)), n


def shown_stat(metric: str, values: list[float]) -> str:
    """One value as ``shown``; replicates as ``mean ± sd (n=k)``."""
    if not values:
        return ""
    mean, sd, n = mean_sd(values)
    return shown(metric, mean) if sd is None else f"{shown(metric, mean)} ± {shown(metric, sd)} (n={n})"


def dense_values(runs: Iterable[Run], metric: str) -> list[float]:
    """The distinct dense measurements of ``metric`` behind ``runs``: runs whose model, data and benchmark
    fields (``model.seed`` included) and value agree measured the same thing (the dense cache, or a
    calibration seed the evaluation does not use) and count once."""
    unique: dict[tuple[str, str], float] = {}
    for run in runs:
        if metric in run.dense:
            unique.setdefault((run.dense_identity, repr(run.dense[metric])), run.dense[metric])
    return list(unique.values())


def dense_rows(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs behind each dense row (``dense``, or ``dense (data.root=...)`` where such fields differ)."""
    variants = sorted({r.dense_variant for r in runs})
    return {f"dense ({v})" if v else "dense": [r for r in runs if r.dense_variant == v] for v in variants}


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
        for label, group in dense_rows(runs).items():
            values = {m: dense_values(group, m) for m in metrics}
            rows.append((model, label, {(s, m): shown_stat(m, values[m]) for s in sparsities for m in metrics}))
        for label in sorted({r.label for r in runs}):
            cells: dict[tuple[float, str], str] = {}
            for target in sorted({r.target for r in runs if r.label == label}):
                replicates = [r for r in runs if r.label == label and r.target == target]
                run = replicates[0]
                for metric in metrics:
                    text = shown_stat(metric, [r.metrics[metric] for r in replicates if metric in r.metrics])
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
    lines = ["| " + " | ".join(map(_md_escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_md_escape, row)) + " |" for row in table.body()]
    legend = (
        "Accuracies in %, perplexities as exp(mean NLL); (paper x) = published value; speedup/* = pruned/dense "
        "throughput measured in the run (speedup/ideal: dense/pruned weight bytes)."
    )
    return "\n".join([*lines, "", legend, *footnotes(table)]) + "\n"


def _md_escape(text: str) -> str:
    """A cell that cannot break the Markdown table: ``|`` escaped, line breaks as spaces (a model name
    or label may hold either)."""
    return " ".join(text.replace("|", r"\|").splitlines()) if text else text


def _tex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    text = text.replace("±", r"$\pm$")
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
