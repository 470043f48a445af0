"""ACDC-style pruning against a plain full-forward greedy loop, and against masked pruning."""

import numpy as np
import pytest
import torch

import causal_nb as cnb
from causal_nb.analyses.acdc import acdc, acdc_scores
from causal_nb.engine.common import prepare, scored_batch
from causal_nb.pruning.structure import prune_units

TEXTS = ["def add(a, b): return a + b and more", "class Point: def __init__(self): pass",
         "x = [i for i in y if i] + [0] * 3", "import os, sys; print(os.getcwd())"]
N_TOK = 12


def naive_acdc(model, texts, tau, kind, floor=1):
    """Greedy late-to-early walk with a full forward per test (no replay, no engine)."""
    pb = prepare(model, texts, N_TOK)
    sb = scored_batch(pb)
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    with torch.no_grad():
        ref = torch.log_softmax(model(pb.tokens, return_type="logits")[:, sb.positions].float(), -1)
        mean = None
        if kind == "mean":
            _, cache = model.run_with_cache(pb.tokens)
            m = pb.mask.float()[..., None, None]
            mean = {la: (cache[f"blocks.{la}.attn.hook_z"] * m).sum((0, 1)) / m.sum((0, 1)) for la in range(n_l)}

    def kl_with(removed):
        hooks = []
        for la in {a for a, _ in removed}:
            hs = [h for a, h in removed if a == la]

            def fn(z, hook, la=la, hs=hs):
                z = z.clone()
                z[:, :, hs] = 0.0 if mean is None else mean[la][hs]
                return z

            hooks.append((f"blocks.{la}.attn.hook_z", fn))
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            lp = torch.log_softmax(model(pb.tokens, return_type="logits")[:, sb.positions].float(), -1)
        kl = (ref.exp() * (ref - lp)).sum(-1)
        valid = sb.valid.float()
        return float(((kl * valid).sum(1) / valid.sum(1)).double().mean())

    removed, current, left = [], 0.0, dict.fromkeys(range(n_l), n_h)
    for la in reversed(range(n_l)):
        for h in reversed(range(n_h)):
            if left[la] <= floor:
                continue
            value = kl_with(removed + [(la, h)])
            if value - current < tau:
                removed.append((la, h))
                left[la] -= 1
                current = value
    return sorted(removed), current


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_acdc_equals_a_plain_greedy_loop(tiny_model, kind):
    taus = [0.0005, 0.005, 0.05]
    df = acdc(tiny_model, TEXTS, taus, unit="head", kind=kind, n_tokens=N_TOK, progress=False)
    for i, tau in enumerate(taus):
        want, kl = naive_acdc(tiny_model, TEXTS, tau, kind)
        got = sorted((la, h) for la, hs in df.attrs["selections"][i].items() for h in hs)
        assert got == want, tau
        assert df.kl[i] == pytest.approx(kl, abs=1e-5)
        assert df.removed[i] == len(want) and df.sparsity[i] == pytest.approx(len(want) / df.units[i])


def test_acdc_selection_prunes_to_the_reported_kl(tiny_model):
    df = acdc(tiny_model, TEXTS, [0.01], unit="head", kind="zero", n_tokens=N_TOK, progress=False)
    sel = df.attrs["selections"][0]
    assert df.removed[0] > 0
    pruned = prune_units(tiny_model, heads=sel, physical=False)
    ev = cnb.evaluate(pruned, TEXTS, full_model=tiny_model, n_tokens=N_TOK, latency_batches=())
    assert ev["kl"] == pytest.approx(df.kl[0], abs=1e-5)


def test_huge_threshold_keeps_only_the_floor_and_zero_keeps_all_that_matter(tiny_model):
    n_l, n_h = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads
    df = acdc(tiny_model, TEXTS, [1e9], n_tokens=N_TOK, progress=False)
    assert df.removed[0] == n_l * (n_h - 1)
    assert all(len(v) == n_h - 1 for v in df.attrs["selections"][0].values())
    df0 = acdc(tiny_model, TEXTS, [0.0], n_tokens=N_TOK, progress=False)
    # at tau = 0 only removals that lower the KL (or leave it exactly) pass
    deltas = np.array(df0.attrs["delta"][0])
    assert df0.removed[0] == int((deltas[np.isfinite(deltas)] < 0).sum())


def test_acdc_scores_rank_every_unit(tiny_model):
    s = acdc_scores(tiny_model, TEXTS, unit="head", kind="zero", threshold=0.01, n_tokens=N_TOK, progress=False)
    assert len(s) == tiny_model.cfg.n_layers * tiny_model.cfg.n_heads and np.isfinite(s.score).all()
    assert (s.score < 0.01).sum() == s.attrs["removed"]
    via_score = cnb.score(tiny_model, TEXTS, "acdc", unit="head", kind="zero", n_tokens=N_TOK, progress=False)
    np.testing.assert_allclose(via_score.score, s.score, atol=1e-9)
    mlp = acdc(tiny_model, TEXTS, [1e9], unit="mlp", n_tokens=N_TOK, progress=False)
    assert mlp.attrs["selections"][0] == list(range(tiny_model.cfg.n_layers))  # no floor for whole MLPs


def test_bad_input_is_named(tiny_model):
    with pytest.raises(ValueError, match="valid"):
        acdc(tiny_model, TEXTS, [0.01], unit="resid", n_tokens=N_TOK)
    with pytest.raises(ValueError, match="'zero' or 'mean'"):
        acdc(tiny_model, TEXTS, [0.01], kind="resample", n_tokens=N_TOK)
    with pytest.raises(ValueError, match="non-negative"):
        acdc(tiny_model, TEXTS, [-1.0], n_tokens=N_TOK)
    with pytest.raises(ValueError, match="every head"):
        prune_units(tiny_model, heads={0: list(range(tiny_model.cfg.n_heads))})
    with pytest.raises(ValueError, match="do not exist"):
        prune_units(tiny_model, heads={0: [99]})


def test_acdc_sweep_evaluates_each_threshold_held_out(tiny_model):
    df = cnb.acdc_sweep(tiny_model, TEXTS, TEXTS[::-1], [0.0, 1e9], n_tokens=N_TOK, progress=False)
    assert list(df.columns[-3:]) == ["eval_kl", "eval_top1", "params"]
    # same prompts (reordered): the held-out KL is the walk's KL; removing heads shrinks the model
    assert df.eval_kl[1] == pytest.approx(df.kl[1], abs=1e-5)
    if tiny_model.cfg.n_key_value_heads is not None:  # GPT-2 heads are zeroed in place, not sliced
        assert df.params[1] < df.params[0]


def held_out_kl(model, train_texts, eval_texts, removed, kind):
    """KL(full || model with ``removed`` heads ablated) on ``eval_texts`` by a plain hook loop:
    zero, or the head's mean output over ``train_texts`` (real positions), as the walk did."""
    n_l = model.cfg.n_layers
    tb, eb = prepare(model, train_texts, N_TOK), prepare(model, eval_texts, N_TOK)
    sb = scored_batch(eb)
    with torch.no_grad():
        _, cache = model.run_with_cache(tb.tokens)
        m = tb.mask.float()[..., None, None]
        mean = {la: (cache[f"blocks.{la}.attn.hook_z"] * m).sum((0, 1)) / m.sum((0, 1)) for la in range(n_l)}
        ref = torch.log_softmax(model(eb.tokens, return_type="logits")[:, sb.positions].float(), -1)
        hooks = []
        for la, hs in removed.items():
            def fn(z, hook, la=la, hs=hs):
                z = z.clone()
                z[:, :, hs] = 0.0 if kind == "zero" else mean[la][hs]
                return z

            hooks.append((f"blocks.{la}.attn.hook_z", fn))
        with model.hooks(fwd_hooks=hooks):
            lp = torch.log_softmax(model(eb.tokens, return_type="logits")[:, sb.positions].float(), -1)
    kl = (ref.exp() * (ref - lp)).sum(-1)
    valid = sb.valid.float()
    return float(((kl * valid).sum(1) / valid.sum(1)).double().mean())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_acdc_sweep_held_out_kl_is_that_of_the_walks_intervention(tiny_model, kind):
    held_out = ["for k, v in d.items(): print(k, v)", "while n > 0: n -= 1; total += n",
                "with open(p) as f: data = f.read()"]
    df = cnb.acdc_sweep(tiny_model, TEXTS, held_out, [0.0, 1e9], kind=kind, n_tokens=N_TOK, progress=False)
    assert df.removed.iloc[-1] > 0
    for sel, got in zip(df.attrs["selections"], df.eval_kl):
        want = held_out_kl(tiny_model, TEXTS, held_out, sel, kind)
        assert got == pytest.approx(want, rel=1e-3, abs=1e-5), (sel, got, want)
