"""The engine on the bundled models: exact against transformer_lens.patching, attribution
agreement reported, and the shipped token sets recognisably Python vs C++."""

from pathlib import Path

import pytest
import torch
from scipy import stats
from transformer_lens import patching as tlp

import causal_nb as cnb
from causal_nb.data.prompts import TokenBatch
from causal_nb.zoo.tiny import make_tiny_model

N_TOKENS = 24
TOKEN_SETS = Path(__file__).resolve().parents[2] / "token_sets"  # the repository's shipped token sets


@pytest.fixture(scope="module")
def pair(bundled):
    """Clean python prompts; corrupted = first half of the tokens from another prompt."""
    name, model = bundled
    cb = cnb.load_prompts("python", split="test", n=6).tokenize(model, N_TOKENS, pad=False)
    x = cb.tokens.clone()
    x[:, 1 : N_TOKENS // 2] = torch.roll(cb.tokens, 1, 0)[:, 1 : N_TOKENS // 2]
    xb = TokenBatch(x, cb.mask.clone(), cb.ids)
    _, cache = model.run_with_cache(cb.tokens)
    tgt = cb.tokens[:, 1:]

    def metric(logits):
        return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tgt[..., None])[..., 0].mean()

    return name, model, cb, xb, cache, metric


def test_heads_exact_against_transformer_lens(pair):
    name, model, cb, xb, cache, metric = pair
    ref = tlp.get_act_patch_attn_head_out_all_pos(model, xb.tokens, cache, metric)
    df = cnb.patch(model, cb, xb, unit="head", progress=False)
    assert torch.allclose(torch.tensor(df.value.values).view(ref.shape), ref.double(), atol=1e-5)
    assert ref.abs().max() > 0


@pytest.mark.parametrize(("unit", "peer"), [("mlp", tlp.get_act_patch_mlp_out), ("resid", tlp.get_act_patch_resid_pre)])
def test_layer_units_exact_against_transformer_lens(pair, unit, peer):
    name, model, cb, xb, cache, metric = pair
    ref = peer(model, xb.tokens, cache, metric)
    df = cnb.patch(model, cb, xb, unit=unit, positions=range(N_TOKENS), per_position=True, progress=False)
    ours = torch.tensor(df.sort_values(["layer", "pos"]).value.values).view(ref.shape)
    assert torch.allclose(ours, ref.double(), atol=1e-5)


def test_attribution_agreement_is_reported(pair, record_property):
    """Attribution patching tracks exact head patching on the trained models (measured, not assumed)."""
    name, model, cb, xb, *_ = pair
    exact = cnb.patch(model, cb, xb, unit="head", progress=False).value.values
    for method in ("attribution", "eap-ig"):
        est = cnb.patch(model, cb, xb, unit="head", method=method, progress=False).value.values
        r, rho = stats.pearsonr(est, exact)[0], stats.spearmanr(est, exact)[0]
        record_property(f"{name}_{method}_pearson", round(float(r), 3))
        record_property(f"{name}_{method}_spearman", round(float(rho), 3))
        assert r > 0.5, (method, r, rho)


CPP_LIKE = {"::", "std", "{", "}", "->", "#", "<", ">", "const", "&", "&&", "||", "++", "template", "typename",
            "this", "_", "__", "allocator", "namespace", "GLIBCXX", "nullptr", "void", "size_t", "pointer", "traits",
            "atomic", "/**", "*/", ";", "throw", "protected", "private", "bool", "erase", "-*-", "inline", "ifndef",
            "PB", "INTEL", "ATen", "cond", "hash"}
PY_LIKE = {"def", "self", "elif", "None", '"""', '."""', "import", "True", "False", "__init__", ">>>", "dict",
           "lambda", "print", "class", "module", "method", "methods", "widget", "tk", "turtle", "Handler", "Test",
           "Example", "options", ":", "**", ".__", "text", "parser", "command", "window", "Name"}


def test_shipped_token_sets_are_python_vs_cpp(bundled):
    """python__cpp holds C++ tokens (promoted in Python runs by C++ activity), cpp__python Python ones."""
    name, model = bundled
    for (a, b), like in {("python", "cpp"): CPP_LIKE, ("cpp", "python"): PY_LIKE}.items():
        ts = cnb.TokenSet.load(cnb.token_set_path(TOKEN_SETS, name, a, b), model)
        top = {t.strip() for t in ts.tokens[:30]}
        other = PY_LIKE if like is CPP_LIKE else CPP_LIKE
        assert len(top & like) >= 3, (a, b, ts.tokens[:30])
        assert len(top & like) > len(top & other), (a, b, ts.tokens[:30])


def test_token_set_from_another_tokenizer_is_refused(bundled, tmp_path):
    name, _ = bundled
    tiny = cnb.load_model(make_tiny_model(tmp_path / "tiny", "gpt2"), device="cpu")
    path = cnb.token_set_path(TOKEN_SETS, name, "python", "cpp")
    with pytest.raises(cnb.TokenSetError, match="token ids would mean other tokens"):
        cnb.TokenSet.load(path, tiny)
