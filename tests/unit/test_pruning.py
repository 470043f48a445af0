import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

import causal_nb as cnb
from causal_nb.pruning.selection import select_units
from causal_nb.pruning.structure import prune, save_pruned

P = ["def add(a, b): return a + b and more", "class Point: def __init__(self)", "int main() { return 0; } // xx"]


def heads_table(model, scores):
    cfg = model.cfg
    return pd.DataFrame([{"layer": i, "head": h, "score": scores[i * cfg.n_heads + h]}
                         for i in range(cfg.n_layers) for h in range(cfg.n_heads)])


def test_select_units_global_per_layer_and_floor():
    s = pd.DataFrame({"layer": [0, 0, 0, 1, 1, 1], "head": [0, 1, 2, 0, 1, 2], "score": [1, 2, 3, 0.1, 0.2, 0.3]})
    assert select_units(s, 0.5, 3, 2) == {0: [0], 1: [0, 1]}  # layer 1 keeps its floor head, so layer 0 gives one
    assert select_units(s, 0.67, 3, 2) == {0: [0, 1], 1: [0, 1]}
    assert select_units(s, 0.34, 3, 2, budget="per_layer") == {0: [0], 1: [0]}
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got 1.0"):
        select_units(s, 1.0, 3, 2)
    with pytest.raises(ValueError, match="another model"):
        select_units(s, 0.5, 4, 2)
    with pytest.raises(ValueError, match="budget must be"):
        select_units(s, 0.5, 3, 2, budget="layerwise")


def zero_ablated(model, tokens, heads: dict, neurons: dict):
    def zero(idx):
        def fn(act, hook):
            act = act.clone()
            act[:, :, idx] = 0
            return act

        return fn

    hooks = [(f"blocks.{i}.attn.hook_z", zero(h)) for i, h in heads.items() if h]
    hooks += [(f"blocks.{i}.mlp.hook_post", zero(n)) for i, n in neurons.items() if n]
    return model.run_with_hooks(tokens, fwd_hooks=hooks)


@pytest.mark.parametrize("budget", ["global", "per_layer"])
def test_masked_equals_zero_ablation_and_physical_equals_masked(tiny_model, budget, tmp_path):
    tokens = cnb.PromptSet.from_texts(P).tokenize(tiny_model, 8).tokens
    before = tiny_model(tokens).detach().clone()
    hs = cnb.score(tiny_model, P, "random", unit="head", seed=1)
    ns = cnb.score(tiny_model, P, "random", unit="neuron", seed=2)
    masked = prune(tiny_model, [hs, ns], 0.5, physical=False, budget=budget)
    phys = prune(tiny_model, [hs, ns], 0.5, physical=True, budget=budget)
    spec = masked.causal_nb_pruned["layers"]
    heads = {i: s["removed_heads"] for i, s in enumerate(spec)}
    neurons = {i: s["removed_neurons"] for i, s in enumerate(spec)}
    assert sum(map(len, heads.values())) == tiny_model.cfg.n_heads * tiny_model.cfg.n_layers // 2
    ref = zero_ablated(tiny_model, tokens, heads, neurons)
    assert torch.allclose(masked(tokens), ref, atol=1e-5)
    assert torch.allclose(phys(tokens), masked(tokens), atol=1e-5)
    assert torch.equal(tiny_model(tokens), before)  # the input model is untouched
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(phys) < n(masked) == n(tiny_model)
    back = cnb.load_model(save_pruned(phys, tmp_path / "pruned"), device="cpu")
    assert torch.allclose(back(tokens), phys(tokens), atol=1e-6)


def test_gqa_groups_kept_when_even_and_padded_when_not(tiny_dirs):
    model = cnb.load_model(tiny_dirs["llama"], device="cpu")  # 4 query heads, 2 key/value heads
    tokens = cnb.PromptSet.from_texts(P).tokenize(model, 8).tokens
    even = heads_table(model, [0, 9, 0, 9, 0, 9, 0, 9])  # drop heads 0 and 2: one per group
    p = prune(model, even, 0.5)
    layer0 = p.causal_nb_pruned["layers"][0]
    assert layer0["q_heads"] == [1, 3] and layer0["kv_heads"] == [0, 1] and layer0["kv_groups"] == 1
    uneven = heads_table(model, [0, 9, 9, 9, 0, 9, 9, 9])  # drop head 0 of each layer: groups of 1 and 2
    q = prune(model, uneven, 0.25)
    layer0 = q.causal_nb_pruned["layers"][0]
    # head 0's group keeps only head 1: head 0 stays as a zeroed pad, so key/value heads stay shared
    assert layer0["q_heads"] == [0, 1, 2, 3] and layer0["kv_heads"] == [0, 1] and layer0["kv_groups"] == 2
    assert layer0["zeroed_heads"] == [0]
    assert sum(x.numel() for x in q.parameters()) <= sum(x.numel() for x in model.parameters())
    whole = heads_table(model, [0, 0, 9, 9, 0, 0, 9, 9])  # drop group 0 entirely: grouped layout stays
    r = prune(model, whole, 0.5)
    layer0 = r.causal_nb_pruned["layers"][0]
    assert layer0["q_heads"] == [2, 3] and layer0["kv_heads"] == [1] and layer0["kv_groups"] == 2
    for pruned, removed in ((p, [0, 2]), (q, [0]), (r, [0, 1])):
        ref = zero_ablated(model, tokens, {0: removed, 1: removed}, {})
        assert torch.allclose(pruned(tokens), ref, atol=1e-5)


def test_bad_scores(tiny_model):
    with pytest.raises(ValueError, match="sparsity must be in"):
        prune(tiny_model, cnb.score(tiny_model, P, "random"), -0.1)
    with pytest.raises(ValueError, match=r"scores mlps \(unit='mlp'\)"):
        prune(tiny_model, cnb.score(tiny_model, P, "random", unit="mlp"), 0.5)


def test_evaluate_full_and_pruned(tiny_model):
    full = cnb.evaluate(tiny_model, P, full_model=tiny_model, n_tokens=8, latency_batches=(1, 2), repeats=2)
    assert full["kl"] == pytest.approx(0, abs=1e-6) and full["top1_agreement"] == 1.0
    hf = AutoModelForCausalLM.from_pretrained(tiny_model.causal_nb_source["source"])
    assert full["params"] == sum(p.numel() for p in hf.parameters())  # tied embeddings counted once
    assert full["latency_ms_b1"] > 0 and full["latency_ms"] == full["latency_ms_b1"]
    hs = cnb.score(tiny_model, P, "random", unit="head", seed=1)
    ns = cnb.score(tiny_model, P, "random", unit="neuron", seed=2)
    pruned = prune(tiny_model, [hs, ns], 0.5)
    ev = cnb.evaluate(pruned, P, full_model=tiny_model, n_tokens=8, latency_batches=())
    assert ev["kl"] > 0 and ev["params"] < full["params"] and "latency_ms" not in ev
    assert len(ev["per_prompt_loss"]) == len(P)
    assert ev["loss"] == pytest.approx(float(torch.tensor(ev["per_prompt_loss"]).mean()), rel=1e-6)


def test_mean_fill_equals_mean_ablation_masked_physical_and_saved(tiny_model, tmp_path):
    # Reference: the means from run_with_cache and a masked numpy mean over the reference
    # prompts' real positions (their lengths differ at prune's 64 tokens, so padding matters),
    # and one plain forward that mean-ablates the removed units with hooks.
    from plain_refs import plain_tokens

    ref_prompts = P[::-1]
    tokens = cnb.PromptSet.from_texts(P).tokenize(tiny_model, 8).tokens
    hs = cnb.score(tiny_model, P, "random", unit="head", seed=3)
    ns = cnb.score(tiny_model, P, "random", unit="neuron", seed=4)
    masked = prune(tiny_model, [hs, ns], 0.5, physical=False, fill="mean", reference=ref_prompts)
    phys = prune(tiny_model, [hs, ns], 0.5, physical=True, fill="mean", reference=ref_prompts)
    spec = masked.causal_nb_pruned["layers"]
    ref_tokens, ref_mask = plain_tokens(tiny_model, ref_prompts, 64)
    assert not ref_mask.all()
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(ref_tokens)
    m = ref_mask.numpy()

    def mean_of(name):
        a = cache[name].numpy()
        return torch.tensor(a[m].mean(0))  # real positions only: [head, d_head] or [d_mlp]

    def fill(name, idx):
        mean = mean_of(name)

        def fn(act, hook):
            act = act.clone()
            act[:, :, idx] = mean[idx].to(act.dtype)
            return act

        return fn

    fwd = [(f"blocks.{i}.attn.hook_z", fill(f"blocks.{i}.attn.hook_z", s["removed_heads"]))
           for i, s in enumerate(spec) if s["removed_heads"]]
    fwd += [(f"blocks.{i}.mlp.hook_post", fill(f"blocks.{i}.mlp.hook_post", s["removed_neurons"]))
            for i, s in enumerate(spec) if s["removed_neurons"]]
    with torch.no_grad():
        want = tiny_model.run_with_hooks(tokens, fwd_hooks=fwd)
        zero = prune(tiny_model, [hs, ns], 0.5, physical=False)(tokens)
        assert torch.allclose(masked(tokens), want, atol=1e-5)
        assert torch.allclose(phys(tokens), want, atol=1e-5)
        assert not torch.allclose(zero, want, atol=1e-3)  # the fill mattered
        back = cnb.load_model(save_pruned(phys, tmp_path / "mean_pruned"), device="cpu")
        assert torch.allclose(back(tokens), want, atol=1e-5)
        back_m = cnb.load_model(save_pruned(masked, tmp_path / "mean_masked"), device="cpu")
        assert torch.allclose(back_m(tokens), want, atol=1e-5)
    with pytest.raises(ValueError, match="reference prompts"):
        prune(tiny_model, hs, 0.5, fill="mean")
    with pytest.raises(ValueError, match="fill must be"):
        prune(tiny_model, hs, 0.5, fill="median")


def test_block_removal_physical_equals_masked_equals_ablation(tiny_model, tmp_path):
    from causal_nb.pruning.structure import prune_units

    tokens = cnb.PromptSet.from_texts(P).tokenize(tiny_model, 8).tokens
    n_l = tiny_model.cfg.n_layers

    def zero(act, hook):
        return torch.zeros_like(act)

    with torch.no_grad():
        want = tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_out", zero),
                                                             ("blocks.0.hook_mlp_out", zero)])
        masked = prune_units(tiny_model, blocks=[0], physical=False)
        phys = prune_units(tiny_model, blocks=[0], heads={1: [0]}, physical=True)
        both = zero_ablated(masked, tokens, {1: [0]}, {})  # block 0 masked, and head L1H0 zeroed
        assert torch.allclose(masked(tokens), want, atol=1e-5)
        assert phys.cfg.n_layers == n_l - 1 and len(phys.causal_nb_pruned["layers"]) == n_l - 1
        assert torch.allclose(phys(tokens), both, atol=1e-5)
        back = cnb.load_model(save_pruned(phys, tmp_path / "shallow"), device="cpu")
        assert back.cfg.n_layers == n_l - 1 and torch.allclose(back(tokens), both, atol=1e-5)
        assert sum(p.numel() for p in phys.parameters()) < sum(p.numel() for p in tiny_model.parameters())
    # a block score table: the lowest-scoring layer goes
    blocks = pd.DataFrame({"layer": list(range(n_l)), "score": [5.0, 1.0][:n_l]})
    blocks.attrs["unit"] = "block"
    assert prune(tiny_model, blocks, 0.5).causal_nb_pruned["removed_blocks"] == [1]
    with pytest.raises(ValueError, match="every block"):
        prune_units(tiny_model, blocks=list(range(n_l)))
    with pytest.raises(ValueError, match="do not all exist"):
        prune_units(tiny_model, blocks=[n_l])
    with pytest.raises(ValueError, match="fill='zero' only"):
        prune_units(tiny_model, blocks=[0], fill="mean", reference=P)
