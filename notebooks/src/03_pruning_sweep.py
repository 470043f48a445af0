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
# and MLP neurons at each sparsity, by each method, and evaluate the pruned model on held-out
# prompts of both domains: loss, KL to the full model and top-1 agreement with it. Two
# hypotheses are tested: (H1) a method's importance predicts the quality drop when a unit is
# removed; (H2) causal selection retains more quality than weight-magnitude or gradient
# selection at high sparsity, with the ratio at 80%. The sweep is resumable: rerunning this
# notebook recomputes no finished cell.

# %% tags=["parameters"]
MODEL = "code-llama-4l"  # model to prune (scores for it must exist in SCORES_DIR)
SEED = 0  # seed for everything random
DOMAIN = "python"  # domain the scores were computed on
EVAL_DOMAINS = ["python", "cpp"]  # test splits evaluated
HEAD_METHODS = ["ablation", "attribution", "acdc", "taylor", "fisher", "magnitude", "random"]  # head selection methods compared
HEAD_REFERENCE = "ablation"  # the causal method tested against the others (H2), heads
NEURON_METHODS = ["attribution", "taylor", "fisher", "magnitude", "random"]  # neuron selection methods compared
NEURON_REFERENCE = "attribution"  # for neurons: attribution patching, the first-order estimate of mean-ablation (exact ablation of every neuron is slow on CPU)
SPARSITIES = [0.1, 0.25, 0.5, 0.8]  # shares of units removed
N_EVAL_PROMPTS = 16  # evaluation prompts per domain
N_TOKENS = 64  # tokens per prompt, BOS included
PHYSICAL = True  # slice weights (smaller model) instead of zeroing them
ACDC_THRESHOLDS = [0.01, 0.03, 0.1, 0.3, 1.0]  # KL increases (nats) below which ACDC removes a head
SCORES_DIR = "../scores"  # scores written by notebook 02
OUT_DIR = "runs/manual"  # sweep results go to OUT_DIR/sweep/<unit>

# %%
import pandas as pd

import causal_nb as cnb
from causal_nb.scoring import load_scores, scores_path

info = cnb.setup(seed=SEED)
print({k: info[k] for k in ("seed", "deterministic", "causal_nb")})

# %%
plan = {"head": (HEAD_METHODS, HEAD_REFERENCE), "neuron": (NEURON_METHODS, NEURON_REFERENCE)}
parts = []
for unit, (methods, _) in plan.items():
    config = cnb.SweepConfig(out=f"{OUT_DIR}/sweep/{unit}", models=[MODEL], domain=DOMAIN, eval_domains=EVAL_DOMAINS,
                             n_eval_prompts=N_EVAL_PROMPTS, n_tokens=N_TOKENS, methods=methods, units=[unit],
                             sparsities=SPARSITIES, seeds=[SEED], physical=PHYSICAL, scores_dir=SCORES_DIR)
    parts.append(cnb.sweep(config, resume=True, progress=False))
results = pd.concat(parts, ignore_index=True)
print(f"{len(results)} cells")

# %%
cols = ["unit", "method", "sparsity", "params", "python_loss", "python_kl", "python_top1_agreement", "cpp_top1_agreement"]
results[cols].round(3)

# %% [markdown]
# ## H1: does importance predict the drop when a unit alone is removed?
# The mean-ablation KL of each head (notebook 02) is the measured drop; every method's head
# scores are ranked against it.

# %%
model_scores = {m: load_scores(scores_path(SCORES_DIR, MODEL, DOMAIN, m, "head")) for m in HEAD_METHODS}
h1 = cnb.stats.h1_table({m: s for m, s in model_scores.items() if m != HEAD_REFERENCE}, model_scores[HEAD_REFERENCE])
h1.drop(columns=[c for c in h1.columns if c.endswith("_p")]).round(3)

# %% [markdown]
# ## H2: does causal selection retain more quality at high sparsity?
# Retained quality = top-1 agreement with the full model on held-out Python prompts, mean
# over prompts with a 95% bootstrap interval; the ratio is the reference's retained quality
# over each method's; p-values are one-sided paired Wilcoxon tests, Holm-corrected per sparsity.
# For heads the reference is exact mean-ablation; for neurons it is attribution patching (its
# first-order estimate), since exactly ablating each of thousands of neurons is slow on a CPU.

# %%
h2 = {unit: cnb.stats.h2_table(results, ref, quality=f"{DOMAIN}_per_prompt_top1", unit=unit)
      for unit, (_, ref) in plan.items()}
h2["head"].round(3)

# %%
h2["neuron"].round(3)

# %%
summary = pd.concat([h2[u].assign(unit=u, reference=plan[u][1]) for u in plan])
summary = summary[(summary.sparsity == max(SPARSITIES)) & (summary.method != summary.reference)]
summary = summary[["unit", "reference", "method", "retained", "ratio_ref_over_method", "p_holm"]].round(3).reset_index(drop=True)
summary

# %% [markdown]
# ## Cross-domain: scores from one domain, quality on another
# Every score above was computed on `DOMAIN` prompts; the pruned models were also evaluated on
# the other domains' held-out prompts. Does the causal selection's advantage at the highest
# sparsity carry over to a domain it never saw?

# %%
cnb.stats.cross_domain_table(results, HEAD_REFERENCE, EVAL_DOMAINS, unit="head").round(3)

# %% [markdown]
# ## ACDC: let a KL threshold choose the sparsity
# Walking from the last layer to the first, a head is removed when doing so raises the KL
# divergence to the full model (on the scoring prompts) by less than tau. Each threshold's
# pruned model is then evaluated on the held-out prompts.

# %%
model = cnb.load_model(MODEL)
acdc_table = cnb.acdc_sweep(model, cnb.load_prompts(DOMAIN, split="train", n=N_EVAL_PROMPTS),
                            cnb.load_prompts(DOMAIN, split="test", n=N_EVAL_PROMPTS), ACDC_THRESHOLDS, unit="head",
                            kind="mean", n_tokens=N_TOKENS, physical=PHYSICAL, progress=False)
acdc_table.to_csv(f"{OUT_DIR}/03_acdc.csv", index=False)
acdc_table.round(3)

# %%
results.drop(columns=[c for c in results.columns if "per_prompt" in c]).to_csv(f"{OUT_DIR}/03_results.csv", index=False)
cnb.save_json({"h1": h1.round(4).to_dict(orient="records"), "h2_at_max_sparsity": summary.to_dict(orient="records")},
              f"{OUT_DIR}/03_hypotheses.json")
