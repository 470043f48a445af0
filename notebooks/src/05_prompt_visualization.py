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
# # 05 — Prompt by prompt: what heads do, where they look, what the model writes
#
# The earlier notebooks average over prompts. Here we look at one prompt at a time: replace a
# few attention heads (with zero, their mean over the domain, or the other domain's mean, as
# the reverse intervention of notebook 01 does) and colour each token by how much its
# log-prob changed; look at the heads' attention patterns; read the model's own continuations
# in each domain. The last two cells are live: click heads on a grid, or slide the sparsity of
# each importance metric, and the plots update in place.

# %% tags=["parameters"]
MODEL = "code-llama-4l"  # bundled name, local HF folder, or hub name
SEED = 0  # seed for everything random
DOMAIN_A = "python"  # the prompts looked at
DOMAIN_B = "cpp"  # the other domain: its mean head outputs are what "patch" writes in
N_PROMPTS = 16  # prompts per domain (test split); also the mean-replacement reference
N_TOKENS = 64  # tokens per prompt, BOS included
PROMPT_INDEX = 0  # which DOMAIN_A prompt the static views show
HEADS = "L1H3 L2H0"  # heads replaced / drawn, as L<layer>H<head> separated by spaces
KIND = "patch"  # replacement: "zero", "mean" (DOMAIN_A mean) or "patch" (DOMAIN_B mean)
N_NEW = 16  # tokens the model writes in the continuation table
SCORES_DIR = "../scores"  # scores written by notebook 02, for the sparsity sliders
SLIDER_METHODS = ["ablation", "attribution", "acdc", "fisher", "magnitude", "random"]  # one slider each
DEVICE = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"

# %%
import causal_nb as cnb
from causal_nb import views

info = cnb.setup(seed=SEED)
print({k: info[k] for k in ("seed", "deterministic", "causal_nb")})

# %%
model = cnb.load_model(MODEL, device=DEVICE)
heads = views.parse_heads(HEADS)
views.head_sets(model, heads)  # fails here, clearly, for a head the model doesn't have
a = cnb.load_prompts(DOMAIN_A, split="test", n=N_PROMPTS)
b = cnb.load_prompts(DOMAIN_B, split="test", n=N_PROMPTS)
means_a, means_b = views.head_means(model, a, N_TOKENS), views.head_means(model, b, N_TOKENS)
print(f"{len(a)} {DOMAIN_A} and {len(b)} {DOMAIN_B} prompts; heads {heads}, replaced by {KIND!r}")

# %% [markdown]
# ## One prompt, some heads replaced
# Each token is coloured by the change in the log-prob the model gave it (red: it became less
# likely once the heads were replaced, so those heads helped predict it). Hover for values.

# %%
from IPython.display import HTML

effect = views.head_effect(model, a[PROMPT_INDEX], heads, KIND, means_a, means_b, n_tokens=N_TOKENS)
print(f"mean change in next-token log-prob: {effect.metric_change:+.4f} nats")
HTML(views.token_html(effect.tokens[1:], effect.delta, title=f"{KIND}-replacing {HEADS} on {a.ids[PROMPT_INDEX]}"))

# %%
fig, df = cnb.plotting.token_effects(effect)
fig

# %% [markdown]
# Which tokens do these heads promote across the whole prompt? Replacing them *raises* the
# log-prob of the first list and *lowers* the second (mean over positions).

# %%
effect.top_tokens()

# %% [markdown]
# ## Where the heads look

# %%
patterns = views.attention_patterns(model, a[PROMPT_INDEX], heads, N_TOKENS)
fig, df = cnb.plotting.attention_heatmap(patterns, effect.tokens, heads)
fig

# %%
df

# %% [markdown]
# ## What the model writes in each domain
# Greedy continuations of the first prompts of each domain (the bundled models are small:
# expect plausible syntax, not working code), with each prompt's mean next-token loss.

# %%
views.domain_outputs(model, {DOMAIN_A: a, DOMAIN_B: b}, n_prompts=2, n_new=N_NEW)

# %% [markdown]
# ## Live: pick heads
# Click heads on the grid to replace them; choose the replacement and the prompt. The metric,
# the per-token effect and the promoted/demoted tokens update in place (one prompt, one
# forward pass: tens of milliseconds on the bundled models). Needs a live kernel.

# %% tags=["nbval-ignore-output"]
# nbval-ignore-output: a widget's output is a model id that changes every run; its callbacks
# are tested in tests/unit/test_views_widgets.py and tests/browser.
explorer = cnb.widgets.HeadExplorer(model, a, source=b, n_tokens=N_TOKENS)
explorer

# %% [markdown]
# ## Live: sparsity per metric
# One slider per importance metric (scores from notebook 02): it zero-masks that metric's least
# important heads and shows the KL divergence of the masked model to the full one on the
# held-out prompts. Causal scores should stay low longest.

# %%
scores = {m: cnb.load_scores(cnb.scores_path(SCORES_DIR, MODEL, DOMAIN_A, m, "head"), model) for m in SLIDER_METHODS}

# %% tags=["nbval-ignore-output"]
# nbval-ignore-output: widget output (see above); the numbers are printed by the next cell.
sliders = cnb.widgets.SparsityExplorer(model, scores, a, n_tokens=N_TOKENS)
sliders

# %%
for m in SLIDER_METHODS:
    sliders.set_sparsity(m, 0.5)
sliders.table()
