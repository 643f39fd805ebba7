"""Perplexity's BOS rule against an independent GPTQ-style computation, on a real model.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/ppl_bos_check.py --data-root DATA --seqlen 512 --windows 8

Prints one markdown row per computation on the WikiText-2 test text: the project's perplexity task with
``bos=tokenizer`` and with ``bos=once``, and GPTQ's loop written out here (``tokenizer(text)``, full
windows, each window's mean loss × seqlen, exp of the sum over nsamples × seqlen), with the first token
of each stream.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rkuprune.data.sources import DataConfig
from rkuprune.evaluation.base import BenchmarkConfig, EvalContext, build_tasks
from rkuprune.evaluation.perplexity import evaluation_text, token_stream
from rkuprune.models.loading import ModelConfig, load_model

CONF = Path(__file__).resolve().parents[1] / "conf"


@torch.no_grad()
def gptq_style(model: torch.nn.Module, tokenizer: object, text: str, seqlen: int, windows: int) -> float:
    ids = tokenizer(text, return_tensors="pt").input_ids  # type: ignore[operator]
    nsamples = min(ids.numel() // seqlen, windows)
    nlls = []
    for i in range(nsamples):
        batch = ids[:, i * seqlen : (i + 1) * seqlen]
        logits = model(batch).logits.float()
        nlls.append(torch.nn.CrossEntropyLoss()(logits[0, :-1], batch[0, 1:]).double() * seqlen)
    return math.exp(torch.stack(nlls).sum().item() / (nsamples * seqlen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a conf/model/<name>.yaml")
    parser.add_argument("--data-root", required=True, help="data.root holding wikitext2/wiki.test.raw")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()

    raw = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{args.model}.yaml"))
    raw.pop("defaults", None)
    loaded = load_model(ModelConfig(**raw))
    data = DataConfig(root=args.data_root)
    text = evaluation_text("wikitext2", data)
    print(f"{loaded.name}, WikiText-2 test, {args.windows} windows of {args.seqlen} tokens\n")
    print("| computation | first token | perplexity |")
    print("|---|---|---:|")
    for bos in ("tokenizer", "once"):
        task = {"task": "perplexity", "dataset": "wikitext2", "seqlen": args.seqlen}
        task |= {"max_windows": args.windows, "bos": bos}
        ppl = build_tasks(BenchmarkConfig(tasks={"p": task}), data)["p"]
        value = next(iter(ppl.evaluate(loaded.model, loaded.tokenizer, EvalContext()).values()))
        first = loaded.tokenizer.convert_ids_to_tokens(int(token_stream(loaded.tokenizer, text, bos)[0]))
        print(f"| project, `bos={bos}` | `{first}` | {value:.6f} |")
    first = loaded.tokenizer.convert_ids_to_tokens(int(loaded.tokenizer(text).input_ids[0]))
    reference = gptq_style(loaded.model, loaded.tokenizer, text, args.seqlen, args.windows)
    print(f"| GPTQ-style script | `{first}` | {reference:.6f} |")


if __name__ == "__main__":
    main()
