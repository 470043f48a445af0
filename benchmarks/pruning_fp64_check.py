"""Is the physical-vs-masked logit gap of a pruned real model float32 rounding? Compare in fp64.

``bench_pruning.py --model smollm2-135m`` reports max |physical - masked| logits of ~7e-3 for
50% of heads and neurons removed (30 layers, logits up to ~42): above the 1e-5-relative bound
the tiny-model tests hold. This script builds the same two pruned models in float32 and in
float64 and prints each gap, and how far each float32 model is from the float64 masked one:
if physical equals masked in float64 and both float32 models are as far from float64 as from
each other, the gap is float32 summation order (a sliced matmul adds fewer, differently
blocked terms), not a slicing error.

    python benchmarks/pruning_fp64_check.py                        # smollm2-135m, ~1 min
    python benchmarks/pruning_fp64_check.py --model code-llama-4l
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse

import torch

import causal_nb as cnb


def pruned_logits(name: str, dtype: torch.dtype, sparsity: float) -> tuple[torch.Tensor, torch.Tensor]:
    model = cnb.load_model(name, device="cpu", dtype=dtype)
    prompts = cnb.load_prompts("python", split="train", n=16)
    tables = [cnb.score(model, prompts, "magnitude", unit=u) for u in ("head", "neuron")]
    x = cnb.load_prompts("python", split="test", n=8).tokenize(model, 64).tokens
    with torch.no_grad():
        masked = cnb.prune(model, tables, sparsity, physical=False)(x, return_type="logits").double()
        phys = cnb.prune(model, tables, sparsity, physical=True)(x, return_type="logits").double()
    return masked, phys


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--sparsity", type=float, default=0.5)
    a = p.parse_args(argv)
    cnb.setup(seed=0)
    m32, p32 = pruned_logits(a.model, torch.float32, a.sparsity)
    m64, p64 = pruned_logits(a.model, torch.float64, a.sparsity)
    out = {"fp32 |physical - masked|": (p32 - m32).abs().max().item(),
           "fp64 |physical - masked|": (p64 - m64).abs().max().item(),
           "fp32 masked vs fp64 masked": (m32 - m64).abs().max().item(),
           "fp32 physical vs fp64 masked": (p32 - m64).abs().max().item(),
           "max |logit|": m64.abs().max().item()}
    for k, v in out.items():
        print(f"{a.model}: {k} = {v:.2e}")
    return out


if __name__ == "__main__":
    main()
