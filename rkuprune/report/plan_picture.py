"""The plan picture: kept query heads, KV heads and MLP channels per layer (one PNG, one bar panel each),
so a reader sees where a method cut. Written into every run folder and by ``python -m rkuprune.report``.

The bar heights are read back from the drawn figure and embedded in the PNG's text metadata (key
``rkuprune-plan``), so tests and tools can check that the picture encodes the plan.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rkuprune.models.plan import UNIT_LABELS, PruningPlan  # noqa: E402

PLAN_KEY = "rkuprune-plan"


def plot_plan(plan: PruningPlan, path: Path, title: str = "") -> Path:
    """Draw the kept units of every layer (removed layers show as zero) and save the PNG at ``path``."""
    counts = plan.layer_counts()
    layers = [c.index for c in counts]
    fig, axes = plt.subplots(len(UNIT_LABELS), 1, figsize=(max(6, 0.25 * len(layers) + 2), 6), dpi=100, sharex=True)
    drawn: dict[str, object] = {"layers": layers}
    for ax, (field, label) in zip(axes, UNIT_LABELS.items(), strict=True):
        bars = ax.bar(layers, [getattr(c, field) for c in counts], color="tab:blue")
        ax.set_ylabel(f"kept {label}", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        drawn[field] = [int(bar.get_height()) for bar in bars]
    axes[-1].set_xlabel("layer")
    sparsity = "" if plan.measured_sparsity is None else f", measured sparsity {plan.measured_sparsity:.3f}"
    axes[0].set_title(f"{title or plan.base_model or 'pruning plan'}{sparsity}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={PLAN_KEY: json.dumps(drawn)})
    plt.close(fig)
    return path


def read_plan_picture(path: Path) -> dict:
    """The per-layer counts a plan picture was drawn from (as embedded by ``plot_plan``)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return json.loads(image.text[PLAN_KEY])
