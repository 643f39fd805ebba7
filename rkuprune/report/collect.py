"""Read every results.json under a folder into flat rows, saying which files were skipped and why."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rkuprune.evaluation.speed import report_columns
from rkuprune.tracking.records import RESULTS_FILE, read_results

# Config paths that never tell two runs apart in a table (they are bookkeeping, or the column).
IGNORED_KEYS = {"sweep_name", "tags", "save_model", "dense_cache", "pruning.sparsity"}
IGNORED_PREFIXES = ("logger.",)
# Fields the dense reference depends on too: labelled by their full path, and they split the dense row.
HIDDEN_PREFIXES = ("data.", "benchmark.", "model.")
# Fields that define the task a method is compared on (not the method): equal in both runs of a pair.
TASK_PREFIXES = (*HIDDEN_PREFIXES, "calibration.")


def is_seed(key: str) -> bool:
    """``seed``, ``model.seed``, ``calibration.seed``, ...: runs differing only in seeds are replicates of
    one cell (mean ± sd, n), never rows of their own."""
    return key.rsplit(".", 1)[-1] == "seed"


def labelled(key: str) -> bool:
    """Whether a difference in ``key`` gives runs rows of their own."""
    return key not in IGNORED_KEYS and not key.startswith(IGNORED_PREFIXES) and not is_seed(key)


def is_hidden(key: str) -> bool:
    return key.startswith(HIDDEN_PREFIXES)


@dataclass
class Run:
    path: Path
    model: str
    scorer: str  # the scorer's registered name (published values are looked up by it)
    method: str  # the scorer preset the run was composed with (rku_iterative), else the scorer
    variant: str
    target: float
    measured: float
    metrics: dict[str, float]
    dense: dict[str, float]
    config: dict[str, Any]
    dense_variant: str = ""  # the hidden fields that tell this run's dense reference from others' (data.root=...)
    dense_identity: str = ""  # the hidden fields, seeds included: equal with equal dense metrics = one measurement
    seeds: str = ""  # the seed fields that differ between the collection's runs, e.g. "seed=1, model.seed=0"
    task_identity: str = ""  # model, data, benchmark, calibration and seed fields: equal in a paired comparison

    @property
    def label(self) -> str:
        return f"{self.method} ({self.variant})" if self.variant else self.method


@dataclass
class Collection:
    runs: list[Run] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        return sorted({r.model for r in self.runs})

    @property
    def metrics(self) -> list[str]:
        return sorted({k for r in self.runs for k in r.metrics})


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = json.dumps(value) if isinstance(value, list) else value
    return flat


def scorer_preset(results_path: Path) -> str | None:
    """The ``scorer=`` choice of the run (Hydra's record beside results.json), e.g. ``rku_iterative``,
    whose scorer is ``rku``: a preset names a method better than the fields it sets."""
    hydra_file = results_path.parent / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return None
    choices = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get("runtime", {}).get("choices", {})
    return choices.get("scorer")


def _differs(key: str, runs: list[dict[str, Any]]) -> bool:
    return len({json.dumps(f.get(key), default=str) for f in runs}) > 1


def variant_label(flat: dict[str, Any], peers: list[dict[str, Any]], hidden: bool = False) -> str:
    """What else differs between runs of one model and method (e.g. the calibration), as a short label;
    with ``hidden``, the fields of ``model``, ``data`` and ``benchmark`` that differ, by their full path.

    A config group whose ``name`` differs is shown as ``group=name`` alone: the fields of ``recovery=lora``
    differ from ``recovery=none`` only because the group changed. Its other fields are shown when they
    differ between peers of the same group choice (``steps=80`` against ``steps=200``)."""
    keys = [k for k in flat if labelled(k) and is_hidden(k) == hidden and _differs(k, peers)]
    switched = {k.rsplit(".", 1)[0] for k in keys if k.count(".") == 1 and k.endswith(".name")}
    parts = []
    for key in sorted(keys):
        group = key.split(".", 1)[0]
        if group in switched:
            if key == f"{group}.name":
                parts.append(f"{group}={flat[key]}")
            elif _differs(key, [f for f in peers if f.get(f"{group}.name") == flat[f"{group}.name"]]):
                parts.append(f"{key.split('.', 1)[-1]}={flat[key]}")
        else:
            parts.append(f"{key if hidden else key.split('.', 1)[-1]}={flat[key]}")
    return ", ".join(parts)


def removed_heads(pruning: dict[str, Any]) -> dict[str, float]:
    """Query heads the plan removed, as a column, for runs whose granularity prunes heads."""
    if pruning.get("granularity") in ("none", "layer") or "removed_q_heads" not in pruning:
        return {}
    return {"removed/q_heads": float(pruning["removed_q_heads"])}


def collect(folder: Path) -> Collection:
    """Load completed runs; corrupt, failed, incomplete or malformed files are named in ``skipped`` and
    passed over (``read_results`` says why). NaN or infinite metrics come back as floats and show as such."""
    found = Collection()
    raw: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(Path(folder).rglob(RESULTS_FILE)):
        results, problem = read_results(path)
        if results is None:
            found.skipped.append(f"{path}: {problem}")
            continue
        raw.append((path, results))
    flats = {path: _flatten(results["config"]) for path, results in raw}
    methods = {path: scorer_preset(path) or results["pruning"]["scorer"] for path, results in raw}
    seed_keys = sorted({k for f in flats.values() for k in f if is_seed(k) and _differs(k, list(flats.values()))})
    for path, results in raw:
        model, scorer = results["model"]["name"], results["pruning"]["scorer"]
        peers = [flats[p] for p, r in raw if r["model"]["name"] == model and methods[p] == methods[path]]
        model_peers = [flats[p] for p, r in raw if r["model"]["name"] == model]
        variant = variant_label(flats[path], peers)
        if "granularity=" not in variant and _differs(
            "pruning.granularity", model_peers
        ):  # rows that prune different units say which (RKU on channels beside GISP on heads and channels)
            variant = ", ".join(filter(None, [f"granularity={flats[path]['pruning.granularity']}", variant]))
        # a field the labels never showed (data.root, a model or benchmark setting) once let runs share a cell
        dense_variant = variant_label(flats[path], model_peers, hidden=True)
        variant = ", ".join(filter(None, [variant, dense_variant]))
        identity = {k: v for k, v in flats[path].items() if is_hidden(k) and not k.startswith(IGNORED_PREFIXES)}
        task = {k: v for k, v in flats[path].items() if k.startswith(TASK_PREFIXES) or is_seed(k)}
        found.runs.append(
            Run(
                path=path,
                model=model,
                scorer=scorer,
                method=methods[path],
                variant=variant,
                target=float(results["pruning"]["target_sparsity"]),
                measured=float(results["pruning"]["measured_sparsity"]),
                metrics={
                    **{k: float(v) for k, v in results.get("metrics", {}).items()},
                    **report_columns(results.get("efficiency", {})),  # speedups, shown next to sparsity
                    **removed_heads(results["pruning"]),
                    **{f"before_recovery/{k}": float(v) for k, v in results.get("metrics_before_recovery", {}).items()},
                },
                dense={k: float(v) for k, v in results.get("dense_metrics", {}).items()},
                config=results["config"],
                dense_variant=dense_variant,
                dense_identity=json.dumps(identity, sort_keys=True, default=str),
                seeds=", ".join(f"{k}={flats[path].get(k)}" for k in seed_keys),
                task_identity=json.dumps(task, sort_keys=True, default=str),
            )
        )
    return found
