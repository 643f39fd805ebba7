"""Generation throughput of the reasoning evaluation: the same few-shot prompts generated one
question at a time and in padded batches, each with and without reuse of the shared exemplar prefix,
greedy, on the device the model config names.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_generation.py --data-root ../shared/data \
        --task gsm8k --questions 16 --batch-sizes 1,16

Prints one markdown row per (batch size, prefix reuse): new tokens, wall seconds (prompt and
generation), new tokens per wall second, the same per CPU second of this process (steadier than wall
time on a machine other jobs share; use --threads 1 there), speed-up over the first row, and how
many generations equal the first row's (greedy decoding with padding can differ in the last float
bits, so a few may).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rkuprune.data.sources import DataConfig
from rkuprune.evaluation.base import BenchmarkConfig, build_tasks
from rkuprune.evaluation.reasoning import PLAIN_STOP
from rkuprune.generation import Sampling, generate
from rkuprune.models.loading import ModelConfig, load_model

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a conf/model/<name>.yaml")
    parser.add_argument("--data-root", default=None, help="data.root (not needed for --task synthetic)")
    parser.add_argument("--task", default="gsm8k", choices=["gsm8k", "mathqa", "aqua", "synthetic"])
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--reuse-prefix", default="off,on", help="off, on, or off,on")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    raw = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{args.model}.yaml"))
    raw.pop("defaults", None)
    loaded = load_model(ModelConfig(**raw))
    suite = BenchmarkConfig(name="bench", tasks={"t": {"task": args.task, "shots": args.shots}}, limit=args.questions)
    task = build_tasks(suite, DataConfig(root=args.data_root))["t"]
    prompts = [task.prompt(q, loaded.tokenizer) for q in task.questions]
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    prompt_tokens = sum(len(loaded.tokenizer(p).input_ids) for p in prompts)

    print(f"{loaded.name}, {args.task} {args.shots}-shot, {len(prompts)} questions ({prompt_tokens} prompt tokens), ")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else "?"
    print(
        f"max_new_tokens={args.max_new_tokens}, greedy, {torch.get_num_threads()} torch threads, {time.ctime()}, load {load}\n"
    )
    print(
        "| batch size | reuse prefix | new tokens | wall s | tokens/s | CPU s | tokens/CPU-s | speed-up (CPU) | same as row 1 |"
    )
    print("|---:|:---:|---:|---:|---:|---:|---:|---:|---:|")
    reference, base_rate = None, None
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        for reuse in (r == "on" for r in args.reuse_prefix.split(",")):
            cpu = time.process_time()
            completions, stats = generate(
                loaded.model, loaded.tokenizer, prompts, sampling, batch_size, stop=PLAIN_STOP, reuse_prefix=reuse
            )
            cpu = time.process_time() - cpu
            cpu_rate = stats.new_tokens / cpu
            reference = reference or completions
            base_rate = base_rate or cpu_rate
            same = sum(a.text == b.text for a, b in zip(reference, completions, strict=True))
            print(
                f"| {batch_size} | {'yes' if reuse else 'no'} | {stats.new_tokens} | {stats.seconds:.1f} | "
                f"{stats.tokens_per_s:.2f} | {cpu:.1f} | {cpu_rate:.2f} | {cpu_rate / base_rate:.2f}x | "
                f"{same}/{len(prompts)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
