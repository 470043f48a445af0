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
# # 01 — Reverse intervention: characteristic token sets of two domains
#
# Which tokens does domain B's activity promote when it is put into domain A's runs? For
# every layer we shift A's residual stream by the difference between B's and A's mean
# activations at that layer, measure each vocabulary token's change in log-probability
# (averaged over A's prompts and positions), then average over layers and rank. The top
# tokens form B's *characteristic token set* relative to A, saved to `TOKEN_SETS_DIR` for the
# later notebooks (the token-set metric of the pruning sweep).

# %% tags=["parameters"]
MODEL = "code-llama-4l"  # bundled name (see list_models()), local HF folder, or hub name
SEED = 0  # seed for everything random
DOMAIN_A = "python"  # the domain whose runs are intervened on
DOMAIN_B = "cpp"  # the domain whose activity is put in
N_PROMPTS = 16  # prompts per domain (train split)
N_TOKENS = 64  # tokens per prompt, BOS included
TOP_K = 30  # tokens kept in each token set
SITE = "resid"  # "resid" (residual stream), "attn" or "mlp" output
MODE = "mean"  # "mean" (mean-difference shift) or "paired" (prompt i into prompt i; attn/mlp only)
OTHER_PAIRS = [["science", "maths"], ["finance", "medical"]]  # more (A, B) domain pairs, both directions
DEVICE = "auto"  # "auto", "cpu" or "cuda"
TOKEN_SETS_DIR = "../token_sets"  # where token sets are written: <dir>/<model>/<A>__<B>.json
OUT_DIR = "runs/manual"  # where this notebook writes its other outputs

# %%
import causal_nb as cnb
import pandas as pd

info = cnb.setup(seed=SEED)
print({k: info[k] for k in ("seed", "deterministic", "causal_nb")})

# %%
model = cnb.load_model(MODEL, device=DEVICE)
prompts = {d: cnb.load_prompts(d, split="train", n=N_PROMPTS) for d in (DOMAIN_A, DOMAIN_B)}
print({d: len(p) for d, p in prompts.items()}, f"{model.cfg.n_layers} layers")

# %% [markdown]
# ## B's activity in A's runs
# `reverse_intervention(model, a, b)` returns the tokens promoted in A's runs by B's activity,
# with each token's rank at every layer. Both directions are computed.

# %%
pairs = [(DOMAIN_A, DOMAIN_B), (DOMAIN_B, DOMAIN_A)]
token_sets = {}
for a, b in pairs:
    ts = cnb.reverse_intervention(model, prompts[a], prompts[b], top_k=TOP_K, site=SITE, mode=MODE,
                                  n_tokens=N_TOKENS, model_name=MODEL, progress=False)
    token_sets[a, b] = ts
    print(f"{a}__{b}: saved {ts.save(cnb.token_set_path(TOKEN_SETS_DIR, MODEL, a, b)).name}")

# %%
fig, df = cnb.plotting.token_set_bars(token_sets[DOMAIN_A, DOMAIN_B], n=20)
fig

# %%
df

# %%
fig, df = cnb.plotting.token_set_bars(token_sets[DOMAIN_B, DOMAIN_A], n=20)
fig

# %%
df

# %% [markdown]
# ## Where in the network does the promotion happen?
# Rank of each top token at each layer (0 = most promoted at that layer).

# %%
fig, df = cnb.plotting.token_set_layers(token_sets[DOMAIN_A, DOMAIN_B], n=15)
fig

# %% [markdown]
# ## Do the token sets tell the domains apart on held-out prompts?
# Log of the probability mass the model puts on each token set, on the test split of both
# domains. A characteristic set of B should get more mass on B's prompts than on A's.

# %%
test = {d: cnb.load_prompts(d, split="test", n=N_PROMPTS) for d in (DOMAIN_A, DOMAIN_B)}
rows = []
for (a, b), ts in token_sets.items():
    mass = cnb.token_set_mass(model, test, ts, n_tokens=N_TOKENS).set_index("domain").log_mass
    rows.append({"token_set": f"{a}__{b} ({b} tokens)", f"on {DOMAIN_A}": mass[DOMAIN_A], f"on {DOMAIN_B}": mass[DOMAIN_B]})
separation = pd.DataFrame(rows).round(3)
separation

# %% [markdown]
# ## Other domain pairs
# The prompt sets also hold prose: science vs maths and finance vs medical text. The bundled
# models were trained on source code only, so this is out of their domain: expect operator
# and code tokens where the prose domain resembles code (maths) and no recognisable finance or
# medical vocabulary. With a general model (`-p MODEL gpt2`, where the hub is reachable) the
# same cell gives the prose pairs' characteristic tokens.

# %%
others = {}
for a0, b0 in OTHER_PAIRS:
    ps = {d: cnb.load_prompts(d, split="train", n=N_PROMPTS) for d in (a0, b0)}
    for a, b in ((a0, b0), (b0, a0)):
        ts = cnb.reverse_intervention(model, ps[a], ps[b], top_k=TOP_K, site=SITE, mode=MODE, n_tokens=N_TOKENS,
                                      model_name=MODEL, progress=False)
        ts.save(cnb.token_set_path(TOKEN_SETS_DIR, MODEL, a, b))
        others[f"{a}__{b}"] = [repr(t) for t in ts.tokens[:10]]
pd.DataFrame(others)

# %%
cnb.save_json(separation.to_dict(orient="records"), f"{OUT_DIR}/01_token_set_separation.json")
