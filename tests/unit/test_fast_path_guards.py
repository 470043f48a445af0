"""The engine's fast paths check their identities on the base run; a block that breaks them
must be rejected, and the engine's answer must then still equal a plain hook loop.

Blocks are broken by wrapping the Hugging Face module inside one bridge block (layer 0):
``scaled``: the block returns resid_pre + 1.5 * (its two sublayers' sum), so
resid_post != resid_mid + mlp_out (both checks must fail); ``mlp_x2``: the MLP's output is
2 * down_proj(post), so the MLP output is no longer post @ W_out + a constant (the neuron
check must fail, the MLP-output and head checks still hold). A control forces the fast path
on the broken block and shows it would have given a different (wrong) answer.
"""

from unittest import mock

import pytest
import torch
from plain_refs import hand_logprob, hook_loop, plain_tokens

import causal_nb as cnb
from causal_nb.engine import replay as engine
from causal_nb.engine.replay import _head_fast_path, _mlp_fast_path, capture

CLEAN = ["def add(a, b): return a + b and more", "class Point: def __init__(self)", "x = [i for i in y]"]
CORR = ["int main() { return 0; } // xx yy z", "std::vector<int> v; v.push_back(1)", "#include <map> ok"]
N = 8
ATOL = 1e-5


def break_block(model, how: str, layer: int = 0):
    if how == "scaled":
        blk = model.blocks[layer].original_component
        orig = blk.forward

        def fwd(hidden_states, *a, **kw):
            out = orig(hidden_states, *a, **kw)
            first = out[0] if isinstance(out, tuple) else out
            new = hidden_states + 1.5 * (first - hidden_states)
            return (new, *out[1:]) if isinstance(out, tuple) else new

        blk.forward = fwd
    else:
        mlp = model.blocks[layer].mlp.original_component
        orig = mlp.forward
        mlp.forward = lambda x, *a, **kw: 2.0 * orig(x, *a, **kw)


UNITS = {"head": ("attn.hook_z", "n_heads"), "neuron": ("mlp.hook_post", "d_mlp"), "mlp": ("hook_mlp_out", None)}


def loop_reference(model, unit):
    """patch()'s default (denoise): corrupted run, one unit of layer 0 at a time from the clean run."""
    clean, mask = plain_tokens(model, CLEAN, N)
    corr, _ = plain_tokens(model, CORR, N)
    _, cache = model.run_with_cache(clean)
    hook, count = UNITS[unit]
    name = f"blocks.0.{hook}"
    idx = [(i,) for i in range(getattr(model.cfg, count))] if count else [()]
    if unit == "neuron":
        idx = idx[::9]  # a spread sample: one full forward each
    ref = hook_loop(model, corr, [[(name, i, cache[name])] for i in idx], lambda lg: hand_logprob(lg, clean, mask))
    return [i[0] for i in idx] if count else [0], ref.mean(1)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize(("how", "rejected"), [("scaled", {"head", "mlp", "neuron"}), ("mlp_x2", {"neuron"})])
def test_broken_identity_is_rejected_and_the_full_replay_is_exact(tiny_dirs, arch, how, rejected):
    model = cnb.load_model(tiny_dirs[arch], device="cpu")  # a private copy: it gets modified
    clean, _ = plain_tokens(model, CLEAN, N)
    before = model(clean).detach()
    break_block(model, how)
    assert (model(clean) - before).abs().max() > 1e-2  # the model really changed
    cap = capture(model, clean, ["blocks.0.attn.hook_z", "blocks.0.mlp.hook_post"])
    checks = {"head": _head_fast_path(model, cap, 0), "mlp": _mlp_fast_path(model, cap, 0, neurons=False),
              "neuron": _mlp_fast_path(model, cap, 0, neurons=True)}
    assert {k for k, ok in checks.items() if not ok} == rejected, checks
    cap1 = capture(model, clean, ["blocks.1.attn.hook_z", "blocks.1.mlp.hook_post"])
    assert _head_fast_path(model, cap1, 1) and _mlp_fast_path(model, cap1, 1, neurons=True)  # layer 1 is intact
    for unit in UNITS:
        idx, ref = loop_reference(model, unit)
        got = torch.tensor(cnb.patch(model, CLEAN, CORR, unit=unit, layers=[0], n_tokens=N, progress=False).value.values)
        assert torch.allclose(got[idx], ref, atol=ATOL), (unit, (got[idx] - ref).abs().max())
        if unit in rejected and unit != "mlp":
            # control: had the check passed, the fast path would have been wrong
            with mock.patch.object(engine, "_head_fast_path", lambda *a: True), \
                    mock.patch.object(engine, "_mlp_fast_path", lambda *a: True):
                forced = torch.tensor(cnb.patch(model, CLEAN, CORR, unit=unit, layers=[0], n_tokens=N,
                                                progress=False).value.values)
            assert (forced[idx] - ref).abs().max() > 30 * ATOL, unit
