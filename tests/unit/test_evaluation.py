import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import causal_nb as cnb
from causal_nb.evaluation.quality import token_losses, unigram_loss


def test_token_losses_match_hf_cross_entropy(tiny_dirs, tiny_model):
    arch = "llama" if tiny_model.cfg.n_key_value_heads else "gpt2"
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_dirs[arch])).eval()
    ps = cnb.PromptSet.from_texts(["def add(a, b):\n    return a + b", "int main"])
    batch = ps.tokenize(tiny_model, 10)
    ours = token_losses(tiny_model, batch)
    for i in range(2):
        n = int(batch.lengths[i])
        x = batch.tokens[i : i + 1, :n]
        with torch.no_grad():
            ref = torch.nn.functional.cross_entropy(hf(input_ids=x).logits[0, :-1], x[0, 1:], reduction="none")
        assert torch.allclose(ours[i, : n - 1], ref, atol=1e-4)
        assert torch.isnan(ours[i, n - 1 :]).all()


def test_prompt_losses_table(tiny_model):
    ps = cnb.PromptSet.from_texts(["x = 1\ny = 2\n", "int a;"], domain="mix")
    df = cnb.prompt_losses(tiny_model, ps, n_tokens=8)
    assert list(df.columns) == ["id", "domain", "tokens", "loss"]
    assert df.domain.eq("mix").all() and (df.loss > 0).all() and df.tokens.max() <= 7
    # a random model is near uniform: loss close to log(vocab)
    assert abs(df.loss.mean() - math.log(tiny_model.cfg.d_vocab)) < 1.0


def test_unigram_loss_by_hand():
    counts = np.array([0, 3, 1])  # add-one: p = [1/7, 4/7, 2/7]
    batch = cnb.TokenBatch(torch.tensor([[0, 1, 2, 0]]), torch.tensor([[True, True, True, False]]), ("a",))
    expected = -(math.log(4 / 7) + math.log(2 / 7)) / 2
    assert math.isclose(unigram_loss(counts, batch), expected, rel_tol=1e-12)


def test_domain_losses_without_unigram_is_nan(tiny_model):
    df = cnb.domain_losses(tiny_model, {"a": cnb.PromptSet.from_texts(["x = 1"])}, n_tokens=6)
    assert df.loc[0, "domain"] == "a" and np.isnan(df.loc[0, "unigram"])


def test_flops_per_token_by_hand_and_falls_with_physical_pruning(tiny_model):
    import pandas as pd

    from causal_nb.evaluation.quality import flops_per_token

    cfg = tiny_model.cfg
    from causal_nb.evaluation.quality import _as_hf

    v = _as_hf(tiny_model).config.vocab_size  # the bridge's d_vocab may be padded
    d, n_h, d_mlp, n_l = cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.n_layers
    dh = d // n_h
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_h
    from causal_nb.models.hf import hf_arch

    gated = hf_arch(_as_hf(tiny_model))[0] != "gpt2"
    per_layer = d * n_h * dh + 2 * d * n_kv * dh + n_h * dh * d + (3 if gated else 2) * d * d_mlp
    t = 16
    want = 2 * (n_l * per_layer + d * v) + n_l * 4 * n_h * dh * (t + 1) / 2
    assert flops_per_token(tiny_model, t) == pytest.approx(want)
    scores = pd.DataFrame({"layer": [la for la in range(n_l) for _ in range(d_mlp)],
                           "neuron": [i for _ in range(n_l) for i in range(d_mlp)], "score": range(n_l * d_mlp)})
    pruned = cnb.prune(tiny_model, scores, 0.5)
    assert flops_per_token(pruned, t) == pytest.approx(want - 2 * n_l * (3 if gated else 2) * d * d_mlp / 2)
    masked = cnb.prune(tiny_model, scores, 0.5, physical=False)
    assert flops_per_token(masked, t) == pytest.approx(want)  # masking saves no FLOPs


def test_evaluate_reports_cost_columns(tiny_model):
    out = cnb.evaluate(tiny_model, ["def f(x): return x + 1", "int main() { return 0; }"], n_tokens=8,
                       latency_batches=(1, 4), latency_tokens=16, repeats=1)
    assert out["flops_per_token"] > 0 and out["latency_ms_b4"] > 0
    assert out["peak_memory_mb"] >= 0 or np.isnan(out["peak_memory_mb"])


def test_full_model_run_is_the_full_models_kl_reference(tiny_model):
    """KL and top-1 agreement by hand (HF-free: log-softmax of both models' logits), equal
    whether evaluate is given the full model or its precomputed run; other prompts refused."""
    prompts = ["def f(x): return x + 1", "int main() { return 0; }", "for i in range(3): print(i)"]
    pruned = cnb.prune_units(tiny_model, {0: [0, 1], 1: [0, 1]}, physical=False)
    tb = cnb.engine.common.prepare(tiny_model, prompts, 8)
    with torch.no_grad():
        p_full = torch.log_softmax(tiny_model(tb.tokens, return_type="logits")[:, :-1].double(), -1)
        p_pruned = torch.log_softmax(pruned(tb.tokens, return_type="logits")[:, :-1].double(), -1)
    valid = tb.mask[:, 1:]
    kl_pos = (p_full.exp() * (p_full - p_pruned)).sum(-1)
    kl = ((kl_pos * valid).sum(-1) / valid.sum(-1)).mean().item()
    agree = ((p_full.argmax(-1) == p_pruned.argmax(-1)) & valid).sum(-1) / valid.sum(-1)
    kw = {"n_tokens": 8, "latency_batches": ()}
    direct = cnb.evaluate(pruned, prompts, full_model=tiny_model, **kw)
    run = cnb.full_model_run(tiny_model, prompts, n_tokens=8)
    cached = cnb.evaluate(pruned, prompts, full_model=run, **kw)
    assert kl > 1e-4 and math.isclose(direct["kl"], kl, rel_tol=2e-3) and math.isclose(cached["kl"], kl, rel_tol=2e-3)
    assert cached["kl"] == direct["kl"]  # the same float32 numbers, one forward fewer
    assert math.isclose(cached["top1_agreement"], agree.mean().item(), rel_tol=1e-6)
    with pytest.raises(ValueError, match="other prompts"):
        cnb.evaluate(pruned, prompts[:2], full_model=run, **kw)
    with pytest.raises(ValueError, match="other prompts"):
        cnb.evaluate(pruned, prompts, full_model=run, n_tokens=6, latency_batches=())
