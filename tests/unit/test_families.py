"""Every supported model family, exact: engine == plain hook loop == Hugging Face, masked pruning
== zero-ablation, physical == masked, and a physically pruned model analysed like any other.

Each family is a tiny random-weight model (2 layers, d_model 64, 4 heads) written with
``save_pretrained`` and loaded with ``load_model(folder)``. The Llama-style ones use GQA (2
key/value heads); Qwen3 and Gemma get a head width (32) that is not d_model / n_heads (16), as
real checkpoints of those families do. Weights, norms and biases are redrawn
(``init_std``) so that no norm is the identity.
"""

import pytest
import torch

import causal_nb as cnb
from causal_nb.engine.common import prepare
from causal_nb.engine.patching import ablate, patch
from causal_nb.evaluation.quality import evaluate
from causal_nb.models.families import PRUNING_FAMILIES, UnsupportedModelError
from causal_nb.models.hf import plain_hf
from causal_nb.pruning.structure import prune_units, save_pruned
from causal_nb.zoo.tiny import make_tiny_model

P = ["def add(a, b): return a + b and more", "class Point: def __init__(self)", "int main() { return 0; } // xx"]
Q = ["x = [i for i in range(10)] # ok", "std::vector<int> v; v.push_back(1)", "The market rose as rates fell."]
N = 8
D, H, DH_WIDE = 64, 4, 32
FAMILIES = {"gpt2": {}, "llama": {"n_kv_heads": 2}, "mistral": {"n_kv_heads": 2}, "qwen2": {"n_kv_heads": 2},
            "qwen3": {"n_kv_heads": 2, "head_dim": DH_WIDE}, "gemma": {"n_kv_heads": 2, "head_dim": DH_WIDE},
            "gemma2": {"n_kv_heads": 2}}
D_MLP = 16
# layer 0 loses one head of each GQA group (the groups stay even), layer 1 a whole group
HEADS = {0: [0, 2], 1: [0, 1]}
NEURONS = {0: [1, 2, 5, 12], 1: [7]}


def rel_close(a, b, tol=1e-5):
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def fam(request, tmp_path_factory):
    arch = request.param
    folder = make_tiny_model(tmp_path_factory.mktemp(arch) / arch, arch, n_layers=2, d_model=D, n_heads=H, d_mlp=D_MLP,
                             init_std=0.15, seed=3, **FAMILIES[arch])
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
    att = hf.transformer.h[layer].attn if hasattr(hf, "transformer") else hf.model.layers[layer].self_attn
    return att, (att.c_proj if hasattr(att, "c_proj") else att.o_proj)


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
        att, proj = hf_attention(hf, layer)
        dh = att.head_dim
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
    dh = getattr(hf, "head_dim", None) or D // H
    n_heads, n_neurons = sum(map(len, HEADS.values())), sum(map(len, NEURONS.values()))
    if arch == "gpt2":  # c_attn: q, k, v columns and biases; c_proj: rows
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
        phys = prune_units(model, HEADS, NEURONS, physical=True)
        assert rel_close(masked(tokens), want), (arch, (masked(tokens) - want).abs().max())
        assert rel_close(phys(tokens), masked(tokens)), (arch, (phys(tokens) - masked(tokens)).abs().max())
    assert n_hf_params(masked) == n_hf_params(model)
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
    neurons = {la: D_MLP - len(NEURONS.get(la, [])) for la in range(2)}
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


@pytest.mark.parametrize("arch", ["bloom", "opt", "gpt_neox"])
def test_unsupported_family_is_refused_by_name(arch, tmp_path):
    folder = make_tiny_model(tmp_path / arch, arch, n_layers=2, d_model=D, n_heads=H, d_mlp=D_MLP)
    with pytest.raises(UnsupportedModelError) as e:
        cnb.load_model(folder, device="cpu")
    msg = str(e.value)
    assert f"model family {arch!r} is not supported yet" in msg
    assert all(f in msg for f in PRUNING_FAMILIES)
