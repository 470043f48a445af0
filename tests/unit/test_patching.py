"""Exactness of the engine: equal to TransformerLens's patching functions and to a plain
one-unit-at-a-time hook loop (full forward per unit), to 1e-5 in fp32."""

import warnings

import numpy as np
import pytest
import torch
from transformer_lens import patching as tlp

import causal_nb as cnb
from causal_nb.engine.common import prepare
from causal_nb.engine.patching import ablate, patch

CLEAN = ["def add(a, b): return a + b and more", "class Point: def __init__(self)", "x = [i for i in y]"]
CORR = ["int main() { return 0; } // xx yy z", "std::vector<int> v; v.push_back(1)", "#include <map> ok"]
N = 8
ATOL = 1e-5


def peer_metric(model, tokens):
    tgt = tokens[:, 1:]

    def met(logits):
        return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tgt[..., None])[..., 0].mean()

    return met


def naive_loop(model, base_tokens, source_tokens, hook, n_index, metric, ablation=None):
    """One full forward per unit, replacing activation[..., i] with the source run's."""
    _, src = model.run_with_cache(source_tokens)
    out = []
    for i in range(n_index) if isinstance(n_index, int) else n_index:
        def fn(act, hook, i=i, name=hook):
            act = act.clone()
            act[:, :, i] = 0 if ablation == "zero" else src[name][:, :, i]
            return act

        logits = model.run_with_hooks(base_tokens, fwd_hooks=[(hook, fn)])
        out.append(metric(logits).item())
    return torch.tensor(out)


@pytest.fixture(scope="module")
def pair(tiny_model):
    cb = prepare(tiny_model, CLEAN, N)
    xb = prepare(tiny_model, CORR, N)
    _, cache = tiny_model.run_with_cache(cb.tokens)
    return cb, xb, cache


def test_heads_equal_transformer_lens(tiny_model, pair):
    cb, xb, cache = pair
    ref = tlp.get_act_patch_attn_head_out_all_pos(tiny_model, xb.tokens, cache, peer_metric(tiny_model, cb.tokens))
    df = patch(tiny_model, CLEAN, CORR, unit="head", n_tokens=N, progress=False)
    ours = torch.tensor(df.value.values).view(ref.shape)
    assert torch.allclose(ours, ref.double(), atol=ATOL), (ours - ref).abs().max()
    assert list(df.columns[:2]) == ["layer", "head"]


def test_heads_by_position_equal_transformer_lens(tiny_model, pair):
    cb, xb, cache = pair
    ref = tlp.get_act_patch_attn_head_out_by_pos(tiny_model, xb.tokens, cache, peer_metric(tiny_model, cb.tokens))
    df = patch(tiny_model, CLEAN, CORR, unit="head", positions=range(N), per_position=True, n_tokens=N, progress=False)
    ours = torch.tensor(df.sort_values(["layer", "pos", "head"]).value.values).view(ref.shape)
    assert torch.allclose(ours, ref.double(), atol=ATOL)


@pytest.mark.parametrize(("unit", "peer"), [("mlp", tlp.get_act_patch_mlp_out), ("resid", tlp.get_act_patch_resid_pre),
                                            ("attn", tlp.get_act_patch_attn_out)])
def test_layer_units_by_position_equal_transformer_lens(tiny_model, pair, unit, peer):
    cb, xb, cache = pair
    ref = peer(tiny_model, xb.tokens, cache, peer_metric(tiny_model, cb.tokens))  # [layer, pos]
    df = patch(tiny_model, CLEAN, CORR, unit=unit, positions=range(N), per_position=True, n_tokens=N, progress=False)
    ours = torch.tensor(df.sort_values(["layer", "pos"]).value.values).view(ref.shape)
    assert torch.allclose(ours, ref.double(), atol=ATOL)


@pytest.mark.parametrize(("unit", "hook", "axis"), [("k", "attn.hook_k", "kv"), ("v", "attn.hook_v", "kv"),
                                                     ("q", "attn.hook_q", "q"), ("neuron", "mlp.hook_post", "mlp")])
def test_other_units_equal_a_plain_hook_loop(tiny_model, pair, unit, hook, axis):
    """GQA key/value heads (where TransformerLens's own k/v patching breaks) and neurons."""
    cb, xb, _ = pair
    cfg = tiny_model.cfg
    n = {"kv": getattr(cfg, "n_key_value_heads", None) or cfg.n_heads, "q": cfg.n_heads, "mlp": cfg.d_mlp}[axis]
    df = patch(tiny_model, CLEAN, CORR, unit=unit, n_tokens=N, progress=False)
    assert len(df) == cfg.n_layers * n
    # every head; for neurons an evenly spread sample (a full forward each is slow)
    idx = list(range(n)) if axis != "mlp" else list(range(0, n, 7))
    for layer in range(cfg.n_layers):
        ref = naive_loop(tiny_model, xb.tokens, cb.tokens, f"blocks.{layer}.{hook}", idx,
                         peer_metric(tiny_model, cb.tokens))
        ours = torch.tensor(df[df.layer == layer].value.values[idx])
        assert torch.allclose(ours, ref.double(), atol=ATOL)


def test_noising_and_normalisation(tiny_model, pair):
    cb, xb, cache = pair
    df = patch(tiny_model, CLEAN, CORR, unit="resid", direction="noise", n_tokens=N, progress=False)
    # Replacing the whole residual stream with the corrupted one reproduces the corrupted run.
    assert torch.allclose(torch.tensor(df.value.values), torch.tensor(df.attrs["corrupted"]).double(), atol=ATOL)
    den = patch(tiny_model, CLEAN, CORR, unit="resid", n_tokens=N, progress=False)
    assert torch.allclose(torch.tensor(den.value.values), torch.tensor(den.attrs["clean"]).double(), atol=ATOL)
    gap = abs(den.attrs["clean"] - den.attrs["corrupted"])  # small on random models: scale the check
    assert den.normalized.sub(1).abs().max() < ATOL / gap and df.normalized.abs().max() < ATOL / gap


def test_batched_interventions_equal_one_at_a_time(tiny_model):
    one = patch(tiny_model, CLEAN, CORR, unit="head", n_tokens=N, batch_size=1, progress=False)
    many = patch(tiny_model, CLEAN, CORR, unit="head", n_tokens=N, batch_size=3, progress=False)
    assert torch.allclose(torch.tensor(one.value.values), torch.tensor(many.value.values), atol=ATOL)
    assert one.attrs["per_prompt"].shape == (len(one), len(CLEAN))


def test_zero_ablation_equals_a_plain_hook_loop(tiny_model):
    pb = prepare(tiny_model, CLEAN, N)
    df = ablate(tiny_model, CLEAN, unit="head", kind="zero", metric="logprob", n_tokens=N, progress=False)
    ref = naive_loop(tiny_model, pb.tokens, pb.tokens, "blocks.1.attn.hook_z", tiny_model.cfg.n_heads,
                     peer_metric(tiny_model, pb.tokens), ablation="zero")
    assert torch.allclose(torch.tensor(df[df.layer == 1].value.values), ref.double(), atol=ATOL)


def test_ablation_kinds_and_kl(tiny_model):
    for kind in ("zero", "mean", "resample"):
        df = ablate(tiny_model, CLEAN + CORR, unit="mlp", kind=kind, n_tokens=N, progress=False)
        assert (df.value >= -1e-6).all() and df.attrs["baseline"] == pytest.approx(0, abs=1e-6)
    # mean-ablating with the prompts' own per-position mean over one prompt is a no-op
    one = ablate(tiny_model, CLEAN[:1], unit="resid", kind="mean", n_tokens=N, progress=False)
    assert one.value.max() > 0  # the mean is over positions too, so it changes the run


def test_bad_input_errors(tiny_model):
    with pytest.raises(ValueError, match=r"layer\(s\) \[99\] do not exist"):
        patch(tiny_model, CLEAN, CORR, layers=[99], n_tokens=N)
    with pytest.raises(cnb.PromptSetError, match="differ in size"):
        patch(tiny_model, CLEAN, CORR[:2], n_tokens=N)
    with pytest.raises(cnb.PromptSetError, match="different token lengths"):
        patch(tiny_model, ["a"], ["int main() { return 0; }"], n_tokens=N)
    with pytest.raises(ValueError, match="unknown unit 'heads'"):
        patch(tiny_model, CLEAN, CORR, unit="heads", n_tokens=N)
    with pytest.raises(ValueError, match="unknown metric"):
        patch(tiny_model, CLEAN, CORR, metric="accuracy", n_tokens=N)
    with pytest.raises(ValueError, match="direction must be"):
        patch(tiny_model, CLEAN, CORR, direction="sideways", n_tokens=N)
    with pytest.raises(ValueError, match="unknown ablation kind"):
        ablate(tiny_model, CLEAN, kind="noise", n_tokens=N)
    with pytest.raises(cnb.PromptSetError, match="empty"):
        ablate(tiny_model, [], n_tokens=N)


def test_nonfinite_metric_is_reported(tiny_model):
    def bad(logits, batch):
        v = logits[:, 0, 0].float()
        v[0] = float("nan")
        return v

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        df = patch(tiny_model, CLEAN, CORR, unit="mlp", metric=bad, n_tokens=N, progress=False)
    assert any("non-finite" in str(x.message) for x in w)
    assert (df.n_nonfinite == 1).all() and df.value.notna().all()


def test_neuron_and_mlp_edits_skip_their_block(tiny_model):
    """The MLP fast path (edit added after the block's MLP) is taken on both architectures,
    and stacking neurons equals one at a time (the plain-loop equality is tested above)."""
    from causal_nb.engine.replay import _mlp_fast_path, capture

    pb = prepare(tiny_model, CLEAN, N)
    cap = capture(tiny_model, pb.tokens, ["blocks.0.mlp.hook_post"])
    assert _mlp_fast_path(tiny_model, cap, 0, neurons=True)
    one = ablate(tiny_model, CLEAN, unit="neuron", kind="mean", layers=[1], n_tokens=N, progress=False)
    many = ablate(tiny_model, CLEAN, unit="neuron", kind="mean", layers=[1], n_tokens=N, batch_size=5, progress=False)
    assert torch.allclose(torch.tensor(one.value.values), torch.tensor(many.value.values), atol=ATOL)
    assert one.value.max() > 0


def test_stack_size_follows_the_memory_budget(tiny_model):
    from types import SimpleNamespace

    from causal_nb.engine.replay import copy_bytes, stack_size

    # CPU: no stacking where the rows at the unembedding already fill a weight read (16 x 63)...
    assert stack_size(tiny_model, 16, 64, 63, 8) == 1
    # ...but few rows per read (one scored position of 2 prompts) are stacked up to 256 rows
    assert stack_size(tiny_model, 2, 64, 1, 8) == 8  # one layer's units at most
    assert stack_size(tiny_model, 2, 64, 1, 500) == 64
    assert stack_size(tiny_model, 4, 64, 16, 500) == 4
    assert stack_size(tiny_model, 16, 64, 63, 8, requested=3) == 3
    per = copy_bytes(tiny_model, 16, 64, 63)
    assert stack_size(tiny_model, 16, 64, 63, 8, memory_budget_mb=per * 2.5 / 2**20) == 2
    assert stack_size(tiny_model, 16, 64, 63, 8, memory_budget_mb=1e6) == 8  # at most one layer's units
    assert stack_size(tiny_model, 16, 64, 63, 8, memory_budget_mb=1e-3) == 1
    # a Llama-3.2-1B shape in bf16 on a 24 GB card (half of it budgeted): several passes per layer
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.bfloat16))
    big = SimpleNamespace(cfg=SimpleNamespace(d_model=2048, d_head=64, n_heads=32, n_key_value_heads=8, d_mlp=8192,
                                              d_vocab=128256), parameters=lambda: iter([p]))
    k = stack_size(big, 16, 64, 63, 32, memory_budget_mb=12 * 1024)
    assert 1 < k < 32 and k * copy_bytes(big, 16, 64, 63) <= 12 * 2**30


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bf16_engine_tracks_fp32(tiny_dirs, arch):
    """The GPU path runs in bf16: on CPU the same code gives the fp32 ranking, and stacking
    several interventions in one pass changes nothing beyond bf16 rounding."""
    from scipy import stats

    from causal_nb.engine.replay import _head_fast_path, _mlp_fast_path, capture

    fp32 = cnb.load_model(tiny_dirs[arch], device="cpu")
    bf16 = cnb.load_model(tiny_dirs[arch], device="cpu", dtype="bf16")
    cap = capture(bf16, prepare(bf16, CLEAN, N).tokens, ["blocks.0.attn.hook_z", "blocks.0.mlp.hook_post"])
    assert _head_fast_path(bf16, cap, 0) and _mlp_fast_path(bf16, cap, 0, neurons=True)  # checks allow bf16 rounding
    for unit in ("head", "neuron"):
        a = patch(fp32, CLEAN, CORR, unit=unit, n_tokens=N, progress=False).value.to_numpy()
        b = patch(bf16, CLEAN, CORR, unit=unit, n_tokens=N, progress=False).value.to_numpy()
        c = patch(bf16, CLEAN, CORR, unit=unit, n_tokens=N, batch_size=4, progress=False).value.to_numpy()
        assert np.isfinite(b).all() and np.abs(b - c).max() <= 0.02 * np.abs(a).max()
        spread = a.max() - a.min()
        assert np.abs(a - b).max() <= 0.1 * spread + 0.02 * np.abs(a).max(), (arch, unit)
        if unit == "head":
            assert stats.spearmanr(a, b)[0] > 0.8


def test_cpu_auto_stacking_gives_the_unstacked_numbers(tiny_model):
    """Few scored rows: the CPU default stacks neurons (one unembedding read per stack) and
    must give what one intervention per pass gives, to float32 rounding."""
    from causal_nb.engine.replay import stack_size

    prompts = ["def f(x): return x + 1", "int main() { return 0; }"]
    assert stack_size(tiny_model, 2, 8, 1, tiny_model.cfg.d_mlp) > 1  # the default path stacks here
    kw = {"unit": "neuron", "kind": "zero", "metric": "logprob", "scored_positions": [5], "n_tokens": 8,
          "progress": False}
    auto = cnb.ablate(tiny_model, prompts, **kw)
    one = cnb.ablate(tiny_model, prompts, batch_size=1, **kw)
    assert len(auto) == tiny_model.cfg.n_layers * tiny_model.cfg.d_mlp
    np.testing.assert_allclose(auto.value.values, one.value.values, rtol=0, atol=1e-5)
    assert auto.value.std() > 1e-4  # the neurons differ: not a constant table
