"""One PNG per model and metric: the metric against measured sparsity, a line per scorer (variant),
the dense value as a horizontal line. Runs differing only in seeds are one point, their mean, with a
bar of ± one sample sd (the dense line a band). The plotted series are embedded in the PNG's text
metadata (key ``rkuprune-series``), the means read back from the figure's own lines (in the plot's
units), beside them ``sd`` (``[x, sd, n]`` per replicated point, plot units), ``dense`` (the stored
value, when there is one dense row) and ``dense_rows`` (``[mean, sd, n]`` per dense row, stored
values), so tests and tools can check them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rkuprune.report.collect import Collection  # noqa: E402
from rkuprune.report.tables import dense_rows, dense_values, is_accuracy, mean_sd  # noqa: E402

SERIES_KEY = "rkuprune-series"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def plot_metric(collection: Collection, model: str, metric: str, path: Path) -> Path:
    runs = [r for r in collection.runs if r.model == model and metric in r.metrics]
    scale = 100.0 if is_accuracy(metric) else 1.0
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    spreads: dict[str, list[list[float]]] = {}
    for label in sorted({r.label for r in runs}):
        points = []
        for target in sorted({r.target for r in runs if r.label == label}):
            replicates = [r for r in runs if r.label == label and r.target == target]
            mean, sd, n = mean_sd([r.metrics[metric] * scale for r in replicates])
            points.append((mean_sd([r.measured for r in replicates])[0], mean, sd, n))
        points.sort()
        (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        spread = [p for p in points if p[2] is not None]
        if spread:
            spreads[label] = [[p[0], p[2], p[3]] for p in spread]
            ax.errorbar(
                [p[0] for p in spread],
                [p[1] for p in spread],
                yerr=[p[2] for p in spread],
                fmt="none",
                ecolor=line.get_color(),
                capsize=0,
                label="_nolegend_",
            )
    dense: dict[str, tuple[float, float | None, int]] = {}
    for name, group in dense_rows([r for r in runs if metric in r.dense]).items():
        mean, sd, n = dense[name] = mean_sd(dense_values(group, metric))
        ax.axhline(mean * scale, color="black", linestyle="--", linewidth=1, label=name)
        if sd is not None:
            ax.axhspan((mean - sd) * scale, (mean + sd) * scale, color="black", alpha=0.08, linewidth=0)
    if metric.startswith("ppl/"):
        ax.set_yscale("log")
    ax.set_xlabel("measured sparsity")
    ax.set_ylabel(f"{metric} (%)" if is_accuracy(metric) else metric)
    ax.set_title(f"{model}: {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    series = {
        line.get_label(): [[float(x), float(y)] for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)]
        for line in ax.get_lines()
        if line.get_label() not in dense
    }
    only = next(iter(dense.values()))[0] if len(dense) == 1 else None
    metadata = {"metric": metric, "model": model, "series": series, "sd": spreads, "dense": only, "dense_rows": dense}
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={SERIES_KEY: json.dumps(metadata)})
    plt.close(fig)
    return path


def plot_all(collection: Collection, out: Path) -> list[Path]:
    return [
        plot_metric(collection, model, metric, out / f"{slug(model)}__{slug(metric)}.png")
        for model in collection.models
        for metric in collection.metrics
        if any(r.model == model and metric in r.metrics for r in collection.runs)
    ]


def read_series(path: Path) -> dict:
    """The series a plot was drawn from (as embedded by ``plot_metric``)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return json.loads(image.text[SERIES_KEY])
