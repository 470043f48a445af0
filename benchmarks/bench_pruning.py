"""Benchmark: what physical pruning buys. Latency of the bundled model with 50% of its heads and
50% of its MLP neurons removed, against the dense model and the masked model (same shapes,
pruned units zeroed), measured in the same run, at batch 1 and batch 32.

Prints, per batch size, the median forward time (plain Hugging Face model, no hooks), the
speed-up over dense, parameters, FLOPs per token and peak forward memory, and checks that
the physical model's logits equal the masked model's.

    python benchmarks/bench_pruning.py                 # CPU, code-llama-4l
    python benchmarks/bench_pruning.py --record        # append the table to RESULTS.md
    python benchmarks/bench_pruning.py --model smollm2-135m --tokens 64 --repeats 3 --record
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import datetime as dt
import platform
from pathlib import Path

import numpy as np
import torch

import causal_nb as cnb
from causal_nb.evaluation.quality import flops_per_token, latency_ms, peak_memory_mb
from causal_nb.models.hf import plain_hf

HERE = Path(__file__).parent


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="code-llama-4l")
    p.add_argument("--sparsity", type=float, default=0.5, help="share of heads and of neurons removed")
    p.add_argument("--tokens", type=int, default=128, help="sequence length timed")
    p.add_argument("--batches", default="1,32", help="batch sizes timed, comma-separated")
    p.add_argument("--repeats", type=int, default=15, help="timed forwards per setting (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cnb.setup(seed=0)
    model = cnb.load_model(a.model, device="cpu")
    prompts = cnb.load_prompts("python", split="train", n=16)
    # Which units go does not change the timing; magnitude needs no data and is deterministic.
    heads = cnb.score(model, prompts, "magnitude", unit="head")
    neurons = cnb.score(model, prompts, "magnitude", unit="neuron")
    variants = {
        "dense": model,
        "masked": cnb.prune(model, [heads, neurons], a.sparsity, physical=False),
        "physical": cnb.prune(model, [heads, neurons], a.sparsity, physical=True),
    }
    x = cnb.load_prompts("python", split="test", n=8).tokenize(model, 64).tokens
    with torch.no_grad():
        diff = (variants["physical"](x, return_type="logits") - variants["masked"](x, return_type="logits")).abs().max()
    # timed outside TransformerLens, as deployed: a bridge's HF model rebuilt around its own tensors
    hfs = {k: plain_hf(v, share=True) if hasattr(v, "original_model") else v for k, v in variants.items()}
    batches = [int(b) for b in a.batches.split(",")]
    per_round = max(1, a.repeats // 3)
    lines = [f"### bench_pruning — {dt.date.today()} — {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}",
             "",
             f"{a.model}, {a.sparsity:.0%} of heads and {a.sparsity:.0%} of MLP neurons removed (magnitude order), "
             f"{a.tokens} tokens; median of {3 * per_round} forwards after one warm-up (plain HF model, fp32). "
             f"max |physical - masked| logits = {diff:.1e}",
             "",
             "| model | batch | ms | speed-up vs dense | params | MFLOPs/token | peak fwd MB |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    params = {k: sum(p.numel() for p in hf.parameters()) for k, hf in hfs.items()}
    for b in batches:  # each batch size's rows printed once measured (a real model's batch 32 takes minutes)
        # Interleave the variants so drift in machine load hits them alike; one warm-up each.
        times = {k: [] for k in hfs}
        for r in range(3):
            for k, hf in hfs.items():
                times[k].append(latency_ms(hf, b, a.tokens, per_round, warmup=1 if r == 0 else 0))
        dense = float(np.median(times["dense"]))
        for k, hf in hfs.items():
            ms = float(np.median(times[k]))
            mem = peak_memory_mb(hf, b, a.tokens)
            lines.append(f"| {k} | {b} | {ms:.1f} | {dense / ms:.2f}x | {params[k] / 1e6:.2f}M | "
                         f"{flops_per_token(hf, a.tokens) / 1e6:.1f} | {mem:.0f} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    if a.record:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write("\n" + table + "\n")
    return table


if __name__ == "__main__":
    main()
