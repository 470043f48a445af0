"""Per-prompt views and the live widgets' callbacks, on tiny models, without a browser.

The head effects are checked against the engine's ablation (an independent code path) and the
sparsity explorer against ``prune(physical=False)`` + ``evaluate``."""

import numpy as np
import pandas as pd
import pytest
import torch

import causal_nb as cnb
from causal_nb import views, widgets
from causal_nb.engine.common import prepare

TEXTS = ["def add(a, b): return a + b and more text", "class Point: def __init__(self): pass ok",
         "x = [i for i in y if i] + [0] * 3 end", "import os, sys; print(os.getcwd()) done"]
OTHER = ["int main() { return 0; } // xx yy z q", "std::vector<int> v; v.push_back(1); ok",
         "#include <map> template <class T> ok"]
N_TOK = 12


def _one(model, text):
    b = prepare(model, [text], N_TOK)
    return b, int(b.mask[0].sum())


def test_no_heads_is_no_change_and_base_is_the_models_logprob(tiny_model):
    e = views.head_effect(tiny_model, TEXTS[0], [], n_tokens=N_TOK)
    assert np.all(e.delta == 0) and e.metric_change == 0
    b, n = _one(tiny_model, TEXTS[0])
    lp = torch.log_softmax(tiny_model(b.tokens[:, :n], return_type="logits").float(), -1)[0]
    want = lp[torch.arange(n - 1), b.tokens[0, 1:n]].detach().double().numpy()
    np.testing.assert_allclose(e.base, want, atol=1e-6)
    assert len(e.tokens) == n and e.frame().shape[0] == n - 1


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_single_head_effect_equals_engine_ablation(tiny_model, kind):
    # ablate(metric="logprob") is the mean next-token log-prob with one head replaced, computed by
    # the engine's replay path; head_effect runs a plain hooked forward.
    text = TEXTS[1]
    b, n = _one(tiny_model, text)
    ref = cnb.ablate(tiny_model, cnb.PromptSet.from_texts([text]), unit="head", kind=kind, metric="logprob",
                     n_tokens=n, progress=False)
    means = views.head_means(tiny_model, prepare(tiny_model, [text], n))
    for row in ref.itertuples():
        e = views.head_effect(tiny_model, text, [(row.layer, row.head)], kind, means=means, n_tokens=N_TOK)
        assert e.new.mean() == pytest.approx(row.value, abs=1e-5)


def test_patch_uses_source_means_and_several_heads_compose(tiny_model):
    src = views.head_means(tiny_model, OTHER, N_TOK)
    mine = views.head_means(tiny_model, TEXTS, N_TOK)
    assert src.shape == (tiny_model.cfg.n_layers, tiny_model.cfg.n_heads, tiny_model.cfg.d_head)
    heads = [(0, 1), (1, 0)]
    patched = views.head_effect(tiny_model, TEXTS[0], heads, "patch", source_means=src, n_tokens=N_TOK)
    # patching with the source means is mean-replacement with those means
    same = views.head_effect(tiny_model, TEXTS[0], heads, "mean", means=src, n_tokens=N_TOK)
    np.testing.assert_allclose(patched.new, same.new, atol=1e-6)
    other = views.head_effect(tiny_model, TEXTS[0], heads, "mean", means=mine, n_tokens=N_TOK)
    assert not np.allclose(patched.new, other.new, atol=1e-4)
    one = views.head_effect(tiny_model, TEXTS[0], heads[:1], "patch", source_means=src, n_tokens=N_TOK)
    assert not np.allclose(one.new, patched.new, atol=1e-5)
    # promoted tokens are sorted by change and really are the largest mean changes
    assert list(patched.promoted.change) == sorted(patched.promoted.change, reverse=True)
    assert list(patched.demoted.change) == sorted(patched.demoted.change)
    assert patched.top_tokens().shape[0] == len(patched.promoted)


def test_bad_heads_and_kinds_are_clear(tiny_model):
    with pytest.raises(ValueError, match="does not exist"):
        views.head_effect(tiny_model, TEXTS[0], [(9, 0)], n_tokens=N_TOK)
    with pytest.raises(ValueError, match="unknown intervention"):
        views.head_effect(tiny_model, TEXTS[0], [(0, 0)], "nope", n_tokens=N_TOK)
    with pytest.raises(ValueError, match="source_means"):
        views.head_effect(tiny_model, TEXTS[0], [(0, 0)], "patch", n_tokens=N_TOK)
    assert views.parse_heads(" L1H3, l0h2 ") == [(1, 3), (0, 2)]
    with pytest.raises(ValueError, match="L<layer>H<head>"):
        views.parse_heads("L1-3")


def test_attention_patterns_match_the_cache(tiny_model):
    b, n = _one(tiny_model, TEXTS[2])
    p = views.attention_patterns(tiny_model, TEXTS[2], [(1, 2), (0, 0)], N_TOK)
    _, cache = tiny_model.run_with_cache(b.tokens[:, :n])
    torch.testing.assert_close(p[0], cache["blocks.1.attn.hook_pattern"][0, 2].detach().float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(p[1], cache["blocks.0.attn.hook_pattern"][0, 0].detach().float(), atol=1e-6, rtol=0)
    fig, df = cnb.plotting.attention_heatmap(p, views.token_strings(tiny_model, b.tokens[0, :n].tolist()),
                                             [(1, 2), (0, 0)])
    assert list(df["head"]) == [2, 0] and len(fig.data) == 2
    q = torch.arange(1, n)
    assert df.prev_token[0] == pytest.approx(float(p[0][q, q - 1].mean()), abs=1e-4)


def test_continuation_is_greedy(tiny_model):
    b, n = _one(tiny_model, TEXTS[3])
    text, toks = views.continuation(tiny_model, TEXTS[3], n_new=3, n_tokens=N_TOK)
    first = int(tiny_model(b.tokens[:, :n], return_type="logits")[0, -1].argmax())
    assert len(toks) == 3 and toks[0] == tiny_model.tokenizer.decode([first])
    df = views.domain_outputs(tiny_model, {"py": cnb.PromptSet.from_texts(TEXTS, "py")}, n_prompts=2, n_new=2,
                              n_tokens=N_TOK)
    assert list(df.domain) == ["py", "py"] and df.loss.notna().all()


def test_token_html_escapes_and_checks_lengths():
    h = views.token_html(["<a>", " b"], [-1.0, 0.5])
    assert "&lt;a&gt;" in h and "rgba(214,39,40,1.00)" in h and "rgba(31,119,180,0.50)" in h
    with pytest.raises(ValueError, match="2 tokens but 1 values"):
        views.token_html(["a", "b"], [1.0])


def test_head_explorer_callbacks_update_in_place(tiny_model):
    hx = widgets.HeadExplorer(tiny_model, TEXTS, source=OTHER, n_tokens=N_TOK, top_k=3)
    assert hx.effect.heads == () and np.all(hx.token_fig.data[0].y == np.zeros(len(hx.effect.delta)))
    n0 = len(hx.history)
    e = hx.toggle(1, 2)  # as a click on the L1H2 button
    assert hx.buttons[(1, 2)].value and hx.selected == {(1, 2)} and e.heads == ((1, 2),)
    assert len(hx.history) == n0 + 1  # one update per action, not two
    np.testing.assert_allclose(hx.token_fig.data[0].y, np.round(e.delta, 6))
    assert f"{e.metric_change:+.4f}" in hx.summary.value and "L1H2" in hx.summary.value
    assert list(hx.vocab_fig.data[0].x) == list(np.round(e.promoted.change, 6))
    want = views.head_effect(tiny_model, TEXTS[0], [(1, 2)], "zero", n_tokens=N_TOK)
    np.testing.assert_allclose(e.new, want.new, atol=1e-6)
    # clicking the button itself goes through the same path
    hx.buttons[(0, 1)].value = True
    zeroed = hx.effect
    assert zeroed.heads == ((0, 1), (1, 2))
    e2 = hx.set_kind("patch")
    assert e2.kind == "patch" and e2.heads == zeroed.heads and not np.allclose(e2.new, zeroed.new, atol=1e-5)
    e3 = hx.set_prompt(2)
    assert e3.tokens[1:] != e2.tokens[1:]
    cleared = hx.clear()
    assert cleared.heads == () and not any(b.value for b in hx.buttons.values())
    with pytest.raises(ValueError, match="valid here"):
        hx.set_kind("resample")
    with pytest.raises(ValueError, match="out of range"):
        hx.set_prompt(99)
    with pytest.raises(ValueError, match="does not exist"):
        hx.toggle(0, 99)
    assert "application/vnd.jupyter.widget-view+json" in hx._repr_mimebundle_()


def test_head_explorer_without_source_offers_no_patch(tiny_model):
    hx = widgets.HeadExplorer(tiny_model, TEXTS[:2], n_tokens=N_TOK)
    assert "patch" not in hx.kind_w.options


def _scores(model, seed):
    rng = np.random.default_rng(seed)
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    return pd.DataFrame({"layer": np.repeat(np.arange(n_l), n_h), "head": np.tile(np.arange(n_h), n_l),
                         "score": rng.random(n_l * n_h)})


def test_sparsity_explorer_matches_masked_pruning(tiny_model):
    scores = {"a": _scores(tiny_model, 0), "b": _scores(tiny_model, 1)}
    sx = widgets.SparsityExplorer(tiny_model, scores, TEXTS, n_tokens=N_TOK)
    assert sx.quality_at("a", 0.0) == pytest.approx(0.0, abs=1e-6)
    q = sx.set_sparsity("a", 0.5)
    assert sx.sliders["a"].value == 0.5 and sx.fig.data[0].y[0] == pytest.approx(q, abs=1e-6)
    assert sx.fig.data[0].y[1] == pytest.approx(0.0, abs=1e-6)  # b untouched
    pruned = cnb.prune(tiny_model, scores["a"], 0.5, physical=False)
    ref = cnb.evaluate(pruned, TEXTS, full_model=tiny_model, n_tokens=N_TOK, latency_batches=())
    assert q == pytest.approx(ref["kl"], abs=1e-5) and q > 0
    t = sx.table()
    assert list(t.metric) == ["a", "b"] and t.sparsity.tolist() == [0.5, 0.0]
    with pytest.raises(ValueError, match="unknown metric"):
        sx.set_sparsity("c", 0.1)
    with pytest.raises(ValueError, match="needs scores of 'head' units, but this table scores neurons"):
        widgets.SparsityExplorer(tiny_model, {"n": pd.DataFrame({"layer": [0], "neuron": [0], "score": [1.0]})}, TEXTS)
