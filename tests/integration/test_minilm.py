"""all-MiniLM-L6-v2, the real checkpoint: its weights are the card's, its embeddings are
sentence-transformers' (mean pooling over a plain BertModel), and it separates the shipped
Tatoeba paraphrases from non-paraphrases and questions from statements (on subsets, for time;
the full-set numbers are in the README)."""

from __future__ import annotations

import pytest
import torch

import causal_nb as cnb
from causal_nb.models.families import UnsupportedModelError
from causal_nb.zoo import pretrained

NAME = "all-minilm-l6-v2"
GUITAR, INSTRUMENT, STOCKS = "A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."


def test_the_checkpoint_is_the_cards(minilm):
    card = cnb.model_card(NAME)
    assert card["sha256"] == pretrained.PRETRAINED[NAME].sha256 == card["sha256_expected"]
    assert card["package_version"] == "0.1.0" and card["kind"] == "encoder"
    assert (minilm.cfg.n_layers, minilm.cfg.n_heads, minilm.cfg.d_model) == (6, 12, 384)
    assert sum(p.numel() for p in minilm.original_model.bert.parameters()) == pytest.approx(22.7e6, rel=0.01)


def test_the_encoder_equals_a_plain_bert_model(minilm):
    from transformers import BertModel

    folder = minilm.causal_nb_source["source"]
    ref = BertModel.from_pretrained(folder).eval()
    batch = minilm.tokenizer([GUITAR, INSTRUMENT, STOCKS], padding=True, return_tensors="pt")
    with torch.no_grad():
        got = minilm.original_model.bert(**batch).last_hidden_state
        want = ref(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    assert (got[real] - want[real]).abs().max() < 1e-5
    m = batch["attention_mask"].unsqueeze(-1).float()
    hand = torch.nn.functional.normalize((want * m).sum(1) / m.sum(1), dim=-1)
    emb = cnb.sentence_embeddings(minilm, [GUITAR, INSTRUMENT, STOCKS])
    assert (emb - hand).abs().max() < 1e-5
    cos = emb @ emb.T
    assert cos[0, 1] > 0.5 and cos[0, 2] < 0.1 and cos[1, 2] < 0.1  # measured: 0.667, -0.054, -0.058


def test_similarity_on_the_tatoeba_pairs(minilm):
    pairs = cnb.load_sentence_pairs("tatoeba-paraphrase", "test").iloc[:200]
    r = cnb.similarity_eval(minilm, pairs, n_boot=200)
    # full test set (1,000 pairs): Spearman 0.82, ROC AUC 0.97 (0.95 against same-opening negatives)
    assert r["spearman"] > 0.6 and r["roc_auc"] > 0.9 and r["spearman_ci"][0] > 0.5


def test_a_question_probe_beats_the_majority(minilm):
    train = cnb.load_sentence_labels("tatoeba-questions", "train").iloc[:200]
    test = cnb.load_sentence_labels("tatoeba-questions", "test").iloc[:200]
    r = cnb.probe_eval(minilm, train, test)
    assert r["accuracy"] > r["majority_accuracy"] + 0.15  # full sets: accuracy 0.85 vs 0.50


def test_the_decoder_analyses_refuse_it(minilm):
    with pytest.raises(UnsupportedModelError, match="encoder tasks .* are not in the engine yet"):
        cnb.ablate(minilm, [GUITAR], n_tokens=4)
    assert "do not read its logits" in pretrained.describe(NAME)
