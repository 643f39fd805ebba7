"""Published numbers (docs/design.md section 10) for the report's "paper" column.

Accuracies are percentages as published; perplexities as published. Only rows whose model, method,
sparsity and metric are all known are listed; the leaderboard extracts whose row is unknown and
the RKU-vs-GISP margins are not single values and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from rkuprune.evaluation.lm_eval_generative import GENERATIVE  # lm-eval task -> (folder, dataset)


@dataclass(frozen=True)
class Published:
    source: str
    model: str  # this project's model config name
    method: str  # this project's scorer name
    sparsity: float
    quantity: str  # what was measured, as our keys name it without a protocol: "acc/gsm8k", "ppl/wikitext2@128"
    value: float
    protocol: str  # how the source measured it (task, shots, decoding, scoring): the footnote when ours differs
    same_as: str | None = None  # our metric key measured the same way, when one is: then no footnote
    # Scored by an LLM judge: shown beside our judge column (``<key>/judge``) when a run has one.
    judged: bool = False
    # The pruning.granularity the published method prunes at, when a run of the same scorer may differ
    # (RKU beside its heads ablation): the value sits beside runs at this granularity only.
    granularity: str | None = None

    @property
    def note(self) -> str:
        return f"{self.source}: {self.protocol}"


RESP_OURS = (
    "judged by an LLM (Qwen3-30B-A3B-Instruct-2507); ours: the project's own prompts with RESP's decoding "
    "(benchmark=resp_protocol), judged when benchmark.judge.enabled=true, else lm-eval's regex rules"
)
RESP_GSM8K = f"lm-eval's gsm8k_cot_sample, 8-shot, chat template, Qwen3 thinking, T=0.6, up to 2048 tokens, {RESP_OURS}"
RESP_MATHQA = f"MathQA through lm-eval, 0-shot, chat template, Qwen3 thinking, T=0.6, up to 4096 tokens, {RESP_OURS}"


PUBLISHED: tuple[Published, ...] = (
    # The RKU paper gives 13.34 for "Qwen-2.5-7B / LLaMA-3-8B" without saying which: listed for both.
    # Global RKU prunes FFN channels (the v2 abstract): beside granularity=none rows only.
    *(
        Published(
            "RKU (arXiv 2605.09008)",
            model,
            "rku",
            0.4,
            "acc/gsm8k",
            13.34,
            "GSM8K accuracy; the abstract names neither the lm-eval task nor the shots",
            granularity="none",
        )
        for model in ("qwen2.5-7b", "llama3-8b")
    ),
    Published("RESP (arXiv 2512.02185)", "qwen3-8b", "resp", 0.4, "acc/gsm8k", 81.3, RESP_GSM8K, judged=True),
    Published("RESP (arXiv 2512.02185)", "qwen3-8b", "resp", 0.4, "acc/mathqa", 59.6, RESP_MATHQA, judged=True),
    *(
        Published(
            "GISP README",
            "llama3-8b",
            method,
            0.4,
            "ppl/wikitext2@128",
            value,
            "WikiText-2 test joined with blank lines, tokenizer(text), 128-token windows (modules/eval/ppl.py)",
            same_as="ppl/wikitext2@128",
        )
        for method, value in (("wanda_sp", 81.67), ("gisp", 46.10))
    ),
)


def published_for(model: str, method: str, sparsity: float, granularity: str | None = None) -> list[Published]:
    """The published values for a run of ``method`` (its scorer preset: rku_iterative is not rku)."""
    return [
        row
        for row in PUBLISHED
        if (row.model, row.method) == (model, method)
        and abs(row.sparsity - sparsity) < 1e-9
        and row.granularity in (None, granularity)
    ]


def cell_for(paper: Published, metrics: dict[str, float]) -> str | None:
    """Which of a run's metric keys shows ``paper``: the key measured the same way; else, for a judged
    value, our judge column; else lm-eval's own task (strict-match), else the project's own protocol."""
    dataset = paper.quantity.removeprefix("acc/")
    lm_eval = [f"acc/{task}@lm_eval/strict-match" for task, (_, d) in GENERATIVE.items() if d == dataset]
    own = f"{paper.quantity}@rkuprune"
    candidates = [paper.same_as, *([f"{own}/judge"] if paper.judged else []), *lm_eval, own]
    return next((key for key in candidates if key is not None and key in metrics), None)
