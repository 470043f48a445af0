"""Composable pruning (issue 14) on tiny random-config GPT-2 and Llama (GQA: 4 query heads, 2
key/value heads): scheme dedup counted by hand, fingerprint refusal, L1-unstructured masks
computed by hand, head-wise L1 norms computed by hand from the raw Q/K/V weights, physical head
removal equal to masking the same heads in the plain Hugging Face model, module-level training
lowering the module's MSE, composition equal to direct pruning (the kit's ``prune_units`` plus
``torch.nn.utils.prune``), and the command line end to end.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from torch.nn.utils import prune as tprune

import causal_nb as cnb
from causal_nb.__main__ import main
from causal_nb.models.hf import plain_hf
from causal_nb.pruning import compose_stages
from causal_nb.pruning.compose_modules import (
    compose_model,
    head_l1_scores,
    load_dense,
    load_variant,
    make_variant,
    prunable_modules,
    save_variant,
    weights_fingerprint,
)
from causal_nb.pruning.compose_scheme import ComposeError, make_configurations, make_scheme
from causal_nb.pruning.compose_train import capture, finetune_module
from causal_nb.zoo.tiny import make_tiny_model

D, H, DH = 32, 4, 8
GPT2_MODS = {"attention": ["transformer.h.0.attn", "transformer.h.1.attn"],
             "linear": ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj",
                        "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]}


@pytest.fixture(autouse=True)
def small_data(monkeypatch):
    """A few corpus files and short windows: the code paths, not the numbers, are tested here."""
    for k, v in {"seq": 32, "n_files": 4, "n_heldout": 8, "n_files_heldout": 4, "n_train": 32}.items():
        monkeypatch.setitem(compose_stages.DATA, k, v)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny(request, tmp_path_factory):
    kw = {"n_kv_heads": 2} if request.param == "llama" else {}
    folder = make_tiny_model(tmp_path_factory.mktemp(request.param) / "m", request.param, n_layers=2, d_model=D,
                             n_heads=H, d_mlp=64, init_std=0.15, seed=5, **kw)
    hf, tok = load_dense(str(folder))
    return request.param, folder, hf, tok


def tokens(n=4, pos=12, seed=0, vocab=200):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, vocab, (n, pos), generator=g)
    x[:, 0] = 0
    return x


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits


def test_scheme_dedups_shared_variants_by_hand():
    conf = make_configurations("m", GPT2_MODS, [0.25, 0.5, 0.25], [0.5, 0.5, 0.0], n=3)
    s = make_scheme(conf)
    # attention 0.25 and 0.5 on 2 layers (4), linear 0.5 on 4 linears; rate 0 makes none: 8
    assert len(s["variants"]) == 8
    by = {(v["module"], v["rate"]): v["configurations"] for v in s["variants"]}
    assert by["transformer.h.1.attn", 0.25] == [1, 3] and by["transformer.h.0.attn", 0.5] == [2]
    assert all(by[m, 0.5] == [1, 2] for m in GPT2_MODS["linear"])
    assert s["configurations"]["3"] == {m: f"{m}__l1__0.2500" for m in GPT2_MODS["attention"]}
    # a per-module edit: configuration 2's layer-0 attention at 0.25 joins 1 and 3, its 0.5 goes
    conf["configurations"][1]["modules"]["transformer.h.0.attn"]["rate"] = 0.25
    s2 = make_scheme(conf)
    by2 = {(v["module"], v["rate"]): v["configurations"] for v in s2["variants"]}
    assert len(s2["variants"]) == 7 and by2["transformer.h.0.attn", 0.25] == [1, 2, 3]
    assert ("transformer.h.0.attn", 0.5) not in by2


def test_prunable_modules_named(tiny):
    arch, _, hf, _ = tiny
    mods = prunable_modules(hf)
    if arch == "gpt2":
        assert mods == GPT2_MODS
    else:
        assert mods["attention"] == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
        assert mods["linear"][:3] == [f"model.layers.0.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]


def test_bad_input():
    with pytest.raises(ComposeError, match="equal length"):
        make_configurations("m", GPT2_MODS, [0.1, 0.2], [0.1])
    for bad in (1.0, -0.1, 1.5, True):
        with pytest.raises(ComposeError, match=r"\[0, 1\)"):
            make_configurations("m", GPT2_MODS, [bad], [0.1])
    with pytest.raises(ComposeError, match="-n 3"):
        make_configurations("m", GPT2_MODS, [0.1], [0.1], n=3)
    with pytest.raises(ComposeError, match="criterion"):
        make_configurations("m", GPT2_MODS, [0.1], [0.1], criterion="l2")
    conf = make_configurations("m", GPT2_MODS, [0.1], [0.1])
    conf["configurations"][0]["modules"]["transformer.h.7.attn"] = {"kind": "attention", "criterion": "l1",
                                                                    "rate": 0.5}
    with pytest.raises(ComposeError, match="h.7.attn"):
        make_scheme(conf)
    conf = make_configurations("m", GPT2_MODS, [0.1], [0.1])
    conf["configurations"][0]["modules"]["transformer.h.0.mlp.c_fc"]["criterion"] = "causal"
    with pytest.raises(ComposeError, match="linear: 'l1'"):
        make_scheme(conf)


def test_fingerprint_refuses_hand_edited_scheme(tmp_path):
    conf = make_configurations("m", GPT2_MODS, [0.25, 0.5], [0.3, 0.3])
    path = cnb.save_scheme(make_scheme(conf), tmp_path / "s.json")
    assert cnb.load_scheme(path, conf)["variants"]
    edited = json.loads(path.read_text())
    edited["variants"][0]["rate"] = 0.4
    path.write_text(json.dumps(edited))
    with pytest.raises(ComposeError, match="edited by hand.*compose scheme"):
        cnb.load_scheme(path)
    other = make_configurations("m", GPT2_MODS, [0.25, 0.5], [0.3, 0.4])
    path = cnb.save_scheme(make_scheme(conf), tmp_path / "s.json")
    with pytest.raises(ComposeError, match="another configuration file"):
        cnb.load_scheme(path, other)


def test_l1_unstructured_masks_by_hand(tiny):
    arch, _, hf, _ = tiny
    name = prunable_modules(hf)["linear"][0]
    dense_w = hf.get_submodule(name).weight.detach().clone()
    mod, masks, _ = make_variant(hf, {"module": name, "kind": "linear", "criterion": "l1", "rate": 0.3})
    k = round(0.3 * dense_w.numel())
    cut = dense_w.abs().flatten().sort().values[k - 1]  # magnitudes are distinct (random floats)
    want = (dense_w.abs() > cut).float()
    assert int((want == 0).sum()) == k
    assert torch.equal(masks["weight"], want)
    assert torch.equal(mod.weight.detach(), dense_w * want)
    assert not hasattr(mod, "weight_orig")  # made permanent
    assert torch.equal(hf.get_submodule(name).weight, dense_w)  # the dense model untouched


def hand_head_norms(arch, hf, layer):
    """Per query head: |Q rows|_1 + (|K rows|_1 + |V rows|_1) / group, read from the raw weights."""
    if arch == "gpt2":
        w = hf.transformer.h[layer].attn.c_attn.weight.detach()  # [d, 3d], x @ w
        return torch.tensor([float(w[:, h * DH:(h + 1) * DH].abs().sum() + w[:, D + h * DH:D + (h + 1) * DH].abs().sum()
                                   + w[:, 2 * D + h * DH:2 * D + (h + 1) * DH].abs().sum()) for h in range(H)])
    att = copy.deepcopy(hf.model.layers[layer].self_attn).requires_grad_(False)
    group = H // 2
    out = []
    for h in range(H):
        g = h // group
        kv = att.k_proj.weight[g * DH:(g + 1) * DH].abs().sum() + att.v_proj.weight[g * DH:(g + 1) * DH].abs().sum()
        out.append(float(att.q_proj.weight[h * DH:(h + 1) * DH].abs().sum() + kv / group))
    return torch.tensor(out)


def masked_heads(arch, hf, removed: dict[int, list[int]]):
    """The plain HF model with the removed heads' output-projection inputs zeroed (masking)."""
    m = copy.deepcopy(hf)
    with torch.no_grad():
        for layer, heads in removed.items():
            for h in heads:
                if arch == "gpt2":
                    m.transformer.h[layer].attn.c_proj.weight[h * DH:(h + 1) * DH] = 0
                else:
                    m.model.layers[layer].self_attn.o_proj.weight[:, h * DH:(h + 1) * DH] = 0
    return m


@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_headwise_removes_lowest_l1_heads_physically(tiny, rate, tmp_path):
    arch, _, hf, _ = tiny
    removed = {}
    for layer in range(2):
        norms = hand_head_norms(arch, hf, layer)
        assert torch.allclose(head_l1_scores(hf, layer), norms, rtol=1e-5)
        want = sorted(norms.argsort()[:round(rate * H)].tolist())
        name = prunable_modules(hf)["attention"][layer]
        v = {"key": f"a{layer}", "module": name, "kind": "attention", "criterion": "l1", "rate": rate}
        mod, masks, meta = make_variant(hf, v)
        assert meta["removed"] == want
        removed[layer] = want
        kept_rows = mod.c_attn.weight.shape[1] if arch == "gpt2" else mod.q_proj.weight.shape[0]
        n_rows = (3 if arch == "gpt2" else 1) * DH * len(meta["structure"]["q_heads"])
        assert kept_rows == n_rows
        padded = meta["structure"].get("zeroed_heads") or []
        if padded:  # GQA groups left uneven: removed heads pad them, output columns zeroed and masked
            assert set(padded) <= set(want) and masks["o_proj.weight"].sum() < masks["o_proj.weight"].numel()
        else:
            assert n_rows < (3 if arch == "gpt2" else 1) * D  # physically smaller
        save_variant(tmp_path / f"a{layer}.safetensors", mod, masks, meta, v, "base", finetuned=False)
    scheme = {"configurations": {"1": {prunable_modules(hf)["attention"][la]: f"a{la}" for la in range(2)}},
              "base_fingerprint": "base"}
    model, _ = compose_model(hf, scheme, 1, tmp_path)
    x = tokens()
    ref = logits(masked_heads(arch, hf, removed), x)
    assert (logits(model, x) - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_module_finetuning_lowers_mse_and_keeps_zeros(tiny):
    arch, _, hf, _ = tiny
    mods = prunable_modules(hf)
    x = tokens(8, 16, seed=1)
    data = capture(hf, [mods["attention"][0], mods["linear"][0]], x, batch_size=4)
    # captured input of layer 0's attention = its input layer norm of the embeddings (plain HF)
    with torch.no_grad():
        hs = hf(input_ids=x[:4], output_hidden_states=True).hidden_states[0]
        ln = hf.transformer.h[0].ln_1 if arch == "gpt2" else hf.model.layers[0].input_layernorm
        args, kw, _ = data[mods["attention"][0]][0]
        assert torch.allclose(args[0] if args else kw["hidden_states"], ln(hs), atol=1e-6)
    for name, rate in ((mods["attention"][0], 0.25), (mods["linear"][0], 0.5)):
        kind = "attention" if "attn" in name else "linear"
        mod, masks, _ = make_variant(hf, {"module": name, "kind": kind, "criterion": "l1", "rate": rate})
        stats = finetune_module(mod, masks, data[name], steps=30, lr=3e-3, seed=0)
        # recomputed here against the dense module's own outputs
        dense = hf.get_submodule(name)
        with torch.no_grad():
            mse = [torch.nn.functional.mse_loss(m_out[0] if isinstance(m_out := mod(*a, **kw), tuple) else m_out,
                                                d_out[0] if isinstance(d_out := dense(*a, **kw), tuple) else d_out)
                   for a, kw, _ in data[name]]
        assert float(torch.stack(mse).mean()) == pytest.approx(stats.mse.iloc[-1], rel=1e-4)
        assert stats.mse.iloc[-1] < 0.8 * stats.mse.iloc[0]
        for p, m in masks.items():
            assert torch.all(mod.get_parameter(p)[m == 0] == 0)


def test_composed_modules_equal_saved_variants_and_direct_pruning(tiny, tmp_path):
    arch, folder, hf, _ = tiny
    base = weights_fingerprint(hf)
    conf = make_configurations(str(folder), prunable_modules(hf), [0.5, 0.25], [0.4, 0.4], base_fingerprint=base)
    scheme = make_scheme(conf)
    removed = {}
    for v in scheme["variants"]:
        mod, masks, meta = make_variant(hf, v)
        save_variant(tmp_path / f"{v['key']}.safetensors", mod, masks, meta, v, base, finetuned=False)
        if v["kind"] == "attention" and v["rate"] == 0.5:
            removed[int(v["module"].split(".")[-2])] = meta["removed"]
    model, _ = compose_model(hf, scheme, 1, tmp_path)
    for module, key in scheme["configurations"]["1"].items():
        saved = {k: t for k, t in load_file(str(tmp_path / f"{key}.safetensors")).items() if not k.startswith("mask.")}
        assert saved and all(torch.equal(model.get_submodule(module).state_dict()[k], t) for k, t in saved.items())
    # direct pruning: the kit's physical prune_units on the same heads, then torch's L1 on the linears
    direct = cnb.prune_units(cnb.load_model(folder, device="cpu"), heads=removed)
    ref = plain_hf(direct)
    for name in prunable_modules(hf)["linear"]:
        tprune.l1_unstructured(ref.get_submodule(name), "weight", amount=0.4)
        tprune.remove(ref.get_submodule(name), "weight")
    x = tokens()
    a, b = logits(model, x), logits(ref, x)
    assert (a - b).abs().max() <= 1e-5 * max(1.0, float(b.abs().max()))
    with pytest.raises(ComposeError, match="configurations 1..2"):
        compose_model(hf, scheme, 3, tmp_path)
    with pytest.raises(ComposeError, match="another base model"):
        load_variant(tmp_path / f"{scheme['variants'][0]['key']}.safetensors", hf, "0" * 16)


def test_cli_end_to_end(tiny, tmp_path, capsys):
    arch, folder, hf, _ = tiny
    if arch != "gpt2":
        pytest.skip("the command line is model-agnostic; once is enough")
    conf, sch = tmp_path / "conf.json", tmp_path / "conf_prune.json"
    assert main(["compose", "config", "-m", str(folder), "--attention", "0.25", "0.5", "--linear", "0.3", "0.3",
                 "-n", "2", "-o", str(conf)]) == 0
    assert main(["compose", "scheme", "-i", str(conf), "-o", str(sch)]) == 0
    assert "8 distinct variants (4 shared)" in capsys.readouterr().out
    assert main(["compose", "prune", "-s", str(sch)]) == 0
    ft = ["compose", "finetune-modules", "-s", str(sch), "--steps", "3", "--windows", "4"]
    assert main(ft) == 0
    assert main(ft) == 0
    assert "0 variants fine-tuned, 8 already done" in capsys.readouterr().out
    work = tmp_path / "conf_prune_work"
    assert len(list((work / "finetuned").glob("*.csv"))) == 8
    out = tmp_path / "c2"
    assert main(["compose", "build", "-s", str(sch), "-n", "2", "-o", str(out)]) == 0
    built, _ = compose_model(hf, cnb.load_scheme(sch), 2, work / "finetuned")
    x = tokens()
    reloaded = plain_hf(cnb.load_model(out, device="cpu"))
    assert torch.allclose(logits(reloaded, x), logits(built, x), atol=1e-5)
    for stage in ("finetune-model", "finetune-baseline"):
        assert main(["compose", stage, "-s", str(sch), "-n", "2", "--steps", "2", "--batch", "2"]) == 0
    capsys.readouterr()
    for arm in ("composed", "baseline"):
        r = json.loads((work / "runs" / f"c2_{arm}.json").read_text())
        assert r["steps"] == 2 and r["heldout_after"] > 0
    assert main(["compose", "build", "-s", str(sch), "-n", "3"]) == 1
    assert "configurations 1..2" in capsys.readouterr().err
    edited = json.loads(sch.read_text())
    edited["variants"][0]["rate"] = 0.9
    sch.write_text(json.dumps(edited))
    assert main(["compose", "prune", "-s", str(sch)]) == 1
    assert "edited by hand" in capsys.readouterr().err
    assert main(["compose", "config", "-m", str(folder), "--attention", "0.25", "--linear", "0.3", "0.3",
                 "-o", str(conf)]) == 1
    assert "equal length" in capsys.readouterr().err


def test_causal_criterion_removes_lowest_scored_heads(tiny, tmp_path):
    arch, folder, hf, _ = tiny
    if arch != "llama":
        pytest.skip("one family is enough for the criterion switch")
    scheme = make_scheme(cnb.compose_config(str(folder), [0.5], [0.0], criterion="causal"))
    assert [v["criterion"] for v in scheme["variants"]] == ["causal", "causal"]
    cnb.prune_variants(scheme, tmp_path)
    import pandas as pd

    scores = pd.read_csv(tmp_path / "head_scores.csv")
    assert len(scores) == 2 * H
    for v in scheme["variants"]:
        _, _, meta = load_variant(tmp_path / "pruned" / f"{v['key']}.safetensors", hf, scheme["base_fingerprint"])
        t = scores[scores.layer == int(v["module"].split(".")[2])]
        assert meta["removed"] == sorted(t.nsmallest(H // 2, "score")["head"].tolist())


def test_model_finetuning_keeps_pruned_weights_zero(tiny, tmp_path):
    from causal_nb.pruning.compose_train import finetune_model

    arch, folder, hf, _ = tiny
    base = weights_fingerprint(hf)
    scheme = make_scheme(make_configurations(str(folder), prunable_modules(hf), [0.25], [0.5], base_fingerprint=base))
    for v in scheme["variants"]:
        save_variant(tmp_path / f"{v['key']}.safetensors", *make_variant(hf, v), v, base, finetuned=False)
    model, masks = compose_model(hf, scheme, 1, tmp_path)
    assert set(masks) >= {f"{m}.weight" for m in prunable_modules(hf)["linear"]}
    with pytest.raises(ValueError, match="dense model"):
        finetune_model(model, masks, tokens(8, 12), steps=1, kl=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = finetune_model(model, masks, tokens(8, 12), steps=3, batch_size=2, lr=1e-2, kl=1.0, dense=hf,
                           heldout=tokens(2, 12, seed=9))
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert torch.all(params[name][m == 0] == 0) and not torch.equal(params[name], before[name])
    assert stats.val_loss.notna().sum() == 2 and stats.train_loss.iloc[1:].notna().all()


def test_bleu_settings_on_a_language_model_are_refused(tiny):
    arch, folder, hf, _ = tiny
    scheme = make_scheme(make_configurations(str(folder), prunable_modules(hf), [0.25], [0.5],
                                             base_fingerprint=weights_fingerprint(hf)))
    for key in ("bleu_pairs", "bleu_curve_pairs"):
        with pytest.raises(ComposeError, match=f"{key}.*held-out loss: leave them at 0"):
            compose_stages.shared_data(scheme, data={key: 8})
    assert compose_stages.shared_data(scheme)["bleu_curve_pairs"] == 0
