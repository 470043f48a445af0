"""Benchmark: the same pruning sweep in this process vs on a local Ray cluster of 1 and 2 workers.

Each Ray run starts a fresh local cluster (``ray.init``, timed apart: Ray's fixed start-up cost)
and then times the sweep itself, which includes each worker's first imports and model load (a
cost the in-process run pays once too). The tables must be equal (the ``seconds`` column
aside); the ratio is in-process time / Ray sweep time (higher = faster), also given with the
start-up included. On a machine shared with other work the ratios say little: the sweep needs
idle cores. A virtual machine's cores also change speed from minute to minute (here the same
table took 95 s and 142 s ten minutes apart), so ``--repeats R`` runs the set R times in turn
(in-process, then each worker count) and each ratio is taken against the in-process run of the
same round; the summary gives the median and the range over the rounds.

    python benchmarks/bench_scale.py                                  # bundled 2-layer GPT-2
    python benchmarks/bench_scale.py --workers 1,2,4 --methods magnitude,taylor,ablation
    python benchmarks/bench_scale.py --methods taylor,attribution,ablation --n-prompts 16 --n-tokens 64 --workers 2 --repeats 3
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: the workers share the cores

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def config(args, out: Path) -> dict:
    return {"out": str(out), "models": [args.model], "n_prompts": args.n_prompts, "n_eval_prompts": args.n_prompts,
            "n_tokens": args.n_tokens, "methods": args.methods.split(","), "units": ["head", "neuron"],
            "sparsities": [float(s) for s in args.sparsities.split(",")], "eval_domains": ["python", "cpp"]}


def job_seconds(out: Path, table: pd.DataFrame) -> dict[str, float]:
    """Seconds of the in-process run's work: each score table (from its saved file) and the cells'
    pruning and evaluation (in one process a cell's ``seconds`` include the scores it computed)."""
    jobs = {f"score {p.stem} ({p.parent.parent.name})": json.loads(p.read_text())["seconds"]
            for p in (out / "scores").rglob("*.json")}
    jobs["cells' pruning and evaluation"] = float(table["seconds"].sum()) - sum(jobs.values())
    return jobs


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="code-gpt2-2l")
    p.add_argument("--methods", default="magnitude,taylor,attribution")
    p.add_argument("--sparsities", default="0.25,0.5")
    p.add_argument("--n-prompts", type=int, default=8)
    p.add_argument("--n-tokens", type=int, default=32)
    p.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts")
    p.add_argument("--repeats", type=int, default=1, help="rounds of the whole set, each ratio within its round")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")

    import ray
    import torch

    from causal_nb.core.executors import RayExecutor
    from causal_nb.evaluation.sweep import SPLIT_METHODS, sweep

    torch.set_num_threads(1)
    rows = []
    for rnd in range(1, args.repeats + 1):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            ref = sweep(config(args, Path(tmp) / "inprocess"), progress=False)
            inproc = time.perf_counter() - t0
            jobs = job_seconds(Path(tmp) / "inprocess", ref)
            rows.append({"round": rnd, "run": "in-process", "workers": 0, "startup_s": 0.0, "sweep_s": inproc,
                         "ratio": 1.0, "ratio_with_startup": 1.0, "equal": "reference"})
            for n in [int(w) for w in args.workers.split(",")]:
                t0 = time.perf_counter()
                ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False, configure_logging=False)
                startup = time.perf_counter() - t0
                try:
                    t0 = time.perf_counter()
                    res = sweep(config(args, Path(tmp) / f"ray{n}"), executor=RayExecutor(workers=n), progress=False)
                    took = time.perf_counter() - t0
                finally:
                    ray.shutdown()
                try:
                    pd.testing.assert_frame_equal(res.drop(columns="seconds"), ref.drop(columns="seconds"))
                    equal = "yes"
                except AssertionError as e:
                    equal = f"NO: {str(e).splitlines()[0]}"
                rows.append({"round": rnd, "run": f"ray, {n} worker(s)", "workers": n, "startup_s": startup,
                             "sweep_s": took, "ratio": inproc / took, "ratio_with_startup": inproc / (took + startup),
                             "equal": equal})
        print(f"round {rnd}: " + ", ".join(f"{r['run']} {r['sweep_s']:.1f} s" for r in rows if r["round"] == rnd),
              flush=True)
    cells = len(ref)
    lines = [f"{cells} cells ({args.model}, methods {args.methods}, head+neuron, sparsities {args.sparsities}, "
             f"{args.n_prompts} prompts x {args.n_tokens} tokens), {os.cpu_count()} CPUs, load average "
             f"{os.getloadavg()[0]:.1f} at the end",
             "| round | run | Ray start-up s | sweep s | in-process / run | with start-up | table equal |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['run']} | {r['startup_s']:.1f} | {r['sweep_s']:.1f} | {r['ratio']:.2f}x | "
              f"{r['ratio_with_startup']:.2f}x | {r['equal']} |" for r in rows]
    if args.repeats > 1:
        df = pd.DataFrame(rows)
        lines += ["", "| workers | median ratio | range | median with start-up | median in-process s |", "|---|---|---|---|---|"]
        base = df[df.workers == 0].sweep_s.median()
        for n, g in df[df.workers > 0].groupby("workers"):
            lines.append(f"| {n} | {g.ratio.median():.2f}x | {g.ratio.min():.2f}-{g.ratio.max():.2f}x | "
                         f"{g.ratio_with_startup.median():.2f}x | {base:.1f} |")
    heavy = max((k for k in jobs if k.startswith("score")), key=jobs.get)
    lines += ["", f"In process: {sum(jobs.values()):.1f} s of work, of which the score tables "
              f"{sum(v for k, v in jobs.items() if k.startswith('score')):.1f} s (the longest, {heavy}, "
              f"{jobs[heavy]:.1f} s). A distributed sweep splits the tables of the exact methods "
              f"({', '.join(SPLIT_METHODS)}) into unit ranges of equal cost over its workers."]
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
