"""``widgets.TaskExplorer`` on the tasks that carry their inputs, against plain Hugging Face models
driven by hand: a sentence encoder's pair cosines (``BertModel`` with heads' slices of the attention
output dense's input zeroed or set to their mean), T5's per-pair target log-prob (heads zeroed at
the input of their ``o`` projection), a ViT's label log-prob; the callbacks and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plain_refs import plain_bert_cosines, plain_bert_means

import causal_nb as cnb

PAIRS = [("a man is playing a guitar .", "someone plays an instrument ."),
         ("the cat sat on the mat .", "is it raining ?"),
         ("a dog runs in the park and then it runs home again .", "she reads a book .")]


@pytest.fixture(scope="module")
def bert_plain(bert_folder):
    from transformers import BertModel

    return BertModel.from_pretrained(bert_folder).eval()


def test_sentence_pairs_against_a_plain_bert(bert, bert_plain):
    ex = cnb.widgets.TaskExplorer(bert, cnb.SentencePairTask(PAIRS))
    enc = bert.tokenizer([s for p in PAIRS for s in p], padding=True, return_tensors="pt")
    full, _ = plain_bert_cosines(bert_plain, enc)
    assert ex.effect.metric == "cosine" and ex.effect.units == ()
    assert np.abs(ex.base - full.numpy()).max() < 1e-5 and np.allclose(ex.effect.new, ex.base)
    assert list(ex.units_table()["label"])[:2] == ["head L0 h0", "head L0 h1"]
    ex.toggle("head L0 h1")
    e = ex.toggle("head L1 h3")
    want, _ = plain_bert_cosines(bert_plain, enc, heads={0: [1], 1: [3]})
    assert e.units == ("head L0 h1", "head L1 h3") and np.abs(e.new - want.numpy()).max() < 1e-5
    assert np.abs(want - full).max() > 1e-4  # the heads matter (the check can fail)
    means = {k: v for k, v in plain_bert_means(bert_plain, enc).items() if k[1] == "z"}
    e = ex.set_kind("mean")
    want, _ = plain_bert_cosines(bert_plain, enc, heads={0: [1], 1: [3]}, means=means)
    assert np.abs(e.new - want.numpy()).max() < 1e-5
    assert f"{e.mean_change:+.4f}" in ex.summary.value
    assert ex.fig.data[1].y == tuple(np.round(e.new, 6).tolist())
    assert list(e.frame().columns) == ["id", "base", "new", "delta"]
    e = ex.clear()
    assert e.units == () and not any(b.value for b in ex.buttons.values())
    assert ex.toggle("head L0 h0").units == ("head L0 h0",)  # the buttons still work after clear
    with pytest.raises(ValueError, match="no unit 'head L9 h0' on this grid"):
        ex.toggle("head L9 h0")
    with pytest.raises(ValueError, match="unknown replacement 'resample'"):
        ex.set_kind("resample")


def test_t5_heads_against_plain_hf(tmp_path):
    from test_t5 import SOURCES, TARGETS, _logits, _metrics, _zeroing_hooks
    from test_t5_analyses import _ref

    from causal_nb.zoo.tiny_t5 import make_tiny_t5

    folder = make_tiny_t5(tmp_path / "t5", n_layers=2, d_model=32, n_heads=4, d_kv=8, d_ff=64, seed=3)
    t5, ref = cnb.load_model(folder, device="cpu"), _ref(folder)
    ex = cnb.widgets.TaskExplorer(t5, cnb.Seq2SeqTask(SOURCES, TARGETS), unit="cross_head")
    clean = _logits(ref)
    assert np.abs(ex.base - _metrics(clean, clean, ref)["target_logprob"]).max() < 1e-5
    e = ex.toggle("cross_head L1 h2")
    want = _metrics(_logits(ref, _zeroing_hooks(ref, {"cross_head": {1: [2]}})), clean, ref)["target_logprob"]
    assert e.units == ("cross_head L1 h2",) and np.abs(e.new - want).max() < 1e-5
    assert np.abs(want - ex.base).max() > 1e-4


def test_images_and_refusals(bert, tmp_path):
    from causal_nb.zoo.tiny import make_tiny_vit

    images, labels = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 2, 3])
    vit = cnb.load_model(make_tiny_vit(tmp_path / "vit", seed=2), device="cpu")
    task = cnb.ImageClassificationTask(images, labels)
    ex = cnb.widgets.TaskExplorer(vit, task, unit="block")
    assert ex.effect.metric == "label_logprob" and len(ex.buttons) == vit.cfg.n_layers
    with torch.no_grad():
        want = torch.log_softmax(vit(images).double(), -1)[torch.arange(3), labels].numpy()
    assert np.abs(ex.base - want).max() < 1e-5
    assert np.abs(ex.toggle("block L0").new - ex.base).max() > 1e-4
    with pytest.raises(ValueError, match="for a decoder LM's prompts use cnb.widgets.HeadExplorer"):
        cnb.widgets.TaskExplorer(vit, None)
    with pytest.raises(ValueError, match="thousands of toggles"):
        cnb.widgets.TaskExplorer(bert, cnb.SentencePairTask(PAIRS), unit="neuron")
