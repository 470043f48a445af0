"""T5 through the rest of the one engine: patch, the gradient methods, mean-fill pruning, evaluate.

References are written here on the plain Hugging Face ``T5ForConditionalGeneration`` of the same
folder (``test_t5``'s helpers: inputs tokenised with the tokenizer directly, interventions as
forward (pre-)hooks on the projections that carry the units, metrics by hand in float64):

- exact patching: one HF forward of the base run per unit with the source run's slice of the
  unit's projection input (heads: ``o``; neurons: ``wo``) or sublayer output (MLP: the
  ``DenseReluDense`` output; block: every sublayer's output) put in;
- gradient methods: ``torch.autograd.grad`` of the summed per-pair target log-prob w.r.t. the
  projection inputs of a plain HF forward;
- mean fill: one HF forward with every removed unit's slice replaced by its mean over the
  stack's real tokens;
- evaluate: HF's own ``labels=`` loss (per pair, unpadded), HF ``generate`` and sacrebleu.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_t5 import REMOVED, SOURCES, TARGETS, _logits, _means, _metrics, _module, _slice, _zeroing_hooks

import causal_nb as cnb
from causal_nb.zoo.tiny_t5 import make_tiny_t5

# each corrupted source has as many tokens as its clean one (one word swapped for another piece)
CORRUPTED = ["the dog sat on the mat", "a cat runs", "birds sing in the red light", "we eat cat"]
N_HEADS, D_FF, D_KV = 4, 64, 8


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    return make_tiny_t5(tmp_path_factory.mktemp("t5a") / "tiny-t5", n_layers=2, d_model=32, n_heads=N_HEADS,
                        d_kv=D_KV, d_ff=D_FF, seed=3)


@pytest.fixture(scope="module")
def t5(t5_folder):
    return cnb.load_model(t5_folder, device="cpu")


def _ref(folder, sources=SOURCES, targets=TARGETS):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    hf = T5ForConditionalGeneration.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    src, tgt = tok(list(sources), padding=True, return_tensors="pt"), tok(list(targets), padding=True, return_tensors="pt")
    return {"hf": hf, "tok": tok, "src": src["input_ids"], "src_mask": src["attention_mask"], "tgt": tgt["input_ids"],
            "tgt_mask": tgt["attention_mask"].bool(), "dec": hf._shift_right(tgt["input_ids"])}


@pytest.fixture(scope="module")
def ref(t5_folder):
    return _ref(t5_folder)


@pytest.fixture(scope="module")
def corr(ref):
    """The corrupted sources on the same HF model, with the same targets."""
    src = ref["tok"](CORRUPTED, padding=True, return_tensors="pt")
    return {**ref, "src": src["input_ids"], "src_mask": src["attention_mask"]}


@pytest.fixture(scope="module")
def task():
    return cnb.Seq2SeqTask(SOURCES, TARGETS)


def _sublayers(hf, kind: str, layer: int) -> list:
    """The modules whose outputs an ``*_mlp`` / ``*_block`` unit edits (before the residual add)."""
    stack = hf.encoder if kind.startswith("enc") else hf.decoder
    blk = stack.block[layer]
    mlp = blk.layer[-1].DenseReluDense
    if kind.endswith("mlp"):
        return [mlp]
    return [blk.layer[0].SelfAttention] + ([blk.layer[1].EncDecAttention] if kind == "dec_block" else []) + [mlp]


def _record(run, mods):
    """The inputs (projections) or outputs (sublayers) of ``mods`` in one HF forward: ``run(pre, fwd)``."""
    got = {}
    pre = [(m, lambda mod, a, i=i: got.__setitem__(i, a[0].clone())) for i, (m, where) in enumerate(mods)
           if where == "in"]
    fwd = [(m, lambda mod, a, k, out, i=i: got.__setitem__(i, (out[0] if isinstance(out, tuple) else out).clone()))
           for i, (m, where) in enumerate(mods) if where == "out"]
    run(pre, fwd)
    return got


def _patch_reference(base, source, kind: str, layers) -> np.ndarray:
    """Per unit, per pair: target log-prob of the base run with the unit taken from the source run."""
    hf = base["hf"]
    clean = _logits(base)
    rows = []
    for layer in layers:
        if kind.endswith(("head", "neuron")):
            mod = _module(hf, kind, layer)
            src = _record(lambda p, f: _logits(source, p, f), [(mod, "in")])[0]
            for i in range(N_HEADS if kind.endswith("head") else D_FF):
                sl = _slice(kind, i, D_KV)

                def put(m, args, sl=sl, src=src):
                    x = args[0].clone()
                    x[..., sl] = src[..., sl]
                    return (x,)

                rows.append(_metrics(_logits(base, [(mod, put)]), clean, base)["target_logprob"])
        else:
            mods = _sublayers(hf, kind, layer)
            src = _record(lambda p, f: _logits(source, p, f), [(m, "out") for m in mods])

            def swap(i, src=src):
                def fn(m, args, kwargs, out):
                    return (src[i], *out[1:]) if isinstance(out, tuple) else src[i]
                return fn

            rows.append(_metrics(_logits(base, fwd_hooks=[(m, swap(i)) for i, m in enumerate(mods)]), clean,
                                 base)["target_logprob"])
    return np.stack(rows)


PATCH_KINDS = {"enc_head": [0, 1], "dec_head": [0, 1], "cross_head": [0, 1], "enc_neuron": [1], "dec_neuron": [0],
               "enc_mlp": [0, 1], "dec_mlp": [0, 1], "enc_block": [0, 1], "dec_block": [0, 1]}


@pytest.mark.parametrize("kind", list(PATCH_KINDS))
def test_exact_patch_equals_plain_hf_hook_loop(t5, ref, corr, task, kind):
    layers = PATCH_KINDS[kind]
    df = cnb.patch(t5, corrupted=CORRUPTED, task=task, unit=kind, layers=layers)
    # the HF reference reads the clean run's logits for KL only; target log-prob needs none
    want = _patch_reference(corr, ref, kind, layers)
    got = df.attrs["per_prompt"].to_numpy()
    assert got.shape == want.shape == (len(df), len(SOURCES))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(df.attrs["clean_per_prompt"], _metrics(_logits(ref), _logits(ref), ref)["target_logprob"],
                               atol=1e-5)
    np.testing.assert_allclose(df.attrs["corrupted_per_prompt"],
                               _metrics(_logits(corr), _logits(corr), corr)["target_logprob"], atol=1e-5)
    assert df.attrs["metric"] == "target_logprob" and df.attrs["task"] == repr(task)
    # the patches move the metric, so the comparison can fail
    assert np.abs(want - np.asarray(df.attrs["corrupted_per_prompt"])[None]).max() > 1e-4


@pytest.mark.parametrize("kind", ["enc_head", "cross_head", "dec_neuron"])
def test_noise_direction(t5, ref, corr, task, kind):
    layers = [1] if kind == "dec_neuron" else [0, 1]
    df = cnb.patch(t5, corrupted=cnb.Seq2SeqTask(CORRUPTED, TARGETS), task=task, unit=kind, layers=layers,
                   direction="noise")
    want = _patch_reference(ref, corr, kind, layers)
    np.testing.assert_allclose(df.attrs["per_prompt"].to_numpy(), want, atol=1e-5, rtol=0)


def test_score_by_patching(t5, ref, corr, task):
    """Damage = clean target log-prob minus the clean run with the unit's corrupted activations."""
    s = cnb.score(t5, task=task, method="patching", corrupted=CORRUPTED, unit="cross_head")
    clean = _metrics(_logits(ref), _logits(ref), ref)["target_logprob"]
    dmg = clean[None] - _patch_reference(ref, corr, "cross_head", [0, 1])
    np.testing.assert_allclose(s.attrs["per_prompt"].to_numpy(), dmg, atol=1e-5, rtol=0)
    np.testing.assert_allclose(s["score"], dmg.mean(1), atol=1e-5, rtol=0)
    assert list(s.attrs["per_prompt"].columns) == list(task.pair_ids)


def _encoder_input(base):
    """The hidden states entering the first encoder block of a plain HF forward."""
    got = {}
    h = base["hf"].encoder.block[0].register_forward_pre_hook(
        lambda m, a, k: got.__setitem__("x", (a[0] if a else k["hidden_states"]).detach().clone()), with_kwargs=True)
    try:
        _logits(base)
    finally:
        h.remove()
    return got["x"]


def _grads(base, kinds_layers, encoder_input=None):
    """Per-pair target log-prob of a plain HF forward, and its gradient w.r.t. each projection
    input (o for heads, wo for neurons), with the inputs themselves; ``encoder_input`` replaces
    the hidden states entering the first encoder block."""
    hf, got = base["hf"], {}
    mods = {kl: _module(hf, *kl) for kl in kinds_layers}

    def swap(m, a, k):
        if a:
            return (encoder_input.clone(), *a[1:]), k
        return a, {**k, "hidden_states": encoder_input.clone()}

    def keep(kl):
        def fn(m, args):
            got[kl] = args[0]
            return None
        return fn

    handles = [m.register_forward_pre_hook(keep(kl)) for kl, m in mods.items()]
    if encoder_input is not None:
        handles.append(hf.encoder.block[0].register_forward_pre_hook(swap, with_kwargs=True))
    try:
        logits = hf(input_ids=base["src"], attention_mask=base["src_mask"], decoder_input_ids=base["dec"]).logits
    finally:
        for h in handles:
            h.remove()
    lp = torch.log_softmax(logits.double(), -1).gather(-1, base["tgt"][..., None])[..., 0]
    m = base["tgt_mask"].double()
    vals = (lp * m).sum(1) / m.sum(1)
    keys = list(kinds_layers)
    grads = torch.autograd.grad(vals.sum(), [got[k] for k in keys])
    return vals.detach(), {k: (got[k].detach().double(), g.double()) for k, g in zip(keys, grads)}


def _unit_sum(t: torch.Tensor, kind: str, i: int) -> torch.Tensor:
    return t[..., _slice(kind, i, D_KV)].sum((1, 2))  # over positions and the unit's slice: [pairs]


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_patching_equals_hf_autograd(t5, ref, corr, task, direction):
    kinds = [("enc_head", 0), ("enc_head", 1), ("dec_head", 1), ("cross_head", 0), ("cross_head", 1)]
    base, source = (corr, ref) if direction == "denoise" else (ref, corr)
    vals, g = _grads(base, kinds)
    src = {kl: _record(lambda p, f: _logits(source, p, f), [(_module(ref["hf"], *kl), "in")])[0].double()
           for kl in kinds}
    for unit in ("enc_head", "dec_head", "cross_head"):
        layers = [la for k, la in kinds if k == unit]
        df = cnb.patch(t5, corrupted=CORRUPTED, task=task, unit=unit, layers=layers, method="attribution",
                       direction=direction)
        want = [vals + _unit_sum((src[(unit, la)] - g[(unit, la)][0]) * g[(unit, la)][1], unit, h)
                for la in layers for h in range(N_HEADS)]
        np.testing.assert_allclose(df.attrs["per_prompt"].to_numpy(), torch.stack(want).numpy(), atol=1e-5, rtol=0)
        exact = cnb.patch(t5, corrupted=CORRUPTED, task=task, unit=unit, layers=layers, direction=direction)
        assert np.abs(exact["value"].to_numpy() - df["value"].to_numpy()).max() > 1e-6  # an estimate


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_eap_ig_equals_hf_integrated_gradients(t5, ref, corr, task, direction):
    """EAP-IG by hand: the first encoder block's input moved from the base sources' to the source
    sources' (the targets, so the decoder's input, are shared), gradients averaged over the points
    j / steps, times (source - base) of each head's slice."""
    steps, kinds = 3, [("enc_head", 0), ("enc_head", 1), ("cross_head", 1)]
    base, source = (corr, ref) if direction == "denoise" else (ref, corr)
    lo, hi = _encoder_input(base), _encoder_input(source)
    vals, g0 = _grads(base, kinds)
    total = {kl: 0.0 for kl in kinds}
    for j in range(1, steps + 1):
        _, g = _grads(base, kinds, lo + j / steps * (hi - lo))
        total = {kl: total[kl] + g[kl][1] for kl in kinds}
    src = {kl: _record(lambda p, f: _logits(source, p, f), [(_module(ref["hf"], *kl), "in")])[0].double()
           for kl in kinds}
    for unit in ("enc_head", "cross_head"):
        layers = [la for k, la in kinds if k == unit]
        df = cnb.patch(t5, corrupted=CORRUPTED, task=task, unit=unit, layers=layers, method="eap-ig",
                       direction=direction, steps=steps)
        want = [vals + _unit_sum((src[(unit, la)] - g0[(unit, la)][0]) * total[(unit, la)] / steps, unit, h)
                for la in layers for h in range(N_HEADS)]
        np.testing.assert_allclose(df.attrs["per_prompt"].to_numpy(), torch.stack(want).numpy(), atol=1e-5, rtol=0)
        attr = cnb.patch(t5, corrupted=CORRUPTED, task=task, unit=unit, layers=layers, method="attribution",
                         direction=direction)
        assert np.abs(attr["value"].to_numpy() - df["value"].to_numpy()).max() > 1e-6  # not the one-point estimate


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_gradient_scores_equal_hf_autograd(t5, ref, task, kind):
    kinds = [("enc_head", 0), ("enc_head", 1), ("cross_head", 0), ("cross_head", 1), ("enc_neuron", 0),
             ("enc_neuron", 1), ("dec_neuron", 0), ("dec_neuron", 1)]
    _, g = _grads(ref, kinds)
    for unit in ("enc_head", "cross_head", "enc_neuron", "dec_neuron"):
        n = N_HEADS if unit.endswith("head") else D_FF
        a_g, est = [], []
        for la in (0, 1):
            a, grad = g[(unit, la)]
            fill = _means(ref, unit, la).double() if kind == "mean" else torch.zeros(a.shape[-1], dtype=torch.float64)
            for i in range(n):
                a_g.append(_unit_sum(a * grad, unit, i))
                est.append(_unit_sum((fill - a) * grad, unit, i))
        a_g, est = torch.stack(a_g).numpy(), torch.stack(est).numpy()
        att = cnb.score(t5, task=task, method="attribution", unit=unit, kind=kind)
        # a log-prob estimated to fall is damage: score = -estimate
        np.testing.assert_allclose(att.attrs["per_prompt"].to_numpy(), -est, atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(att["score"], -est.mean(1), atol=1e-6, rtol=1e-5)
        if kind == "zero":
            ab = cnb.score(t5, task=task, method="attribution-abs", unit=unit, kind=kind)
            np.testing.assert_allclose(ab["score"], np.abs(est).mean(1), atol=1e-6, rtol=1e-5)
            tay = cnb.score(t5, task=task, method="taylor", unit=unit)
            np.testing.assert_allclose(tay["score"], np.abs(a_g).mean(1), atol=1e-6, rtol=1e-5)
            fis = cnb.score(t5, task=task, method="fisher", unit=unit)
            np.testing.assert_allclose(fis["score"], (a_g**2).mean(1), atol=1e-8, rtol=1e-5)
        assert np.abs(est).max() > 1e-4


def test_patch_bad_input(t5, task):
    with pytest.raises(ValueError, match=r"differ in token length.*pair 1: 4 vs 5 tokens.*same token length"):
        cnb.patch(t5, corrupted=[CORRUPTED[0], "a big cat runs", *CORRUPTED[2:]], task=task, unit="enc_head")
    with pytest.raises(ValueError, match="other targets"):
        cnb.patch(t5, corrupted=cnb.Seq2SeqTask(CORRUPTED, TARGETS[::-1]), task=task, unit="enc_head")
    with pytest.raises(ValueError, match="differ in length"):
        cnb.patch(t5, corrupted=CORRUPTED[:2], task=task, unit="enc_head")
    with pytest.raises(TypeError, match="list of corrupted sources"):
        cnb.patch(t5, corrupted="the dog", task=task, unit="enc_head")
    with pytest.raises(TypeError, match="needs corrupted="):
        cnb.patch(t5, task=task, unit="enc_head")
    with pytest.raises(ValueError, match="clean=None"):
        cnb.patch(t5, SOURCES, CORRUPTED, task=task, unit="enc_head")
    with pytest.raises(ValueError, match="n_tokens= is not used"):
        cnb.patch(t5, corrupted=CORRUPTED, task=task, unit="enc_head", n_tokens=8)
    with pytest.raises(ValueError, match="steps= is not used by method='exact'"):
        cnb.patch(t5, corrupted=CORRUPTED, task=task, unit="enc_head", steps=3)
    with pytest.raises(ValueError, match="ambiguous"):
        cnb.patch(t5, corrupted=CORRUPTED, task=task, unit="head")
    with pytest.raises(ValueError, match="positions="):
        cnb.patch(t5, corrupted=CORRUPTED, task=task, unit="enc_head", positions=[0])


def _mean_fill_hooks(ref, removed):
    """Pre-hooks putting each removed unit's mean (over its stack's real tokens) in its slice."""
    hooks = []
    for kind, layers in removed.items():
        for layer, idx in layers.items():
            mean = _means(ref, kind, layer)
            cols = [c for i in idx for c in range(*_slice(kind, i, D_KV).indices(10**6))]

            def pre(m, args, cols=cols, mean=mean):
                x = args[0].clone()
                x[..., cols] = mean[cols]
                return (x,)

            hooks.append((_module(ref["hf"], kind, layer), pre))
    return hooks


def _run(model, task):
    batch = task.prepare(model)
    with torch.no_grad():
        return task.run(model, batch.tokens, task.scoring(model, batch))


def test_mean_fill_pruning_equals_mean_ablation_hook_loop(t5, ref, task, tmp_path):
    from causal_nb.pruning.seq2seq import prune_seq2seq_units

    want = _logits(ref, _mean_fill_hooks(ref, REMOVED))
    assert (want - _logits(ref, _zeroing_hooks(ref, REMOVED))).abs().max() > 1e-4  # mean differs from zero fill
    masked = prune_seq2seq_units(t5, REMOVED, physical=False, fill="mean", task=task)
    torch.testing.assert_close(_run(masked, task), want, atol=1e-5, rtol=1e-5)
    phys = prune_seq2seq_units(t5, REMOVED, physical=True, fill="mean", reference=(list(SOURCES), list(TARGETS)))
    torch.testing.assert_close(_run(phys, task), want, atol=1e-5, rtol=1e-5)
    zero = prune_seq2seq_units(t5, REMOVED, physical=True)
    # the mean goes to one bias (d_model numbers) per output projection that lost units
    n_proj = sum(len([v for v in d.values() if v]) for d in REMOVED.values())
    count = [sum(p.numel() for p in m.original_model.parameters()) for m in (phys, zero)]
    assert count[0] - count[1] == n_proj * 32
    for model, name in ((masked, "m"), (phys, "p")):
        back = cnb.load_model(cnb.save_pruned(model, tmp_path / name), device="cpu")
        torch.testing.assert_close(_run(back, task), want, atol=1e-5, rtol=1e-5)
    # through prune(): one kind from a score table, the means over a reference task's pairs
    small = cnb.Seq2SeqTask(SOURCES[:2], TARGETS[:2])
    scores = cnb.score(t5, task=task, method="magnitude", unit="cross_head")
    pruned = cnb.prune(t5, scores, 0.25, fill="mean", reference=small)
    removed = {"cross_head": {int(la): v for la, v in pruned.causal_nb_pruned["removed"]["cross_head"].items()}}
    sub = {k: (v if k in ("hf", "tok") else v[:2]) for k, v in ref.items()}
    torch.testing.assert_close(_run(pruned, task), _logits(ref, _mean_fill_hooks(sub, removed)), atol=1e-5, rtol=1e-5)


def test_mean_fill_bad_input(t5, task):
    from causal_nb.pruning.seq2seq import prune_seq2seq_units

    scores = cnb.score(t5, task=task, method="magnitude", unit="enc_head")
    with pytest.raises(ValueError, match="fill='mean' needs the pairs"):
        cnb.prune(t5, scores, 0.5, fill="mean")
    with pytest.raises(TypeError, match="reference= for a T5"):
        cnb.prune(t5, scores, 0.5, fill="mean", reference=["the cat"])
    with pytest.raises(TypeError, match="task=cnb.Seq2SeqTask"):
        cnb.prune(t5, scores, 0.5, fill="mean", task=cnb.SentencePairTask([("a b", "c d")]))
    with pytest.raises(ValueError, match="unknown fill"):
        prune_seq2seq_units(t5, REMOVED, fill="median")
    with pytest.raises(ValueError, match="reference= is not used with fill='zero'"):
        prune_seq2seq_units(t5, REMOVED, reference=task)


def test_evaluate_against_plain_hf_and_sacrebleu(t5, t5_folder, ref, tmp_path):
    import sacrebleu

    from causal_nb.pruning.seq2seq import prune_seq2seq_units

    hf, tok = ref["hf"], ref["tok"]
    n_new = 8

    def generate(model_hf, sources):
        x = tok(list(sources), padding=True, return_tensors="pt")
        with torch.no_grad():
            ids = model_hf.generate(**x, max_new_tokens=n_new, do_sample=False, num_beams=1)
        return [tok.decode(r, skip_special_tokens=True).strip() for r in ids.tolist()]

    # two targets are the model's own greedy outputs: BLEU and token accuracy are then far from 0
    targets = TARGETS[:2] + generate(hf, SOURCES[2:])
    task = cnb.Seq2SeqTask(SOURCES, targets)
    pruned = prune_seq2seq_units(t5, REMOVED, physical=True)
    from causal_nb.evaluation.seq2seq_quality import evaluate_seq2seq

    got = evaluate_seq2seq(pruned, task, full_model=t5, max_new_tokens=n_new)
    assert got == evaluate_seq2seq(pruned, task, full_model=t5, max_new_tokens=n_new)  # deterministic
    default = cnb.evaluate(pruned, task=task, full_model=t5)
    assert set(default) == set(got)
    # the plain HF pruned model: the masked folder, loaded by transformers itself
    from transformers import T5ForConditionalGeneration

    plain = T5ForConditionalGeneration.from_pretrained(
        cnb.save_pruned(prune_seq2seq_units(t5, REMOVED, physical=False), tmp_path / "m")).eval()
    per = {k: [] for k in ("loss", "acc", "kl", "top1")}
    nll, n_tok = 0.0, 0
    for s, t in zip(SOURCES, targets):
        x, y = tok([s], return_tensors="pt"), tok([t], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = plain(**x, labels=y)  # HF's own loss: mean cross-entropy over the target tokens
            full = hf(**x, labels=y).logits
        lp, fl = torch.log_softmax(out.logits.double(), -1)[0], torch.log_softmax(full.double(), -1)[0]
        per["loss"].append(float(out.loss))
        per["acc"].append(float((out.logits[0].argmax(-1) == y[0]).double().mean()))
        per["kl"].append(float((fl.exp() * (fl - lp)).sum(-1).mean()))
        per["top1"].append(float((fl.argmax(-1) == lp.argmax(-1)).double().mean()))
        nll, n_tok = nll + float(out.loss) * y.shape[1], n_tok + y.shape[1]
    np.testing.assert_allclose(got["per_prompt_loss"], per["loss"], atol=1e-5)
    np.testing.assert_allclose(got["per_prompt_logprob"], -np.asarray(per["loss"]), atol=1e-5)
    assert got["loss"] == pytest.approx(np.mean(per["loss"]), abs=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nll / n_tok), rel=1e-5)
    np.testing.assert_allclose(got["per_prompt_accuracy"], per["acc"], atol=1e-9)
    np.testing.assert_allclose(got["per_prompt_kl"], per["kl"], atol=1e-6)
    np.testing.assert_allclose(got["per_prompt_top1"], per["top1"], atol=1e-9)
    assert got["kl"] == pytest.approx(np.mean(per["kl"]), abs=1e-6) and got["kl"] > 1e-4
    hyps = generate(plain, SOURCES)
    assert got["generations"] == hyps
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [targets]).score)
    assert got["per_prompt_bleu"] == pytest.approx([sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(hyps, targets)])
    assert got["n_pairs"] == 4 and got["n_target_tokens"] == n_tok
    n_heads = sum(len(v) for k in ("enc_head", "dec_head", "cross_head") for v in REMOVED[k].values())
    n_neurons = sum(len(v) for k in ("enc_neuron", "dec_neuron") for v in REMOVED[k].values())
    assert got["params"] == sum(p.numel() for p in hf.parameters()) - n_heads * 4 * 32 * D_KV - n_neurons * 2 * 32
    # the full model against itself: no divergence, full agreement; its own greedy outputs score BLEU 100
    full = evaluate_seq2seq(t5, task, full_model=t5, max_new_tokens=n_new)
    assert full["kl"] == pytest.approx(0, abs=1e-9) and full["top1_agreement"] == 1.0
    assert full["per_prompt_bleu"][2:] == pytest.approx([100.0, 100.0]) and full["accuracy"] > 0.3
    assert full["bleu"] == pytest.approx(sacrebleu.corpus_bleu(generate(hf, SOURCES), [targets]).score)
    assert full["bleu"] > 10
    assert np.isnan(evaluate_seq2seq(t5, task, bleu=False)["bleu"])
    # per-pair lists pair up for the paired tests
    tests = cnb.stats.paired_tests({"full": np.asarray(full["per_prompt_loss"]) * -1,
                                    "pruned": np.asarray(got["per_prompt_loss"]) * -1}, "full")
    assert len(tests) == 1
    with pytest.raises(ValueError, match="drop the prompts"):
        cnb.evaluate(t5, ["the cat"], task=task)
