"""Duplication pruning against random duplication and the kit's causal and gradient criteria.

For each distance metric (euclidean, cosine, random: the control) x prune method (balanced:
the same number of heads per layer; imbalanced: global) x sparsity, the heads are chosen by
``cnb.duplication_prune`` on the domain's train prompts; the causal (``ablation``) and gradient
(``attribution-abs``) scores of the same prompts prune the same number of heads with
``cnb.prune`` (``budget="per_layer"`` for balanced, ``"global"`` for imbalanced). Every pruned
model (masked: physical == masked is tested) is read on the domain's held-out test prompts:
mean loss with a bootstrap 95% interval over prompts, and a one-sided Wilcoxon signed-rank test
per prompt against the random control of the same method and sparsity (H: the criterion
keeps the loss lower), Holm-adjusted over the table. With ``--tasks`` the harness runs too: its table, item-level
bootstrap intervals (``cnb.harness_ci``) and paired tests against the random control of the same
method and sparsity (``cnb.harness_paired_test``). The per-prompt losses are written
(``per_prompt.parquet``) with the figures of loss against sparsity and of the heads removed per
layer (``figures/*.html``).

The random control is drawn ``--random-seeds`` times (default one seed, 0): its row is the
mean over the draws (each prompt's loss averaged over the seeds: the expected loss of a random
pruning), with the spread of the draws' mean losses (``seed_sd``, ``seed_min``, ``seed_max``),
and the tests compare each criterion with that average; the harness's control is the first
seed's model (McNemar needs one model's 0/1 answers). ``--criteria`` runs a subset
(``dup-random`` is always run: it is the control).

    python benchmarks/duplication_table.py --model code-gpt2-2l
    python benchmarks/duplication_table.py --model code-gpt2-2l --random-seeds 0 1 2 3 4
    python benchmarks/duplication_table.py --model smollm2-135m --n-prompts 24 --tasks cnb_tatoeba_ending --limit 100
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

import causal_nb as cnb
from causal_nb.evaluation.quality import prompt_losses
from causal_nb.evaluation.stats import bootstrap_ci, holm, paired_tests
from causal_nb.notebook.plotting import save_figure

CRITERIA = ("dup-euclidean", "dup-cosine", "dup-random", "ablation", "attribution-abs")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="code-gpt2-2l")
    p.add_argument("--domain", default="python")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    p.add_argument("--n-prompts", type=int, default=32)
    p.add_argument("--n-tokens", type=int, default=32)
    p.add_argument("--eval-tokens", type=int, default=64)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["balanced", "imbalanced"], choices=["balanced", "imbalanced"])
    p.add_argument("--tasks", nargs="*", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", default=None, help="folder (default benchmarks/results/duplication_<model>)")
    p.add_argument("--random-seeds", type=int, nargs="+", default=[0],
                   help="seeds of the random control (its row: the mean over them)")
    p.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=CRITERIA,
                   help="criteria to run (dup-random, the control, always runs)")
    a = p.parse_args(argv)
    if len(set(a.random_seeds)) != len(a.random_seeds):
        p.error(f"--random-seeds repeats a seed: {a.random_seeds}")
    t0 = time.time()
    out = Path(a.out or Path(__file__).parent / "results" / f"duplication_{a.model}")
    model = cnb.load_model(a.model, device="cpu")
    train = cnb.load_prompts(a.domain, split="train", n=a.n_prompts)
    test = cnb.load_prompts(a.domain, split="test")
    per, harness, items, logs = {}, [], [], {}
    full = prompt_losses(model, test, a.eval_tokens).loss.to_numpy()
    draws = {}  # (method, sparsity) -> each random draw's per-prompt losses
    for method in a.methods:
        runs = [(m, 0) for m in ("euclidean", "cosine") if f"dup-{m}" in a.criteria]
        runs += [("random", seed) for seed in a.random_seeds]
        for metric, seed in runs:
            # the first random seed keeps the plain folder name (duplication_harness.py reads it)
            name = f"{metric}_{method}" + (f"_seed{seed}" if metric == "random" and seed != a.random_seeds[0] else "")
            res = cnb.duplication_prune(model, a.domain, metric=metric, group_metric=metric,
                                        method=method, sparsities=a.sparsities, out=out / name,
                                        n_groups=a.groups, n_prompts=a.n_prompts, n_tokens=a.n_tokens,
                                        eval_tokens=a.eval_tokens, tasks=a.tasks, limit=a.limit, physical=False,
                                        seed=seed)
            pl = pd.read_parquet(out / name / "prompt_losses.parquet")
            for s in a.sparsities:
                loss = pl[(pl.sparsity == s) & (pl.variant == "masked")].loss.to_numpy()
                if metric == "random":
                    draws.setdefault((method, s), []).append(loss)
                    loss = np.mean(draws[(method, s)], axis=0)  # the control: each prompt's loss over the draws
                per[(f"dup-{metric}", method, s)] = loss
            print(f"dup-{metric} {method} (seed {seed}): {time.time() - t0:.0f} s", flush=True)
            if metric == "random" and seed != a.random_seeds[0]:
                continue  # the figures and the harness's control: the first draw
            logs[f"dup-{metric} {method}"] = res.attrs["log"]
            if res.attrs["lm_eval"]:
                harness.append(pd.DataFrame(res.attrs["lm_eval"]).assign(criterion=f"dup-{metric}", method=method))
                items.append(pd.DataFrame(res.attrs["lm_eval_items"]).assign(criterion=f"dup-{metric}", method=method))
    for crit in [c for c in ("ablation", "attribution-abs") if c in a.criteria]:
        scores = cnb.score(model, train, method=crit, n_tokens=a.n_tokens)
        print(f"{crit} scores: {time.time() - t0:.0f} s", flush=True)
        for method, budget in (("balanced", "per_layer"), ("imbalanced", "global")):
            if method not in a.methods:
                continue
            for s in a.sparsities:
                pruned = cnb.prune(model, scores, s, physical=False, budget=budget)
                per[(crit, method, s)] = prompt_losses(pruned, test, a.eval_tokens).loss.to_numpy()
                if a.tasks:
                    h = cnb.lm_eval(pruned, a.tasks, limit=a.limit)
                    items.append(pd.DataFrame(h.attrs["items"]).assign(criterion=crit, method=method, sparsity=s,
                                                                       variant="masked"))
                    h.attrs = {}
                    harness.append(h.assign(criterion=crit, method=method, sparsity=s, variant="masked"))
    rows = []
    for (crit, method, s), loss in per.items():
        mean, lo, hi = bootstrap_ci(loss)
        row = {"criterion": crit, "method": method, "sparsity": s, "loss": mean, "ci_low": lo, "ci_high": hi,
               "delta_vs_full": mean - full.mean()}
        if crit == "dup-random":
            means = [d.mean() for d in draws[(method, s)]]
            row.update(n_seeds=len(means), seed_sd=pd.Series(means).std(ddof=1) if len(means) > 1 else float("nan"),
                       seed_min=min(means), seed_max=max(means))
        else:
            t = paired_tests({crit: -loss, "random": -per[("dup-random", method, s)]}, crit).iloc[0]
            row.update(p_vs_random=t.p, mean_loss_gain_vs_random=t.mean_diff)
        rows.append(row)
    table = pd.DataFrame(rows)
    mask = table.p_vs_random.notna()
    table.loc[mask, "p_holm"] = holm(table.loc[mask, "p_vs_random"].to_numpy())
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table.csv", index=False)
    long = pd.concat([pd.DataFrame({"criterion": c, "method": m, "sparsity": s, "prompt": range(len(v)), "loss": v})
                      for (c, m, s), v in per.items()], ignore_index=True)
    long.to_parquet(out / "per_prompt.parquet", index=False)
    fig, _ = cnb.sparsity_curves(long, value="loss", title=f"{a.model}: held-out loss against sparsity")
    save_figure(fig, out / "figures", "loss_vs_sparsity", png=False)
    shown = "dup-cosine" if "dup-cosine" in a.criteria else "dup-random"
    fig, _ = cnb.heads_removed_by_layer({k: v for k, v in logs.items() if k.startswith(shown)},
                                        title=f"{a.model}: heads removed per layer ({shown})")
    save_figure(fig, out / "figures", "heads_removed_by_layer", png=False)
    if harness:
        pd.concat(harness, ignore_index=True).to_csv(out / "lm_eval_table.csv", index=False)
        it = pd.concat(items, ignore_index=True)
        it = it[it.variant != "physical"]
        cnb.harness_ci(it, by=["criterion", "method", "sparsity", "variant"]).to_csv(out / "lm_eval_ci.csv", index=False)
        tests = []
        for (crit, method, s), g in it[it.variant == "masked"].groupby(["criterion", "method", "sparsity"]):
            ctrl = it[(it.criterion == "dup-random") & (it.method == method) & (it.sparsity == s) & (it.variant == "masked")]
            if crit != "dup-random" and len(ctrl):
                tests.append(cnb.harness_paired_test(g, ctrl).assign(criterion=crit, method=method, sparsity=s))
        if tests:
            vs = pd.concat(tests, ignore_index=True)
            vs["p_holm"] = holm(vs.p.to_numpy())  # over the whole table
            vs.to_csv(out / "lm_eval_vs_random.csv", index=False)
    print(f"{a.model}, {a.domain}: full-model held-out loss {full.mean():.4f} on {len(full)} test prompts "
          f"({a.eval_tokens} tokens); {time.time() - t0:.0f} s")
    print(table.sort_values(["method", "sparsity", "criterion"]).to_markdown(index=False, floatfmt=".4g"))
    if harness:
        print(pd.concat(harness, ignore_index=True).to_markdown(index=False, floatfmt=".4g"))
        if tests:
            print(vs.to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
