"""Each importance method against a value computed by hand on a tiny model."""

import numpy as np
import pytest
import torch

import causal_nb as cnb
from causal_nb.engine.common import prepare

P = ["def add(a, b): return a + b and more", "class Point: def __init__(self)", "int main() { return 0; } // xx"]
N = 8


@pytest.fixture(scope="module")
def llama(tiny_dirs):
    return cnb.load_model(tiny_dirs["llama"], device="cpu")


def per_prompt_loss(model, tokens, fwd_hooks=()):
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tokens[:, 1:, None])[..., 0]
    return -lp.mean(1)


def test_magnitude_of_heads_from_the_hf_weights(llama):
    hf = llama.original_model if hasattr(llama, "original_model") else None
    cfg = llama.cfg
    dh, group = cfg.d_head, cfg.n_heads // cfg.n_key_value_heads
    df = cnb.score(llama, P, "magnitude", unit="head")
    layers = hf.model.layers
    for layer in range(cfg.n_layers):
        att = layers[layer].self_attn
        for h in range(cfg.n_heads):
            g = h // group
            q = att.q_proj.weight[h * dh : (h + 1) * dh].norm()
            o = att.o_proj.weight[:, h * dh : (h + 1) * dh].norm()
            k = att.k_proj.weight[g * dh : (g + 1) * dh].norm()
            v = att.v_proj.weight[g * dh : (g + 1) * dh].norm()
            want = (q + o + (k + v) / group).item()
            got = df[(df.layer == layer) & (df["head"] == h)].score.item()
            assert got == pytest.approx(want, rel=1e-5)


def test_magnitude_of_neurons_includes_the_gate(llama):
    hf = llama.original_model
    df = cnb.score(llama, P, "magnitude", unit="neuron")
    mlp = hf.model.layers[1].mlp
    i = 5
    want = (mlp.up_proj.weight[i].norm() + mlp.down_proj.weight[:, i].norm() + mlp.gate_proj.weight[i].norm()).item()
    assert df[(df.layer == 1) & (df.neuron == i)].score.item() == pytest.approx(want, rel=1e-5)
    mlp_df = cnb.score(llama, P, "magnitude", unit="mlp")
    assert mlp_df.score.iloc[1] == pytest.approx(df[df.layer == 1].score.sum(), rel=1e-5)


def test_magnitude_and_duplication_on_a_physically_pruned_model(tiny_dirs):
    """Layers of a physically pruned GPT-2 keep different head and neuron counts: magnitude
    reads each layer's own weights (checked against the sliced HF matrices)."""
    gpt2 = cnb.load_model(tiny_dirs["gpt2"], device="cpu")
    pruned = cnb.prune_units(gpt2, heads={0: [0, 1, 2]}, neurons={1: list(range(10))}, physical=True)
    df = cnb.score(pruned, P, "magnitude", unit="head")
    assert list(df.groupby("layer").size()) == [1, 4]
    att = pruned.original_model.transformer.h[0].attn
    d, dh = att.c_attn.weight.shape[0], gpt2.cfg.d_head
    w = att.c_attn.weight  # Conv1D [d_model, 3 * kept * d_head]: q, k, v blocks of the kept head
    want = sum(w[:, i * dh : (i + 1) * dh].norm() for i in range(3)) + att.c_proj.weight[:dh].norm()
    assert w.shape[1] == 3 * dh and d == gpt2.cfg.d_model
    assert df.score.iloc[0] == pytest.approx(want.item(), rel=1e-5)
    assert len(cnb.score(pruned, P, "magnitude", unit="neuron")) == 64 + 54
    assert len(cnb.score(pruned, P, "duplication", unit="head", n_tokens=N)) == 5


@pytest.mark.parametrize("method", ["taylor", "fisher"])
def test_gradient_methods_equal_the_head_mask_gradient(tiny_model, method):
    """dL/dm for a scalar mask m on one head's output, per prompt, by autograd (Michel et al.)."""
    df = cnb.score(tiny_model, P, method, unit="head", n_tokens=N)
    tokens = prepare(tiny_model, P, N).tokens
    layer, h = 1, 2
    grads = []
    for b in range(len(P)):
        m = torch.ones((), requires_grad=True)

        def mask(act, hook, m=m):
            scale = torch.ones(act.shape[2])
            scale = torch.where(torch.arange(act.shape[2]) == h, m, scale)
            return act * scale[None, None, :, None]

        loss = per_prompt_loss(tiny_model, tokens[b : b + 1], [(f"blocks.{layer}.attn.hook_z", mask)])[0]
        grads.append(torch.autograd.grad(loss, m)[0].item())
    g = np.array(grads)
    want = np.abs(g).mean() if method == "taylor" else (g**2).mean()
    got = df[(df.layer == layer) & (df["head"] == h)].score.item()
    assert got == pytest.approx(want, rel=1e-4, abs=1e-10)
    assert df.attrs["per_prompt"].shape == (len(df), len(P))


def test_zero_ablation_kl_by_hand(tiny_model):
    df = cnb.score(tiny_model, P, "ablation", unit="mlp", kind="zero", n_tokens=N)
    tokens = prepare(tiny_model, P, N).tokens
    base = torch.log_softmax(tiny_model(tokens)[:, :-1].float(), -1)
    abl = tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, hook: torch.zeros_like(a))])
    lp = torch.log_softmax(abl[:, :-1].float(), -1)
    kl = (base.exp() * (base - lp)).sum(-1).mean(1).mean().item()
    assert df.score.iloc[0] == pytest.approx(kl, rel=1e-4)


def test_activation_norm_by_hand(tiny_model):
    df = cnb.score(tiny_model, P, "activation", unit="head", n_tokens=N)
    tokens = prepare(tiny_model, P, N).tokens
    _, cache = tiny_model.run_with_cache(tokens)
    z = cache["blocks.0.attn.hook_z"][:, :, 1]  # [batch pos d_head]
    want = (z @ tiny_model.W_O[0, 1]).norm(dim=-1).mean().item()  # all positions real here
    assert df[(df.layer == 0) & (df["head"] == 1)].score.item() == pytest.approx(want, rel=1e-5)


def patching_reference(model):
    """One forward per head with the clean run's hook_z slice replaced by the corrupted run's,
    log-probabilities by hand: [head, prompt] damage = clean logprob - patched logprob."""
    from plain_refs import hand_logprob, head_edits, hook_loop, plain_tokens

    clean, mask = plain_tokens(model, P, N)
    corr, _ = plain_tokens(model, X, N)
    with torch.no_grad():
        _, cache = model.run_with_cache(corr)
        base = hand_logprob(model(clean), clean, mask)
    patched = hook_loop(model, clean, head_edits(model, cache), lambda lg: hand_logprob(lg, clean, mask))
    want = (base[None] - patched).numpy()
    assert np.abs(want).max() > 1e-4  # the heads matter, so the comparison means something
    return want


X = ["int main() { return 0; } // xx yy z", "std::vector<int> v; v.push_back(1)", "x = [i for i in y]"]


def test_patching_score_is_the_metric_drop(tiny_model):
    s = cnb.score(tiny_model, P, "patching", unit="head", corrupted=X, n_tokens=N)
    assert np.allclose(s.score, patching_reference(tiny_model).mean(1), atol=1e-5)


def test_patching_score_per_prompt_is_each_prompts_drop(tiny_model):
    s = cnb.score(tiny_model, P, "patching", unit="head", corrupted=X, n_tokens=N)
    assert np.allclose(s.attrs["per_prompt"].to_numpy(), patching_reference(tiny_model), atol=1e-5)


def test_ablation_score_per_prompt_with_the_loss_metric(tiny_model):
    """Each prompt's damage is its own loss rise (the baseline is that prompt's, not the mean)."""
    s = cnb.score(tiny_model, P, "ablation", unit="mlp", kind="zero", metric="loss", n_tokens=N)
    tokens = prepare(tiny_model, P, N).tokens

    def loss(lg):
        return -torch.log_softmax(lg[:, :-1].float(), -1).gather(-1, tokens[:, 1:, None])[..., 0].mean(1)

    with torch.no_grad():
        base = loss(tiny_model(tokens))
        abl = loss(tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out",
                                                                 lambda a, hook: torch.zeros_like(a))]))
    assert (base - base.mean()).abs().max() > 1e-3  # prompts differ, so a mean baseline would show
    assert np.allclose(s.attrs["per_prompt"].to_numpy()[1], (abl - base).numpy(), atol=1e-5)


def test_random_is_seeded_and_names_are_checked(tiny_model):
    a = cnb.score(tiny_model, P, "random", unit="neuron", seed=3)
    assert a.score.equals(cnb.score(tiny_model, P, "random", unit="neuron", seed=3).score)
    assert not a.score.equals(cnb.score(tiny_model, P, "random", unit="neuron", seed=4).score)
    with pytest.raises(ValueError, match=r"unknown method 'wanda'; valid methods: \['ablation'"):
        cnb.score(tiny_model, P, "wanda")
    with pytest.raises(ValueError, match="unknown unit 'layer'; valid units"):
        cnb.score(tiny_model, P, "random", unit="layer")
    with pytest.raises(ValueError, match="needs corrupted prompts"):
        cnb.score(tiny_model, P, "patching")
    with pytest.raises(ValueError, match="needs a source input"):
        cnb.score(tiny_model, P, "eap-ig", n_tokens=N)


def test_absolute_attribution_is_the_mean_of_per_prompt_magnitudes(tiny_model):
    signed = cnb.score(tiny_model, P, "attribution", unit="head", kind="zero", n_tokens=N)
    absolute = cnb.score(tiny_model, P, "attribution-abs", unit="head", kind="zero", n_tokens=N)
    per = signed.attrs["per_prompt"].to_numpy()
    assert np.allclose(absolute.score, np.abs(per).mean(1))
    assert np.allclose(absolute.attrs["per_prompt"].to_numpy(), np.abs(per))
    assert (absolute.score >= signed.score.abs() - 1e-12).all()


@pytest.mark.parametrize("method", ["ablation", "attribution", "attribution-abs", "taylor", "fisher", "magnitude",
                                    "activation", "random"])
def test_a_layer_subset_scores_those_layers_as_the_whole_model_run_does(llama, method):
    """``layers=`` (exact neuron ablation of a real model on a layer sample) must give each
    unit the score it gets when every layer is scored, and say which layers it covers."""
    full = cnb.score(llama, P, method, unit="neuron", n_tokens=N)
    part = cnb.score(llama, P, method, unit="neuron", n_tokens=N, layers=[1])
    assert part.attrs["layers"] == [1] and set(part.layer) == {1}
    want = full[full.layer == 1].reset_index(drop=True)
    np.testing.assert_allclose(part.score.to_numpy(), want.score.to_numpy(), rtol=1e-5, atol=1e-7)
    assert part.neuron.tolist() == want.neuron.tolist()
    if "per_prompt" in full.attrs:
        np.testing.assert_allclose(part.attrs["per_prompt"].to_numpy(), full.attrs["per_prompt"].to_numpy()[want.index
                                   + int((full.layer < 1).sum())], rtol=1e-5, atol=1e-7)


def test_a_layer_subset_is_refused_where_it_cannot_be_used(llama, tmp_path):
    part = cnb.score(llama, P, "magnitude", unit="head", layers=[0])
    with pytest.raises(ValueError, match=r"cover layers \[0\] only"):
        cnb.prune(llama, part, 0.5)
    # the subset survives a save and a load, and is still refused
    path = cnb.save_scores(part, tmp_path, llama, "python")
    with pytest.raises(ValueError, match=r"cover layers \[0\] only"):
        cnb.prune(llama, cnb.load_scores(path), 0.5)
    with pytest.raises(ValueError, match="acdc.*every layer"):
        cnb.score(llama, P, "acdc", unit="head", layers=[0])
    with pytest.raises(ValueError, match="do not exist"):
        cnb.score(llama, P, "magnitude", unit="head", layers=[7])


def test_score_methods_routes_options_to_the_methods_that_read_them(tiny_model, tmp_path):
    """corrupted= reaches patching only (magnitude would refuse it), options go to their method,
    each table equals its own score call, and each is saved where save_scores puts it."""
    got = cnb.score_methods(tiny_model, P, ["patching", "magnitude", "ablation"], unit="head", corrupted=X,
                            n_tokens=N, options={"ablation": {"kind": "zero"}}, save_to=tmp_path, domain="python")
    assert list(got) == ["patching", "magnitude", "ablation"]
    want = {"patching": cnb.score(tiny_model, P, "patching", unit="head", corrupted=X, n_tokens=N),
            "magnitude": cnb.score(tiny_model, P, "magnitude", unit="head", n_tokens=N),
            "ablation": cnb.score(tiny_model, P, "ablation", unit="head", kind="zero", n_tokens=N)}
    for m, df in got.items():
        assert np.allclose(df.score, want[m].score, atol=1e-9), m
        saved = cnb.load_scores(cnb.scores_path(tmp_path, tiny_model.causal_nb_source["name"], "python", m, "head"))
        assert np.allclose(saved.score, df.score, atol=1e-8)
    assert got["ablation"].attrs["kind"] == "zero" and got["patching"].attrs.get("kind") != "zero"
    with pytest.raises(TypeError, match="unknown keyword"):
        cnb.score_methods(tiny_model, P, ["magnitude"], n_token=N)
    with pytest.raises(ValueError, match="not in methods"):
        cnb.score_methods(tiny_model, P, ["magnitude"], options={"acdc": {"threshold": 0.1}})
    with pytest.raises(ValueError, match="go together"):
        cnb.score_methods(tiny_model, P, ["magnitude"], save_to=tmp_path)
