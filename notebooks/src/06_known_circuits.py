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
# # 06 — Known circuits, found again on a real pretrained model
#
# Two circuits described on GPT-2 small are looked for in SmolLM2-135M (a 30-layer Llama with
# 9 query heads per layer): **induction heads** (Olsson et al. 2022), which continue a repeated
# sequence by attending to the token after the earlier copy of the current token, and the
# **indirect object identification** circuit (Wang et al. 2022): in "When Mary and John went
# to the store, John gave a drink to", the model must say " Mary". Everything below is
# measured here; the GPT-2 numbers at the end are from the papers.
#
# Kept light (few prompts, short sequences): the head sweep uses attribution patching (one
# forward and backward per template) and exact patching checks the strongest layer.

# %% tags=["parameters"]
CIRCUITS_MODEL = "smollm2-135m"  # a pretrained natural-language model (cnb.list_models()); the profiles' MODEL (the bundled code model) is not used here
SEED = 0  # seed for everything random (names, random tokens, random head sets)
N_PROMPTS = 8  # IOI prompt pairs, spread over the 8 templates (ABBA and BABA orders alternate)
SEQ_LEN = 12  # random tokens per repeat in the induction batch
N_SEQS = 4  # repeated sequences
TOP_K = 5  # induction heads ablated together
N_RANDOM = 3  # random head sets of the same size, for comparison
ABLATION = "zero"  # "zero" or "mean" (mean over the induction batch)
PATCH_METHOD = "attribution"  # head sweep: "attribution" (fast) or "exact" (one replay per head and site)
N_TOP = 10  # heads in the IOI table
OUT_DIR = "runs/manual"  # where this notebook writes its findings
DEVICE = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"

# %%
import time

import numpy as np
import pandas as pd

import causal_nb as cnb

info = cnb.setup(seed=SEED)
print({k: info[k] for k in ("seed", "deterministic", "causal_nb")})

# %%
model = cnb.load_model(CIRCUITS_MODEL, device=DEVICE)
n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
print(f"{CIRCUITS_MODEL}: {n_layers} layers x {n_heads} heads")
findings = []

# %% [markdown]
# ## Induction heads
# BOS, then `SEQ_LEN` random vocabulary tokens, then the same tokens again. A head's induction
# score is its mean attention from position i of the second repeat to position
# i - SEQ_LEN + 1: the token that followed the earlier copy of token i.

# %%
rep = cnb.repeated_tokens(model, seq_len=SEQ_LEN, n_seqs=N_SEQS, seed=SEED)
scores = cnb.induction_scores(model, rep)
fig, _ = cnb.plotting.unit_heatmap(scores, value="score", title="induction score (attention to i - seq_len + 1)")
fig

# %%
top_induction = scores.sort_values("score", ascending=False).head(TOP_K).reset_index(drop=True)
top_induction["depth"] = (top_induction["layer"] / (n_layers - 1)).round(3)
top_induction.round(4)

# %% [markdown]
# Random tokens cannot be predicted the first time; the second time, a model with induction
# heads copies them. The loss gap is first-repeat loss minus second-repeat loss (nats).

# %%
losses = cnb.induction_losses(model, rep)
losses.round(4)

# %% [markdown]
# Now the top induction heads are ablated together (`ABLATION`), and so are `N_RANDOM` sets of
# as many random other heads. If the score picks out the mechanism, only the first set should
# bring the second repeat's loss back up.

# %%
ablation = cnb.induction_ablation(model, rep, scores, k=TOP_K, kind=ABLATION, n_random=N_RANDOM, seed=SEED)
ablation.round(4)

# %%
findings.append({"title": "Induction heads", "text": (
    f"Top induction score {top_induction['score'].iloc[0]:.3f} (L{top_induction['layer'].iloc[0]}"
    f"H{top_induction['head'].iloc[0]}); loss gap first - second repeat {losses['gap'].mean():.2f} nats; "
    f"{ABLATION}-ablating the top {TOP_K} raises the second-repeat loss by {ablation['increase'].iloc[1]:.2f} "
    f"nats vs at most {ablation['increase'].iloc[2:].max():.2f} for {N_RANDOM} random sets of {TOP_K}."),
    "table": top_induction.round(4).to_dict(orient="records")})

# %% [markdown]
# ## Indirect object identification
# Clean prompts are ABB ("When Mary and John went ..., John gave a drink to"), corrupted ones
# ABC: the second mention of the subject becomes a third name, which removes the cue the
# circuit uses while every position stays put. The metric is the logit difference
# logit(IO) - logit(S) at the last token (END), read by `patch(..., answers=...)`.

# %%
ioi = cnb.ioi_prompts(model, n=N_PROMPTS, seed=SEED)
ioi.positions[["template", "order", "io", "s1", "s2", "end", "clean"]].head(8)

# %%
ld = cnb.ioi_logit_diff(model, ioi)
ld_corr = cnb.ioi_logit_diff(model, ioi, corrupted=True)
per_template = ld.groupby("template")["logit_diff"].mean()
ld_mean, ld_lo, ld_hi = cnb.stats.bootstrap_ci(per_template.to_numpy())
print(f"logit diff (clean): {ld_mean:.3f}, 95% CI over templates [{ld_lo:.3f}, {ld_hi:.3f}]; "
      f"corrupted: {ld_corr['logit_diff'].mean():.3f}; IO ranked above S in {(ld['logit_diff'] > 0).mean():.0%}")
pd.DataFrame({"clean": per_template, "corrupted": ld_corr.groupby("template")["logit_diff"].mean()}).round(3)

# %% [markdown]
# ### Head patching
# Each head's output from the corrupted run is written into the clean run (noising: the
# direction of Wang et al.'s path patching from ABC into ABB), at S2 only or at END only
# (`sites=("all", ...)` patches every position too). A negative effect means the clean run needs that head there. Effects are means
# per template; the interval is a bootstrap over the templates.

# %% tags=["nbval-ignore-output"]
# nbval-ignore-output: prints a wall time.
t0 = time.perf_counter()
per_head = cnb.ioi_head_patching(model, ioi, sites=("S2", "END"), method=PATCH_METHOD, progress=False)
summary = cnb.patching_summary(per_head)
print(f"{PATCH_METHOD} head patching: {time.perf_counter() - t0:.1f} s")

# %%
fig, _ = cnb.plotting.unit_heatmap(summary[summary.site == "END"], value="effect",
                                   title="noising each head at END: change in logit diff")
fig_end = fig
fig

# %%
fig, _ = cnb.plotting.unit_heatmap(summary[summary.site == "S2"], value="effect",
                                   title="noising each head at S2: change in logit diff")
fig

# %% [markdown]
# Roles are read from the data: the site (S2 or END) where a head's effect is larger, the sign,
# and where it attends on clean prompts (`hook_pattern`, at least 0.1 to count). Name-mover-like:
# END, negative effect, attends END -> IO most (negative-name-mover-like: positive effect);
# S-inhibition-like: END, negative effect, attends END -> S2; duplicate-token-like /
# induction-like: S2, attends S2 -> S1 / S1 + 1; otherwise other.

# %%
attention = cnb.ioi.head_attention(model, ioi)
roles = cnb.head_roles(summary, attention, top=N_TOP)
roles.round(3)

# %% [markdown]
# Exact patching of the strongest head's layer (templates 0-1, at END) checks the attribution
# estimates there.

# %%
layer = int(roles["layer"].iloc[0])
two = ioi.subset(np.flatnonzero(ioi.positions["template"] < 2))
exact = cnb.patching_summary(cnb.ioi_head_patching(model, two, sites=("END",), layers=[layer], progress=False))
summary_two = cnb.patching_summary(per_head[per_head.template < 2])
check = exact.merge(summary_two, on=["site", "layer", "head"], suffixes=("_exact", "_" + PATCH_METHOD))
r = np.corrcoef(check["effect_exact"], check["effect_" + PATCH_METHOD])[0, 1]
print(f"layer {layer}: Pearson r exact vs {PATCH_METHOD} = {r:.3f} over {len(check)} head-sites")
check[["site", "head", "effect_exact", "ci_low_exact", "ci_high_exact", "effect_" + PATCH_METHOD]].round(3)

# %% [markdown]
# Path-level evidence: the engine patches a head's output into everything downstream, so
# "this head's output only into the queries of later heads" (path patching proper) is not
# available here. The S2-vs-END split is the path information given: an effect at S2 flows
# through later positions' attention to S2; an effect at END acts on the answer directly or
# through later heads at END.

# %%
findings.append({"title": "IOI logit difference", "text": (
    f"SmolLM2 logit diff IO - S at END: {ld_mean:.3f} (95% CI over {len(per_template)} templates "
    f"[{ld_lo:.3f}, {ld_hi:.3f}]); ABC-corrupted {ld_corr['logit_diff'].mean():.3f}."),
    "table": per_template.round(4).reset_index().to_dict(orient="records")})
findings.append({"title": "IOI top heads", "text": (
    f"Top heads by |effect| of {PATCH_METHOD} noising at S2 or END, roles from the data; exact patching "
    f"of layer {layer} (templates 0-1) agrees with r = {r:.3f}."), "table": roles.round(4).to_dict(orient="records"),
    "figure": "graphs/06_ioi_head_patching_end.html"})

# %% [markdown]
# ## Compared with GPT-2 small
# Wang et al. (2022) find name movers in layers 9-10 of 12, S-inhibition heads in 7-8,
# induction and duplicate-token heads earlier (0-6). Depth below is layer / (n_layers - 1).

# %%
literature = pd.DataFrame([
    {"role": "name-mover-like", "gpt2_small_layers": "9, 10", "gpt2_depth": "0.82-0.91"},
    {"role": "S-inhibition-like", "gpt2_small_layers": "7, 8", "gpt2_depth": "0.64-0.73"},
    {"role": "induction-like", "gpt2_small_layers": "5, 6", "gpt2_depth": "0.45-0.55"},
    {"role": "duplicate-token-like", "gpt2_small_layers": "0, 3", "gpt2_depth": "0.00-0.27"},
])
found = roles.groupby("role").agg(smollm2_layers=("layer", lambda x: ", ".join(map(str, sorted(set(x))))),
                                  smollm2_depth=("depth", "mean"), n_heads=("head", "size")).reset_index()
comparison = literature.merge(found, on="role", how="outer")
induction_depth = float(top_induction["depth"].mean())
print(f"top-{TOP_K} induction heads (repeated tokens): mean depth {induction_depth:.2f}")
comparison.round(3)

# %%
findings.append({"title": "Comparison with GPT-2 small", "text": (
    f"Induction heads (repeated random tokens) sit at mean depth {induction_depth:.2f} of SmolLM2; "
    "IOI roles by depth in the table (GPT-2 small depths from Wang et al. 2022)."),
    "table": comparison.round(4).to_dict(orient="records")})

# %% [markdown]
# ## Live: heads on IOI prompts
# Toggle heads (30 x 9 grid) and see what zeroing or mean-replacing them does to each token of
# an IOI prompt. Needs a live kernel; the update time is measured below.

# %% tags=["nbval-ignore-output"]
# nbval-ignore-output: a widget's output is a model id that changes every run.
explorer = cnb.widgets.HeadExplorer(model, list(ioi.positions["clean"]), n_tokens=int(ioi.clean.tokens.shape[1]))
explorer

# %% tags=["nbval-ignore-output"]
# nbval-ignore-output: prints a wall time.
t0 = time.perf_counter()
explorer.toggle(int(roles["layer"].iloc[0]), int(roles["head"].iloc[0]))
update_s = time.perf_counter() - t0
explorer.clear()
print(f"one HeadExplorer update: {update_s:.2f} s")

# %%
cnb.plotting.save_figure(fig_end, f"{OUT_DIR}/graphs", "06_ioi_head_patching_end", png=False)
cnb.save_findings(findings, f"{OUT_DIR}/06_findings.json")
[f["title"] for f in findings]
