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
# # 02 — Causal scoring of heads and neurons, compared with attribution, gradients and weights
#
# Every method scores the same units on the same prompts through one call,
# `causal_nb.score(model, prompts, method, unit)`: higher = more important.
# Causal methods intervene (mean-ablation KL, noising with the other domain's activations),
# attribution methods estimate those interventions from gradients, gradient methods measure
# sensitivity (Taylor, Fisher), correlational ones look at weights or activations only, and
# duplication asks whether another head does the same job. Scores are saved to `SCORES_DIR`
# for the pruning sweep, and the methods' rankings are compared.
#
# The committed notebook (re-run by the test suite) scores heads on 8 prompts and neurons on 2
# so that every cell stays under about a minute on 2 CPU cores: exact mean ablation of every
# MLP neuron, one run per neuron, is most of the time and grows with the prompts. The run
# profiles score both on more (`python -m causal_nb run --profile demo|standard|full`: 16, 48,
# 80 prompts).

# %% tags=["parameters"]
MODELS = ["code-llama-4l", "code-gpt2-2l"]  # models scored in this run (bundled names, folders or hub names)
SEED = 0  # seed for everything random
DOMAIN = "python"  # prompts the scores are about (train split)
CORRUPT_DOMAIN = "cpp"  # prompts whose activations replace DOMAIN's in "patching"
N_PROMPTS = 8  # prompts for the head scores (8 keep this notebook light; the run profiles use 16, 48 or 80)
N_NEURON_PROMPTS = 2  # prompts for the neuron scores (exact ablation runs the model once per neuron; profiles: 16, 48, 80)
N_TOKENS = 64  # tokens per prompt, BOS included
HEAD_METHODS = ["ablation", "patching", "attribution", "attribution-abs", "eap-ig", "acdc", "taylor", "fisher", "magnitude", "activation", "duplication", "random"]  # head scores
ACDC_THRESHOLD = 0.1  # ACDC walk: a head is removed when that raises the KL by less than this (nats); its score is the rise it caused
NEURON_ABLATION_LAYERS = None  # layers whose neurons "ablation" scores (None = all; the real profile samples 3 of SmolLM2's 30)
NEURON_METHODS = ["ablation", "attribution", "attribution-abs", "taylor", "fisher", "magnitude", "activation", "random"]  # neuron scores ("ablation": one exact run per neuron, ~50 s for code-llama-4l's 2752 at 2 prompts in float64 on 2 CPU cores)
DEVICE = "auto"  # "auto", "cpu" or "cuda"
DTYPE = "float64"  # scoring precision: in float32, CPUs with different vector units differ by ~1e-7, enough to reorder near-tied neurons at a pruning cut and change notebook 03's results
SCORES_DIR = "../scores"  # where scores are written: <dir>/<model>/<domain>/<method>_<unit>.json
OUT_DIR = "runs/manual"  # where this notebook writes its other outputs

# %%
import pandas as pd

import causal_nb as cnb

info = cnb.setup(seed=SEED)
print({k: info[k] for k in ("seed", "deterministic", "causal_nb")})

# %%
scores, models = {}, {name: cnb.load_model(name, device=DEVICE, dtype=DTYPE) for name in MODELS}
# patching pairs prompt i of each domain position by position: take prompts that fill N_TOKENS
fitting = {(name, d): cnb.load_prompts(d, split="train").fitting(models[name], N_TOKENS)
           for name in MODELS for d in (DOMAIN, CORRUPT_DOMAIN)}
options = {"acdc": {"threshold": ACDC_THRESHOLD}, "ablation": {"layers": NEURON_ABLATION_LAYERS}}
settings = {"save_to": SCORES_DIR, "domain": DOMAIN, "n_tokens": N_TOKENS, "seed": SEED, "progress": False}


def score_all(name, unit, methods, n):
    """Score `name`'s units of one kind by each method on `n` prompts (saved under SCORES_DIR)."""
    opts = {m: o for m, o in options.items() if m in methods and (m != "ablation" or unit == "neuron")}
    tables = cnb.score_methods(models[name], fitting[name, DOMAIN].head(n), methods, unit, opts,
                               corrupted=fitting[name, CORRUPT_DOMAIN].head(n), **settings)
    scores.update({(name, unit, m): df for m, df in tables.items()})


for name in MODELS:
    score_all(name, "head", HEAD_METHODS, N_PROMPTS)
print(f"{len(scores)} head score tables written under {SCORES_DIR}")

# %% [markdown]
# MLP neurons, one model per cell: exact mean ablation runs the model once per neuron. On a
# real model that is too many runs for a CPU (SmolLM2: 46,080 neurons), so the `real` profile
# ablates the neurons of a few layers (`NEURON_ABLATION_LAYERS`) and the table below compares
# every method with exact ablation on those layers; notebook 03 then selects neurons with the
# best-agreeing whole-model method (`NEURON_REFERENCE`).

# %%
score_all(MODELS[0], "neuron", NEURON_METHODS, N_NEURON_PROMPTS)

# %%
for name in MODELS[1:]:
    score_all(name, "neuron", NEURON_METHODS, N_NEURON_PROMPTS)
print(f"{len(scores)} score tables written under {SCORES_DIR}")

# %% [markdown]
# ## Which heads matter? Mean-ablation KL, layer x head
# The KL divergence from the full model when a head's output is replaced by its mean over
# the prompts: the causal ground truth the other methods are compared with.

# %%
fig, df = cnb.plotting.unit_heatmap(scores[MODELS[0], "head", "ablation"], value="score",
                                    title=f"{MODELS[0]}: mean-ablation KL per head")
fig

# %%
df

# %% [markdown]
# ## Do the methods agree?
# Spearman rank correlation between the methods' head scores, per model.

# %%
for name in MODELS:
    mat = cnb.stats.agreement_matrix({m: scores[name, "head", m] for m in HEAD_METHODS})
    fig, table = cnb.plotting.agreement_heatmap(mat, title=f"{name}: Spearman agreement of head scores")
    fig.show()

# %% [markdown]
# Agreement of every method with the causal ground truth (mean-ablation KL), for heads and
# for MLP neurons, with the top-quarter overlap: the units a 75%-sparsity pruning would keep.

# %%
agreement = pd.concat([cnb.stats.h1_table({m: scores[name, unit, m] for m in methods if m != "ablation"},
                                          scores[name, unit, "ablation"]).assign(model=name, unit=unit)
                       for name in MODELS for unit, methods in (("head", HEAD_METHODS), ("neuron", NEURON_METHODS))
                       if "ablation" in methods], ignore_index=True)
agreement = agreement[["model", "unit", "method", "spearman", "kendall", "topk_overlap", "k"]].round(3)
agreement

# %%
cnb.save_json(agreement.to_dict(orient="records"), f"{OUT_DIR}/02_agreement_with_ablation.json")
