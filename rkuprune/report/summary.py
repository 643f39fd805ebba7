"""The dense-vs-pruned table printed at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def summary_rows(results: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    model, pruning = results["model"], results["pruning"]
    rows: list[tuple[str, Any, Any]] = [
        ("parameters (total)", model.get("params_total_before"), model.get("params_total_after")),
        ("parameters (decoder linears)", model.get("params_prunable_before"), model.get("params_prunable_after")),
        (
            "sparsity (target / measured)",
            0.0,
            f"{pruning.get('target_sparsity')} / {_fmt(pruning.get('measured_sparsity'))}",
        ),
    ]
    dense, metrics = results.get("dense_metrics", {}), results.get("metrics", {})
    for key in sorted(set(dense) | set(metrics)):
        rows.append((key, dense.get(key), metrics.get(key)))
    before = results.get("metrics_before_recovery", {})
    rows += [(f"{key} (before recovery)", dense.get(key), value) for key, value in sorted(before.items())]
    return rows


def print_summary(results: dict[str, Any], run_dir: Path) -> None:
    rows = [(name, _fmt(dense), _fmt(pruned)) for name, dense, pruned in summary_rows(results)]
    width = max(len(r[0]) for r in rows)
    header = f"{'':<{width}}  {'dense':>14}  {'pruned':>16}"
    print(f"\n{results['pruning'].get('scorer')} on {results['model'].get('name')}")
    print(header)
    for name, dense, pruned in rows:
        print(f"{name:<{width}}  {dense:>14}  {pruned:>16}")
    print(f"results: {run_dir / 'results.json'}")
