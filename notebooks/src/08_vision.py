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
# # 08 — A vision transformer: which heads and neurons does a Fashion-MNIST classifier need?
#
# The kit's bundled `vit-fashion-mnist` (4 layers x 4 heads, 2,048 MLP neurons, trained by
# `python -m causal_nb vit train`) is read through the same engine as the language models, with
# `cnb.ImageClassificationTask(images, labels)`: a unit's effect is measured on the class
# distribution of the CLS token. The notebook scores every head on held-out validation images,
# runs ACDC (remove a unit when that raises the KL to the full model by less than a threshold)
# and EAP-style keep ratios by several scores, physically prunes each choice, and evaluates every
# model on test images: accuracy, confidence, size and speed, with the Pareto front of accuracy
# against latency. The last cell is a live view: toggle heads, watch an image's class
# probabilities and the CLS token's attention change.

# %% tags=["parameters"]
VIT_MODEL = "vit-fashion-mnist"  # a ViTForImageClassification (bundled name or folder)
N_SCORE_IMAGES = 128  # validation images the units are scored on (held out of training; never test images)
N_TEST_IMAGES = 1000  # test images every model is evaluated on
UNITS = ["head"]  # unit kinds pruned ("neuron" too: exact neuron ablation and ACDC's neuron walk take minutes here)
KEEP_RATIOS = [0.8, 0.6]  # share of each unit kind kept by each score
SCORES = ["ablation", "attribution", "magnitude", "random"]  # scores compared at the keep ratios
ACDC_THRESHOLDS = [0.01, 0.05]  # ACDC: KL increases (nats) below which a unit is removed
SEED = 0  # seed for everything random (the random score)
OUT_DIR = "runs/manual"  # where the pruned models and the evaluation are written
DEVICE = "cpu"  # "cpu" or "cuda"

# %%
import pandas as pd

import causal_nb as cnb

info = cnb.setup(seed=SEED)
print({k: info[k] for k in ("seed", "deterministic", "causal_nb")})

# %%
vit = cnb.load_model(VIT_MODEL, device=DEVICE)
val, test = cnb.load_fashion_mnist("val").head(N_SCORE_IMAGES), cnb.load_fashion_mnist("test").head(N_TEST_IMAGES)
task = cnb.ImageClassificationTask(val.images, val.labels)
print(f"{VIT_MODEL}: {vit.cfg.n_layers} layers x {vit.cfg.n_heads} heads, d_model {vit.cfg.d_model}; "
      f"scored on {len(val)} validation images, evaluated on {len(test)} test images")

# %% [markdown]
# ## Which heads matter?
# Exact zero ablation of one head at a time (the engine replays only the blocks after it), measured
# as the KL divergence of the class distribution from the full model's, mean over images.

# %%
heads = cnb.ablate(vit, task=task, unit="head", kind="zero", progress=False)
fig, heat = cnb.plotting.unit_heatmap(heads, title=f"{VIT_MODEL}: KL when a head is zeroed")
fig

# %%
heads.sort_values("value", ascending=False).head(5)[["layer", "head", "value"]].round(4)

# %% [markdown]
# ## ACDC: a KL threshold chooses the sparsity
# The walk goes from the last layer to the first and removes each unit whose removal, together
# with what it removed before, raises the KL by less than the threshold; every layer keeps one.

# %%
walks = {u: cnb.acdc(vit, task=task, thresholds=ACDC_THRESHOLDS, unit=u, progress=False) for u in UNITS}
pd.concat([w.assign(unit=u) for u, w in walks.items()])[["unit", "tau", "removed", "units", "sparsity", "kl"]].round(4)

# %% [markdown]
# ## Keep ratios by score, and the ACDC models, physically pruned
# Each score ranks the units on the validation images; each keep ratio keeps that share of every
# unit kind. Every model is saved as `<base>_keep_<r>_<score>` or `<base>_threshold_<t>`.

# %%
saved = cnb.optimize_vit(vit, task, keep_ratios=KEEP_RATIOS, scores=SCORES, units=UNITS,
                         out=f"{OUT_DIR}/vit-optimized", seed=SEED)
saved.update(cnb.optimize_vit(vit, task, method="acdc", thresholds=ACDC_THRESHOLDS, units=UNITS,
                              out=f"{OUT_DIR}/vit-optimized"))
print(f"{len(saved)} pruned models: {', '.join(saved)}")

# %% [markdown]
# ## Evaluation on test images
# Accuracy and confidence are deterministic; latency depends on the machine (the next table
# leaves it out; the figure below has it).

# %%
ev = cnb.evaluate_vit_models([VIT_MODEL, *saved.values()], test, names=["baseline", *saved])
quality = ["model", "top1", "top5", "f1_macro", "mean_confidence", "confidence_gap", "mean_entropy", "params", "gflops"]
ev.table[quality].round(4)

# %%
ev.per_class.round(3)

# %% tags=["nbval-ignore-output"]
# nbval-ignore-output: latency, the Pareto front and the recommendation depend on the machine's speed.
paths = cnb.write_vit_evaluation(ev, f"{OUT_DIR}/vit-evaluation", png=False)
print(cnb.vit_report(ev))
fig, table = cnb.plot_vit_evaluation(ev)
fig

# %% [markdown]
# ## Live: pick heads, watch an image
# Toggle heads (zero or mean replacement): the class probabilities of the chosen test image and
# the CLS token's attention over the 7x7 patch grid update in place. The cell after it drives the
# same explorer from code (what a click does), so the committed numbers are checked.

# %% tags=["nbval-ignore-output"]
# nbval-ignore-output: a widget's output is a model id that changes every run.
explorer = cnb.widgets.ImageHeadExplorer(vit, cnb.ImageClassificationTask(test.images[:16], test.labels[:16]),
                                         class_names=test.classes)
explorer

# %%
top = heads.sort_values("value", ascending=False).iloc[0]
effect = explorer.toggle(int(top["layer"]), int(top["head"]))
print(f"zeroing L{int(top['layer'])}H{int(top['head'])} on test image 0 (label {test.classes[effect.label]}): "
      f"KL {effect.kl:.4f} nats, label probability {effect.base[effect.label]:.3f} -> {effect.new[effect.label]:.3f}")
effect.frame(test.classes)
