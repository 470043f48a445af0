"""Composable pruning (issue 14) on a tiny random-config T5 (2+2 layers, 4 heads of 8, d 32):
the modules and the scheme counted by hand, head-wise L1 norms computed by hand from the raw
q/k/v weights, physical head removal equal to zeroing the same heads' ``o`` columns in the dense
model, composition equal to direct pruning (torch's L1 pruning plus zeroed heads), the captured
inputs replaying the dense modules, module-level training lowering the MSE, the seq2seq loss and
greedy decoding against hand-written references, bad input, and the command line end to end.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.nn.utils import prune as tprune

from causal_nb.__main__ import main
from causal_nb.models.loading import resolve_source
from causal_nb.pruning import compose_stages
from causal_nb.pruning.compose_modules import (
    compose_model,
    load_dense,
    load_variant,
    make_variant,
    prunable_modules,
    save_variant,
    weights_fingerprint,
)
from causal_nb.pruning.compose_scheme import ComposeError, make_configurations, make_scheme
from causal_nb.pruning.compose_t5 import Pairs, seq2seq_loss, t5_module_data, translate, translation_pairs
from causal_nb.pruning.compose_train import _first, capture, finetune_model, finetune_module, heldout_loss

H, DK = 4, 8
ATT = ["encoder.block.0.layer.0.SelfAttention", "encoder.block.1.layer.0.SelfAttention",
       "decoder.block.0.layer.0.SelfAttention", "decoder.block.0.layer.1.EncDecAttention",
       "decoder.block.1.layer.0.SelfAttention", "decoder.block.1.layer.1.EncDecAttention"]
LIN = [f"{s}.block.{i}.layer.{2 if s == 'decoder' else 1}.DenseReluDense.{w}"
       for s in ("encoder", "decoder") for i in (0, 1) for w in ("wi", "wo")]


@pytest.fixture(autouse=True)
def small_data(monkeypatch):
    for k, v in {"n_heldout": 8, "n_train": 16}.items():
        monkeypatch.setitem(compose_stages.DATA, k, v)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random T5 with the bundled translation tokenizer (so the shipped pairs tokenise)."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(resolve_source("t5-tatoeba-en-de")[1])
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=DK, num_heads=H, d_ff=64, num_layers=2,
                   num_decoder_layers=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                   relative_attention_num_buckets=8, dropout_rate=0.0)
    torch.manual_seed(3)
    hf = T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # T5's init is tiny for 32 dims: larger weights make heads matter
        for n, p in hf.named_parameters():
            if p.dim() == 2 and "relative_attention_bias" not in n and "shared" not in n:
                p.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("t5") / "m"
    hf.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    dense, tok = load_dense(str(folder))
    return folder, dense, tok


def pairs(tok, n=6):
    return Pairs(tok(["I have a dog.", "Tom is here.", "Where is it?", "We went home.", "Thanks!", "Yes."][:n]).input_ids,
                 tok(["Ich habe einen Hund.", "Tom ist hier.", "Wo ist es?", "Wir gingen heim.", "Danke!", "Ja."][:n]
                     ).input_ids)


def logits(model, x: Pairs):
    with torch.no_grad():
        return model(**x.inputs(), use_cache=False).logits


def zero_heads(model, module, heads):
    """The dense reference of removing heads: their ``o`` input columns zeroed."""
    o = model.get_submodule(module).o.weight
    with torch.no_grad():
        for h in heads:
            o[:, h * DK:(h + 1) * DK] = 0


def hand_l1(model, module):
    att = model.get_submodule(module)
    return [sum(float(getattr(att, p).weight.detach()[h * DK:(h + 1) * DK].abs().sum()) for p in "qkv") for h in range(H)]


def test_modules_and_scheme_by_hand(tiny):
    _, hf, _ = tiny
    mods = prunable_modules(hf)
    assert mods == {"attention": ATT, "linear": LIN}
    s = make_scheme(make_configurations("m", mods, [0.25, 0.5], [0.5, 0.5], n=2))
    # 6 attention modules at 2 rates, 8 linears at one shared rate: 12 + 8
    assert len(s["variants"]) == 20
    by = {(v["module"], v["rate"]): v["configurations"] for v in s["variants"]}
    assert all(by[m, 0.5] == [1, 2] for m in LIN)
    assert by[ATT[3], 0.25] == [1] and by[ATT[3], 0.5] == [2]


@pytest.mark.parametrize("module", [ATT[0], ATT[2], ATT[3], ATT[4]])
def test_headwise_removes_lowest_qkv_l1_heads(tiny, module):
    _, hf, tok = tiny
    norms = hand_l1(hf, module)
    lowest = sorted(sorted(range(H), key=lambda h: norms[h])[:2])
    mod, masks, meta = make_variant(hf, {"module": module, "kind": "attention", "criterion": "l1", "rate": 0.5})
    assert meta["removed"] == lowest and not masks
    keep = [h for h in range(H) if h not in lowest]
    rows = [h * DK + i for h in keep for i in range(DK)]
    src = hf.get_submodule(module)
    for p in "qkv":
        assert torch.equal(getattr(mod, p).weight, getattr(src, p).weight[rows])
    assert torch.equal(mod.o.weight, src.o.weight[:, rows]) and mod.n_heads == 2


def _scheme(hf, att, lin):
    conf = make_configurations("m", prunable_modules(hf), att, lin, base_fingerprint=weights_fingerprint(hf))
    return make_scheme(conf)


def _prune_all(hf, scheme, folder):
    for v in scheme["variants"]:
        mod, masks, meta = make_variant(hf, v)
        save_variant(folder / f"{v['key']}.safetensors", mod, masks, meta, v, scheme["base_fingerprint"], False)


def test_composed_equals_direct_pruning(tiny, tmp_path):
    """Configuration 1 composed from the saved variants = the dense model pruned directly: torch's
    L1-unstructured pruning of every linear and the removed heads' o columns zeroed (first
    self-attention of each stack included, so the shared position bias is exercised)."""
    _, hf, tok = tiny
    s = _scheme(hf, [0.5], [0.3])
    _prune_all(hf, s, tmp_path)
    model, masks = compose_model(hf, s, 1, tmp_path)
    ref = copy.deepcopy(hf)
    for m in LIN:
        tprune.l1_unstructured(ref.get_submodule(m), "weight", amount=0.3)
        tprune.remove(ref.get_submodule(m), "weight")
        assert torch.equal(model.get_submodule(m).weight, ref.get_submodule(m).weight)
        assert torch.equal(masks[f"{m}.weight"], (ref.get_submodule(m).weight != 0).float())
    for m in ATT:
        zero_heads(ref, m, sorted(sorted(range(H), key=lambda h: hand_l1(hf, m)[h])[:2]))
    assert model.config.causal_nb_pruned["removed"]["enc_head"].keys() == {"0", "1"}
    x = pairs(tok)
    torch.testing.assert_close(logits(model, x), logits(ref, x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(model, x), logits(hf, x), atol=1e-3)


def test_capture_replays_dense_modules(tiny):
    _, hf, tok = tiny
    data = capture(hf, ATT + LIN[:1], pairs(tok), batch_size=4)
    for m in ATT + LIN[:1]:
        assert len(data[m]) == 2
        for args, kw, y in data[m]:
            with torch.no_grad():
                torch.testing.assert_close(_first(hf.get_submodule(m)(*args, **kw)), y)
    # a self-attention replays with the full bias (every head), a cross-attention's is zeros
    assert data[ATT[0]][0][1]["position_bias"].shape[1] == H
    assert not data[ATT[3]][0][1]["position_bias"].any()


def test_module_training_lowers_mse_and_keeps_zeros(tiny):
    _, hf, tok = tiny
    x = translation_pairs(tok, "train", 16, seed=1)
    data = capture(hf, [ATT[4], LIN[4]], x, batch_size=8)
    for v in ({"module": ATT[4], "kind": "attention", "criterion": "l1", "rate": 0.5},
              {"module": LIN[4], "kind": "linear", "criterion": "l1", "rate": 0.5}):
        mod, masks, meta = make_variant(hf, v)
        stats = finetune_module(mod, masks, t5_module_data(v["module"], meta["keep"], data[v["module"]]), 30, 3e-3)
        assert stats.mse.iloc[-1] < 0.8 * stats.mse.iloc[0]
        for p, m in masks.items():
            assert not mod.get_parameter(p)[m == 0].any()


def test_seq2seq_loss_and_greedy_by_hand(tiny, tmp_path):
    _, hf, tok = tiny
    x = pairs(tok)
    total, count = 0.0, 0
    for s, t in zip(x.src, x.tgt):  # one pair at a time, no padding: token-weighted mean by hand
        with torch.no_grad():
            lg = hf(input_ids=torch.tensor([s]), decoder_input_ids=torch.tensor([[0] + t[:-1]])).logits[0]
        total += float(torch.nn.functional.cross_entropy(lg, torch.tensor(t), reduction="sum"))
        count += len(t)
    assert seq2seq_loss(hf, x, batch_size=4) == pytest.approx(total / count, rel=1e-5)
    s = _scheme(hf, [0.25], [0.3])
    _prune_all(hf, s, tmp_path)
    model, _ = compose_model(hf, s, 1, tmp_path)
    src = ["I have a dog.", "Where is it?"]
    got = translate(model, tok, src, max_new_tokens=6)
    for sent, text in zip(src, got):  # greedy by hand: argmax of a full forward each step
        enc = tok([sent], return_tensors="pt")
        dec = [0]
        for _ in range(6):
            with torch.no_grad():
                nxt = int(model(**enc, decoder_input_ids=torch.tensor([dec]), use_cache=False).logits[0, -1].argmax())
            dec.append(nxt)
            if nxt == 1:
                break
        assert text == tok.decode(dec, skip_special_tokens=True).strip()
        # on the plain Hugging Face model (not the bridge) cached decoding agrees, sliced heads included
        with torch.no_grad():
            cached = model.generate(**enc, max_new_tokens=6, do_sample=False, num_beams=1, use_cache=True)
        assert tok.decode(cached[0], skip_special_tokens=True).strip() == text


def test_model_finetuning_seq2seq_keeps_zeros(tiny, tmp_path):
    _, hf, tok = tiny
    s = _scheme(hf, [0.5], [0.5])
    _prune_all(hf, s, tmp_path)
    model, masks = compose_model(hf, s, 1, tmp_path)
    train, held = translation_pairs(tok, "train", 32, 0), translation_pairs(tok, "heldout", 8)
    before = heldout_loss(model, held)
    stats = finetune_model(model, masks, train, steps=8, batch_size=8, lr=1e-3, heldout=held, kl=0.5, dense=hf)
    assert stats.val_loss.iloc[0] == pytest.approx(before) and stats.train_loss.iloc[1:].notna().all()
    for name, m in masks.items():
        assert not model.get_parameter(name)[m == 0].any()


def test_bad_input(tiny, tmp_path):
    folder, hf, _ = tiny
    with pytest.raises(ComposeError, match="no module"):
        make_variant(hf, {"module": "encoder.block.7.layer.0.SelfAttention", "kind": "attention", "criterion": "l1",
                          "rate": 0.5})
    with pytest.raises(ComposeError, match="not an attention module of this T5"):
        make_variant(hf, {"module": LIN[0], "kind": "attention", "criterion": "l1", "rate": 0.5})
    conf = make_configurations(str(folder), prunable_modules(hf), [0.5], [0.3])
    conf["configurations"][0]["modules"]["decoder.block.5.layer.1.EncDecAttention"] = {
        "kind": "attention", "criterion": "l1", "rate": 0.5}
    with pytest.raises(ComposeError, match="not a prunable module"):
        make_scheme(conf)
    with pytest.raises(ComposeError, match="not implemented for a T5"):
        compose_stages.configure(str(folder), [0.5], [0.3], criterion="causal")
    v = {"key": "k", "module": ATT[1], "kind": "attention", "criterion": "l1", "rate": 0.5}
    mod, masks, meta = make_variant(hf, v)
    save_variant(tmp_path / "k.safetensors", mod, masks, meta, v, "another-model", False)
    with pytest.raises(ComposeError, match="another base model"):
        load_variant(tmp_path / "k.safetensors", hf, weights_fingerprint(hf))


def test_cli_end_to_end(tiny, tmp_path, capsys):
    folder, hf, _ = tiny
    conf, sch, work = tmp_path / "conf.json", tmp_path / "conf_prune.json", tmp_path / "w"
    assert main(["compose", "config", "-m", str(folder), "--attention", "0.25", "0.5", "--linear", "0.3", "0.3",
                 "-n", "2", "-o", str(conf)]) == 0
    assert main(["compose", "scheme", "-i", str(conf), "-o", str(sch)]) == 0
    assert "20 distinct variants (8 shared)" in capsys.readouterr().out
    for stage in (["prune"], ["finetune-modules", "--steps", "3", "--windows", "4"]):
        assert main(["compose", *stage, "-s", str(sch), "-d", str(work)]) == 0
    assert len(list((work / "finetuned").glob("*.safetensors"))) == 20
    assert main(["compose", "build", "-s", str(sch), "-d", str(work), "-n", "2", "-o", str(tmp_path / "c2")]) == 0
    for stage in ("finetune-model", "finetune-baseline"):
        assert main(["compose", stage, "-s", str(sch), "-d", str(work), "-n", "1", "--steps", "2"]) == 0
    r = json.loads((work / "runs" / "c1_baseline.json").read_text())
    assert r["steps_run"] == 2 and r["heldout_after"] > 0
    capsys.readouterr()
    assert main(["compose", "build", "-s", str(sch), "-d", str(work), "-n", "3"]) == 1
    assert "configurations 1..2" in capsys.readouterr().err
    from causal_nb.models.t5 import load_pruned_t5  # the saved configuration reloads with its structure

    again = load_pruned_t5(tmp_path / "c2")
    built, _ = compose_model(hf, json.loads(sch.read_text()), 2, work / "finetuned")
    x = pairs(load_dense(str(folder))[1])
    torch.testing.assert_close(logits(again, x), logits(built, x), atol=1e-5, rtol=1e-5)
