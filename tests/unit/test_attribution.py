"""Attribution patching checked against finite differences of the exact engine, and EAP-IG
against its one-step definition."""

import pytest
import torch

import causal_nb as cnb
from causal_nb.engine.attribution import attribution_scores
from causal_nb.engine.common import prepare, scored_batch
from causal_nb.engine.metrics import get_metric
from causal_nb.engine.patching import patch
from causal_nb.engine.replay import capture, evaluate_units
from causal_nb.engine.units import enumerate_units

CLEAN = ["def add(a, b): return a + b and more", "class Point: def __init__(self)"]
CORR = ["int main() { return 0; } // xx yy z", "std::vector<int> v; v.push_back(1)"]
N = 8


def setup_pair(model, unit):
    cb, xb = prepare(model, CLEAN, N), prepare(model, CORR, N)
    units = enumerate_units(model, unit)
    hooks = sorted({e.hook for u in units for e in u.edits})
    scored = scored_batch(cb)
    with torch.no_grad():
        c, x = capture(model, cb.tokens, hooks), capture(model, xb.tokens, hooks)
    return cb, xb, units, scored, c, x


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_attribution_is_the_directional_derivative(tiny_dirs, arch):
    """(M(base + eps * delta on the unit) - M(base)) / eps -> attribution as eps -> 0 (float64)."""
    model = cnb.load_model(tiny_dirs[arch], device="cpu", dtype=torch.float64)
    metric = get_metric("logprob")
    for unit in ("head", "mlp", "neuron", "v"):
        cb, xb, units, scored, c, x = setup_pair(model, unit)
        est, base_val = attribution_scores(model, xb.tokens, c.acts, x.acts, units, metric, scored)
        eps = 1e-3  # smaller steps hit the bridge's float32 internals (RoPE, norms)
        nudged = {h: x.acts[h] + eps * (c.acts[h] - x.acts[h]) for h in c.acts if h in x.acts}
        values = evaluate_units(model, x, nudged, units, metric, scored, progress=False)
        fd = (values.double() - base_val.double()) / eps
        scale = est.abs().max()
        assert scale > 0 and torch.allclose(est.double(), fd, atol=2e-3 * scale + 1e-5), (unit, (est - fd).abs().max(), scale)


def test_eap_ig_one_step_is_the_gradient_at_the_source(tiny_model):
    metric = get_metric("logprob")
    cb, xb, units, scored, c, x = setup_pair(tiny_model, "head")
    ig1, _ = attribution_scores(tiny_model, xb.tokens, c.acts, x.acts, units, metric, scored, steps=1,
                                source_tokens=cb.tokens)
    at_src, _ = attribution_scores(tiny_model, cb.tokens, c.acts, x.acts, units, metric, scored)
    assert torch.allclose(ig1, at_src, atol=1e-6)


def test_patch_methods_share_the_table(tiny_model):
    exact = patch(tiny_model, CLEAN, CORR, unit="head", n_tokens=N, progress=False)
    for method in ("attribution", "eap-ig"):
        est = patch(tiny_model, CLEAN, CORR, unit="head", method=method, n_tokens=N, progress=False)
        assert list(est.columns) == list(exact.columns) and est.attrs["method"] == method
        assert est.attrs["corrupted"] == exact.attrs["corrupted"]
        # random tiny models are close to linear: the estimate tracks the exact effect
        r = torch.corrcoef(torch.stack([torch.tensor(est.value.values), torch.tensor(exact.value.values)]))[0, 1]
        assert r > 0.9, (method, r)
