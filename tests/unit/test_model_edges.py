"""Edge cases of copying, tokenising and loading models: plain_hf's weight check, tokenizers
without a BOS token, and the hub offline flag staying scoped to one load."""

import os
import types

import pytest
import torch
from torch import nn

import causal_nb as cnb
from causal_nb.data.prompts import PromptSetError
from causal_nb.models import loading
from causal_nb.models.hf import plain_hf

P = ["def add(a, b): return a + b", "int main() { return 0; }"]


def test_plain_hf_refuses_a_weight_the_plain_model_lacks(tiny_dirs):
    model = cnb.load_model(tiny_dirs["gpt2"], device="cpu")  # fresh: this test edits it
    att = model.original_model.transformer.h[0].attn.original_component
    att.register_parameter("stray", nn.Parameter(torch.ones(3)))
    with pytest.raises(RuntimeError, match=r"unexpected \['transformer.h.0.attn.stray'\]"):
        plain_hf(model)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # tied, untied embeddings
def test_plain_hf_lm_head_missing_is_only_fine_when_tied(tiny_dirs, arch):
    model = cnb.load_model(tiny_dirs[arch], device="cpu")
    tokens = model.to_tokens(P)
    with torch.no_grad():
        want = model(tokens)
        assert torch.allclose(plain_hf(model)(tokens).logits, want, atol=1e-5)
    assert model.original_model.config.tie_word_embeddings == (arch == "gpt2")
    model.original_model.lm_head.original_component._parameters["weight"] = None  # the bridge loses lm_head
    if arch == "gpt2":  # tied: the copy takes it from the embedding
        with torch.no_grad():
            assert torch.allclose(plain_hf(model)(tokens).logits, want, atol=1e-5)
    else:
        with pytest.raises(RuntimeError, match=r"missing \['lm_head.weight'\]"):
            plain_hf(model)


def _tokenizer(bos: bool, eos: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "[UNK]": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = {"bos_token": "<s>"} if bos else {}
    kw.update({"eos_token": "</s>"} if eos else {})
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **kw)


def test_tokenize_without_bos_prepends_eos_or_refuses():
    ps = cnb.PromptSet.from_texts(["a b a", "b"])
    assert ps.tokenize(_tokenizer(True, True), 4).tokens.tolist() == [[0, 2, 3, 2], [0, 3, 0, 0]]
    tb = ps.tokenize(_tokenizer(False, True), 4)  # no BOS: EOS stands in, as in TransformerLens
    assert tb.tokens.tolist() == [[1, 2, 3, 2], [1, 3, 1, 1]] and tb.mask[1].tolist() == [True, True, False, False]
    with pytest.raises(PromptSetError, match="neither a BOS nor an EOS.*prepend_bos=False"):
        ps.tokenize(_tokenizer(False, False), 4)
    assert ps.tokenize(_tokenizer(False, False), 3, prepend_bos=False).tokens.tolist()[0] == [2, 3, 2]


def test_cached_hub_load_is_offline_for_that_load_only(monkeypatch):
    from huggingface_hub import constants
    from transformer_lens.model_bridge import TransformerBridge

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading, "_hub_cached", lambda name: name == "org/cached")
    seen = {}

    def fake_boot(source, **kw):
        seen["env"], seen["const"] = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
        cfg = types.SimpleNamespace(model_type="gpt2")
        return types.SimpleNamespace(eval=lambda: None, original_model=types.SimpleNamespace(config=cfg))

    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(fake_boot))
    cnb.load_model("org/cached", device="cpu")
    assert seen == {"env": "1", "const": True}  # offline while loading the cached model
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE is False  # and restored
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: os.environ.get("HF_HUB_OFFLINE") is None)
    assert loading.resolve_source("org/not-cached") == ("hub", "org/not-cached")  # not a false "unreachable"
