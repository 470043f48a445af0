"""bf16 engine results against a bf16 plain hook loop (one full forward per unit).

The tiny models here are initialised 5x wider than the default (initializer_range 0.1) so that
ablating one head or neuron moves the metric by 0.02-0.3 nats, well above bf16 noise.
Tolerance: 0.01 nats absolute on a log-probability of about 6. bf16 keeps 8 significant bits
(relative rounding 2^-8 = 0.4%); measured on these models, a bf16 forward's own metric differs
from the fp32 forward's by up to 4e-3 nats and the engine from the bf16 loop by up to 4e-3
(another summation order), so 0.01 is 2.5x bf16's own error, and a third of a bf16 ulp (2^-5)
at the metric's magnitude. fp32 is exact to 1e-5 (tests/unit/test_patching.py).
"""

import shutil

import numpy as np
import pytest
import torch
from plain_refs import hand_logprob, hook_loop, plain_tokens
from transformers import AutoConfig, AutoModelForCausalLM

import causal_nb as cnb

P = ["def add(a, b): return a + b and more", "class Point: def __init__(self)", "x = [i for i in y]"]
N = 8
TOL = 0.01


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def bf16_model(request, tiny_dirs, tmp_path_factory):
    src = tiny_dirs[request.param]
    cfg = AutoConfig.from_pretrained(src)
    cfg.initializer_range = 0.1
    torch.manual_seed(3)
    out = tmp_path_factory.mktemp(f"wide_{request.param}")
    shutil.copytree(src, out, dirs_exist_ok=True)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    return cnb.load_model(out, device="cpu", dtype="bf16")


@pytest.mark.parametrize(("unit", "hook", "kind"), [("head", "attn.hook_z", "zero"), ("head", "attn.hook_z", "mean"),
                                                    ("neuron", "mlp.hook_post", "zero")])
def test_bf16_ablation_equals_a_bf16_hook_loop(bf16_model, unit, hook, kind):
    model = bf16_model
    assert next(model.parameters()).dtype == torch.bfloat16
    tokens, mask = plain_tokens(model, P, N)
    assert mask.all()  # all 8 tokens real: the mean is a plain mean over (batch, pos)
    n = model.cfg.n_heads if unit == "head" else model.cfg.d_mlp
    idx = list(range(n)) if unit == "head" else list(range(0, n, 5))
    with torch.no_grad():
        base = hand_logprob(model(tokens), tokens, mask)
        _, cache = model.run_with_cache(tokens)
    df = cnb.ablate(model, P, unit=unit, kind=kind, metric="logprob", n_tokens=N, progress=False)
    per = torch.tensor(df.attrs["per_prompt"].to_numpy())
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.{hook}"
        src = torch.zeros(1) if kind == "zero" else cache[name].float().mean((0, 1), keepdim=True)
        ref = hook_loop(model, tokens, [[(name, (i,), src)] for i in idx], lambda lg: hand_logprob(lg, tokens, mask))
        ours = per[[layer * n + i for i in idx]]
        assert (ours - ref).abs().max() <= TOL, (unit, kind, layer, (ours - ref).abs().max())
        if unit == "head" and kind == "zero":
            effect = (ref - base[None]).flatten().numpy()
            assert np.abs(effect).max() > 5 * TOL  # the effects stand well above the tolerance
            assert np.corrcoef(effect, (ours - base[None]).flatten().numpy())[0, 1] > 0.95
