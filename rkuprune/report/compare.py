"""Paired comparisons of two methods over common seeds (the RKU paper's "common-seed audit"):
``python -m rkuprune.report DIR --compare rku,gisp``.

Two runs form a pair when they share the model, the target sparsity and every model, data, benchmark,
calibration and seed field (``Run.task_identity``), so each difference is one seed's head-to-head on the
same calibration tokens and the same evaluation. Per cell: the per-seed differences (first minus second),
their mean, and how many seeds favour each method (lower perplexity, higher accuracy or speedup)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from rkuprune.report.collect import Collection, Run
from rkuprune.report.tables import PERCENT_PREFIXES, mean_sd, shown

HIGHER_IS_BETTER = (*PERCENT_PREFIXES, "speedup/")
LOWER_IS_BETTER = ("ppl/",)


def higher_is_better(metric: str) -> bool | None:
    """The direction of ``metric``, or None for a column that is not a quality (``removed/q_heads``)."""
    if metric.startswith(HIGHER_IS_BETTER):
        return True
    if metric.startswith(LOWER_IS_BETTER):
        return False
    return None


class CompareError(ValueError):
    """A ``--compare`` value that names no method of the collection."""


@dataclass
class Pair:
    model: str
    target: float
    metric: str
    seeds: str
    first: float
    second: float

    @property
    def difference(self) -> float:
        return self.first - self.second

    def favours(self) -> int:
        """+1 when the first method did better on this seed, -1 when the second did, 0 for a tie."""
        if self.first == self.second:
            return 0
        return 1 if (self.first > self.second) == higher_is_better(self.metric) else -1


def _runs_of(collection: Collection, name: str) -> list[Run]:
    """The runs ``name`` selects: the row of that label, else every row of that method."""
    labelled = [r for r in collection.runs if r.label == name]
    return labelled or [r for r in collection.runs if r.method == name]


Key = tuple[str, float, str]


def _side(collection: Collection, name: str) -> dict[Key, Run]:
    """``name``'s runs by model, target and task. Two rows of one method on the same task and seeds
    (``rku`` with and without recovery) are refused: pairing both with one partner once put each seed in a
    cell twice."""
    side: dict[Key, Run] = {}
    for run in _runs_of(collection, name):
        key = (run.model, run.target, run.task_identity)
        if key in side and side[key].label != run.label:
            rows = sorted({r.label for r in _runs_of(collection, name)})
            raise CompareError(
                f"--compare: '{name}' names {len(rows)} rows run on the same task and seeds "
                f"({'; '.join(rows)}); give one of them in full"
            )
        side[key] = run
    return side


def parse_compare(value: str, collection: Collection) -> tuple[str, str]:
    """``rku,gisp`` as two method names (a scorer preset or a row label) present in the collection.

    Labels may hold commas (``rku (granularity=none, recovery=lora)``): the split taken is the one whose
    halves both name runs."""
    parts = value.split(",")
    splits = [(",".join(parts[:i]).strip(), ",".join(parts[i:]).strip()) for i in range(1, len(parts))]
    if not splits or not all(all(halves) for halves in splits):
        raise CompareError(f"--compare: '{value}' must be two different methods, e.g. --compare rku,gisp")
    available = sorted({r.method for r in collection.runs} | {r.label for r in collection.runs})
    named = [halves for halves in splits if all(h in available for h in halves)]
    if not named:
        missing = next(h for halves in splits for h in halves if h not in available)
        raise CompareError(f"--compare: '{missing}' is not a method of these runs (available: {', '.join(available)})")
    if len(named) > 1:
        raise CompareError(f"--compare: '{value}' splits into two methods in {len(named)} ways")
    first, second = named[0]
    if first == second:
        raise CompareError(f"--compare: '{value}' must be two different methods, e.g. --compare rku,gisp")
    _side(collection, first), _side(collection, second)  # refuse an ambiguous name before anything is written
    return first, second


def pairs(collection: Collection, first: str, second: str) -> list[Pair]:
    """Every (seed, metric) on which both methods ran the same task; a run without a partner is left out."""
    partners = _side(collection, second)
    found = []
    for key, run in _side(collection, first).items():
        partner = partners.get(key)
        if partner is None:
            continue
        for metric in sorted(run.metrics.keys() & partner.metrics.keys()):
            if higher_is_better(metric) is not None:
                found.append(
                    Pair(run.model, run.target, metric, run.seeds, run.metrics[metric], partner.metrics[metric])
                )
    return sorted(found, key=lambda p: (p.model, p.target, p.metric, p.seeds))


def unpaired(collection: Collection, first: str, second: str) -> tuple[int, int]:
    """How many runs of each method had no partner (another sparsity, calibration, seed...): said beside
    the pairs, so that a comparison over fewer seeds than the sweep ran does not pass for the whole."""
    a, b = _side(collection, first), _side(collection, second)
    return len(a.keys() - b.keys()), len(b.keys() - a.keys())


def _cells(found: list[Pair]) -> dict[tuple[str, float, str], list[Pair]]:
    cells: dict[tuple[str, float, str], list[Pair]] = {}
    for pair in found:
        cells.setdefault((pair.model, pair.target, pair.metric), []).append(pair)
    return cells


def _signed(metric: str, value: float) -> str:
    text = shown(metric, abs(value))
    return f"-{text}" if value < 0 and text.strip("0.") else f"+{text}"


def to_markdown(first: str, second: str, found: list[Pair], left_out: tuple[int, int] = (0, 0)) -> str:
    """One row per model, sparsity and metric: per-seed differences, their mean ± sd, and the seeds won."""
    lines = [
        f"## {first} vs {second}",
        "",
        f"Differences are {first} − {second} on the same seeds, in the table's units (accuracies in points); "
        "a seed favours the method with the lower perplexity or the higher accuracy.",
        "",
    ]
    alone = (
        [
            f"Runs left out (no partner on the same model, sparsity, task and seeds): {first} {left_out[0]}, "
            f"{second} {left_out[1]}.",
            "",
        ]
        if any(left_out)
        else []
    )
    if not found:
        return "\n".join([*lines, f"No run of {first} has a run of {second} on the same task and seeds.", "", *alone])
    header = [
        "model",
        "sparsity",
        "metric",
        "n",
        "per-seed differences",
        "mean ± sd",
        f"seeds for {first}",
        f"for {second}",
        "ties",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    total = [0, 0, 0]
    for (model, target, metric), cell in _cells(found).items():
        votes = [p.favours() for p in cell]
        counts = [votes.count(1), votes.count(-1), votes.count(0)]
        total = [t + c for t, c in zip(total, counts, strict=True)]
        differences = [p.difference for p in cell]
        mean, sd, n = mean_sd(differences)
        spread = _signed(metric, mean) + ("" if sd is None else f" ± {shown(metric, sd)}")
        per_seed = "; ".join(f"{p.seeds or 'run'}: {_signed(metric, p.difference)}" for p in cell)
        lines.append(
            f"| {model} | {target:g} | {metric} | {n} | {per_seed} | {spread} | {counts[0]} | {counts[1]} | {counts[2]} |"
        )
    lines += [
        "",
        f"Over all {sum(total)} seed-metric comparisons: {total[0]} favour {first}, {total[1]} favour {second}, {total[2]} ties.",
        "",
        *alone,
    ]
    return "\n".join(lines)


def to_csv(first: str, second: str, found: list[Pair]) -> str:
    """One row per seed and metric, values unrounded."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "sparsity", "metric", "seeds", first, second, "difference", "favours"])
    for pair in found:
        favoured = {1: first, -1: second, 0: "tie"}[pair.favours()]
        writer.writerow(
            [
                pair.model,
                f"{pair.target:g}",
                pair.metric,
                pair.seeds,
                pair.first,
                pair.second,
                pair.difference,
                favoured,
            ]
        )
    return buffer.getvalue()
