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
# # 03 — Pruning sweep: does causal importance pick better units to remove?
#
# With the scores of notebook 02 (read from `SCORES_DIR`), remove the least important heads
# and MLP neurons of each model at each sparsity, by each method, and evaluate the pruned
# model on held-out prompts of both domains: loss, KL to the full model and top-1 agreement
# with it. The causal reference is exact mean-ablation (one run per head or neuron; on a real
# model the neurons' reference is `NEURON_REFERENCE`, see notebook 02);
# `attribution-abs` is its first-order estimate taken in absolute value per prompt. Two
# hypotheses are tested: (H1) a method's importance predicts the quality drop when a unit is
# removed; (H2) causal selection retains more quality than weight-magnitude or gradient
# selection at high sparsity, with the ratio at 80%. The sweep is resumable: rerunning this
# notebook recomputes no finished cell.

# %% tags=["parameters"]
MODELS = ["code-llama-4l", "code-gpt2-2l"]  # models pruned (scores for each must exist in SCORES_DIR); ACDC runs on the first
SEED = 0  # seed for everything random
DOMAIN = "python"  # domain the scores were computed on
EVAL_DOMAINS = ["python", "cpp"]  # test splits evaluated
SWEEP_HEAD_METHODS = ["ablation", "attribution-abs", "acdc", "taylor", "magnitude", "random"]  # head selection methods compared (the run profiles add attribution and fisher)
SWEEP_NEURON_METHODS = ["ablation", "attribution-abs", "taylor", "magnitude", "random"]  # neuron selection methods compared (the profiles add attribution and fisher)
REFERENCE = "ablation"  # the causal head method (exact mean-ablation KL) tested against the others (H1, H2)
NEURON_REFERENCE = "ablation"  # the same for neurons (the real profile: "attribution-abs", checked against exact ablation on a layer sample in notebook 02)
SPARSITIES = [0.1, 0.25, 0.5, 0.8]  # shares of units removed
N_EVAL_PROMPTS = 16  # evaluation prompts per domain
N_TOKENS = 64  # tokens per prompt, BOS included
PHYSICAL = True  # slice weights (smaller model) instead of zeroing them
ACDC_THRESHOLDS = [0.01, 0.03, 0.1, 0.3, 1.0]  # KL increases (nats) below which ACDC removes a head
BLOCK_METHODS = ["ablation", "taylor", "magnitude", "random"]  # whole-block selection methods (scores computed here)
BLOCK_SPARSITIES = [0.25, 0.5, 0.75]  # shares of blocks removed (rounded per model, at least one block kept)
N_PROMPTS = 16  # scoring prompts for the block scores
SCORES_DIR = "../scores"  # scores written by notebook 02
OUT_DIR = "runs/manual"  # sweep results go to OUT_DIR/sweep/<unit>

# %%
import pandas as pd

import causal_nb as cnb

info = cnb.setup(seed=SEED)
print({k: info[k] for k in ("seed", "deterministic", "causal_nb")})

# %% [markdown]
# Heads first, then neurons: one sweep per unit kind (each cell of a sweep is one model, method
# and sparsity; finished cells are read back on a rerun).

# %%
plan = {"head": SWEEP_HEAD_METHODS, "neuron": SWEEP_NEURON_METHODS}
reference = {"head": REFERENCE, "neuron": NEURON_REFERENCE}
parts = {}


def sweep_unit(unit):
    config = cnb.SweepConfig(out=f"{OUT_DIR}/sweep/{unit}", models=MODELS, domain=DOMAIN, eval_domains=EVAL_DOMAINS,
                             n_eval_prompts=N_EVAL_PROMPTS, n_tokens=N_TOKENS, methods=plan[unit], units=[unit],
                             sparsities=SPARSITIES, seeds=[SEED], physical=PHYSICAL, scores_dir=SCORES_DIR)
    parts[unit] = cnb.sweep(config, resume=True, progress=False)


sweep_unit("head")

# %%
sweep_unit("neuron")
results = pd.concat(parts.values(), ignore_index=True)
print(f"{len(results)} cells")

# %%
cols = ["model", "unit", "method", "sparsity", "params", "python_loss", "python_kl", "python_top1_agreement",
        "cpp_top1_agreement"]
results[results.model == MODELS[0]][cols].round(3)

# %% [markdown]
# ## H1: does importance predict the drop when a unit alone is removed?
# The mean-ablation KL of each head and each neuron (notebook 02) is the measured drop; every
# other method's scores are ranked against it, per model.

# %%
h1 = pd.concat([cnb.stats.h1_table({m: cnb.load_scores(cnb.scores_path(SCORES_DIR, name, DOMAIN, m, unit))
                                    for m in methods if m != reference[unit]},
                                   cnb.load_scores(cnb.scores_path(SCORES_DIR, name, DOMAIN, reference[unit], unit)))
                .assign(model=name, unit=unit, reference=reference[unit])
                for name in MODELS for unit, methods in plan.items()], ignore_index=True)
h1[["model", "unit", "reference", "method", "spearman", "kendall", "topk_overlap", "k"]].round(3)

# %% [markdown]
# ## H2: does causal selection retain more quality at high sparsity?
# Retained quality = top-1 agreement with the full model on held-out Python prompts, mean
# over prompts with a 95% bootstrap interval; the ratio is the reference's retained quality
# over each method's; p-values are one-sided paired Wilcoxon tests, Holm-corrected per sparsity.
# The full curves for the first model, heads then neurons:

# %%
h2 = {unit: cnb.stats.h2_table(results, reference[unit], quality=f"{DOMAIN}_per_prompt_top1", unit=unit, model=MODELS[0])
      for unit in plan}
h2["head"].round(3)

# %%
h2["neuron"].round(3)

# %% [markdown]
# The highest sparsity for every model: does the answer depend on the architecture?

# %%
summary = cnb.stats.h2_summary(results, reference, quality=f"{DOMAIN}_per_prompt_top1")
summary = summary.drop(columns=["sparsity"]).round(3)
summary

# %% [markdown]
# ## Cross-domain: scores from one domain, quality on another
# Every score above was computed on `DOMAIN` prompts; the pruned models were also evaluated on
# the other domains' held-out prompts. Does the causal selection's advantage at the highest
# sparsity carry over to a domain it never saw?

# %%
cross = pd.concat([cnb.stats.cross_domain_table(results[results.model == name], reference[unit], EVAL_DOMAINS, unit=unit)
                   .assign(model=name, unit=unit) for name in MODELS for unit in plan], ignore_index=True)
cross = cross[cross.method != cross.unit.map(reference)]
cross.pivot_table(index=["model", "unit", "method"], columns="domain", values=["ratio_ref_over_method", "p_holm"],
                  sort=False).round(3)

# %% [markdown]
# ## Whole blocks: which layers can go?
# ShortGPT-style depth pruning: score each decoder block (mean-ablation KL of its attention
# and MLP outputs, Taylor, weight magnitude, random), delete the lowest-scoring blocks and
# evaluate the shallower model. Block scores are cheap, so the sweep computes them itself.

# %%
config = cnb.SweepConfig(out=f"{OUT_DIR}/sweep/block", models=MODELS, domain=DOMAIN, eval_domains=EVAL_DOMAINS,
                         n_prompts=N_PROMPTS, n_eval_prompts=N_EVAL_PROMPTS, n_tokens=N_TOKENS, methods=BLOCK_METHODS,
                         units=["block"], sparsities=BLOCK_SPARSITIES, seeds=[SEED], physical=PHYSICAL)
blocks = cnb.sweep(config, resume=True, progress=False)
blocks.pivot_table(index=["model", "sparsity", "params"], columns="method", values=f"{DOMAIN}_top1_agreement").round(3)

# %% [markdown]
# ## ACDC: let a KL threshold choose the sparsity
# Walking from the last layer to the first, a head is removed when doing so raises the KL
# divergence to the full model (on the scoring prompts) by less than tau. Each threshold's
# pruned model is then evaluated on the held-out prompts.

# %%
model = cnb.load_model(MODELS[0])
acdc_table = cnb.acdc_sweep(model, cnb.load_prompts(DOMAIN, split="train", n=N_EVAL_PROMPTS),
                            cnb.load_prompts(DOMAIN, split="test", n=N_EVAL_PROMPTS), ACDC_THRESHOLDS, unit="head",
                            kind="mean", n_tokens=N_TOKENS, physical=PHYSICAL, progress=False)
acdc_table.to_csv(f"{OUT_DIR}/03_acdc.csv", index=False)
acdc_table.round(3)

# %%
results.drop(columns=[c for c in results.columns if "per_prompt" in c]).to_csv(f"{OUT_DIR}/03_results.csv", index=False)
cnb.save_json({"h1": h1.round(4).to_dict(orient="records"), "h2_at_max_sparsity": summary.to_dict(orient="records")},
              f"{OUT_DIR}/03_hypotheses.json")
