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
# # 00 — The bundled models and the prompt sets
#
# Every notebook in this series works on a model and on prompt sets of two or more domains.
# This one shows what ships with the kit: small code language models trained offline on
# Python and C++ (so the series runs without the Hugging Face hub), and the prompt sets.
# It checks that the model is a real language model on these prompts, and writes a small
# summary to `OUT_DIR` for the run report.

# %% tags=["parameters"]
MODEL = "code-llama-4l"  # bundled name (see list_models()), local HF folder, or hub name
SEED = 0  # seed for everything random
N_PROMPTS = 16  # prompts per domain used below (test split)
N_TOKENS = 64  # tokens per prompt, BOS included (longer prompts are truncated)
DEVICE = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
OUT_DIR = "runs/manual"  # where this notebook writes its outputs

# %%
import causal_nb as cnb

info = cnb.setup(seed=SEED)
print({k: info[k] for k in ("seed", "deterministic", "causal_nb")})

# %% [markdown]
# ## The model zoo
# Each bundled model is a Hugging Face folder inside the package, with a model card measured
# by its training script: held-out loss per domain next to the unigram baseline, and the
# strongest previous-token and induction heads.

# %%
cnb.list_models(cards=True).round(3)

# %%
model = cnb.load_model(MODEL, device=DEVICE)
cfg = model.cfg
print(f"{MODEL}: {cfg.n_layers} layers, {cfg.n_heads} heads, d_model {cfg.d_model}, d_vocab {cfg.d_vocab}")

# %% [markdown]
# ## Prompt sets
# One JSONL file per domain in `causal_nb/data/prompt_files/` (shipped with the package). The code prompts are chunks of real files that
# the models never saw in training (held out by file); the prose domains are for larger hub models.

# %%
cnb.prompt_set_summary()

# %%
domains = {d: cnb.load_prompts(d, split="test", n=N_PROMPTS) for d in ("python", "cpp")}
print(domains["python"].texts[0][:300])

# %%
batch = domains["cpp"].tokenize(model, N_TOKENS)
print(batch.tokens.shape, "real tokens per prompt:", batch.lengths[:8].tolist())
print(model.to_str_tokens(batch.tokens[0, :24]))

# %% [markdown]
# ## Is it a real language model on these prompts?
# Mean next-token loss (nats) on the held-out prompts, next to the loss of the unigram
# distribution of the training corpus: a language model must be far below it.

# %%
losses = cnb.domain_losses(model, domains, n_tokens=N_TOKENS)
losses

# %%
cnb.save_json({"model": MODEL, "losses": losses.round(4).to_dict(orient="records")}, f"{OUT_DIR}/00_summary.json")
