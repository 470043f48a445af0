"""all-MiniLM-L6-v2, the real checkpoint: its weights are the card's, its embeddings are
sentence-transformers' (mean pooling over a plain BertModel), and it separates the shipped
Tatoeba paraphrases from non-paraphrases and questions from statements (on subsets, for time;
the full-set numbers are in the README)."""

from __future__ import annotations

import pytest
import torch
from plain_refs import bridge_pair_cosines

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
    with pytest.raises(UnsupportedModelError, match=r"is an encoder: .* task=cnb\.SentencePairTask"):
        cnb.ablate(minilm, [GUITAR], n_tokens=4)
    assert "do not read its logits" in pretrained.describe(NAME)


def _hand_cosines(model, texts, hooks=()):
    """Pair cosines of a full bridge forward with ``hooks``, mean-pooled by hand (plain_refs)."""
    enc = model.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    return bridge_pair_cosines(model, enc, hooks)[0].numpy()


def test_head_ablation_on_the_paraphrase_task(minilm):
    import numpy as np
    import pandas as pd

    pairs = cnb.load_sentence_pairs("tatoeba-paraphrase", "test")
    pos, neg = pairs[pairs.score == 1].iloc[:16], pairs[pairs.score == 0].iloc[:16]
    task = cnb.SentencePairTask(pd.concat([pos, neg]))
    texts = [s for a, b in task.pairs for s in (a, b)]
    # one exact head ablation equals the plain hook loop
    df = cnb.ablate(minilm, task=task, unit="head", kind="zero", layers=[0])

    def zero_head(x, hook, h=4):
        x = x.clone()
        x[:, :, h] = 0
        return x

    want = _hand_cosines(minilm, texts, [("blocks.0.attn.hook_z", zero_head)])
    assert np.abs(df.attrs["per_prompt"].to_numpy()[4] - want).max() < 1e-5
    clean = np.asarray(df.attrs["baseline_per_prompt"])
    assert np.abs(clean - _hand_cosines(minilm, texts)).max() < 1e-5
    # every head of a layer at once. Measured (16 paraphrases / 16 non-paraphrases, clean 0.790 /
    # 0.200): layer 0's heads raise both (0.799 / 0.216), shrinking the gap 0.590 -> 0.583;
    # layer 1's lower the paraphrase cosine (0.784) and raise the other (0.216): gap 0.568.
    layers = cnb.ablate(minilm, task=task, unit="attn", kind="zero", layers=[0, 1]).attrs["per_prompt"].to_numpy()

    def zero_all(x, hook):
        return torch.zeros_like(x)

    assert np.abs(layers[0] - _hand_cosines(minilm, texts, [("blocks.0.attn.hook_z", zero_all)])).max() < 1e-5
    gap = clean[:16].mean() - clean[16:].mean()
    assert clean[:16].mean() > 0.7 and gap > 0.5
    assert layers[1, :16].mean() < clean[:16].mean() - 3e-3  # layer 1's heads: paraphrases less similar
    assert layers[0, :16].mean() > clean[:16].mean() + 3e-3  # layer 0's: more similar, but negatives more so
    for row in layers:
        assert row[:16].mean() - row[16:].mean() < gap - 5e-3  # either way the separation shrinks


def test_physical_head_pruning_equals_the_plain_bert_model_with_the_heads_zeroed(minilm):
    import numpy as np
    import pandas as pd
    from transformers import BertModel

    pairs = cnb.load_sentence_pairs("tatoeba-paraphrase", "test")
    task = cnb.SentencePairTask(pd.concat([pairs[pairs.score == 1].iloc[:4], pairs[pairs.score == 0].iloc[:4]]))
    sc = cnb.score(minilm, task=task, method="magnitude", unit="head")
    pruned = cnb.prune(minilm, sc, 0.25, physical=True, task=task)
    removed = {la: e["removed_heads"] for la, e in enumerate(pruned.causal_nb_pruned["layers"])}
    n_removed = sum(map(len, removed.values()))
    assert n_removed == 18  # 25% of 72
    ref = BertModel.from_pretrained(minilm.causal_nb_source["source"], add_pooling_layer=False).eval()
    hooks = []
    for la, heads in removed.items():
        cols = [h * 32 + j for h in heads for j in range(32)]

        def zero(mod, args, cols=cols):
            x = args[0].clone()
            x[..., cols] = 0
            return (x,)

        hooks.append(ref.encoder.layer[la].attention.output.dense.register_forward_pre_hook(zero))
    texts = [s for p in task.pairs for s in p]
    batch = minilm.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = ref(**batch).last_hidden_state
    for hd in hooks:
        hd.remove()
    m = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    got = cnb.sentence_embeddings(pruned, texts)
    assert (got - want).abs().max() < 1e-5
    # 32-wide heads of a 384-wide model: Q/K/V rows with biases and output-dense columns
    dense = sum(p.numel() for p in minilm.original_model.bert.parameters())
    ev = cnb.evaluate(pruned, task=task, full_model=minilm, latency_batches=())
    assert dense - ev["params"] == n_removed * (3 * (32 * 384 + 32) + 32 * 384)
    assert np.isfinite(ev["spearman"]) and 0 < ev["cos_drift"] < 0.2
