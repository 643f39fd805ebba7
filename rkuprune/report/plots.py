"""One PNG per model and metric: the metric against measured sparsity, a line per scorer (variant),
the dense value as a horizontal line. The plotted series are embedded in the PNG's text metadata
(key ``rkuprune-series``), read back from the figure's own lines, so tests and tools can check them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rkuprune.report.collect import Collection  # noqa: E402
from rkuprune.report.tables import is_accuracy  # noqa: E402

SERIES_KEY = "rkuprune-series"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def plot_metric(collection: Collection, model: str, metric: str, path: Path) -> Path:
    runs = [r for r in collection.runs if r.model == model and metric in r.metrics]
    scale = 100.0 if is_accuracy(metric) else 1.0
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label in sorted({r.label for r in runs}):
        points = sorted((r.measured, r.metrics[metric] * scale) for r in runs if r.label == label)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    dense = next((r.dense[metric] for r in runs if metric in r.dense), None)
    if dense is not None:
        ax.axhline(dense * scale, color="black", linestyle="--", linewidth=1, label="dense")
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
        if line.get_label() != "dense"
    }
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(
        path, metadata={SERIES_KEY: json.dumps({"metric": metric, "model": model, "series": series, "dense": dense})}
    )
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
