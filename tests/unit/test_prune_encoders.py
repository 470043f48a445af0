"""Pruning and evaluating a tiny random BERT with ``task=SentencePairTask``: masked and physical
pruning of heads, neurons and blocks against the plain Hugging Face ``BertModel`` with those
units removed by hand (``plain_refs.plain_bert_cosines``: hooks on the output denses, means
computed from the plain model), single units against ``ablate``, the sliced model's size
against a hand count, save / reload with uneven heads per layer and its pooling, ``evaluate``
against scipy / scikit-learn on hand cosines, the encoder sweep feeding ``stats.h2_table``,
and the refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from plain_refs import bridge_pair_cosines, plain_bert_cosines, plain_bert_means

import causal_nb as cnb
from causal_nb.models.families import UnsupportedModelError

PAIRS = pd.DataFrame({
    "sentence1": ["a man is playing a guitar .", "the cat sat on the mat .", "a dog runs in the park .",
                  "the stock market fell sharply today .", "she reads a book .", "is it raining ?"],
    "sentence2": ["someone plays an instrument .", "is it raining ?", "she reads a book .", "a man is playing .",
                  "a man reads a book .", "the cat sat on the mat and then it ran home again ."],
    "score": [1, 0, 0, 0, 1, 0]})
REF = ["a dog runs in the park and then it runs home again .", "the cat sat on the mat .", "is it raining ?",
       "someone plays an instrument ."]  # the mean-fill reference sentences
D, N_HEADS, DH, D_MLP = 32, 4, 8, 64

SELECT = {"head": {"heads": {0: [1, 3], 1: [0]}},
          "neuron": {"neurons": {0: list(range(0, 64, 3)), 1: [5, 7, 60]}},
          "block": {"blocks": [1]},
          "mixed": {"heads": {0: [2], 1: [1, 2, 3]}, "neurons": {0: [1, 2], 1: list(range(40))}, "blocks": [0]}}


@pytest.fixture(scope="module")
def task():
    return cnb.SentencePairTask(PAIRS)


@pytest.fixture(scope="module")
def plain(bert_folder):
    from transformers import BertModel

    return BertModel.from_pretrained(bert_folder, add_pooling_layer=False).eval()


def enc_of(model, texts):
    return model.tokenizer(list(texts), padding=True, truncation=True, max_length=32, return_tensors="pt")


def texts():
    return [s for pair in zip(PAIRS.sentence1, PAIRS.sentence2) for s in pair]


def encoder_param_count(model) -> int:
    return sum(p.numel() for p in model.original_model.bert.parameters())


def removed_params(sel) -> int:
    """Parameters a selection removes, counted by hand: a head's Q/K/V rows (weights and biases)
    and output-dense columns, a neuron's intermediate row and bias and output-dense column; a
    physically removed block keeps one (zeroed) head and no neuron."""
    head, neuron = 3 * (DH * D + DH) + DH * D, D + 1 + D
    blocks = sel.get("blocks", [])
    n = sum(len(v) for la, v in sel.get("heads", {}).items() if la not in blocks) * head
    n += sum(len(v) for la, v in sel.get("neurons", {}).items() if la not in blocks) * neuron
    return n + len(blocks) * ((N_HEADS - 1) * head + D_MLP * neuron)


# blocks are removed with fill="zero" only (refused with "mean": test_bad_input_is_named)
@pytest.mark.parametrize("what,fill", [("head", "zero"), ("head", "mean"), ("neuron", "zero"), ("neuron", "mean"),
                                       ("block", "zero"), ("mixed", "zero")])
def test_pruning_equals_the_plain_bert_with_the_units_removed(bert, plain, task, what, fill):
    sel = SELECT[what]
    enc = enc_of(bert, texts())
    means = plain_bert_means(plain, enc_of(bert, REF)) if fill == "mean" else None
    want, want_emb = plain_bert_cosines(plain, enc, sel.get("heads"), sel.get("neurons"), sel.get("blocks", ()), means)
    clean, _ = plain_bert_cosines(plain, enc)
    assert (want - clean).abs().max() > 1e-4  # the removal changes the cosines: the check can fail
    masked = cnb.prune_units(bert, **sel, physical=False, fill=fill, reference=REF if fill == "mean" else None, task=task)
    physical = cnb.prune_units(bert, **sel, physical=True, fill=fill, reference=REF if fill == "mean" else None, task=task)
    got_m, emb_m = bridge_pair_cosines(masked, enc)
    got_p, emb_p = bridge_pair_cosines(physical, enc)
    assert (got_m - want).abs().max() < 1e-5 and (emb_m - want_emb).abs().max() < 1e-5
    assert (emb_p - emb_m).abs().max() / emb_m.abs().max() < 1e-5  # physical = masked, relative
    assert (got_p - got_m).abs().max() < 1e-5
    assert encoder_param_count(masked) == encoder_param_count(bert)
    assert encoder_param_count(bert) - encoder_param_count(physical) == removed_params(sel)
    # the kit's own embedding call on the pruned model pools the same way
    emb = cnb.sentence_embeddings(physical, texts())
    assert (emb - emb_p).abs().max() < 1e-5


@pytest.mark.parametrize("unit,layer,index,fill", [("head", 1, 2, "zero"), ("head", 1, 2, "mean"),
                                                    ("neuron", 0, 17, "zero"), ("neuron", 0, 17, "mean"),
                                                    ("block", 0, None, "zero")])
def test_one_pruned_unit_equals_its_ablation(bert, task, unit, layer, index, fill):
    kw = {"reference": REF} if fill == "mean" else {}
    ab = cnb.ablate(bert, task=task, unit=unit, kind=fill, layers=[layer], **kw)
    row = 0 if index is None else index
    want = ab.attrs["per_prompt"].to_numpy()[row]
    sel = {"block": {"blocks": [layer]}, "head": {"heads": {layer: [index]}}, "neuron": {"neurons": {layer: [index]}}}
    for physical in (False, True):
        pruned = cnb.prune_units(bert, **sel[unit], physical=physical, fill=fill, task=task, **kw)
        got, _ = bridge_pair_cosines(pruned, enc_of(bert, texts()))
        assert np.abs(got.numpy() - want).max() < 1e-5


def test_uneven_heads_save_and_reload_with_the_pooling(bert, bert_folder, task, tmp_path):
    from causal_nb.models.embeddings import pooling_config

    sel = SELECT["mixed"]
    pruned = cnb.prune_units(bert, **sel, physical=True, task=task)
    folder = cnb.save_pruned(pruned, tmp_path / "pruned")
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        assert (folder / name).read_text() == (bert_folder / name).read_text()
    back = cnb.load_model(folder, device="cpu")
    assert pooling_config(back) == pooling_config(bert)
    assert encoder_param_count(back) == encoder_param_count(pruned)
    enc = enc_of(bert, texts())
    (_, a), (_, b) = bridge_pair_cosines(pruned, enc), bridge_pair_cosines(back, enc)
    assert (a - b).abs().max() < 1e-6
    assert (cnb.sentence_embeddings(back, texts()) - a).abs().max() < 1e-5
    # layer 0 is a removed block (one zeroed stand-in head); layer 1 keeps head 0 of four
    assert [blk.attn.W_Q.shape[0] for blk in back.blocks] == [1, 1]
    _, cache = back.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"],
                                   names_filter=["blocks.1.attn.hook_z", "blocks.0.mlp.hook_post"])
    assert cache["blocks.1.attn.hook_z"].shape[2:] == (1, DH) and cache["blocks.0.mlp.hook_post"].shape[-1] == 0
    uneven = cnb.load_model(cnb.save_pruned(cnb.prune_units(bert, heads={0: [0, 1, 2]}, neurons={1: [3]}, task=task),
                                            tmp_path / "uneven"), device="cpu")
    assert [blk.attn.W_Q.shape[0] for blk in uneven.blocks] == [1, 4]
    assert [blk.attn.W_O.shape[0] for blk in uneven.blocks] == [1, 4]
    # the analyses read the pruned layers' own shapes
    df = cnb.score(uneven, task=task, method="ablation", unit="head")
    assert list(df.groupby("layer").size()) == [1, 4] and np.isfinite(df.score).all()


def test_prune_by_scores_removes_the_lowest(bert, task):
    sc = cnb.score(bert, task=task, method="magnitude", unit="head")
    pruned = cnb.prune(bert, sc, 0.5, task=task)
    removed = {(la, h) for la, e in enumerate(pruned.causal_nb_pruned["layers"]) for h in e["removed_heads"]}
    lowest = sc.sort_values(["score", "layer", "head"], kind="mergesort").head(4)
    assert removed == set(zip(lowest["layer"], lowest["head"]))
    blocks = cnb.score(bert, task=task, method="ablation", unit="block")
    assert len(blocks) == 2
    by_block = cnb.prune(bert, blocks, 0.5, task=task)
    assert by_block.causal_nb_pruned["removed_blocks"] == [int(blocks.sort_values("score").layer.iloc[0])]


def test_evaluate_with_the_pair_task(bert, plain, task):
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    sel = SELECT["head"]
    pruned = cnb.prune_units(bert, **sel, physical=True, task=task)
    ev = cnb.evaluate(pruned, task=task, full_model=bert, latency_batches=(1, 2), latency_tokens=16, repeats=1)
    enc = enc_of(bert, texts())
    cos, emb = plain_bert_cosines(plain, enc, sel["heads"])
    full, full_emb = plain_bert_cosines(plain, enc)
    gold = PAIRS.score.to_numpy()
    assert np.abs(np.asarray(ev["per_prompt_cosine"]) - cos.numpy()).max() < 1e-5
    assert ev["cosine"] == pytest.approx(float(cos.mean()), abs=1e-5)
    assert ev["spearman"] == pytest.approx(spearmanr(cos.numpy(), gold).statistic, abs=1e-6)
    assert ev["roc_auc"] == pytest.approx(roc_auc_score(gold, cos.numpy()), abs=1e-9)
    drift = (cos - full).abs().numpy()
    assert np.abs(np.asarray(ev["per_prompt_cos_drift"]) - drift).max() < 1e-5 and drift.max() > 1e-4
    assert np.allclose(ev["per_prompt_cos_retained"], 1 - np.asarray(ev["per_prompt_cos_drift"]))
    agree = (emb * full_emb).sum(-1).view(-1, 2).mean(-1).double().numpy()
    assert np.abs(np.asarray(ev["per_prompt_emb_agreement"]) - agree).max() < 1e-5
    dense = cnb.evaluate(bert, task=task, full_model=bert, latency_batches=(), repeats=1)
    assert dense["cos_drift"] == 0 and dense["emb_agreement"] == pytest.approx(1.0)
    assert dense["params"] == encoder_param_count(bert)
    assert dense["params"] - ev["params"] == removed_params(sel)
    # linear weights of the layers x 2, plus 2 x 2 x query width x tokens per layer
    lin = sum(m.weight.numel() for m in plain.encoder.modules() if isinstance(m, torch.nn.Linear))
    assert cnb.evaluate(bert, task=task, latency_batches=(), latency_tokens=16)["flops_per_token"] == \
        2 * lin + 2 * 2 * 2 * D * 16
    assert ev["flops_per_token"] == 2 * lin + 2 * 2 * 2 * D * 16 - 3 * (2 * 4 * DH * D + 2 * 2 * DH * 16)
    assert ev["latency_ms_b1"] > 0 and ev["latency_ms"] == ev["latency_ms_b1"] and "latency_ms_b2" in ev


def test_the_encoder_sweep_feeds_the_h1_h2_statistics(bert):
    from causal_nb.evaluation.findings import derive_h2

    train, held = PAIRS.iloc[:3], PAIRS.iloc[3:]
    t = cnb.SentencePairTask(train)
    scores = {m: cnb.score(bert, task=t, method=m, unit="head") for m in ("ablation", "magnitude", "random")}
    res = cnb.encoder_sweep(bert, scores, [0.25, 0.5], held, model_name="tiny-bert")
    assert len(res) == 6 and set(res.method) == set(scores) and set(res.unit) == {"head"}
    assert all(len(v) == len(held) for v in res.pairs_per_prompt_cos_retained)
    assert (res.params < encoder_param_count(bert)).all()
    h2 = cnb.stats.h2_table(res, "ablation", quality="pairs_per_prompt_cos_retained")
    assert set(h2.sparsity) == {0.25, 0.5} and len(h2) == 6 and h2.retained.between(-1, 1).all()
    summary = cnb.stats.h2_summary(res, {"head": "ablation"}, quality="pairs_per_prompt_cos_retained")
    found = derive_h2(summary.to_dict(orient="records"), quality="1 - |cosine drift|")
    assert found and "tiny-bert heads at 50% sparsity" in found[0]["text"]
    h1 = cnb.stats.h1_table({m: scores[m] for m in ("magnitude", "random")}, scores["ablation"])
    assert list(h1.columns[:2]) == ["method", "spearman"] and len(h1) == 2
    with pytest.raises(ValueError, match="needs reference="):
        cnb.encoder_sweep(bert, scores, [0.5], held, fill="mean")


def test_bad_input_is_named(bert, task):
    sc = cnb.score(bert, task=task, method="magnitude", unit="head")
    msg = r"'bert' is an encoder: the prune with the default LM task .* task=cnb\.SentencePairTask\(pairs\)"
    with pytest.raises(UnsupportedModelError, match=msg):
        cnb.prune(bert, sc, 0.5)
    with pytest.raises(UnsupportedModelError, match=r"the prune_units with the default LM task"):
        cnb.prune_units(bert, heads={0: [1]})
    with pytest.raises(UnsupportedModelError, match=r"the evaluate with the default LM task .*SentencePairTask"):
        cnb.evaluate(bert, ["a man is playing"])
    with pytest.raises(ValueError, match="carries its inputs"):
        cnb.evaluate(bert, ["a man"], task=task)
    with pytest.raises(TypeError, match=r"evaluate\(reference=\.\.\.\) is now evaluate\(full_model=\.\.\.\)"):
        cnb.evaluate(bert, task=task, reference=bert)
    with pytest.raises(ValueError, match="would lose every head"):
        cnb.prune_units(bert, heads={1: [0, 1, 2, 3]}, task=task)
    with pytest.raises(ValueError, match="blocks are removed with fill='zero' only"):
        cnb.prune_units(bert, blocks=[0], fill="mean", task=task)
    with pytest.raises(ValueError, match="already pruned"):
        cnb.prune_units(cnb.prune_units(bert, heads={0: [1]}, task=task), heads={0: [2]}, task=task)
    with pytest.raises(ValueError, match="other pairs than the ones evaluated"):
        from causal_nb.evaluation.encoder_quality import encoder_full_run

        cnb.evaluate(bert, task=task, full_model=encoder_full_run(bert, cnb.SentencePairTask(PAIRS.iloc[:2])))


def test_a_pair_task_on_a_decoder_is_refused(tiny_dirs):
    gpt2 = cnb.load_model(tiny_dirs["gpt2"], device="cpu")
    sc = cnb.score(gpt2, ["def f(x):\n    return x"], method="magnitude", unit="head", n_tokens=8)
    pair = cnb.SentencePairTask(PAIRS)
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not an encoder.*drop task="):
        cnb.prune(gpt2, sc, 0.5, task=pair)
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not an encoder.*drop task="):
        cnb.evaluate(gpt2, task=pair)
    with pytest.raises(TypeError, match="evaluate needs prompts"):
        cnb.evaluate(gpt2)


def test_embeddings_in_length_buckets_and_the_separation_share(bert, plain, task):
    """task_embeddings in batches of 3 sentences sorted by length equal the plain BERT's one
    padded batch; separation = mean paraphrase cosine - mean other cosine (gold 1 vs 0), and
    its retained share per pair = weighted cosine / the full model's separation."""
    from causal_nb.evaluation.encoder_quality import task_embeddings

    _, want = plain_bert_cosines(plain, enc_of(bert, texts()))
    assert (task_embeddings(bert, task, batch_size=3).float() - want).abs().max() < 1e-5
    sel = SELECT["head"]
    pruned = cnb.prune_units(bert, **sel, physical=True, task=task)
    ev = cnb.evaluate(pruned, task=task, full_model=bert, latency_batches=())
    cos, _ = plain_bert_cosines(plain, enc_of(bert, texts()), sel["heads"])
    full, _ = plain_bert_cosines(plain, enc_of(bert, texts()))
    pos = PAIRS.score.to_numpy() == 1
    sep, full_sep = cos.numpy()[pos].mean() - cos.numpy()[~pos].mean(), full.numpy()[pos].mean() - full.numpy()[~pos].mean()
    assert ev["separation"] == pytest.approx(sep, abs=1e-5)
    if full_sep > 0:
        assert ev["separation_retained"] == pytest.approx(sep / full_sep, abs=1e-4)
        assert np.mean(ev["per_prompt_separation_retained"]) == pytest.approx(sep / full_sep, abs=1e-4)
    else:  # a random tiny BERT may not separate at all: then the share is undefined
        assert np.isnan(ev["separation_retained"])
