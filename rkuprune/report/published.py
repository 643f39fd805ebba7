"""Published numbers (docs/design.md section 10) for the report's "paper" column.

Accuracies are percentages as published; perplexities as published. Only rows whose model, method,
sparsity and metric are all known are listed; the leaderboard extracts whose row is unknown and
the RKU-vs-GISP margins are not single values and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    source: str
    model: str  # this project's model config name
    method: str  # this project's scorer name
    sparsity: float
    metric: str  # this project's metric key
    value: float
    # How the paper scored it when that differs from how we score it (footnoted beside our value).
    note: str = ""
    # Scored by an LLM judge: shown beside our judge column (``<metric>/judge``) without the note when a run
    # has one (benchmark.judge.enabled=true), else beside the regex score with the note.
    judged: bool = False
    # The pruning.granularity the published method prunes at, when a run of the same scorer may differ
    # (RKU beside its heads ablation): the value sits beside runs at this granularity only.
    granularity: str | None = None


# RESP judged its answers with an LLM; runs with benchmark.judge off report lm-eval regex scores only.
RESP_JUDGED = (
    "judge-scored: RESP's accuracies were judged by an LLM (Qwen3-30B-A3B-Instruct-2507); "
    "ours use lm-eval's regex rules (benchmark.judge.enabled=true adds a judge column)"
)


PUBLISHED: tuple[Published, ...] = (
    # The RKU paper gives 13.34 for "Qwen-2.5-7B / LLaMA-3-8B" without saying which: listed for both.
    # Global RKU prunes FFN channels (the v2 abstract): beside granularity=none rows only.
    Published("RKU (arXiv 2605.09008)", "qwen2.5-7b", "rku", 0.4, "acc/gsm8k@rkuprune", 13.34, granularity="none"),
    Published("RKU (arXiv 2605.09008)", "llama3-8b", "rku", 0.4, "acc/gsm8k@rkuprune", 13.34, granularity="none"),
    Published("RESP (arXiv 2512.02185)", "qwen3-8b", "resp", 0.4, "acc/gsm8k@rkuprune", 81.3, RESP_JUDGED, judged=True),
    Published(
        "RESP (arXiv 2512.02185)", "qwen3-8b", "resp", 0.4, "acc/mathqa@rkuprune", 59.6, RESP_JUDGED, judged=True
    ),
    Published("GISP README", "llama3-8b", "wanda_sp", 0.4, "ppl/wikitext2@128", 81.67),
    Published("GISP README", "llama3-8b", "gisp", 0.4, "ppl/wikitext2@128", 46.10),
)


def published_value(
    model: str, method: str, sparsity: float, metric: str, granularity: str | None = None
) -> Published | None:
    """The published value for a run of ``method`` (its scorer preset: rku_iterative is not rku)."""
    for row in PUBLISHED:
        if (row.model, row.method, row.metric) == (model, method, metric) and abs(row.sparsity - sparsity) < 1e-9:
            return row if row.granularity in (None, granularity) else None
    return None
