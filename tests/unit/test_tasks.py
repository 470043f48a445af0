"""The engine's tasks on a tiny random BERT: ``SentencePairTask`` ablation against a plain
one-intervention-at-a-time hook loop (``run_with_hooks`` on the full bridge forward, then a
hand-written mean pool and cosine), a head against the plain Hugging Face ``BertModel`` with that
head's slice of the output projection's input zeroed, the replay from a cached residual against
a full forward (with padding masked in attention), the fast paths' fallback on post-LN blocks,
``score`` on the task, and the refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from plain_refs import bridge_pair_cosines

import causal_nb as cnb
from causal_nb.engine.replay import _head_fast_path, _mlp_fast_path, capture, run_from
from causal_nb.models.families import UnsupportedModelError

# sentences of different lengths, so every batch is padded
PAIRS = [("a man is playing a guitar .", "someone plays an instrument ."),
         ("the cat sat on the mat .", "is it raining ?"),
         ("a dog runs in the park and then it runs home again .", "she reads a book ."),
         ("the stock market fell sharply today .", "a man is playing .")]
N_LAYERS = 2


@pytest.fixture(scope="module")
def task():
    return cnb.SentencePairTask(PAIRS)


def tokens_of(model, pairs=PAIRS):
    texts = [s for p in pairs for s in p]
    return model.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")


def hand_means(model, enc, names):
    """Each hook's activation averaged over the real tokens of every sentence."""
    _, cache = model.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"], names_filter=list(names))
    real = enc["attention_mask"].bool()
    return {n: cache[n][real].mean(0) for n in names}


def unit_hooks(unit, layer, index):
    """(hook name, index into the dims after pos or None) edited by one unit, written out by hand."""
    if unit == "head":
        return [(f"blocks.{layer}.attn.hook_z", index)]
    if unit == "neuron":
        return [(f"blocks.{layer}.mlp.hook_post", index)]
    if unit == "mlp":
        return [(f"blocks.{layer}.hook_mlp_out", None)]
    if unit == "attn":
        return [(f"blocks.{layer}.attn.hook_z", None)]
    return [(f"blocks.{layer}.attn.o.hook_out", None), (f"blocks.{layer}.hook_mlp_out", None)]  # block


def hook_loop(model, unit, kind, n_units_per_layer):
    enc = tokens_of(model)
    names = {h for layer in range(N_LAYERS) for h, _ in unit_hooks(unit, layer, 0)}
    means = hand_means(model, enc, names) if kind == "mean" else {}
    rows = []
    for layer in range(N_LAYERS):
        for i in range(n_units_per_layer):
            def make(name, idx):
                def fn(x, hook):
                    x = x.clone()
                    fill = means[name] if kind == "mean" else torch.zeros_like(x[0, 0])
                    if idx is None:
                        x[:] = fill
                    else:
                        x[:, :, idx] = fill[idx]
                    return x
                return fn

            rows.append(bridge_pair_cosines(model, enc, [(h, make(h, idx)) for h, idx in unit_hooks(unit, layer, i)])[0])
    return torch.stack(rows).numpy(), bridge_pair_cosines(model, enc)[0].numpy()


@pytest.mark.parametrize("unit,count", [("head", 4), ("neuron", 64), ("mlp", 1), ("attn", 1), ("block", 1)])
@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_ablate_on_sentence_pairs_equals_a_plain_hook_loop(bert, task, unit, kind, count):
    df = cnb.ablate(bert, task=task, unit=unit, kind=kind, metric="cosine")
    want, clean = hook_loop(bert, unit, kind, count)
    per = df.attrs["per_prompt"]
    assert per.shape == (N_LAYERS * count, len(PAIRS)) and list(per.columns) == [f"pair{i}" for i in range(len(PAIRS))]
    assert np.abs(per.to_numpy() - want).max() < 1e-5
    assert np.allclose(df["value"], want.mean(1), atol=1e-5)
    assert np.allclose(df.attrs["baseline_per_prompt"], clean, atol=1e-6)
    assert np.abs(want - clean).max() > 1e-4  # the ablations do change the cosines (the check can fail)


def test_stacked_interventions_equal_one_at_a_time(bert, task):
    counts = {n: len(h._forward_hooks) for n, h in bert.hook_dict.items()}
    one = cnb.ablate(bert, task=task, unit="neuron", kind="mean", layers=[0], batch_size=1)
    cnb.score(bert, task=task, method="attribution", unit="head")
    assert {n: len(h._forward_hooks) for n, h in bert.hook_dict.items()} == counts  # no hook left behind
    many = cnb.ablate(bert, task=task, unit="neuron", kind="mean", layers=[0], batch_size=16)
    assert np.abs(one.attrs["per_prompt"].to_numpy() - many.attrs["per_prompt"].to_numpy()).max() < 1e-6


def test_a_head_equals_the_plain_bert_model_with_its_slice_zeroed(bert, bert_folder, task):
    from transformers import BertModel

    ref = BertModel.from_pretrained(bert_folder).eval()
    enc = tokens_of(bert)
    layer, head, d_head = 1, 2, 8
    dense = ref.encoder.layer[layer].attention.output.dense

    def zero_head(mod, args):
        x = args[0].clone()
        x[..., head * d_head:(head + 1) * d_head] = 0
        return (x,)

    handle = dense.register_forward_pre_hook(zero_head)
    try:
        with torch.no_grad():
            h = ref(**enc).last_hidden_state
    finally:
        handle.remove()
    m = enc["attention_mask"].unsqueeze(-1).float()
    v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    want = (v[0::2] * v[1::2]).sum(-1).double().numpy()
    df = cnb.ablate(bert, task=task, unit="head", kind="zero", layers=[layer])
    assert np.abs(df.attrs["per_prompt"].to_numpy()[head] - want).max() < 1e-5


def test_the_readout_is_sentence_embeddings_and_padding_is_masked(bert, task):
    emb = cnb.sentence_embeddings(bert, [s for p in PAIRS for s in p])
    cos = (emb[0::2] * emb[1::2]).sum(-1).double().numpy()
    base = cnb.ablate(bert, task=task, unit="mlp", layers=[0]).attrs["baseline_per_prompt"]
    assert np.allclose(base, cos, atol=1e-6)
    alone = cnb.ablate(bert, task=cnb.SentencePairTask([PAIRS[1]]), unit="mlp", layers=[0])
    assert alone.attrs["baseline_per_prompt"][0] == pytest.approx(cos[1], abs=1e-6)  # padding changes nothing
    # the blocks got the attention mask: -inf-like at padded keys, 0 at real ones
    tb = task.prepare(bert)
    scored = task.scoring(bert, tb)
    cap = capture(bert, tb.tokens, ["blocks.0.attn.hook_z"], task=task, scored=scored)
    mask4 = cap.block_args[1][0][1]
    pad = ~tb.mask
    assert pad.any() and mask4.shape[0] == len(tb)
    assert (mask4[:, 0, 0][pad] < -1e30).all() and (mask4[:, 0, 0][tb.mask] == 0).all()


def test_replay_from_a_cached_residual_equals_the_full_forward(bert, task):
    tb = task.prepare(bert)
    scored = task.scoring(bert, tb)
    cap = capture(bert, tb.tokens, task=task, scored=scored)
    with torch.no_grad():
        for start in range(N_LAYERS):
            assert (run_from(bert, cap, start, 1, None, task=task, scored=scored) - cap.logits).abs().max() < 1e-6
            two = run_from(bert, cap, start, 2, None, task=task, scored=scored.repeat(2))  # stacked copies
            assert (two - cap.logits.repeat(2, 1)).abs().max() < 1e-6


def test_the_fast_paths_fail_their_checks_on_post_ln_blocks(bert, task):
    tb = task.prepare(bert)
    hooks = ["blocks.0.attn.hook_z", "blocks.0.mlp.hook_post"]
    cap = capture(bert, tb.tokens, hooks + [f"blocks.{x}.{h}" for x in range(N_LAYERS)
                                            for h in ("hook_resid_mid", "hook_resid_post", "hook_mlp_out")],
                  task=task, scored=task.scoring(bert, tb))
    # BERT's resid_mid alias is ln2.hook_in (before LN2): x + mlp(ln2(x)) is not the block's output
    assert not _head_fast_path(bert, cap, 0)
    assert not _mlp_fast_path(bert, cap, 0, neurons=False) and not _mlp_fast_path(bert, cap, 0, neurons=True)
    assert not cap.fast_paths  # and the task turns them off outright: whole blocks are replayed
    lm_cap = capture(bert, tb.tokens, hooks)  # the LM capture keeps them (decoders' checks decide)
    assert lm_cap.fast_paths


@pytest.mark.parametrize("method", ["ablation", "attribution", "magnitude", "random", "taylor"])
@pytest.mark.parametrize("unit,n", [("head", 8), ("neuron", 128)])
def test_score_on_sentence_pairs_has_the_right_shape(bert, task, method, unit, n):
    df = cnb.score(bert, task=task, method=method, unit=unit)
    assert len(df) == n and list(df.columns) == ["layer", unit, "score"] and np.isfinite(df.score).all()
    assert df.attrs["task"] == repr(task)
    if method in ("ablation", "attribution", "taylor"):
        assert df.attrs["per_prompt"].shape == (n, len(PAIRS))


@pytest.mark.parametrize("unit,kind", [("head", "zero"), ("head", "mean"), ("neuron", "zero")])
def test_attribution_tracks_exact_ablation(bert, task, unit, kind):
    from scipy.stats import spearmanr

    exact = cnb.score(bert, task=task, method="ablation", unit=unit, kind=kind)
    est = cnb.score(bert, task=task, method="attribution", unit=unit, kind=kind)
    # damage = clean cosine - ablated cosine; exact is its mean over pairs
    ab = cnb.ablate(bert, task=task, unit=unit, kind=kind)
    drop = np.asarray(ab.attrs["baseline_per_prompt"])[None, :] - ab.attrs["per_prompt"].to_numpy()
    assert np.allclose(exact.score, drop.mean(1), atol=1e-9)
    rho = spearmanr(exact.score, est.score).statistic
    assert rho > 0.8, rho  # measured: 1.00 (heads), 1.00 (neurons) on this tiny model
    assert np.sign(est.score).tolist().count(1) > 0


def test_the_lm_task_is_the_default_and_unchanged():
    gpt2 = cnb.load_model("code-gpt2-2l", device="cpu")
    prompts = ["def f(x):\n    return x + 1", "for i in range(10):\n    print(i)"]
    a = cnb.ablate(gpt2, prompts, unit="head", n_tokens=8)
    b = cnb.ablate(gpt2, prompts, unit="head", n_tokens=8, task=cnb.LMTask())
    assert a.attrs["metric"] == "kl" and a["value"].equals(b["value"])
    with pytest.raises(UnsupportedModelError, match=r"SentencePairTask reads a sentence encoder.*'gpt2' is not an "
                                                    r"encoder.*drop task="):
        cnb.ablate(gpt2, task=cnb.SentencePairTask(PAIRS))
    with pytest.raises(UnsupportedModelError, match="not an encoder"):
        cnb.score(gpt2, task=cnb.SentencePairTask(PAIRS), method="magnitude")


def test_an_encoder_under_the_lm_task_is_refused_naming_the_encoder_task(bert):
    with pytest.raises(UnsupportedModelError, match=r"'bert' is an encoder.*task=cnb\.SentencePairTask\(pairs\)"):
        cnb.ablate(bert, ["a man is playing"], n_tokens=4)
    with pytest.raises(UnsupportedModelError, match=r"task=cnb\.SentencePairTask"):
        cnb.score(bert, ["a man is playing"], method="random")


def test_bad_input_for_the_pair_task_is_named(bert, task):
    with pytest.raises(ValueError, match="carries its inputs"):
        cnb.ablate(bert, ["a man"], task=task)
    with pytest.raises(ValueError, match="an LM metric"):
        cnb.ablate(bert, task=task, metric="kl")
    with pytest.raises(ValueError, match="resample ablation is not available"):
        cnb.ablate(bert, task=task, kind="resample")
    with pytest.raises(ValueError, match="patching needs paired clean/corrupted inputs"):
        cnb.patch(bert, ["a"], ["b"], task=task)
    with pytest.raises(ValueError, match=r"method='duplication' is not available.*methods with this task"):
        cnb.score(bert, task=task, method="duplication")
    with pytest.raises(ValueError, match="unit 'resid' is not available"):
        cnb.ablate(bert, task=task, unit="resid")
    with pytest.raises(ValueError, match="n_tokens= is not used"):
        cnb.ablate(bert, task=task, n_tokens=8)
    with pytest.raises(ValueError, match="no column"):
        cnb.SentencePairTask(pd.DataFrame({"sentence1": ["a"]}))
    with pytest.raises(TypeError, match="not one pair"):
        cnb.SentencePairTask(("a", "b"))
    with pytest.raises(TypeError, match="task= must be a task"):
        cnb.ablate(bert, task="pairs")


def test_a_custom_pair_metric_and_a_mean_reference(bert, task):
    def dot(emb, batch):
        return (emb[0::2] * emb[1::2]).sum(-1)

    a = cnb.ablate(bert, task=task, unit="mlp", metric=dot)
    b = cnb.ablate(bert, task=task, unit="mlp", metric="cosine")
    assert np.allclose(a["value"], b["value"], atol=1e-6)  # normalised embeddings: dot = cosine
    with pytest.raises(ValueError, match="one value per pair"):
        cnb.ablate(bert, task=task, unit="mlp", metric=lambda e, b: e.sum(-1))
    # mean over another sentence set differs from the mean over the task's own sentences
    other = cnb.ablate(bert, task=task, unit="mlp", kind="mean", reference=["is it raining ?", "a dog runs ."])
    own = cnb.ablate(bert, task=task, unit="mlp", kind="mean")
    assert not np.allclose(other["value"], own["value"], atol=1e-7)


GOLD = [1.0, 0.0, 0.0, 1.0]  # pairs 0 and 3 called paraphrases (the tiny model is random: only the arithmetic matters)


def test_separation_is_the_gap_between_paraphrase_and_other_cosines(bert):
    """metric='separation' (mean over pairs) = mean cosine of gold-1 pairs - mean cosine of
    gold-0 pairs, per unit ablated, computed here from the hand cosines; graded gold gives the
    least-squares slope of cosine on gold (numpy's polyfit)."""
    pairs = pd.DataFrame({"sentence1": [a for a, _ in PAIRS], "sentence2": [b for _, b in PAIRS], "score": GOLD})
    t = cnb.SentencePairTask(pairs)
    df = cnb.ablate(bert, task=t, unit="head", metric="separation")
    want, clean = hook_loop(bert, "head", "zero", 4)
    pos, neg = np.array(GOLD) == 1, np.array(GOLD) == 0
    assert np.allclose(df["value"], want[:, pos].mean(1) - want[:, neg].mean(1), atol=1e-5)
    assert df.attrs["baseline"] == pytest.approx(clean[pos].mean() - clean[neg].mean(), abs=1e-5)
    sc = cnb.score(bert, task=t, method="ablation", unit="head", kind="zero", metric="separation")
    assert np.allclose(sc.sort_values(["layer", "head"])["score"], df.attrs["baseline"] - df["value"], atol=1e-5)
    graded = pairs.assign(score=[0.9, 0.1, 0.4, 0.7])
    g = cnb.ablate(bert, task=cnb.SentencePairTask(graded), unit="mlp", metric="separation")
    want_mlp, _ = hook_loop(bert, "mlp", "zero", 1)
    slopes = [np.polyfit(graded["score"], row, 1)[0] for row in want_mlp]
    assert np.allclose(g["value"], slopes, atol=1e-5)
    with pytest.raises(ValueError, match="needs gold scores that vary"):
        cnb.ablate(bert, task=cnb.SentencePairTask(PAIRS), unit="mlp", metric="separation")
    with pytest.raises(ValueError, match="needs gold scores that vary"):
        cnb.ablate(bert, task=cnb.SentencePairTask(pairs.assign(score=1.0)), unit="mlp", metric="separation")


def test_a_task_wide_separation_metric_reaches_the_gradient_methods(bert):
    """SentencePairTask(pairs, metric="separation"): ablation equals metric="separation" passed
    to the call, and attribution estimates that metric's drop (checked against the first-order
    estimate written out from autograd on the hand pool: a head's zero-ablation estimate is
    -(grad . act) summed over its slice of hook_z)."""
    pairs = pd.DataFrame({"sentence1": [a for a, _ in PAIRS], "sentence2": [b for _, b in PAIRS], "score": GOLD})
    t = cnb.SentencePairTask(pairs, metric="separation")
    assert "separation" in repr(t)
    a = cnb.ablate(bert, task=t, unit="head", kind="zero")
    b = cnb.ablate(bert, task=cnb.SentencePairTask(pairs), unit="head", kind="zero", metric="separation")
    assert np.allclose(a["value"], b["value"], atol=1e-9)
    est = cnb.score(bert, task=t, method="attribution", unit="head", kind="zero")
    enc = tokens_of(bert)
    acts = {}

    def keep(la):
        def fn(x, hook):
            x.retain_grad()
            acts[la] = x
            return x
        return fn

    got = {}

    def last(x, hook):
        got["h"] = x
        return x

    hooks = [(f"blocks.{la}.attn.hook_z", keep(la)) for la in range(N_LAYERS)] + [(f"blocks.{N_LAYERS - 1}.hook_out", last)]
    bert.run_with_hooks(enc["input_ids"], attention_mask=enc["attention_mask"], fwd_hooks=hooks)
    m = enc["attention_mask"].unsqueeze(-1).float()
    v = (got["h"].float() * m).sum(1) / m.sum(1)
    v = v / v.norm(dim=-1, keepdim=True)
    cos = (v[0::2] * v[1::2]).sum(-1)
    g = torch.tensor(GOLD, dtype=torch.float32) - torch.tensor(GOLD).mean()
    sep = (len(GOLD) * g / (g * g).sum() * cos).mean()
    sep.backward()
    want = []
    for la in range(N_LAYERS):
        z = acts[la]
        want += (z.grad * z).sum(dim=(0, 1, 3)).tolist()  # drop estimate: -grad . (0 - z)
    want = np.array(want)
    assert np.allclose(est.sort_values(["layer", "head"])["score"], want, atol=1e-5)
    with pytest.raises(ValueError, match="needs gold scores"):
        cnb.SentencePairTask(PAIRS, metric="separation")
    with pytest.raises(ValueError, match="same gold score"):
        cnb.SentencePairTask(pairs.assign(score=1.0), metric="separation")
    with pytest.raises(ValueError, match="unknown metric"):
        cnb.SentencePairTask(pairs, metric="spearman")
