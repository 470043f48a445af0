"""EAP-IG against an integral computed independently in the test.

The quantity EAP-IG estimates for a unit (Hanna et al. 2024) is

    (a_src - a_base) . integral_0^1 dM/da (x(alpha)) d alpha,

where x(alpha) is the run whose embedding output (``blocks.0.hook_resid_pre``) is moved on the
straight line from the base input's to the source input's, and a is the unit's activation in
that run. Here the integrand is computed at 201 evenly spaced alphas with TransformerLens
hooks, ``torch.autograd.grad`` and a metric written by hand; the integral is the trapezoid
rule over those 200 intervals. The kit's ``steps=k`` is the right-endpoint Riemann rule (the
mean of the integrand at alpha = 1/k, 2/k, ..., 1), so it must equal that rule evaluated on the
reference's own grid points, and approach the trapezoid integral as k grows.
"""

import numpy as np
import pytest
import torch
from plain_refs import hand_logprob, plain_tokens

import causal_nb as cnb

CLEAN = ["def add(a, b): return a + b and more", "class Point: def __init__(self)", "x = [i for i in y]"]
CORR = ["int main() { return 0; } // xx yy z", "std::vector<int> v; v.push_back(1)", "#include <map> ok"]
N = 8
GRID = 200  # trapezoid intervals of the reference integral
STEPS = (1, 2, 5, 20)  # each divides GRID, so alpha = j/k lies on the reference grid


def integrand(model, base, source, targets, mask, sign: float = 1.0) -> dict[str, np.ndarray]:
    """Per unit and prompt, (a_src - a_base) . dM/da at each alpha of the grid: [alpha, unit, batch].

    Units: every head (``hook_z`` slice) and every layer's whole MLP output, layer-major.
    ``sign=-1`` makes M the loss (= -logprob) instead of the log-probability.
    """
    n_l = model.cfg.n_layers
    z = [f"blocks.{la}.attn.hook_z" for la in range(n_l)]
    mlp = [f"blocks.{la}.hook_mlp_out" for la in range(n_l)]
    with torch.no_grad():
        _, cb = model.run_with_cache(base)
        _, cs = model.run_with_cache(source)
    lo, hi = cb["blocks.0.hook_resid_pre"], cs["blocks.0.hook_resid_pre"]
    heads, mlps = [], []
    for alpha in np.linspace(0, 1, GRID + 1):
        acts = {}

        def start(act, hook, alpha=alpha):
            return (lo + float(alpha) * (hi - lo)).detach().requires_grad_(True)

        def save(name, acts=acts):
            def fn(act, hook):
                acts[name] = act
                return act

            return fn

        with torch.enable_grad():
            logits = model.run_with_hooks(base, fwd_hooks=[("blocks.0.hook_resid_pre", start)]
                                          + [(h, save(h)) for h in z + mlp])
            metric = sign * hand_logprob(logits, targets, mask)
            g = dict(zip(z + mlp, torch.autograd.grad(metric.sum(), [acts[h] for h in z + mlp])))
        heads.append(torch.cat([((cs[h] - cb[h]) * g[h]).sum((1, 3)).T for h in z]).double().numpy())
        mlps.append(torch.stack([((cs[h] - cb[h]) * g[h]).sum((1, 2)) for h in mlp]).double().numpy())
    return {"head": np.stack(heads), "mlp": np.stack(mlps)}


def right_riemann(f: np.ndarray, k: int) -> np.ndarray:
    return f[GRID // k :: GRID // k].mean(0)


@pytest.fixture(scope="module")
def denoise_reference(tiny_model):
    """patch()'s default direction: the corrupted run is the base, the clean run the source."""
    clean, mask = plain_tokens(tiny_model, CLEAN, N)
    corr, cmask = plain_tokens(tiny_model, CORR, N)
    assert torch.equal(mask, cmask)
    with torch.no_grad():
        base_val = hand_logprob(tiny_model(corr), clean, mask).numpy()
    return base_val, integrand(tiny_model, corr, clean, clean, mask)


def test_reference_integral_is_converged(denoise_reference):
    _, f = denoise_reference
    for unit in ("head", "mlp"):
        fine = np.trapezoid(f[unit], dx=1 / GRID, axis=0)
        coarse = np.trapezoid(f[unit][::2], dx=2 / GRID, axis=0)
        assert np.abs(fine - coarse).max() < 1e-4 * np.abs(fine).max(), unit


@pytest.mark.parametrize("unit", ["head", "mlp"])
def test_patch_eap_ig_is_the_right_riemann_rule_and_converges(tiny_model, denoise_reference, unit):
    base_val, f = denoise_reference
    exact = np.trapezoid(f[unit], dx=1 / GRID, axis=0)  # [unit, batch]
    scale = np.abs(exact).max()
    assert scale > 0
    errors = []
    for k in STEPS:
        df = cnb.patch(tiny_model, CLEAN, CORR, unit=unit, method="eap-ig", steps=k, n_tokens=N, progress=False)
        assert df.attrs["steps"] == k
        est = df.attrs["per_prompt"].to_numpy() - base_val[None]  # the estimated metric change
        # 2e-6: a few float32 ulps of the ~6-nat base value that per_prompt carries (base + change)
        assert np.abs(est - right_riemann(f[unit], k)).max() < 1e-5 * scale + 2e-6, (unit, k)
        errors.append(np.abs(est - exact).max())
    # the right-endpoint rule's error falls like 1/k: 20 steps at least 10x closer than 1 step
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 10 and errors[-1] < 0.02 * scale, (errors, scale)


def test_score_eap_ig_integrates_the_loss_from_prompts_to_corrupted(tiny_model):
    """``score(method="eap-ig")``: base = the prompts, source = corrupted, M = the loss."""
    clean, mask = plain_tokens(tiny_model, CLEAN, N)
    corr, _ = plain_tokens(tiny_model, CORR, N)
    f = integrand(tiny_model, clean, corr, clean, mask, sign=-1.0)["head"]
    exact = np.trapezoid(f, dx=1 / GRID, axis=0)
    for k in (5, 20):
        df = cnb.score(tiny_model, CLEAN, "eap-ig", unit="head", corrupted=CORR, steps=k, n_tokens=N)
        per = df.attrs["per_prompt"].to_numpy()
        ref = right_riemann(f, k)
        assert np.abs(per - ref).max() < 1e-5 * np.abs(ref).max(), k
        assert np.allclose(df.score, ref.mean(1), rtol=1e-5, atol=1e-9)
    assert np.abs(per - exact).max() < 0.02 * np.abs(exact).max()
