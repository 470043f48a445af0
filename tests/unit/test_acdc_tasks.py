"""ACDC with tasks other than the LM, against greedy walks written by hand on the plain Hugging Face
models (forward hooks on their own modules, a full forward per test, never through the kit):

- ViT (``ImageClassificationTask``): KL of the class distributions to the full model, heads and
  neurons zeroed at the input of the attention / MLP output projections;
- BERT (``SentencePairTask``): the mean over pairs of |cosine - the full model's cosine| (or the
  separation metric's per-pair values), heads zeroed or set to their mean at the attention output
  dense's input;
- T5 (``Seq2SeqTask``): one stack's heads or neurons, KL of the target-token distributions, units
  zeroed at the input of their ``o`` / ``wo`` projection;
- the selection prunes (``prune_units``) to the distance the walk reports; ``score(method="acdc")``
  takes the task.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch
from plain_refs import plain_bert_cosines, plain_bert_means

import causal_nb as cnb
from causal_nb.zoo.tiny import make_tiny_vit

D, HEADS, D_MLP, N_LAYERS = 32, 4, 64, 2
DH = D // HEADS
PAIRS = [("a man is playing a guitar .", "someone plays an instrument ."),
         ("the cat sat on the mat .", "is it raining ?"),
         ("a dog runs in the park and then it runs home again .", "she reads a book ."),
         ("the stock market fell sharply today .", "a man is playing .")]
GOLD = [0.9, 0.1, 0.2, 0.3]


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    return make_tiny_vit(tmp_path_factory.mktemp("vit") / "tiny-vit", n_layers=N_LAYERS, d_model=D, n_heads=HEADS,
                         d_mlp=D_MLP, seed=5)


@pytest.fixture(scope="module")
def vit(vit_folder):
    return cnb.load_model(vit_folder, device="cpu")


@pytest.fixture(scope="module")
def vit_ref(vit_folder):
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(vit_folder).eval()


g = torch.Generator().manual_seed(0)
IMAGES, LABELS = torch.randn(6, 1, 28, 28, generator=g), torch.randint(0, 10, (6,), generator=g)


def greedy(n_layers, n_per_layer, distance, tau, floor):
    """ACDC's walk: last layer first, highest index first; remove a unit when the distance to the
    full model rises by less than tau; keep ``floor`` units per layer."""
    removed, current, left = [], 0.0, dict.fromkeys(range(n_layers), n_per_layer)
    for la in reversed(range(n_layers)):
        for i in reversed(range(n_per_layer)):
            if left[la] <= floor:
                continue
            value = distance([*removed, (la, i)])
            if value - current < tau:
                removed.append((la, i))
                left[la] -= 1
                current = value
    return sorted(removed), current


@contextlib.contextmanager
def vit_zeroed(ref, unit, removed):
    """Zero heads' columns of the attention output projection's input, or neurons' of fc2's."""
    handles = []
    for la in {a for a, _ in removed}:
        idx = [i for a, i in removed if a == la]
        blk = ref.vit.layers[la]
        mod = blk.attention.o_proj if unit == "head" else blk.mlp.fc2
        cols = [h * DH + j for h in idx for j in range(DH)] if unit == "head" else idx

        def pre(m, args, cols=cols):
            x = args[0].clone()
            x[..., cols] = 0
            return (x, *args[1:])
        handles.append(mod.register_forward_pre_hook(pre))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def vit_kl(ref, unit):
    with torch.no_grad():
        full = torch.log_softmax(ref(pixel_values=IMAGES).logits.double(), -1)

    def distance(removed):
        with vit_zeroed(ref, unit, removed), torch.no_grad():
            lp = torch.log_softmax(ref(pixel_values=IMAGES).logits.double(), -1)
        return float((full.exp() * (full - lp)).sum(-1).mean())
    return distance


def as_pairs(sel):
    return sorted((la, i) for la, idx in sel.items() for i in idx)


@pytest.mark.parametrize("unit,n,taus", [("head", HEADS, [0.0, 2e-3, 1e9]), ("neuron", D_MLP, [5e-4])])
def test_acdc_on_images_equals_a_plain_hf_greedy_walk(vit, vit_ref, unit, n, taus):
    task = cnb.ImageClassificationTask(IMAGES, LABELS)
    df = cnb.acdc(vit, task=task, thresholds=taus, unit=unit, progress=False)
    assert df.attrs["quantity"] == "kl" and "kl" in df.columns
    for i, tau in enumerate(taus):
        want, kl = greedy(N_LAYERS, n, vit_kl(vit_ref, unit), tau, floor=1)
        assert as_pairs(df.attrs["selections"][i]) == want, tau
        assert df["kl"][i] == pytest.approx(kl, abs=1e-5)
    # a partial removal (the check can fail): some units go, more than the floor stay
    assert 0 < df["removed"].iloc[0] < df["units"].iloc[0] - N_LAYERS or df["removed"].iloc[-1] > df["removed"].iloc[0]


def test_acdc_selection_on_images_prunes_to_the_reported_kl(vit, vit_ref):
    task = cnb.ImageClassificationTask(IMAGES, LABELS)
    df = cnb.acdc(vit, task=task, thresholds=[0.01], progress=False)
    sel = df.attrs["selections"][0]
    assert 0 < df["removed"][0] < N_LAYERS * HEADS
    pruned = cnb.prune_units(vit, heads=sel, task=task)
    with torch.no_grad():
        full = torch.log_softmax(vit_ref(pixel_values=IMAGES).logits.double(), -1)
        got = torch.log_softmax(pruned(IMAGES).double(), -1)
    assert float((full.exp() * (full - got)).sum(-1).mean()) == pytest.approx(df["kl"][0], abs=1e-5)


def bert_distance(bert_model, enc, means=None, metric="cosine"):
    weights = torch.tensor(GOLD, dtype=torch.float64) - float(np.mean(GOLD))

    def per_pair(removed):
        heads = {}
        for la, h in removed:
            heads.setdefault(la, []).append(h)
        cos, _ = plain_bert_cosines(bert_model, enc, heads=heads, means=means)
        return cos * weights / weights.pow(2).mean() if metric == "separation" else cos

    full = per_pair([])

    def distance(removed):
        return float((per_pair(removed) - full).abs().mean())
    return distance


@pytest.fixture(scope="module")
def bert_plain(bert_folder):
    from transformers import BertModel

    return BertModel.from_pretrained(bert_folder).eval()


def enc_of(bert):
    return bert.tokenizer([s for p in PAIRS for s in p], padding=True, return_tensors="pt")


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_acdc_on_sentence_pairs_equals_a_plain_bert_greedy_walk(bert, bert_plain, kind):
    task = cnb.SentencePairTask(PAIRS)
    taus = [0.0, 1e-3, 1e9]
    df = cnb.acdc(bert, task=task, thresholds=taus, kind=kind, progress=False)
    assert df.attrs["quantity"] == "abs_change" and "abs_change" in df.columns and "kl" not in df.columns
    enc = enc_of(bert)
    means = None
    if kind == "mean":
        means = {k: v for k, v in plain_bert_means(bert_plain, enc).items() if k[1] == "z"}
    dist = bert_distance(bert_plain, enc, means)
    for i, tau in enumerate(taus):
        want, value = greedy(N_LAYERS, bert.cfg.n_heads, dist, tau, floor=1)
        assert as_pairs(df.attrs["selections"][i]) == want, tau
        assert df["abs_change"][i] == pytest.approx(value, abs=1e-5)
    assert df["removed"].iloc[0] < df["removed"].iloc[-1]


def test_acdc_scores_with_the_separation_metric(bert, bert_plain):
    pairs = pd.DataFrame({"sentence1": [a for a, _ in PAIRS], "sentence2": [b for _, b in PAIRS], "score": GOLD})
    task = cnb.SentencePairTask(pairs, metric="separation")
    s = cnb.score(bert, task=task, method="acdc", unit="head", kind="zero", threshold=0.0, progress=False)
    dist = bert_distance(bert_plain, enc_of(bert), metric="separation")
    # each head's score: the distance increase when the walk (no floor) tested it
    removed, current, want = [], 0.0, {}
    for la in reversed(range(N_LAYERS)):
        for h in reversed(range(bert.cfg.n_heads)):
            value = dist([*removed, (la, h)])
            want[(la, h)] = value - current
            if value - current < 0.0:
                removed.append((la, h))
                current = value
    got = {(int(r.layer), int(r.head)): r.score for r in s.itertuples()}
    assert got == pytest.approx(want, abs=1e-5)
    assert s.attrs["quantity"] == "abs_change" and "separation" in s.attrs["task"]


def test_acdc_refuses_what_it_cannot_walk(bert):
    task = cnb.SentencePairTask(PAIRS)
    with pytest.raises(ValueError, match="ACDC ablates with 'zero' or 'mean'"):
        cnb.acdc(bert, task=task, kind="resample")
    with pytest.raises(ValueError, match="unknown unit 'attn' for ACDC"):
        cnb.acdc(bert, task=task, unit="attn")


@pytest.mark.parametrize("kind,n", [("cross_head", 4), ("enc_head", 4), ("dec_neuron", 64)])
def test_acdc_on_t5_equals_a_plain_hf_greedy_walk(tmp_path_factory, kind, n):
    from test_t5 import SOURCES, TARGETS, _logits, _metrics, _zeroing_hooks
    from test_t5_analyses import _ref

    from causal_nb.zoo.tiny_t5 import make_tiny_t5

    folder = make_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5", n_layers=2, d_model=32, n_heads=4, d_kv=8,
                          d_ff=64, seed=3)
    t5, ref = cnb.load_model(folder, device="cpu"), _ref(folder)
    clean = _logits(ref)

    def distance(removed):
        sel = {}
        for la, i in removed:
            sel.setdefault(la, []).append(i)
        return float(_metrics(_logits(ref, _zeroing_hooks(ref, {kind: sel})), clean, ref)["kl"].mean())

    taus = [1e-4, 1e-2, 1e9]
    df = cnb.acdc(t5, task=cnb.Seq2SeqTask(SOURCES, TARGETS), thresholds=taus, unit=kind, progress=False)
    assert df.attrs["quantity"] == "kl"
    for i, tau in enumerate(taus):
        want, value = greedy(2, n, distance, tau, floor=1)
        assert as_pairs(df.attrs["selections"][i]) == want, tau
        assert df["kl"][i] == pytest.approx(value, abs=1e-5)
    assert df["removed"].iloc[0] < df["removed"].iloc[-1]
    s = cnb.score(t5, task=cnb.Seq2SeqTask(SOURCES, TARGETS), method="acdc", unit=kind, kind="zero", progress=False)
    assert len(s) == 2 * n and s.attrs["method"] == "acdc"
