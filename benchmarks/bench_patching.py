"""Benchmark: exact per-unit activation patching, the kit vs ``transformer_lens.patching``.

Same model, prompts and metric for both, measured in the same run: clean = prompts of the
``python`` test split, corrupted = the same with the first half of the tokens replaced by
another prompt's, metric = mean log-prob of the second-half tokens. Prints one row per
method with the median time over repeats, the ratio to the peer (higher = faster) and the
largest difference to the peer's numbers; attribution patching reports its Pearson and
Spearman correlation with the exact head effects instead.

    python benchmarks/bench_patching.py                    # CPU, bundled 4-layer model
    python benchmarks/bench_patching.py --gpu              # + GPT-2-small shape on CUDA
    python benchmarks/bench_patching.py --record           # append the table to RESULTS.md
    python benchmarks/bench_patching.py --model smollm2-135m --n-prompts 2 --n-tokens 16 --repeats 1 --warmup 0
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # the peer's own progress bars would flood the table

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from scipy import stats
from transformer_lens import patching as tlp

import causal_nb as cnb
from causal_nb.data.prompts import TokenBatch

HERE = Path(__file__).parent


def corrupted_pair(model, n_prompts: int, n_tokens: int):
    """Clean python prompts and a copy whose first half comes from other prompts."""
    cb = cnb.load_prompts("python", split="all").tokenize(model, n_tokens)
    full = cb.mask.all(-1).nonzero()[:n_prompts, 0]  # prompts at least n_tokens long
    cb = TokenBatch(cb.tokens[full], cb.mask[full], tuple(cb.ids[i] for i in full.tolist()))
    donor = torch.roll(cb.tokens, shifts=1, dims=0)
    half = n_tokens // 2
    x = cb.tokens.clone()
    x[:, 1:half] = donor[:, 1:half]
    return cb, TokenBatch(x, cb.mask.clone(), cb.ids)


def timed(fn, repeats: int, warmup: int = 1):
    for _ in range(warmup):  # first-call costs (allocation, lazy init) kept out of the timing
        fn()
    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench(model, label: str, n_prompts: int, n_tokens: int, repeats: int, units: list[str],
          warmup: int = 1) -> list[dict]:
    model.eval()
    cb, xb = corrupted_pair(model, n_prompts, n_tokens)
    dev = next(model.parameters()).device
    cb, xb = cb.to(dev), xb.to(dev)
    half = n_tokens // 2
    scored = list(range(half - 1, n_tokens - 1))
    tgt = cb.tokens[:, half:]

    def peer_metric(logits):  # the same arithmetic as the kit's "logprob" metric
        lg = logits[:, half - 1 : -1].float()
        return (lg.gather(-1, tgt[..., None])[..., 0] - torch.logsumexp(lg, -1)).mean()

    rows = []
    peers = {
        "head": (tlp.get_act_patch_attn_head_out_all_pos, {}),
        "resid": (tlp.get_act_patch_resid_pre, {"positions": range(n_tokens), "per_position": True}),
        "mlp": (tlp.get_act_patch_mlp_out, {"positions": range(n_tokens), "per_position": True}),
    }
    exact_heads = None
    for unit in units:
        if unit == "neuron":
            rows.append(bench_neurons(model, label, cb, xb, scored, peer_metric, warmup=warmup))
            print(rows[-1], flush=True)
            continue
        peer_fn, kw = peers[unit]

        def run_peer(peer_fn=peer_fn):
            _, cache = model.run_with_cache(cb.tokens)
            return peer_fn(model, xb.tokens, cache, peer_metric)

        def run_ours(unit=unit, kw=kw):
            return cnb.patch(model, cb, xb, unit=unit, scored_positions=scored, progress=False, **kw)

        t_peer, ref = timed(run_peer, repeats, warmup)
        t_ours, df = timed(run_ours, repeats, warmup)
        if unit == "head":
            ours = torch.tensor(df.value.values).view(ref.shape)
            exact_heads = ours
        else:
            ours = torch.tensor(df.sort_values(["layer", "pos"]).value.values).view(ref.shape)
        err = (ours - ref.double().cpu()).abs().max().item()
        rows.append({"model": label, "method": f"exact {unit}", "peer_s": t_peer, "ours_s": t_ours,
                     "ratio": t_peer / t_ours, "check": f"max abs diff {err:.1e} (largest effect "
                     f"{(ref - ref.flatten().median()).abs().max().item():.2f})"})
        print(rows[-1], flush=True)
    if exact_heads is not None:
        t_peer = rows[0]["peer_s"]
        t_attr, df = timed(lambda: cnb.patch(model, cb, xb, unit="head", method="attribution",
                                             scored_positions=scored, progress=False), repeats, warmup)
        est = torch.tensor(df.value.values)
        ex = exact_heads.flatten()
        rows.append({"model": label, "method": "attribution head", "peer_s": t_peer, "ours_s": t_attr,
                     "ratio": t_peer / t_attr, "check": f"Pearson {stats.pearsonr(est, ex)[0]:.3f}, "
                     f"Spearman {stats.spearmanr(est, ex)[0]:.3f} vs exact"})
        print(rows[-1], flush=True)
    return rows


def bench_neurons(model, label, cb, xb, scored, peer_metric, n_sample: int = 16, warmup: int = 1) -> dict:
    """Exact per-neuron patching of layer 0 (the costliest layer for the kit: every later block
    is replayed). TransformerLens has no neuron patching function, so the peer is the plain
    loop, one hooked forward per neuron, timed on an evenly spread sample and compared per
    neuron; its total is extrapolated to the layer."""
    n = model.cfg.d_mlp
    sample = list(range(0, n, max(1, n // n_sample)))[:n_sample]
    hook = "blocks.0.mlp.hook_post"
    _, cache = model.run_with_cache(cb.tokens, names_filter=hook)

    def run_peer():
        out = []
        for i in sample:
            def fn(act, hook, i=i):
                act = act.clone()
                act[:, :, i] = cache[hook.name][:, :, i]
                return act

            out.append(peer_metric(model.run_with_hooks(xb.tokens, fwd_hooks=[(hook, fn)])).item())
        return torch.tensor(out)

    t_peer, ref = timed(run_peer, 1, warmup)
    t_ours, df = timed(lambda: cnb.patch(model, cb, xb, unit="neuron", layers=[0], scored_positions=scored,
                                         progress=False), 1, warmup)
    err = (torch.tensor(df.value.values[sample]) - ref.double()).abs().max().item()
    per_peer, per_ours = t_peer / len(sample), t_ours / n
    return {"model": label, "method": f"exact neuron (layer 0, {n})", "peer_s": per_peer * n, "ours_s": t_ours,
            "ratio": per_peer / per_ours, "check": f"peer = plain hook loop, {per_peer * 1e3:.0f} vs "
            f"{per_ours * 1e3:.0f} ms per neuron (peer total extrapolated from {len(sample)}); max abs diff {err:.1e}"}


GPT2_SMALL = {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_mlp": 3072}


def shape_model(dtype, device: str = "cuda", shape: dict | None = None):
    """A random-init GPT-2 of the given shape (default GPT-2 small) on ``device``."""
    from causal_nb.zoo.tiny import make_tiny_model

    folder = Path(tempfile.mkdtemp()) / "gpt2-shape"
    make_tiny_model(folder, "gpt2", n_ctx=256, seed=0, **(shape or GPT2_SMALL))
    return cnb.load_model(folder, device=device, dtype=dtype)


def table(rows: list[dict]) -> str:
    lines = ["| model | method | peer (TL patching) s | causal_nb s | × peer | correctness |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['peer_s']:.2f} | {r['ours_s']:.3f} | {r['ratio']:.1f} | {r['check']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="code-llama-4l", help="model for the CPU part")
    p.add_argument("--n-prompts", type=int, default=32)
    p.add_argument("--n-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs before the timed ones (0 for a real model, where one run takes minutes)")
    p.add_argument("--units", nargs="*", default=["head", "resid", "mlp"],
                   help="head, resid, mlp, neuron (neuron: layer 0 only, one timed run; slow)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--gpu", action="store_true", help="also run the GPT-2-small shape on CUDA (fp32, bf16)")
    p.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    cnb.setup(seed=0)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = bench(cnb.load_model(a.model, device="cpu"), f"{a.model} (CPU)", a.n_prompts, a.n_tokens, a.repeats, a.units,
                 a.warmup)
    if a.gpu:
        if not torch.cuda.is_available():
            print("no CUDA device: GPU part skipped")
        else:
            for dtype in (torch.float32, torch.bfloat16):
                rows += bench(shape_model(dtype), f"GPT-2-small shape, {str(dtype)[6:]} (GPU)", 64, 64, a.repeats,
                              ["head"], a.warmup)
    out = table(rows)
    print(out)
    if a.record:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        if torch.cuda.is_available() and a.gpu:
            machine += f", {torch.cuda.get_device_name()}"
        with (HERE / "RESULTS.md").open("a") as fh:
            fh.write(f"\n## {dt.date.today()} — {machine}, torch {torch.__version__}\n"
                     f"`python benchmarks/bench_patching.py {' '.join(argv or sys.argv[1:])}` "
                     f"({a.n_prompts} prompts x {a.n_tokens} tokens, median of {a.repeats}"
                     f"{', no warm-up' if a.warmup == 0 else ''}"
                     f"{'; neuron row: one timed run after a warm-up' if 'neuron' in a.units else ''})\n\n{out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
