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
# # 07 — Pruning a real sentence encoder: which heads of all-MiniLM-L6-v2 can go?
#
# The compression study this kit serves prunes the attention heads of sentence-embedding
# encoders and judges them on sentence similarity. Here the same claims as notebooks 02/03 are
# tested on a real encoder, all-MiniLM-L6-v2 (6 layers x 12 heads, installed offline by the
# set-up): **(H1)** a method's head importance predicts the damage of removing the head;
# **(H2)** removing the heads exact ablation calls least important keeps more of the encoder's
# quality than weight magnitude, gradients or chance, at 10/25/50/80% of the heads.
#
# The task is paraphrase identification on Tatoeba (two English translations of one sentence
# are paraphrases; random and same-opening sentence pairs are not). A head's damage is measured
# on training pairs by the **separation** metric: mean cosine of the paraphrase pairs minus mean
# cosine of the others (a mean of per-pair values, so exact ablation, attribution and paired tests
# all apply; Spearman with the gold labels, the study's measure, is a statistic of the whole set
# and is reported for every pruned model on held-out pairs).

# %% tags=["parameters"]
ENCODER_MODEL = "all-minilm-l6-v2"  # a sentence encoder (cnb.list_models()); the profiles' MODEL is not used here
PAIRS = "tatoeba-paraphrase"  # a shipped pairs set, or a JSONL file of sentence1, sentence2, score (0/1)
N_SCORE_PAIRS = 32  # training-split pairs the heads are scored on (half paraphrases)
N_EVAL_PAIRS = 160  # test-split pairs every pruned encoder is judged on (half paraphrases; no sentence shared with training)
SCORE_METRIC = "separation"  # what a head's damage is measured on: "separation" or "cosine"
METHODS = ["ablation", "attribution-abs", "magnitude", "random"]  # head rankings compared ("taylor", "fisher" also work)
REFERENCE = "ablation"  # the causal reference of H1 and H2
FILL = "zero"  # what a removed head leaves: "zero" or "mean" (over the scoring pairs, folded into the output bias)
SPARSITIES = [0.1, 0.25, 0.5, 0.8]  # shares of the 72 heads removed (at least one head per layer stays)
SEED = 0  # seed for everything random (the random ranking)
OUT_DIR = "runs/manual"  # where this notebook writes its findings
DEVICE = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"

# %%
import causal_nb as cnb

info = cnb.setup(seed=SEED)
print({k: info[k] for k in ("seed", "deterministic", "causal_nb")})

# %%
model = cnb.load_model(ENCODER_MODEL, device=DEVICE)
train = cnb.balanced_pairs(cnb.load_sentence_pairs(PAIRS, "train"), N_SCORE_PAIRS)
held = cnb.balanced_pairs(cnb.load_sentence_pairs(PAIRS, "test"), N_EVAL_PAIRS)
task = cnb.SentencePairTask(train, metric=SCORE_METRIC)
dense = cnb.evaluate(model, task=cnb.SentencePairTask(held), latency_batches=())
print(f"{ENCODER_MODEL}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, {dense['params'] / 1e6:.1f}M encoder "
      f"parameters; held-out Spearman {dense['spearman']:.3f}, ROC AUC {dense['roc_auc']:.3f} on {len(held)} pairs")

# %% [markdown]
# ## Scoring every head
# Exact ablation zeroes one head at a time (the engine replays the blocks after it from the
# cached run) and measures the drop in separation on the training pairs; attribution-abs is its
# first-order estimate from one forward and backward pass; magnitude reads the weights only.

# %%
scores = cnb.score_methods(model, methods=METHODS, unit="head", task=task, kind=FILL, seed=SEED, progress=False)
fig, heat = cnb.plotting.unit_heatmap(scores[REFERENCE], value="score",
                                      title=f"{ENCODER_MODEL}: drop in {SCORE_METRIC} when a head is removed")
fig

# %%
ref = scores[REFERENCE]
print(f"{(ref.score < 0).sum()} of {len(ref)} heads raise the separation when removed; the most harmful removal: "
      f"L{ref.loc[ref.score.idxmax(), 'layer']}H{ref.loc[ref.score.idxmax(), 'head']} ({ref.score.max():+.4f})")
ref.groupby("layer").score.agg(["mean", "max", "min"]).round(4)

# %% [markdown]
# ## H1: does a method rank heads like exact ablation?

# %%
h1 = cnb.stats.h1_table({m: s for m, s in scores.items() if m != REFERENCE}, ref)
h1 = h1.assign(model=ENCODER_MODEL, unit="head", reference=REFERENCE)
h1[["method", "spearman", "kendall", "topk_overlap", "k", "n_units"]].round(3)

# %% [markdown]
# ## H2: pruning 10-80% of the heads
# Each ranking removes its least important heads (global budget, physically: the pruned encoder
# is smaller) and the pruned encoder embeds the held-out pairs. Per pair, the retained quality is
# its share of the full encoder's separation (`cos_retained`, 1 - |cosine change|, is reported
# beside it); the paired tests compare the reference with each method on the same pairs.

# %%
results = cnb.encoder_sweep(model, scores, SPARSITIES, held, fill=FILL, reference=train if FILL == "mean" else None,
                            name="pairs", model_name=ENCODER_MODEL, progress=False)
results.pivot_table(index="sparsity", columns="method", values="pairs_spearman", sort=False).round(3)

# %%
fig, curves = cnb.plotting.degradation_curves(results, quality="pairs_per_prompt_separation_retained", unit="head",
                                              title=f"{ENCODER_MODEL}: separation retained on held-out pairs")
fig

# %%
h2 = cnb.stats.h2_table(results, REFERENCE, quality="pairs_per_prompt_separation_retained")
h2.round(4)

# %%
summary = cnb.stats.h2_summary(results, {"head": REFERENCE}, quality="pairs_per_prompt_separation_retained")
findings = cnb.findings.derive_h1(h1.round(4).to_dict(orient="records"))
findings += cnb.findings.derive_h2(summary.to_dict(orient="records"), quality="share of the full encoder's separation")
findings.append({"title": f"Spearman of the pruned {ENCODER_MODEL}", "text": (
    f"Held-out Spearman of the full encoder {dense['spearman']:.3f}; at the highest sparsity "
    + ", ".join(f"{r.method} {r.pairs_spearman:.3f}" for r in results[results.sparsity == max(SPARSITIES)].itertuples())
    + "."), "table": results[["method", "sparsity", "params", "pairs_spearman", "pairs_roc_auc"]].round(4)})
for f in findings:
    f.pop("figures", None)  # the notebook's figures are not saved as files
cnb.save_findings(findings, f"{OUT_DIR}/07_findings.json")
[f["title"] for f in findings]
