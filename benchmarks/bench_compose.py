"""Composable pruning vs direct pruning + end-to-end fine-tuning: time to equal quality for a family.

``nice -n 10 python benchmarks/bench_compose.py --model code-gpt2-2l --out runs/compose_bench``

Configuration i prunes attention at ``--attention[i]`` and the MLP linears at ``--linear[i]``. The
composed arm fine-tunes each distinct variant once (``--module-steps``, against the dense module)
and then each configuration end to end for up to ``--steps``; the baseline prunes each
configuration directly and fine-tunes it end to end for up to ``--baseline-steps``; both record the
held-out loss every ``--eval-every`` steps (``causal_nb.compose_compare``). The target of a
configuration is 1.01 x the baseline's best held-out loss (rule ``baseline``) or 1.01 x the best
of both arms (rule ``best``); each arm's time to target is its first evaluated step at or below
it, and the composed arm's family total counts the module level once. Writes ``results.json``,
the tables as CSV and ``table.md`` (markdown for RESULTS.md) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

import causal_nb as cnb


def _steps(v, cap) -> str:
    return f"> {int(cap)}" if pd.isna(v) else str(int(v))


def _secs(v, cap_s) -> str:
    return f"> {cap_s:.1f}" if pd.isna(v) else f"{v:.1f}"


def markdown(configs: pd.DataFrame, family: pd.DataFrame, dense: float) -> str:
    """The per-configuration and family tables as markdown ("> cap" where a target was not reached)."""
    out = []
    for rule, r in configs.groupby("rule", sort=False):
        out += [f"Rule `{rule}` (target = 1.01 x {'the baseline' if rule == 'baseline' else 'the better arm'}'s "
                f"best held-out loss; dense {dense:.4f}):", "",
                "| config (att/lin) | pruned | composed start | composed best | baseline best | target "
                "| composed steps | composed s | baseline steps | baseline s | s/step |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for _, x in r.iterrows():
            out.append(f"| {x.config} ({x.attention}/{x.linear}) | {x.baseline_start:.4f} | {x.composed_start:.4f} "
                       f"| {x.composed_best:.4f} | {x.baseline_best:.4f} | {x.target:.4f} "
                       f"| {_steps(x.composed_steps, x.composed_cap)} "
                       f"| {_secs(x.composed_s, x.composed_cap * x.s_per_step)} "
                       f"| {_steps(x.baseline_steps, x.baseline_cap)} "
                       f"| {_secs(x.baseline_s, x.baseline_cap * x.s_per_step)} | {x.s_per_step:.3f} |")
        out.append("")
    out += ["| rule | configs | variants | module steps | module s | composed model steps | composed total s "
            "| baseline steps | baseline s | ratio (s) | composed cost s | baseline cost s | ratio (cost) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, f in family.iterrows():
        lb = "> " if f.baseline_lower_bound else ""
        cb = "> " if f.composed_lower_bound else ""
        rb = "> " if f.baseline_lower_bound and not f.composed_lower_bound else ""
        out.append(f"| {f.rule} | {f.configs} | {f.variants} | {f.module_steps} | {f.module_s:.1f} "
                   f"| {cb}{f.composed_model_steps} | {cb}{f.composed_s:.1f} | {lb}{f.baseline_steps} "
                   f"| {lb}{f.baseline_s:.1f} | {rb}{f.ratio_s:.2f}x | {cb}{f.composed_cost_s:.1f} "
                   f"| {lb}{f.baseline_cost_s:.1f} | {rb}{f.ratio_cost:.2f}x |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="code-gpt2-2l")
    p.add_argument("--attention", type=float, nargs="+", default=[0.25, 0.5, 0.25, 0.5])
    p.add_argument("--linear", type=float, nargs="+", default=[0.3, 0.3, 0.5, 0.5])
    p.add_argument("--module-steps", type=int, default=100)
    p.add_argument("--steps", type=int, default=100, help="model-level step cap of the composed arm")
    p.add_argument("--baseline-steps", type=int, default=400, help="step cap of the baseline")
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--lr", type=float, default=5e-5, help="model-level learning rate (both arms; 1e-4 raised the "
                   "held-out loss of both arms from the first steps on)")
    p.add_argument("--tol", type=float, default=0.01)
    p.add_argument("--train-windows", type=int, default=2048,
                   help="pool of training windows the model level draws from (both arms)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/compose_bench"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    conf = cnb.compose_config(a.model, a.attention, a.linear)
    cnb.save_configurations(conf, a.out / "conf.json")
    scheme = cnb.make_scheme(conf)
    cnb.save_scheme(scheme, a.out / "conf_prune.json")
    r = cnb.compose_compare(scheme, a.out / "work", module_steps=a.module_steps, composed_steps=a.steps,
                            baseline_steps=a.baseline_steps, eval_every=a.eval_every, tol=a.tol, lr=a.lr,
                            data={"n_train": a.train_windows})
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(r["configs"].round(4).to_string(index=False))
        print(r["family"].round(3).to_string(index=False))
    md = markdown(r["configs"], r["family"], r["dense_heldout"])
    print(md)
    (a.out / "table.md").write_text(md)
    (a.out / "results.json").write_text(json.dumps(
        {"configs": r["configs"].to_dict("records"), "family": r["family"].to_dict("records"),
         "module": r["module"].to_dict("records"), "dense_heldout": r["dense_heldout"], "args": vars(a)},
        indent=1, default=str))


if __name__ == "__main__":
    main()
