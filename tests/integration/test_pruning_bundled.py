"""Physical pruning equals masked pruning on the bundled (trained) models, as on the tiny ones."""

import torch

import causal_nb as cnb
from causal_nb.engine.common import prepare


def test_physical_equals_masked_on_bundled_models(bundled, tmp_path):
    name, model = bundled
    prompts = cnb.load_prompts("python", split="test", n=4)
    tokens = prepare(model, prompts, 48).tokens
    # random scores leave uneven GQA groups (padded) in some layers: the hardest case
    heads = cnb.score(model, None, "random", unit="head", seed=1)
    neurons = cnb.score(model, None, "random", unit="neuron", seed=2)
    # measured here: 1.0-2.2e-5 absolute on logits up to 17 (float32 rounding of a different
    # summation order), so the bound is 1e-5 relative to the logit scale
    for fill in ("zero", "mean"):
        kw = {"fill": fill, "reference": prompts} if fill == "mean" else {}
        masked = cnb.prune(model, [heads, neurons], 0.5, physical=False, **kw)
        phys = cnb.prune(model, [heads, neurons], 0.5, physical=True, **kw)
        with torch.no_grad():
            a, b = masked(tokens), phys(tokens)
            diff = (a - b).abs().max().item()
        assert diff < 1e-5 * max(1.0, a.abs().max().item()), (name, fill, diff)
        assert sum(p.numel() for p in phys.parameters()) < sum(p.numel() for p in model.parameters())
    cnb.save_pruned(phys, tmp_path / "p")
    with torch.no_grad():
        assert torch.allclose(cnb.load_model(tmp_path / "p")(tokens), b, atol=1e-5)


def test_physical_gpt2_heads_are_sliced(tmp_path):
    """code-gpt2-2l at 50% of heads: every removed head's Q/K/V columns and output rows go."""
    from causal_nb.models.hf import plain_hf

    model = cnb.load_model("code-gpt2-2l", device="cpu")
    heads = cnb.score(model, None, "magnitude", unit="head")
    phys, masked = cnb.prune(model, heads, 0.5), cnb.prune(model, heads, 0.5, physical=False)
    cfg, hf = model.cfg, plain_hf(phys)
    removed = sum(len(s["removed_heads"]) for s in phys.causal_nb_pruned["layers"])
    assert removed == cfg.n_layers * cfg.n_heads // 2
    d, dh = cfg.d_model, cfg.d_head
    n = lambda m: sum(p.numel() for p in plain_hf(m).parameters())  # noqa: E731
    assert n(model) - n(phys) == removed * (3 * (d * dh + dh) + dh * d) and n(masked) == n(model)
    for i, s in enumerate(phys.causal_nb_pruned["layers"]):
        kept = cfg.n_heads - len(s["removed_heads"])
        assert hf.transformer.h[i].attn.c_attn.weight.shape == (d, 3 * kept * dh)
    tokens = prepare(model, cnb.load_prompts("python", split="test", n=4), 48).tokens
    with torch.no_grad():
        a, b = masked(tokens), phys(tokens)
    assert (a - b).abs().max().item() < 1e-5 * max(1.0, a.abs().max().item())
