import pytest
import torch

import causal_nb as cnb
from causal_nb.analyses.reverse import layer_effects, model_key, tokenizer_fingerprint

A = ["def add(a, b): return a + b and more", "class Point: def __init__(self)"]
B = ["int main() { return 0; } // xx yy z", "std::vector<int> v; v.push_back(1)"]


def test_mean_shift_effect_matches_a_hand_computed_hook_run(tiny_model):
    """Layer-1 effect = mean over A's positions of logsoftmax(shifted run) - logsoftmax(run)."""
    eff = layer_effects(tiny_model, A, B, n_tokens=8, progress=False)
    assert eff.shape == (tiny_model.cfg.n_layers, tiny_model.cfg.d_vocab)
    ab = cnb.PromptSet.from_texts(A).tokenize(tiny_model, 8)
    bb = cnb.PromptSet.from_texts(B).tokenize(tiny_model, 8)
    hook = "blocks.1.hook_resid_pre"
    _, ca = tiny_model.run_with_cache(ab.tokens)
    _, cb_ = tiny_model.run_with_cache(bb.tokens)
    shift = cb_[hook].mean((0, 1)) - ca[hook].mean((0, 1))  # all positions real here
    assert ab.mask.all() and bb.mask.all()
    patched = tiny_model.run_with_hooks(ab.tokens, fwd_hooks=[(hook, lambda act, hook: act + shift)])
    base = tiny_model(ab.tokens)
    ref = (torch.log_softmax(patched[:, :-1], -1) - torch.log_softmax(base[:, :-1], -1)).mean((0, 1))
    assert torch.allclose(eff[1], ref, atol=1e-5)


def test_token_set_roundtrip_and_provenance(tiny_model, tmp_path):
    ts = cnb.reverse_intervention(tiny_model, A, B, top_k=7, n_tokens=8, model_name="tiny", progress=False)
    assert len(ts) == 7 and ts.scores == sorted(ts.scores, reverse=True)
    assert tiny_model.tokenizer.bos_token_id not in ts.ids
    eff = layer_effects(tiny_model, A, B, n_tokens=8, progress=False).mean(0)
    assert ts.ids[0] == int(eff[1:].argmax()) + 1  # token 0 is the special token
    assert len(ts.per_layer_ranks) == 7 and len(ts.per_layer_ranks[0]) == tiny_model.cfg.n_layers
    path = ts.save(cnb.token_set_path(tmp_path, "tiny", "a", "b"))
    back = cnb.TokenSet.load(path, tiny_model)
    assert back.ids == ts.ids and back.tokenizer == tokenizer_fingerprint(tiny_model)
    assert list(back.to_frame().columns[:4]) == ["rank", "id", "token", "score"]


def test_paired_mode_and_bad_arguments(tiny_model):
    ts = cnb.reverse_intervention(tiny_model, A, B, top_k=3, site="mlp", mode="paired", n_tokens=8, progress=False)
    assert len(ts) == 3
    with pytest.raises(ValueError, match="reproduces B's run exactly"):
        cnb.reverse_intervention(tiny_model, A, B, mode="paired", n_tokens=8)
    with pytest.raises(ValueError, match="unknown site"):
        cnb.reverse_intervention(tiny_model, A, B, site="embed", n_tokens=8)
    with pytest.raises(FileNotFoundError, match="no token set there"):
        cnb.TokenSet.load("/nonexistent/x.json")


def test_model_key_keeps_paths_relative(tmp_path):
    assert model_key(str(tmp_path / "my-model")) == "my-model"
    assert model_key("EleutherAI/pythia-70m") == "EleutherAI/pythia-70m"
    assert cnb.token_set_path("root", str(tmp_path / "m"), "a", "b").as_posix() == "root/m/a__b.json"
