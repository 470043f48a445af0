"""Composable pruning vs direct pruning + end-to-end fine-tuning, for families of N = 2..4 configurations.

``nice -n 10 python benchmarks/bench_compose.py --model code-gpt2-2l --out runs/compose_bench``

Configuration i prunes attention at ``--attention[i]`` and the MLP linears at ``--linear[i]``. The
composed arm fine-tunes each distinct variant once (module level, against the dense module) and
then each configuration for ``--steps`` end to end; the baseline prunes each configuration
directly and fine-tunes it end to end for ``--baseline-steps`` (default 3 x ``--steps``, with the
held-out loss every ``--eval-every`` steps, so the table also says how many steps and seconds the
baseline needs to come within 1% of the composed arm's final loss). A family of the first N
configurations shares its variants: its module-level time counts each distinct variant once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

import causal_nb as cnb


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="code-gpt2-2l")
    p.add_argument("--attention", type=float, nargs="+", default=[0.25, 0.5, 0.25, 0.5])
    p.add_argument("--linear", type=float, nargs="+", default=[0.3, 0.3, 0.5, 0.5])
    p.add_argument("--module-steps", type=int, default=200)
    p.add_argument("--steps", type=int, default=100, help="model-level steps of the composed arm")
    p.add_argument("--baseline-steps", type=int, default=None, help="baseline steps (default 3 x --steps)")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/compose_bench"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    conf = cnb.compose_config(a.model, a.attention, a.linear)
    cnb.save_configurations(conf, a.out / "conf.json")
    scheme = cnb.make_scheme(conf)
    cnb.save_scheme(scheme, a.out / "conf_prune.json")
    work = a.out / "work"
    cnb.prune_variants(scheme, work)
    mods = cnb.finetune_variants(scheme, work, steps=a.module_steps)
    rows = []
    for k in range(1, len(conf["configurations"]) + 1):
        c = cnb.finetune_configuration(scheme, work, k, "composed", a.steps, eval_every=a.eval_every)
        b = cnb.finetune_configuration(scheme, work, k, "baseline", a.baseline_steps or 3 * a.steps,
                                       eval_every=a.eval_every)
        curve = pd.read_csv(work / "runs" / f"c{k}_baseline.csv").dropna(subset=["val_loss"])
        at_steps = curve[curve.step <= a.steps].iloc[-1]
        reach = curve[curve.val_loss <= 1.01 * c["heldout_after"]]
        rows.append({"config": k, "attention": a.attention[k - 1], "linear": a.linear[k - 1],
                     "dense": round(c["dense_heldout"], 4), "pruned": round(b["heldout_before"], 4),
                     "composed_start": round(c["heldout_before"], 4), "composed_final": round(c["heldout_after"], 4),
                     f"baseline_at_{a.steps}": round(float(at_steps.val_loss), 4),
                     "baseline_final": round(b["heldout_after"], 4),
                     "composed_model_s": round(c["model_seconds"], 1),
                     "baseline_s_per_step": round(b["model_seconds"] / b["steps"], 3),
                     "baseline_steps_to_1pct": int(reach.step.iloc[0]) if len(reach) else None})
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    fam = []
    for n in range(2, len(df) + 1):
        used = {key for k in range(1, n + 1) for key in scheme["configurations"][str(k)].values()}
        module_s = sum(mods[key]["seconds"] for key in used)
        comp = module_s + df.composed_model_s[:n].sum()
        base_eq = (df.baseline_s_per_step[:n] * a.steps).sum()
        base_all = (df.baseline_s_per_step[:n] * (a.baseline_steps or 3 * a.steps)).sum()
        reach = df.baseline_steps_to_1pct[:n]
        base_reach = (df.baseline_s_per_step[:n] * reach).sum() if reach.notna().all() else float("nan")
        fam.append({"N": n, "variants": len(used), "module_s": round(module_s, 1), "composed_total_s": round(comp, 1),
                    f"baseline_{a.steps}_steps_s": round(base_eq, 1), "baseline_final_s": round(base_all, 1),
                    "baseline_to_1pct_s": round(base_reach, 1),
                    "composed_mean_loss": round(df.composed_final[:n].mean(), 4),
                    f"baseline_{a.steps}_mean_loss": round(df[f"baseline_at_{a.steps}"][:n].mean(), 4),
                    "baseline_final_mean_loss": round(df.baseline_final[:n].mean(), 4)})
    fam_df = pd.DataFrame(fam)
    print(fam_df.to_string(index=False))
    (a.out / "results.json").write_text(json.dumps({"configs": rows, "families": fam, "args": vars(a)}, indent=1,
                                                   default=str))


if __name__ == "__main__":
    main()
