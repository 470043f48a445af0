# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 — Graphs from saved results (no model needed)
#
# Every figure here is drawn from files the earlier notebooks wrote: token sets (01), unit
# scores (02) and the pruning sweep (03). Each is saved to `GRAPHS_DIR` as interactive HTML
# and, where the `kaleido` package is installed, as static PNG.

# %% tags=["parameters"]
MODEL = "code-llama-4l"  # model whose results are drawn
SEED = 0  # seed (bootstrap intervals)
DOMAIN_A = "python"  # token-set domain pair
DOMAIN_B = "cpp"  # token-set domain pair
TOKEN_SETS_DIR = "../token_sets"  # written by notebook 01
SCORES_DIR = "../scores"  # written by notebook 02
SWEEP_DIR = "runs/manual/sweep"  # written by notebook 03 (OUT_DIR/sweep there, one folder per unit kind)
GRAPHS_DIR = "runs/manual/graphs"  # where figures are written

# %%
import pandas as pd

import causal_nb as cnb

info = cnb.setup(seed=SEED)
saved = []


def keep(fig, name):  # save the figure, then show it
    saved.append(cnb.plotting.save_figure(fig, GRAPHS_DIR, name))
    return fig


# %%
ts = cnb.TokenSet.load(cnb.token_set_path(TOKEN_SETS_DIR, MODEL, DOMAIN_A, DOMAIN_B))
fig, df = cnb.plotting.token_set_bars(ts, n=20)
keep(fig, "token_set_bars")

# %%
fig, df = cnb.plotting.unit_heatmap(cnb.load_scores(cnb.scores_path(SCORES_DIR, MODEL, DOMAIN_A, "ablation", "head")),
                                    value="score", title=f"{MODEL}: mean-ablation KL per head")
keep(fig, "head_importance")

# %%
results = pd.concat([cnb.load_results(f"{SWEEP_DIR}/{unit}") for unit in ("head", "neuron")], ignore_index=True)
results = results[results.model == MODEL]  # a sweep may hold several models
fig, curves = cnb.plotting.degradation_curves(results, f"{DOMAIN_A}_per_prompt_top1", unit="head",
                                              title=f"{MODEL}: top-1 agreement after pruning heads")
keep(fig, "degradation_heads")

# %%
curves

# %%
fig, curves = cnb.plotting.degradation_curves(results, f"{DOMAIN_A}_per_prompt_top1", unit="neuron",
                                              title=f"{MODEL}: top-1 agreement after pruning MLP neurons")
keep(fig, "degradation_neurons")

# %%
fig, front = cnb.plotting.pareto_front(results, f"{DOMAIN_A}_top1_agreement", "params",
                                       title=f"{MODEL}: quality vs parameters")
keep(fig, "pareto_params")

# %%
front[front.pareto]

# %%
sorted(p.name for p in saved)
