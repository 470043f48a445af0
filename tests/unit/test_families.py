"""Every supported model family, exact: engine == plain hook loop == Hugging Face, masked pruning
== zero-ablation, physical == masked, and a physically pruned model analysed like any other.

Each family is a tiny random-weight model (2 layers, d_model 64, 4 heads) written with
``save_pretrained`` and loaded with ``load_model(folder)``. The Llama-style ones use GQA (2
key/value heads); Qwen3 and Gemma get a head width (32) that is not d_model / n_heads (16), as
real checkpoints of those families do. BLOOM (ALiBi, fused per-head query_key_value), OPT
(learned positions offset by 2; pre-LN: post-LN OPT is refused by name) and GPT-NeoX
(partial rotary; parallel attention + MLP and the sequential variant) are the other
decoders, pruned physically too (BLOOM's sliced layers take their heads' rows of the ALiBi
bias). Weights,
norms and biases are redrawn (``init_std``) so that no norm is the identity.
"""

from types import SimpleNamespace

import pytest
import torch
from plain_refs import hand_logprob, plain_tokens
from plain_refs import hook_loop as plain_loop

import causal_nb as cnb
from causal_nb.engine.common import prepare
from causal_nb.engine.patching import ablate, patch
from causal_nb.evaluation.quality import evaluate
from causal_nb.models import families
from causal_nb.models.families import (
    ANALYSIS_FAMILIES,
    MASKED_ONLY,
    PHYSICAL_FAMILIES,
    UnsupportedModelError,
    check_supported,
)
from causal_nb.models.hf import plain_hf
from causal_nb.pruning.structure import prune_units, save_pruned
from causal_nb.zoo.tiny import make_tiny_model

P = ["def add(a, b): return a + b and more", "class Point: def __init__(self)", "int main() { return 0; } // xx"]
Q = ["x = [i for i in range(10)] # ok", "std::vector<int> v; v.push_back(1)", "The market rose as rates fell."]
N = 8
D, H, DH_WIDE = 64, 4, 32
FAMILIES = {"gpt2": {}, "llama": {"n_kv_heads": 2}, "mistral": {"n_kv_heads": 2}, "qwen2": {"n_kv_heads": 2},
            "qwen3": {"n_kv_heads": 2, "head_dim": DH_WIDE}, "gemma": {"n_kv_heads": 2, "head_dim": DH_WIDE},
            "gemma2": {"n_kv_heads": 2}, "bloom": {"d_model": 16}, "opt": {},
            "gpt_neox": {}, "gpt_neox_seq": {"config": {"use_parallel_residual": False}}}
D_MLP = 16  # BLOOM's MLP is always 4 x d_model (so its d_model is 16 here: 64 neurons)
# layer 0 loses one head of each GQA group (the groups stay even), layer 1 a whole group
HEADS = {0: [0, 2], 1: [0, 1]}
NEURONS = {0: [1, 2, 5, 12], 1: [7]}


def rel_close(a, b, tol=1e-5):
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def fam(request, tmp_path_factory):
    name = request.param
    arch = name.removesuffix("_seq")
    kw = {"d_model": D, **FAMILIES[name]}
    folder = make_tiny_model(tmp_path_factory.mktemp(name) / name, arch, n_layers=2, n_heads=H, d_mlp=D_MLP,
                             init_std=0.15, seed=3, **kw)
    model = cnb.load_model(folder, device="cpu")
    return arch, folder, model


def kl_to(ref_logits, mask):
    ref = torch.log_softmax(ref_logits[:, :-1].float(), -1)
    w = mask[:, 1:].float()

    def kl(logits):
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        per = (ref.exp() * (ref - lp)).sum(-1)
        return ((per * w).sum(1) / w.sum(1)).mean().item()

    return kl


def zero_hook(idx):
    def fn(act, hook):
        act = act.clone()
        act[:, :, idx] = 0
        return act

    return fn


def hook_loop(model, tokens, metric, hook, n_units):
    """One full forward per unit with that unit's activation zeroed (no engine involved)."""
    out = []
    for layer in range(model.cfg.n_layers):
        for i in range(n_units(layer)):
            with torch.no_grad():
                out.append(metric(model.run_with_hooks(tokens, fwd_hooks=[(hook.format(layer), zero_hook([i]))])))
    return torch.tensor(out, dtype=torch.float64)


def hf_attention(hf, layer):
    """(attention module, its output projection, one head's width), read off the Hugging Face
    modules by hand for each family (independent of causal_nb.models.hf)."""
    kind = hf.config.model_type
    if kind == "bloom":
        att = hf.transformer.h[layer].self_attention
        return att, att.dense, att.head_dim
    if kind == "gpt_neox":
        att = hf.gpt_neox.layers[layer].attention
        return att, att.dense, att.head_size
    if kind == "opt":
        att = hf.model.decoder.layers[layer].self_attn
        return att, att.out_proj, att.head_dim
    att = hf.transformer.h[layer].attn if hasattr(hf, "transformer") else hf.model.layers[layer].self_attn
    return att, (att.c_proj if hasattr(att, "c_proj") else att.o_proj), att.head_dim


def test_bridge_hook_z_is_the_hf_output_projection_input(fam):
    """Independent of TransformerLens: zeroing head h's hook_z equals zeroing its slice of the
    Hugging Face output projection's input (with the module's own head_dim)."""
    arch, folder, model = fam
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tokens = prepare(model, P, N).tokens
    with torch.no_grad():
        assert rel_close(model(tokens), hf(tokens).logits, 1e-5)
    for layer, head in ((0, 1), (1, 3)):
        att, proj, dh = hf_attention(hf, layer)
        if arch in ("qwen3", "gemma"):
            assert dh == DH_WIDE != D // H

        def pre(mod, args, head=head, dh=dh):
            x = args[0].clone()
            x[..., head * dh:(head + 1) * dh] = 0
            return (x,)

        handle = proj.register_forward_pre_hook(pre)
        try:
            with torch.no_grad():
                want = hf(tokens).logits
        finally:
            handle.remove()
        with torch.no_grad():
            got = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero_hook([head]))])
        assert rel_close(got, want), (arch, layer, head, (got - want).abs().max())


@pytest.mark.parametrize(("unit", "hook"), [("head", "blocks.{}.attn.hook_z"), ("neuron", "blocks.{}.mlp.hook_post")])
def test_engine_ablation_equals_hook_loop(fam, unit, hook):
    arch, _, model = fam
    tb = prepare(model, P, N)
    with torch.no_grad():
        metric = kl_to(model(tb.tokens), tb.mask)
    df = ablate(model, P, unit=unit, kind="zero", metric="kl", n_tokens=N, progress=False)
    n = model.cfg.n_heads if unit == "head" else model.cfg.d_mlp
    ref = hook_loop(model, tb.tokens, metric, hook, lambda layer: n)
    assert len(df) == len(ref)
    assert torch.allclose(torch.tensor(df.value.values), ref, atol=1e-5), (arch, (torch.tensor(df.value.values) - ref)
                                                                           .abs().max())


def n_hf_params(model):
    hf = plain_hf(model)
    tied = hf.config.tie_word_embeddings
    return sum(p.numel() for n, p in hf.named_parameters() if not (tied and n.startswith("lm_head")))


def removed_params(arch, model):
    """What HEADS and NEURONS remove, from the config alone (biases included where the family has them)."""
    hf = plain_hf(model).config
    D = hf.hidden_size  # noqa: N806 - BLOOM's is not the module's D
    dh = getattr(hf, "head_dim", None) or D // H
    n_heads, n_neurons = sum(map(len, HEADS.values())), sum(map(len, NEURONS.values()))
    if arch == "gpt2":  # c_attn: q, k, v columns and biases; c_proj: rows
        return n_heads * (3 * (D * dh + dh) + dh * D) + n_neurons * (D + 1 + D)
    if arch in ("opt", "gpt_neox", "bloom"):  # q, k, v rows with biases, output projection columns per head; the MLP's
        # input row and bias, output column per neuron
        return n_heads * (3 * (D * dh + dh) + dh * D) + n_neurons * (D + 1 + D)
    bias = dh if arch == "qwen2" else 0  # Qwen2 has q/k/v biases
    kv_groups = 1  # HEADS removes the whole first group of layer 1: its key and value heads go too
    # q rows and o columns per head, k and v rows per key/value head; gate, up and down per neuron
    return n_heads * (D * dh + bias + dh * D) + kv_groups * 2 * (D * dh + bias) + n_neurons * 3 * D


def test_pruning_masked_physical_and_saved(fam, tmp_path):
    arch, _, model = fam
    tokens = prepare(model, P, N).tokens
    hooks = [(f"blocks.{la}.attn.hook_z", zero_hook(h)) for la, h in HEADS.items()]
    hooks += [(f"blocks.{la}.mlp.hook_post", zero_hook(n)) for la, n in NEURONS.items()]
    with torch.no_grad():
        want = model.run_with_hooks(tokens, fwd_hooks=hooks)
        masked = prune_units(model, HEADS, NEURONS, physical=False)
        assert rel_close(masked(tokens), want), (arch, (masked(tokens) - want).abs().max())
    assert n_hf_params(masked) == n_hf_params(model)
    with torch.no_grad():
        phys = prune_units(model, HEADS, NEURONS, physical=True)
        assert rel_close(phys(tokens), masked(tokens)), (arch, (phys(tokens) - masked(tokens)).abs().max())
    assert n_hf_params(model) - n_hf_params(phys) == removed_params(arch, model)
    back = cnb.load_model(save_pruned(phys, tmp_path / "pruned"), device="cpu")
    with torch.no_grad():
        assert rel_close(back(tokens), masked(tokens))


def test_physically_pruned_model_is_analysed_per_layer(fam, tmp_path):
    """ablate/patch on a physically pruned model see each layer's own head and neuron counts
    and equal a plain hook loop on it; evaluate runs."""
    arch, _, model = fam
    phys = prune_units(model, HEADS, NEURONS, physical=True)
    heads = {la: H - len(HEADS.get(la, [])) for la in range(2)}
    neurons = {la: model.cfg.d_mlp - len(NEURONS.get(la, [])) for la in range(2)}
    tb = prepare(phys, P, N)
    with torch.no_grad():
        metric = kl_to(phys(tb.tokens), tb.mask)
    for unit, hook, counts in (("head", "blocks.{}.attn.hook_z", heads), ("neuron", "blocks.{}.mlp.hook_post", neurons)):
        df = ablate(phys, P, unit=unit, kind="zero", metric="kl", n_tokens=N, progress=False)
        assert df.groupby("layer").size().to_dict() == counts
        ref = hook_loop(phys, tb.tokens, metric, hook, counts.get)
        assert torch.allclose(torch.tensor(df.value.values), ref, atol=1e-5), (arch, unit)
    # patching: clean head activations into the corrupted run, against a loop doing the same
    cb, xb = prepare(phys, P, N), prepare(phys, Q, N)
    df = patch(phys, P, Q, unit="head", metric="logprob", n_tokens=N, progress=False)
    _, cache = phys.run_with_cache(cb.tokens)
    tgt = cb.tokens[:, 1:]
    ref = []
    for la in range(2):
        for h in range(heads[la]):
            def put(act, hook, la=la, h=h):
                act = act.clone()
                act[:, :, h] = cache[f"blocks.{la}.attn.hook_z"][:, :, h]
                return act

            with torch.no_grad():
                lg = phys.run_with_hooks(xb.tokens, fwd_hooks=[(f"blocks.{la}.attn.hook_z", put)])
            lp = torch.log_softmax(lg[:, :-1].float(), -1).gather(-1, tgt[..., None])[..., 0]
            w = cb.mask[:, 1:].float()
            ref.append(((lp * w).sum(1) / w.sum(1)).mean().item())
    assert torch.allclose(torch.tensor(df.value.values), torch.tensor(ref, dtype=torch.float64), atol=1e-5)
    ev = evaluate(phys, P, full_model=model, n_tokens=N, latency_batches=())
    assert ev["params"] < evaluate(model, P, n_tokens=N, latency_batches=())["params"] and ev["kl"] > 0


def test_other_families_are_refused_by_name(tmp_path):
    with pytest.raises(UnsupportedModelError) as e:
        check_supported(SimpleNamespace(model_type="falcon"))
    msg = str(e.value)
    assert "model family 'falcon' is not supported yet" in msg and all(f in msg for f in ANALYSIS_FAMILIES)
    # OPT with project_in/project_out around the decoder (opt-350m)
    folder = make_tiny_model(tmp_path / "opt", "opt", n_layers=1, d_model=D, n_heads=H, d_mlp=D_MLP,
                             config={"word_embed_proj_dim": D // 2})
    with pytest.raises(UnsupportedModelError, match="word_embed_proj_dim 32 != hidden_size 64"):
        cnb.load_model(folder, device="cpu")
    # post-LN OPT (opt-350m): TransformerLens's bridge needs a final layer norm it lacks
    folder = make_tiny_model(tmp_path / "opt_postln", "opt", n_layers=1, d_model=D, n_heads=H, d_mlp=D_MLP,
                             config={"do_layer_norm_before": False})
    with pytest.raises(UnsupportedModelError, match="post-LN OPT"):
        cnb.load_model(folder, device="cpu")


def test_masked_only_family_refuses_physical_pruning(tmp_path, monkeypatch):
    """A family listed in MASKED_ONLY (none at present) is pruned masked, and physical=True is
    refused naming the reason and the masked route."""
    folder = make_tiny_model(tmp_path / "opt", "opt", n_layers=1, d_model=D, n_heads=H, d_mlp=D_MLP)
    model = cnb.load_model(folder, device="cpu")
    monkeypatch.setitem(MASKED_ONLY, "opt", "a reason")
    monkeypatch.setattr(families, "PHYSICAL_FAMILIES", tuple(f for f in PHYSICAL_FAMILIES if f != "opt"))
    prune_units(model, heads={0: [1]}, physical=False)
    with pytest.raises(UnsupportedModelError, match="'opt' cannot be pruned physically: a reason; use prune"):
        prune_units(model, heads={0: [1]}, physical=True)


def test_patch_and_ablate_every_unit_kind_equal_a_plain_loop(fam):
    """patch (denoise) and zero/mean ablate of heads, neurons, MLPs and blocks equal one full
    forward per unit through TransformerLens hooks, scored by hand (plain_refs)."""
    arch, _, model = fam
    ct, cm = plain_tokens(model, P, N)
    xt, _ = plain_tokens(model, Q, N)
    hooks = {"head": "blocks.{}.attn.hook_z", "neuron": "blocks.{}.mlp.hook_post", "mlp": "blocks.{}.hook_mlp_out",
             "block": ("blocks.{}.hook_attn_out", "blocks.{}.hook_mlp_out")}
    names = sorted({h.format(la) for v in hooks.values() for h in ([v] if isinstance(v, str) else v) for la in (0, 1)})
    with torch.no_grad():
        _, clean = model.run_with_cache(ct, names_filter=lambda n: n in names)
        w = cm.float().view(*cm.shape, 1, 1)
        means = {n: ((clean[n].float() * w.view(*cm.shape, *[1] * (clean[n].dim() - 2))).sum((0, 1), keepdim=True)
                     / cm.float().sum()) for n in names}

    def interventions(unit, source, layers):
        out = []
        for la in layers:
            hs = hooks[unit]
            if unit in ("head", "neuron"):
                n = model.cfg.n_heads if unit == "head" else model.cfg.d_mlp
                out += [[(hs.format(la), (i,), source[hs.format(la)])] for i in range(n)]
            else:
                out.append([(h.format(la), (), source[h.format(la)]) for h in ([hs] if isinstance(hs, str) else hs)])
        return out

    zeros = {n: torch.zeros(1) for n in names}
    for unit in hooks:
        layers = [1] if unit == "neuron" else [0, 1]  # BLOOM has 4 x d_model neurons: one layer is enough here
        got = patch(model, P, Q, unit=unit, metric="logprob", n_tokens=N, layers=layers, progress=False)
        want = plain_loop(model, xt, interventions(unit, clean, layers), lambda lg: hand_logprob(lg, ct, cm))
        assert torch.allclose(torch.tensor(got.attrs["per_prompt"].values), want, atol=1e-5), (arch, "patch", unit)
        for kind, src in (("zero", zeros), ("mean", means)):
            got = ablate(model, P, unit=unit, kind=kind, metric="logprob", n_tokens=N, layers=layers, progress=False)
            want = plain_loop(model, ct, interventions(unit, src, layers), lambda lg: hand_logprob(lg, ct, cm))
            assert torch.allclose(torch.tensor(got.attrs["per_prompt"].values), want, atol=1e-5), (arch, kind, unit)


def test_scores_run_and_magnitude_matches_the_hf_weights(fam):
    """attribution, taylor and magnitude give one score per unit; a head's and a neuron's
    magnitude equal the L2 norms of its Hugging Face weight slices, taken by hand."""
    arch, folder, model = fam
    from transformers import AutoModelForCausalLM

    for method in ("attribution", "taylor", "magnitude"):
        for unit, n in (("head", model.cfg.n_heads), ("neuron", model.cfg.d_mlp)):
            df = cnb.score(model, P, method, unit=unit, n_tokens=N, progress=False)
            assert len(df) == 2 * n and df.score.notna().all(), (arch, method, unit)
    hf = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    layer, head, neuron = 1, 2, 5
    att, o_proj, dh = hf_attention(hf, layer)
    span = slice(head * dh, (head + 1) * dh)
    if hasattr(att, "query_key_value"):  # BLOOM and GPT-NeoX: fused, per head [q | k | v]
        per_head = att.query_key_value.weight.view(H, 3, dh, -1)[head]
        q, k, v = per_head[0], per_head[1], per_head[2]
    elif hasattr(att, "c_attn"):  # GPT-2 Conv1D: [d_model, 3 * d_model], columns q | k | v (d_model = D)
        q, k, v = (att.c_attn.weight[:, i * D:(i + 1) * D][:, span] for i in range(3))
    else:  # separate projections; under GQA query head h reads key/value head h // group
        group = H // (att.k_proj.out_features // dh)
        kv = slice(head // group * dh, (head // group + 1) * dh)
        q, k, v = att.q_proj.weight[span], att.k_proj.weight[kv], att.v_proj.weight[kv]
    group = H // (att.k_proj.out_features // dh) if hasattr(att, "k_proj") else 1
    o = o_proj.weight[span] if hasattr(att, "c_attn") else o_proj.weight[:, span]
    want = float((q.norm() + o.norm() + (k.norm() + v.norm()) / group).detach())
    df = cnb.score(model, P, "magnitude", unit="head", n_tokens=N, progress=False)
    got = float(df[(df.layer == layer) & (df["head"] == head)].score.iloc[0])
    assert abs(got - want) <= 1e-4 * want, (arch, got, want)
    if arch in ("bloom", "opt", "gpt_neox"):  # ungated MLPs: the input row and the output column
        mlp_in, mlp_out = {"opt": ("fc1", "fc2")}.get(arch, ("dense_h_to_4h", "dense_4h_to_h"))
        owner = hf.model.decoder.layers[layer] if arch == "opt" else (
            hf.transformer.h[layer].mlp if arch == "bloom" else hf.gpt_neox.layers[layer].mlp)
        want = float((getattr(owner, mlp_in).weight[neuron].norm() + getattr(owner, mlp_out).weight[:, neuron].norm()).detach())
        df = cnb.score(model, P, "magnitude", unit="neuron", n_tokens=N, progress=False)
        got = float(df[(df.layer == layer) & (df.neuron == neuron)].score.iloc[0])
        assert abs(got - want) <= 1e-4 * want, (arch, got, want)


def test_block_pruning_equals_block_zero_ablation(fam):
    """A removed block (masked: outputs zeroed; physical: the layer deleted) passes the residual
    stream through, as zeroing its attention and MLP outputs does."""
    arch, _, model = fam
    tokens = prepare(model, P, N).tokens
    zero = [(f"blocks.0.{h}", zero_hook(slice(None))) for h in ("hook_attn_out", "hook_mlp_out")]
    with torch.no_grad():
        want = model.run_with_hooks(tokens, fwd_hooks=zero)
        masked = prune_units(model, blocks=[0], physical=False)
        assert rel_close(masked(tokens), want), (arch, (masked(tokens) - want).abs().max())
        phys = prune_units(model, blocks=[0], physical=True)
        assert phys.cfg.n_layers == 1 and rel_close(phys(tokens), want), arch


def test_head_explorer_on_the_family_dense_and_physically_pruned(fam):
    """The live head picker on every family, dense and physically pruned (uneven heads per
    layer): one button per existing head, and a toggled head's effect equals a plain hooked
    forward zeroing that head (change in each next token's log-prob, padding dropped)."""
    from causal_nb.notebook import views, widgets  # noqa: PLC0415 - the notebook face, only here

    _, _, model = fam
    phys = prune_units(model, HEADS, NEURONS, physical=True)
    for m in (model, phys):
        counts = [m.cfg.n_heads - (len(HEADS.get(la, [])) if m is phys else 0) for la in range(2)]
        hx = widgets.HeadExplorer(m, P[:2], n_tokens=N, top_k=3)
        assert sorted(hx.buttons) == [(la, h) for la in range(2) for h in range(counts[la])]
        assert len(hx.grid.children) == 2 * m.cfg.n_heads  # blank cells keep one row per layer
        la, h = 1, counts[1] - 1
        e = hx.toggle(la, h)
        b = prepare(m, P[:2], N)
        t = b.tokens[:1, : int(b.mask[0].sum())]
        with torch.no_grad():
            base = torch.log_softmax(m(t).float(), -1)
            new = torch.log_softmax(m.run_with_hooks(t, fwd_hooks=[(f"blocks.{la}.attn.hook_z", zero_hook([h]))]).float(), -1)
        idx = t[0, 1:, None]
        want = (new[0, :-1].gather(-1, idx) - base[0, :-1].gather(-1, idx))[:, 0].double().numpy()
        assert e.heads == ((la, h),) and abs(e.delta - want).max() < 1e-5
        assert hx.set_kind("mean").kind == "mean" and torch.isfinite(torch.tensor(hx.effect.new)).all()
        with pytest.raises(ValueError, match="does not exist"):
            hx.toggle(0, counts[0])
    assert views.heads_per_layer(phys) == counts
