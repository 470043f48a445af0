"""Known circuits found again on SmolLM2-135M: IOI behaviour and induction heads.

References are independent of the kit: the Hugging Face model's own forward (with its
attention mask) for the final-position logit difference, plain TransformerLens hook loops for
head patching, ``hook_pattern`` read by hand for IOI attention. Short prompts keep each test
within ~20 s on 2 cores.
"""

import numpy as np
import pytest
import torch

from causal_nb import induction as ind
from causal_nb import ioi

NAME = "smollm2-135m"


@pytest.fixture(scope="module")
def prompts(smol):
    return ioi.ioi_prompts(smol, n=16, seed=0)


def test_ioi_prompts_tokens(smol, prompts):
    tok = smol.tokenizer
    for i, r in prompts.positions.iterrows():
        toks = prompts.clean.tokens[i]
        assert tok.decode(toks[r["io"]]) == " " + r["io_name"] and tok.decode(toks[r["s2"]]) == " " + r["s_name"]
        assert tok.decode(toks[r["s1"]]) == " " + r["s_name"]
        assert tok.decode(prompts.corrupted.tokens[i, r["s2"]]) == " " + r["c_name"]
        assert tok.decode(toks[1 : r["end"] + 1]) == r["clean"]


def test_final_position_logit_diff_equals_hf(smol, prompts):
    """The kit's END logit diff on padded prompts of 8 templates = HF's forward with its mask."""
    got = ioi.ioi_logit_diff(smol, prompts)
    hf = smol.original_model
    with torch.no_grad():
        logits = hf(input_ids=prompts.clean.tokens, attention_mask=prompts.clean.mask.long()).logits
    end = torch.tensor(prompts.positions["end"].tolist())
    b = torch.arange(len(end))
    ref = (logits[b, end, prompts.answers[:, 0]] - logits[b, end, prompts.answers[:, 1]]).double()
    np.testing.assert_allclose(got["logit_diff"], ref.numpy(), atol=1e-4)
    per_template = got.groupby("template")["logit_diff"].mean()
    assert len(per_template) == 8 and (per_template > 0).all(), per_template
    assert got["logit_diff"].mean() > 2.0
    corr = ioi.ioi_logit_diff(smol, prompts, corrupted=True)
    assert corr["logit_diff"].mean() < got["logit_diff"].mean() - 2.0, "the ABC corruption must remove the IO cue"


def test_head_patching_at_end_equals_hook_loop(smol, prompts):
    sub = prompts.template(0)
    layer, end = 28, int(sub.positions["end"].iloc[0])
    got = ioi.ioi_head_patching(smol, sub, sites=("END",), layers=[layer])
    _, cache = smol.run_with_cache(sub.corrupted.tokens)
    name = f"blocks.{layer}.attn.hook_z"
    b = torch.arange(len(sub))
    ref = []
    with torch.no_grad():
        for h in range(smol.cfg.n_heads):
            def fn(act, hook, h=h):
                act = act.clone()
                act[:, end, h] = cache[name][:, end, h]
                return act

            lg = smol.run_with_hooks(sub.clean.tokens, fwd_hooks=[(name, fn)])[:, end]
            ref.append(float((lg[b, sub.answers[:, 0]] - lg[b, sub.answers[:, 1]]).double().mean()))
    np.testing.assert_allclose(got["value"], ref, atol=1e-4)


def test_ioi_attention_equals_pattern(smol, prompts):
    sub = prompts.subset(range(4))
    att = ioi.head_attention(smol, sub)
    _, cache = smol.run_with_cache(sub.clean.tokens, names_filter=lambda n: n == "blocks.20.attn.hook_pattern")
    pat = cache["blocks.20.attn.hook_pattern"]
    p = sub.positions
    ref = np.mean([pat[i, :, p["end"][i], p["io"][i]].numpy() for i in range(4)], axis=0)
    np.testing.assert_allclose(att[att["layer"] == 20]["end_to_io"], ref, atol=1e-5)


def test_induction_heads(smol):
    """Top induction heads attend along the stripe, the second repeat is easy, and ablating the
    top heads hurts it far more than ablating random heads."""
    b = ind.repeated_tokens(smol, seq_len=12, n_seqs=2, seed=0)
    sc = ind.induction_scores(smol, b)
    top = sc.sort_values("score", ascending=False).head(3)
    assert top["score"].min() > 0.4, top
    base = ind.induction_losses(smol, b)
    assert (base["gap"] > 3).all(), base
    out = ind.induction_ablation(smol, b, sc, k=3, kind="zero", n_random=2, seed=0)
    assert out.loc[1, "increase"] > 1.0 and out.loc[1, "increase"] > 3 * out["increase"].iloc[2:].abs().max(), out
