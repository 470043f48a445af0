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
# # 10 — Composable pruning: prune and fine-tune each shared module once
#
# A family of pruned models (attention pruned 25% or 50%, MLP linears 30% or 50%, ...) shares
# modules: the same layer pruned at the same rate. The composability method prunes each distinct
# module *variant* once, fine-tunes it once alone to reproduce the dense module's outputs
# (module level, MSE on inputs captured through hooks), composes every configuration from those
# variants and fine-tunes the whole model briefly (model level). The control, the *baseline*,
# prunes each configuration directly and fine-tunes it end to end with the same settings.
#
# Both arms record the held-out loss every few steps; a configuration's target is 1.01 x the
# baseline's best held-out loss (rule `baseline`) or 1.01 x the better arm's best (rule `best`),
# and each arm's time to target is its first evaluated step at or below it. The composed arm's
# family total counts the module level once. The budget here is a demonstration on the bundled
# 2-layer code model; `benchmarks/bench_compose.py` measures it (README, "Composable pruning").

# %% tags=["parameters"]
MODEL = "code-gpt2-2l"  # a bundled decoder LM (or a Hugging Face folder)
ATTENTION = [0.25, 0.5, 0.25, 0.5]  # head-wise pruning rate of every attention module, one per configuration
LINEAR = [0.3, 0.3, 0.5, 0.5]  # L1-unstructured rate of every MLP linear layer, one per configuration
MODULE_STEPS = 10  # module-level steps of each distinct variant
CAPTURE_WINDOWS = 16  # training windows whose module inputs and outputs are captured from the dense model
COMPOSED_STEPS = 5  # model-level step cap of the composed arm
BASELINE_STEPS = 10  # model-level step cap of the baseline
EVAL_EVERY = 5  # steps between held-out evaluations (both arms)
BATCH = 4  # training windows of 128 tokens per model-level step (the benchmark uses 8)
LR = 5e-5  # model-level learning rate (both arms)
# quick data (the benchmark: 100 training files per domain, 64 held-out windows from every held-out file, a pool of 512)
DATA = {"n_files": 12, "n_heldout": 16, "n_files_heldout": 40, "n_train": 64}
TOL = 0.01  # "the same quality": within 1% of the target's reference loss
SEED = 0  # seed for everything random
OUT_DIR = "runs/manual"  # where the variants, runs and tables are written (a rerun reuses trained variants)

# %%
import pandas as pd

import causal_nb as cnb

info = cnb.setup(seed=SEED)
print({k: info[k] for k in ("seed", "deterministic", "causal_nb")})

# %% [markdown]
# ## The family and its scheme
# Configuration i prunes every attention module at `ATTENTION[i]` and every MLP linear at
# `LINEAR[i]` (the configuration file can be edited per module). The scheme lists each distinct
# `(module, criterion, rate)` variant once, with the configurations using it; it is fingerprinted,
# so a hand-edited scheme is refused.

# %%
work = f"{OUT_DIR}/composability"
conf = cnb.compose_config(MODEL, ATTENTION, LINEAR)
scheme = cnb.make_scheme(conf)
cnb.save_configurations(conf, f"{work}/conf.json")
cnb.save_scheme(scheme, f"{work}/conf_prune.json")
uses = sum(len(v["configurations"]) for v in scheme["variants"])
print(f"{len(conf['configurations'])} configurations use {uses} pruned modules: {len(scheme['variants'])} distinct "
      f"variants, each pruned and module-level fine-tuned once")

# %% tags=["nbval-ignore-output"]
# nbval-ignore-output: a figure.
fig, matrix = cnb.plotting.compose_scheme_matrix(scheme)
fig

# %%
matrix.T.rename(index=lambda k: k.replace("transformer.", "")).reset_index(names="variant")

# %% [markdown]
# ## Module level: each variant once
# Each distinct variant is pruned once (linears L1-unstructured with `torch.nn.utils.prune`, made
# permanent; attention head-wise by the L1 norm of each head's Q/K/V rows, heads removed
# physically) and trained alone to reproduce the dense module's output (MSE) on inputs captured
# from the dense model through forward hooks. The MSE before and after:

# %%
cnb.prune_variants(scheme, work, seed=SEED)
module = cnb.finetune_variants(scheme, work, steps=MODULE_STEPS, n_windows=CAPTURE_WINDOWS, seed=SEED, data=DATA)
pd.DataFrame(module).T[["mse_before", "mse_after"]].astype(float).round(5)

# %% [markdown]
# ## Model level: composed vs baseline
# `compose_compare` composes every configuration from the fine-tuned variants (the variants just
# trained are reused, not trained again) and fine-tunes it end to end, then prunes the same
# configuration directly and fine-tunes that (the baseline), both recording training and
# held-out loss.

# %%
result = cnb.compose_compare(scheme, work, module_steps=MODULE_STEPS, composed_steps=COMPOSED_STEPS,
                             baseline_steps=BASELINE_STEPS, eval_every=EVAL_EVERY, tol=TOL, lr=LR, batch_size=BATCH,
                             n_windows=CAPTURE_WINDOWS, seed=SEED, data=DATA)
print(f"dense held-out loss {result['dense_heldout']:.4f}")

# %% [markdown]
# ## Quality and steps to the target
# Held-out loss of each configuration pruned directly (`baseline_start`), composed from the
# fine-tuned variants before any model-level step (`composed_start`), and the best each arm
# reached; the steps each arm took to the target (NaN: not within its cap).

# %%
cols = ["config", "attention", "linear", "rule", "baseline_start", "composed_start", "composed_best", "baseline_best",
        "target", "composed_steps", "baseline_steps"]
result["configs"][cols].round(4)

# %% [markdown]
# ## The time table
# Module-level seconds (each variant once for the family) plus model-level seconds to target,
# against the baseline's seconds to target; `*_cost_s` is steps x the median seconds per step,
# steadier than wall time on a shared machine. `ratio_*` is baseline / composed (the aim
# is 2x or more); a `*_lower_bound` total counts a whole cap where the target was not reached.
# On this short budget the baseline barely moves, so under rule `baseline` its own start is
# already within 1% of its best (0 steps, ratio 0): 1% of a code model's loss is about as much as
# fine-tuning recovers here, and rule `best` is the informative one. Run it longer (or set
# `TOL = 0.002`) for a measurement; the README gives the benchmark's.

# %% tags=["nbval-ignore-output"]
# nbval-ignore-output: seconds depend on the machine and its load.
result["family"].round(2).T

# %% [markdown]
# ## Loss curves
# Training loss (rolling mean of 3 batches) and held-out loss while fine-tuning, one panel per
# configuration; the dotted line is the `baseline` rule's target.

# %% tags=["nbval-ignore-output"]
# nbval-ignore-output: a figure.
targets = result["configs"][result["configs"].rule == "baseline"]
fig, curves = cnb.plotting.compose_loss_curves(result["curves"], targets=targets, smooth=3)
fig

# %%
curves[curves.kind == "validation"].pivot_table(index=["config", "step"], columns="arm", values="loss").round(4)
