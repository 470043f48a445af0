"""Encoders on a tiny random BERT: loading, sentence embeddings against a hand-written mean pool
over ``transformers.BertModel``, the decoder analyses' refusal, and the two evaluators against
scipy / scikit-learn on those hand-pooled embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import causal_nb as cnb
from causal_nb.models.families import UnsupportedModelError
from causal_nb.zoo.tiny import make_tiny_bert

TEXTS = ["a man is playing a guitar .", "someone plays an instrument .", "the stock market fell sharply today .",
         "the cat sat on the mat .", "a dog runs in the park .", "is it raining ?", "she reads a book ."]


def hand_mean_pool(folder, texts, normalize=True, max_length=32):
    """Mean over real tokens of a plain transformers BertModel's last hidden state."""
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(folder)
    ref = BertModel.from_pretrained(folder).eval()
    b = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        h = ref(**b).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1).float()
    v = (h * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(v, dim=-1) if normalize else v


def test_a_bert_folder_loads_and_embeds_like_a_hand_mean_pool(bert, bert_folder):
    assert cnb.models.families.family(bert) == "bert"
    got = cnb.sentence_embeddings(bert, TEXTS, batch_size=3)
    ref = hand_mean_pool(bert_folder, TEXTS)
    assert got.shape == (len(TEXTS), 32) and got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    raw = cnb.sentence_embeddings(bert, TEXTS, batch_size=len(TEXTS), normalize=False)
    assert torch.allclose(raw, hand_mean_pool(bert_folder, TEXTS, normalize=False), atol=1e-5)
    # padding is masked out: a text embeds the same alone as in a batch with longer ones
    assert torch.allclose(cnb.sentence_embeddings(bert, [TEXTS[5]])[0], got[5], atol=1e-5)


def hook_counts(model):
    return {n: len(h._forward_hooks) for n, h in model.hook_dict.items()}


def test_embeddings_run_through_the_bridge_and_leave_no_hooks(bert):
    counts = hook_counts(bert)
    before = cnb.sentence_embeddings(bert, TEXTS[:3])
    assert hook_counts(bert) == counts

    def zero(x, hook):
        return torch.zeros_like(x)

    with bert.hooks(fwd_hooks=[("blocks.0.hook_attn_out", zero)]):
        edited = cnb.sentence_embeddings(bert, TEXTS[:3])
    assert (edited - before).abs().max() > 1e-3  # a hook on the bridge changes the embeddings
    assert torch.equal(cnb.sentence_embeddings(bert, TEXTS[:3]), before)
    assert hook_counts(bert) == counts


def test_pooling_config_is_read_from_the_folder(bert, bert_folder, tmp_path):
    from causal_nb.models.embeddings import pooling_config

    assert pooling_config(bert) == {"mode": "mean", "normalize": True, "max_length": 32}
    long = " ".join(["a dog runs in the park ."] * 10)
    ids = bert.tokenizer(long)["input_ids"]
    assert len(ids) > 32  # truncated to sentence_bert_config's max_seq_length, as sentence-transformers does
    assert torch.allclose(cnb.sentence_embeddings(bert, [long]), hand_mean_pool(bert_folder, [long], max_length=32),
                          atol=1e-5)
    plain = cnb.load_model(make_tiny_bert(tmp_path / "plain", sentence_transformers=False), device="cpu")
    assert pooling_config(plain) == {"mode": "mean", "normalize": None, "max_length": None}


def test_bad_texts_are_named(bert):
    with pytest.raises(TypeError, match="not one string"):
        cnb.sentence_embeddings(bert, "a man")
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        cnb.sentence_embeddings(bert, ["a", 3])
    with pytest.raises(ValueError, match="texts is empty"):
        cnb.sentence_embeddings(bert, [])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        cnb.sentence_embeddings(bert, ["a"], batch_size=0)


def test_decoder_analyses_refuse_an_encoder(bert):
    msg = r"'bert' is an encoder: .* with the default LM task .* task=cnb\.SentencePairTask\(pairs\)"
    with pytest.raises(UnsupportedModelError, match=msg):
        cnb.patch(bert, ["a man is playing"], ["a dog is playing"], n_tokens=4)
    with pytest.raises(UnsupportedModelError, match=msg):
        cnb.ablate(bert, ["a man is playing"], n_tokens=4)
    for method in ("ablation", "magnitude", "random"):  # the last two read weights only, yet are decoder-tested
        with pytest.raises(UnsupportedModelError, match=msg):
            cnb.score(bert, ["a man is playing"], method=method, n_tokens=4)
    with pytest.raises(UnsupportedModelError, match=msg):
        cnb.models.families.check_supported(bert, "pruning")


def test_a_decoder_is_refused_by_sentence_embeddings():
    gpt2 = cnb.load_model("code-gpt2-2l", device="cpu")
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not an encoder"):
        cnb.sentence_embeddings(gpt2, ["x = 1"])


def test_similarity_eval_against_scipy_and_sklearn(bert, bert_folder):
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    pairs = pd.DataFrame({"sentence1": TEXTS[:6] * 2, "sentence2": TEXTS[1:7] + TEXTS[:1] + TEXTS[2:7],
                          "score": [1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1.0],
                          "kind": ["p", "random", "p", "hard", "p", "random", "hard", "p", "p", "random", "hard", "p"]})
    pairs.loc[pairs.score == 1, "kind"] = "paraphrase"
    e1, e2 = hand_mean_pool(bert_folder, list(pairs.sentence1)), hand_mean_pool(bert_folder, list(pairs.sentence2))
    cos = (e1 * e2).sum(1).numpy()
    r = cnb.similarity_eval(bert, pairs, n_boot=200)
    assert np.allclose(r["cosine"], cos, atol=1e-5)
    # A random tiny BERT's cosines lie within ~1e-5 of each other, so their ranks (and with them
    # Spearman and AUC) flip under float noise between two computations (the hand pool and the
    # bridge give other last bits depending on which tests ran before): the cosines were checked
    # against the hand pool above; the statistics are checked on the kit's own cosines.
    cos = np.asarray(r["cosine"], dtype=float)
    assert r["spearman"] == pytest.approx(spearmanr(cos, pairs.score).statistic, abs=1e-6)
    lo, hi = r["spearman_ci"]
    assert lo <= r["spearman"] <= hi and r["n_pairs"] == 12
    assert r["roc_auc"] == pytest.approx(roc_auc_score(pairs.score, cos), abs=1e-6)
    for kind in ("random", "hard"):
        keep = (pairs.kind == kind) | (pairs.score == 1)
        assert r["roc_auc_by_kind"][kind] == pytest.approx(roc_auc_score(pairs.score[keep], cos[keep]), abs=1e-6)
    graded = pairs.assign(score=np.linspace(0, 5, 12))  # a JSTS-like 0-5 scale: no AUC
    assert "roc_auc" not in cnb.similarity_eval(bert, graded, n_boot=50)
    with pytest.raises(ValueError, match="no column"):
        cnb.similarity_eval(bert, pairs.drop(columns="score"))
    with pytest.raises(ValueError, match="same gold score"):
        cnb.similarity_eval(bert, pairs.assign(score=1.0))


def test_probe_eval_against_a_hand_fitted_logistic_regression(bert, bert_folder):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    words = TEXTS * 3
    labels = [int("?" in t or "a " in t) for t in words]
    train = pd.DataFrame({"sentence": words[:12], "label": labels[:12]})
    test = pd.DataFrame({"sentence": words[12:], "label": labels[12:]})
    r = cnb.probe_eval(bert, train, test, seed=0)
    x_tr = hand_mean_pool(bert_folder, list(train.sentence)).numpy()
    x_te = hand_mean_pool(bert_folder, list(test.sentence)).numpy()
    pred = LogisticRegression(max_iter=2000, random_state=0).fit(x_tr, train.label).predict(x_te)
    assert r["accuracy"] == pytest.approx(float(np.mean(pred == test.label)))
    assert r["macro_f1"] == pytest.approx(f1_score(test.label, pred, average="macro"))
    assert r["majority_accuracy"] == pytest.approx(float(np.mean(test.label == np.bincount(train.label).argmax())))
    with pytest.raises(ValueError, match="single label"):
        cnb.probe_eval(bert, train.assign(label=0), test)
    with pytest.raises(ValueError, match=r"test labels \[2\] never occur in train"):
        cnb.probe_eval(bert, train, test.assign(label=2))


def test_the_encoder_benchmark_runs_on_a_tiny_bert(bert_folder):
    from benchmark_scripts import load_benchmark

    mod = load_benchmark("encoder_eval")
    out = mod.main(["--model", str(bert_folder), "--n", "20", "--n-boot", "50"])
    assert out["paraphrase_test"]["n_pairs"] == 20 and out["questions_probe"]["n_test"] == 20
    assert -1 <= out["paraphrase_test"]["spearman"] <= 1 and 0 <= out["questions_probe"]["accuracy"] <= 1
