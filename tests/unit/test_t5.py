"""T5 as a family: load as a bridge, Seq2SeqTask, exact ablation of every unit kind per stack.

References are written here on a plain Hugging Face ``T5ForConditionalGeneration`` loaded from
the same folder: one forward per intervention with a forward pre-hook on the input of the
attention's ``o`` projection (a head's slice of it) or of the MLP's ``wo`` (a neuron), the
inputs tokenised with the tokenizer directly and shifted by HF's own ``_shift_right``, the
metrics computed by hand in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import causal_nb as cnb
from causal_nb.models.families import UnsupportedModelError
from causal_nb.zoo.tiny_t5 import make_tiny_t5

SOURCES = ["the cat sat on the mat", "a dog runs", "birds sing in the morning light", "we eat bread"]
TARGETS = ["die katze sass auf der matte", "ein hund lauft", "vogel singen am morgen", "wir essen brot und"]
KINDS = ("enc_head", "dec_head", "cross_head", "enc_neuron", "dec_neuron")


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    return make_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5", n_layers=2, d_model=32, n_heads=4, d_kv=8,
                        d_ff=64, seed=3)


@pytest.fixture(scope="module")
def t5(t5_folder):
    return cnb.load_model(t5_folder, device="cpu")


@pytest.fixture(scope="module")
def ref(t5_folder):
    """The plain HF model and its inputs, tokenised here (not by the kit)."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    hf = T5ForConditionalGeneration.from_pretrained(t5_folder).eval()
    tok = AutoTokenizer.from_pretrained(t5_folder)
    src = tok(SOURCES, padding=True, return_tensors="pt")
    tgt = tok(TARGETS, padding=True, return_tensors="pt")
    return {"hf": hf, "src": src["input_ids"], "src_mask": src["attention_mask"], "tgt": tgt["input_ids"],
            "tgt_mask": tgt["attention_mask"].bool(), "dec": hf._shift_right(tgt["input_ids"])}


def _module(hf, kind: str, layer: int):
    """The projection whose input carries the unit: o for heads, wo for neurons."""
    return {"enc_head": lambda: hf.encoder.block[layer].layer[0].SelfAttention.o,
            "dec_head": lambda: hf.decoder.block[layer].layer[0].SelfAttention.o,
            "cross_head": lambda: hf.decoder.block[layer].layer[1].EncDecAttention.o,
            "enc_neuron": lambda: hf.encoder.block[layer].layer[1].DenseReluDense.wo,
            "dec_neuron": lambda: hf.decoder.block[layer].layer[2].DenseReluDense.wo}[kind]()


def _logits(ref, pre_hooks=(), fwd_hooks=()):
    handles = [m.register_forward_pre_hook(fn) for m, fn in pre_hooks]
    handles += [m.register_forward_hook(fn, with_kwargs=True) for m, fn in fwd_hooks]
    try:
        with torch.no_grad():
            return ref["hf"](input_ids=ref["src"], attention_mask=ref["src_mask"],
                             decoder_input_ids=ref["dec"]).logits
    finally:
        for h in handles:
            h.remove()


def _metrics(logits, clean, ref) -> dict[str, np.ndarray]:
    lp, cl = torch.log_softmax(logits.double(), -1), torch.log_softmax(clean.double(), -1)
    m = ref["tgt_mask"].double()

    def mean(x):
        return ((x * m).sum(1) / m.sum(1)).numpy()

    return {"target_logprob": mean(lp.gather(-1, ref["tgt"][..., None])[..., 0]),
            "kl": mean((cl.exp() * (cl - lp)).sum(-1)),
            "top1": mean((logits.argmax(-1) == clean.argmax(-1)).double())}


def _slice(kind: str, i: int, dk: int) -> slice:
    return slice(i * dk, (i + 1) * dk) if kind.endswith("head") else slice(i, i + 1)


def _means(ref, kind: str, layer: int) -> torch.Tensor:
    """The input of the unit's projection averaged over the real tokens of its stack."""
    got = {}
    mod = _module(ref["hf"], kind, layer)
    _logits(ref, [(mod, lambda m, a: got.__setitem__("x", a[0].double()))])
    mask = (ref["src_mask"] if kind.startswith("enc") else ref["tgt_mask"]).double()[..., None]
    return ((got["x"] * mask).sum((0, 1)) / mask.sum((0, 1))).float()


def _reference(ref, kind: str, ablation: str, layers=(0, 1)) -> dict[str, np.ndarray]:
    """Per unit (layer-major), per pair: each metric with that unit ablated in a plain HF forward."""
    hf = ref["hf"]
    dk, n = hf.config.d_kv, hf.config.num_heads if kind.endswith("head") else hf.config.d_ff
    clean = _logits(ref)
    rows = {k: [] for k in ("target_logprob", "kl", "top1")}
    for layer in layers:
        mod = _module(hf, kind, layer)
        mean = _means(ref, kind, layer) if ablation == "mean" else None
        for i in range(n):
            sl = _slice(kind, i, dk)

            def pre(m, args, sl=sl, mean=mean):
                x = args[0].clone()
                x[..., sl] = 0 if mean is None else mean[sl]
                return (x,)

            for k, v in _metrics(_logits(ref, [(mod, pre)]), clean, ref).items():
                rows[k].append(v)
    return {k: np.stack(v) for k, v in rows.items()}


def test_loads_as_bridge_with_hf_logits(t5, ref):
    from transformer_lens.model_bridge import TransformerBridge

    assert isinstance(t5, TransformerBridge)
    task = cnb.Seq2SeqTask(SOURCES, TARGETS)
    batch = task.prepare(t5)
    assert torch.equal(batch.tokens, ref["src"]) and torch.equal(batch.decoder_input, ref["dec"])
    with torch.no_grad():
        got = task.run(t5, batch.tokens, task.scoring(t5, batch))
    torch.testing.assert_close(got, _logits(ref), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_ablation_equals_plain_hf_hook_loop(t5, ref, kind, ablation):
    task = cnb.Seq2SeqTask(SOURCES, TARGETS)
    # neurons on one layer each (64 units): the encoder's last (its replay runs on into the
    # decoder) and the decoder's first (both decoder blocks replayed); heads on both layers
    layers = {"enc_neuron": [1], "dec_neuron": [0]}.get(kind, [0, 1])
    want = _reference(ref, kind, ablation, layers)
    for metric in ("target_logprob", "kl", "top1"):
        df = cnb.ablate(t5, task=task, unit=kind, kind=ablation, metric=metric, layers=layers)
        got = df.attrs["per_prompt"].to_numpy()
        assert got.shape == want[metric].shape == (len(df), len(SOURCES))
        np.testing.assert_allclose(got, want[metric], atol=1e-5, rtol=0)
        assert list(df.columns) == ["layer", "head" if kind.endswith("head") else "neuron", "value"]
    # the interventions do something, so the comparison above can fail
    assert np.abs(want["kl"]).max() > 1e-4


def test_mean_over_a_reference_task(t5, ref):
    """reference= goes through the task: the mean is over the reference pairs' tokens."""
    task = cnb.Seq2SeqTask(SOURCES, TARGETS)
    other = cnb.Seq2SeqTask(SOURCES[:2], TARGETS[:2])
    full = cnb.ablate(t5, task=task, unit="cross_head", kind="mean", metric="kl", layers=[1])
    sub = cnb.ablate(t5, task=task, unit="cross_head", kind="mean", metric="kl", layers=[1], reference=other)
    assert not np.allclose(full["value"], sub["value"])
    # by hand: the means over the first two pairs' real target tokens (padding changes no real token)
    small = {k: (v if k == "hf" else v[:2]) for k, v in ref.items()}
    mean = _means(small, "cross_head", 1)
    clean, mod, dk = _logits(ref), _module(ref["hf"], "cross_head", 1), ref["hf"].config.d_kv
    for h in range(4):
        def pre(m, args, h=h):
            x = args[0].clone()
            x[..., h * dk:(h + 1) * dk] = mean[h * dk:(h + 1) * dk]
            return (x,)

        np.testing.assert_allclose(sub.attrs["per_prompt"].to_numpy()[h], _metrics(_logits(ref, [(mod, pre)]), clean,
                                   ref)["kl"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["enc_block", "dec_block"])
def test_zero_block_is_skipping_it(t5, ref, kind):
    """Zeroing every sublayer output of a T5 block passes its input through (pre-LN residuals)."""
    task = cnb.Seq2SeqTask(SOURCES, TARGETS)
    df = cnb.ablate(t5, task=task, unit=kind, kind="zero", metric="target_logprob")
    blocks = (ref["hf"].encoder if kind == "enc_block" else ref["hf"].decoder).block
    clean = _logits(ref)
    for layer in range(2):
        def skip(m, args, kwargs, out):
            return (args[0] if args else kwargs["hidden_states"], *out[1:])

        want = _metrics(_logits(ref, fwd_hooks=[(blocks[layer], skip)]), clean, ref)["target_logprob"]
        np.testing.assert_allclose(df.attrs["per_prompt"].to_numpy()[layer], want, atol=1e-5, rtol=0)


def test_score_ablation_and_magnitude(t5, ref):
    task = cnb.Seq2SeqTask(SOURCES, TARGETS)
    s = cnb.score(t5, task=task, method="ablation", unit="cross_head", kind="zero")
    want = _reference(ref, "cross_head", "zero")["target_logprob"]
    base = _metrics(_logits(ref), _logits(ref), ref)["target_logprob"]
    np.testing.assert_allclose(s["score"].to_numpy(), (base[None] - want).mean(1), atol=1e-5, rtol=0)
    kl = cnb.score(t5, task=task, method="ablation", unit="cross_head", kind="zero", metric="kl")
    assert (kl["score"] > 0).all()  # KL damage is its rise: positive
    hf = ref["hf"]
    dk = hf.config.d_kv
    for kind in ("enc_head", "cross_head", "dec_neuron"):
        got = cnb.score(t5, task=task, method="magnitude", unit=kind)["score"].to_numpy()
        want = []
        for layer in range(2):
            if kind.endswith("head"):
                att = hf.encoder.block[layer].layer[0].SelfAttention if kind == "enc_head" else \
                    hf.decoder.block[layer].layer[1].EncDecAttention
                for h in range(4):
                    rows = slice(h * dk, (h + 1) * dk)
                    want.append(sum(float(getattr(att, n).weight.detach()[rows].norm()) for n in "qkv")
                                + float(att.o.weight.detach()[:, rows].norm()))
            else:
                ff = hf.decoder.block[layer].layer[2].DenseReluDense
                want += [float(ff.wi.weight.detach()[i].norm() + ff.wo.weight.detach()[:, i].norm()) for i in range(64)]
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_bad_input(t5, tiny_dirs):
    with pytest.raises(ValueError, match="differ in length"):
        cnb.Seq2SeqTask(["a b", "c"], ["d"])
    with pytest.raises(ValueError, match="target 1 is empty"):
        cnb.Seq2SeqTask(["a b", "c"], ["d", "  "])
    with pytest.raises(ValueError, match="no pairs"):
        cnb.Seq2SeqTask([], [])
    task = cnb.Seq2SeqTask(SOURCES, TARGETS)
    gpt2 = cnb.load_model(tiny_dirs["gpt2"], device="cpu")
    with pytest.raises(UnsupportedModelError, match="not an encoder-decoder"):
        cnb.ablate(gpt2, task=task, unit="enc_head")
    with pytest.raises(ValueError, match="encoder-decoder"):
        cnb.ablate(gpt2, ["def f(x): return x"], unit="cross_head")
    with pytest.raises(UnsupportedModelError, match="Seq2SeqTask"):
        cnb.ablate(t5, ["the cat"], unit="head")
    with pytest.raises(ValueError, match="ambiguous"):
        cnb.ablate(t5, task=task, unit="head")
    with pytest.raises(ValueError, match="target_logprob"):
        cnb.ablate(t5, task=task, unit="enc_head", metric="logprob")
    with pytest.raises(ValueError, match="layer"):
        cnb.ablate(t5, task=task, unit="dec_head", layers=[2])
    with pytest.raises(ValueError, match="not available"):
        cnb.score(t5, task=task, method="activation", unit="enc_head")
    with pytest.raises(ValueError, match="resample ablation is not available"):
        cnb.ablate(t5, task=task, unit="enc_head", kind="resample")
    with pytest.raises(TypeError, match="reference= for Seq2SeqTask"):
        cnb.ablate(t5, task=task, unit="enc_head", kind="mean", reference=["the cat"])
    scores = cnb.score(t5, task=task, method="magnitude", unit="enc_head")
    with pytest.raises(ValueError, match="fill='mean' needs the pairs"):
        cnb.prune(t5, scores, 0.5, fill="mean")
    with pytest.raises(ValueError, match="score tables of"):
        cnb.prune(t5, scores.assign(score=1.0).pipe(lambda d: d.attrs.update(unit="enc_block") or d), 0.5)
    from causal_nb.pruning.seq2seq import prune_seq2seq_units

    with pytest.raises(ValueError, match="lose every head"):
        prune_seq2seq_units(t5, {"cross_head": {0: [0, 1, 2, 3]}})


REMOVED = {"enc_head": {0: [1], 1: [0, 2]}, "dec_head": {0: [3]}, "cross_head": {1: [1, 2]},
           "enc_neuron": {0: [5, 7]}, "dec_neuron": {1: list(range(10))}}


def _zeroing_hooks(ref, removed):
    """Pre-hooks zeroing every removed unit's slice of its projection's input, all at once."""
    dk, hooks = ref["hf"].config.d_kv, []
    for kind, layers in removed.items():
        for layer, idx in layers.items():
            cols = [c for i in idx for c in range(*_slice(kind, i, dk).indices(10**6))]

            def pre(m, args, cols=cols):
                x = args[0].clone()
                x[..., cols] = 0
                return (x,)

            hooks.append((_module(ref["hf"], kind, layer), pre))
    return hooks


def _n_params(hf) -> int:
    from causal_nb.models.hf import hf_state

    # tied tensors once; T5 has no biases (the bridge adds a zero lm_head bias, b_U)
    return sum({t.data_ptr(): t.numel() for k, t in hf_state(hf).items() if not k.endswith(".bias")}.values())


def _run(model):
    task = cnb.Seq2SeqTask(SOURCES, TARGETS)
    batch = task.prepare(model)
    with torch.no_grad():
        return task.run(model, batch.tokens, task.scoring(model, batch))


def test_pruning_masked_physical_saved(t5, ref, tmp_path):
    from causal_nb.pruning.seq2seq import prune_seq2seq_units

    want = _logits(ref, _zeroing_hooks(ref, REMOVED))
    assert (want - _logits(ref)).abs().max() > 1e-4  # the removal changes the output
    masked = prune_seq2seq_units(t5, REMOVED, physical=False)
    torch.testing.assert_close(_run(masked), want, atol=1e-5, rtol=1e-5)
    phys = prune_seq2seq_units(t5, REMOVED, physical=True)
    torch.testing.assert_close(_run(phys), want, atol=1e-5, rtol=1e-5)
    # really smaller: q/k/v rows and o columns per head, wi row and wo column per neuron
    n_heads = sum(len(v) for k in ("enc_head", "dec_head", "cross_head") for v in REMOVED[k].values())
    n_neurons = sum(len(v) for k in ("enc_neuron", "dec_neuron") for v in REMOVED[k].values())
    assert _n_params(ref["hf"]) - _n_params(phys.original_model) == n_heads * 4 * 32 * 8 + n_neurons * 2 * 32
    # the analyses run on it, over its kept units
    df = cnb.ablate(phys, task=cnb.Seq2SeqTask(SOURCES, TARGETS), unit="enc_head", kind="zero")
    assert df.groupby("layer").size().tolist() == [3, 2]
    folder = cnb.save_pruned(phys, tmp_path / "pruned-t5")
    back = cnb.load_model(folder, device="cpu")
    torch.testing.assert_close(_run(back), want, atol=1e-5, rtol=1e-5)
    again = cnb.ablate(back, task=cnb.Seq2SeqTask(SOURCES, TARGETS), unit="enc_head", kind="zero")
    np.testing.assert_allclose(again["value"], df["value"], atol=1e-5)


def test_prune_from_scores(t5):
    task = cnb.Seq2SeqTask(SOURCES, TARGETS)
    tables = [cnb.score(t5, task=task, method="magnitude", unit=k) for k in ("cross_head", "dec_neuron")]
    pruned = cnb.prune(t5, tables, 0.25)
    removed = pruned.causal_nb_pruned["removed"]
    assert sum(map(len, removed["cross_head"].values())) == 2 and sum(map(len, removed["dec_neuron"].values())) == 32
    low = tables[0].sort_values("score").head(2)
    assert sorted(zip(low["layer"], low["head"])) == sorted((int(la), h) for la, v in removed["cross_head"].items() for h in v)
    with pytest.raises(ValueError, match="stack"):
        cnb.prune_units(t5, heads={0: [1]})


@pytest.mark.parametrize("variant", [{"d_kv": 6}, {"gated": True}], ids=["d_kv6", "gated"])
def test_other_shapes(tmp_path, variant):
    """A head width apart from d_model / n_heads (T5's d_kv), and Flan-T5's gated MLP (wi_0/wi_1)."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    folder = make_tiny_t5(tmp_path / "t5", seed=5, **variant)
    model = cnb.load_model(folder, device="cpu")
    hf = T5ForConditionalGeneration.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    src, tgt = tok(SOURCES, padding=True, return_tensors="pt"), tok(TARGETS, padding=True, return_tensors="pt")
    ref = {"hf": hf, "src": src["input_ids"], "src_mask": src["attention_mask"], "tgt": tgt["input_ids"],
           "tgt_mask": tgt["attention_mask"].bool(), "dec": hf._shift_right(tgt["input_ids"])}
    task = cnb.Seq2SeqTask(SOURCES, TARGETS)
    for kind, layers in (("enc_head", [0, 1]), ("dec_neuron", [1])):
        df = cnb.ablate(model, task=task, unit=kind, kind="zero", metric="kl", layers=layers)
        np.testing.assert_allclose(df.attrs["per_prompt"].to_numpy(), _reference(ref, kind, "zero", layers)["kl"],
                                   atol=1e-5, rtol=0)
    got = cnb.score(model, task=task, method="magnitude", unit="dec_neuron")["score"].to_numpy()[:64]
    ff = hf.decoder.block[0].layer[2].DenseReluDense
    ins = [ff.wi_0, ff.wi_1] if variant.get("gated") else [ff.wi]
    want = [sum(float(w.weight.detach()[i].norm()) for w in ins) + float(ff.wo.weight.detach()[:, i].norm())
            for i in range(64)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    from causal_nb.pruning.seq2seq import prune_seq2seq_units

    phys = prune_seq2seq_units(model, {"enc_head": {0: [1]}, "dec_neuron": {1: [0, 3]}})
    masked = prune_seq2seq_units(model, {"enc_head": {0: [1]}, "dec_neuron": {1: [0, 3]}},
                                 physical=False)
    torch.testing.assert_close(_run(phys), _run(masked), atol=1e-5, rtol=1e-5)


def test_pruned_generation_with_cache(t5, ref, tmp_path):
    """Incremental decoding (KV cache; the position bias of step t only) on the sliced model gives
    the masked model's scores at every step."""
    from transformers import T5ForConditionalGeneration

    from causal_nb.models.t5 import load_pruned_t5
    from causal_nb.pruning.seq2seq import prune_seq2seq_units

    phys = load_pruned_t5(cnb.save_pruned(prune_seq2seq_units(t5, REMOVED), tmp_path / "p"))
    masked = T5ForConditionalGeneration.from_pretrained(
        cnb.save_pruned(prune_seq2seq_units(t5, REMOVED, physical=False), tmp_path / "m")).eval()
    x = {"input_ids": ref["src"], "attention_mask": ref["src_mask"]}
    with torch.no_grad():
        a, b = (m.generate(**x, max_new_tokens=8, min_new_tokens=8, do_sample=False, output_scores=True,
                           return_dict_in_generate=True) for m in (phys, masked))
    assert torch.equal(a.sequences, b.sequences)
    for sa, sb in zip(a.scores, b.scores):
        torch.testing.assert_close(sa, sb, atol=1e-5, rtol=1e-5)
