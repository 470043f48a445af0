import math

import numpy as np
import torch
from transformers import AutoModelForCausalLM

import causal_nb as cnb
from causal_nb.evaluation import token_losses, unigram_loss


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
