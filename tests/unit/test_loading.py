import time

import pytest
import torch
from transformers import AutoModelForCausalLM

import causal_nb as cnb
from causal_nb.models.loading import ModelNotAvailableError, resolve_device, resolve_source


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_local_folder_loads_and_matches_hf(tiny_dirs, arch):
    """The bridge's logits equal the plain Hugging Face model's (an independent computation)."""
    model = cnb.load_model(tiny_dirs[arch], device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_dirs[arch])).eval()
    toks = model.to_tokens(["def add(a, b):", "int main() { return 0; }"])
    with torch.no_grad():
        ours = model(toks, return_type="logits")
        ref = hf(input_ids=toks).logits
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    assert model.causal_nb_source["kind"] == "local"
    assert not model.training


def test_gqa_shapes_survive_loading(tiny_dirs):
    model = cnb.load_model(tiny_dirs["llama"], device="cpu")
    assert model.cfg.n_heads == 4 and model.cfg.n_key_value_heads == 2
    _, cache = model.run_with_cache(model.to_tokens(["x = 1"]))
    assert cache["blocks.0.attn.hook_z"].shape[2] == 4  # one slice per query head
    assert cache["blocks.0.attn.hook_k"].shape[2] == 2  # shared key heads


def test_offline_hub_name_fails_fast_with_help(monkeypatch):
    # A closed local port stands in for an unreachable hub, on any machine.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.time()
    with pytest.raises(ModelNotAvailableError) as e:
        cnb.load_model("some-org/definitely-not-cached-model")
    assert time.time() - t0 < 10
    msg = str(e.value)
    assert "not reachable" in msg and "load_model('/path/to/folder')" in msg
    for name in cnb.list_models():
        assert name in msg


def test_hf_hub_offline_env_is_respected(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="not reachable"):
        resolve_source("some-org/definitely-not-cached-model")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        cnb.load_model(tmp_path)


def test_bad_dtype_and_device():
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        cnb.load_model("whatever", dtype="fp8")
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_device_that_cannot_be_used_is_refused_with_the_fix(tiny_dirs, monkeypatch):
    with pytest.raises(cnb.DeviceError, match=r"device='gpu0' is not a torch device.*device='cpu'"):
        resolve_device("gpu0")
    with pytest.raises(cnb.DeviceError, match="--where meta: only cpu and cuda are supported; pass --where cpu"):
        resolve_device("meta", flag="--where", allowed=("cpu", "cuda"))
    assert resolve_device("meta").type == "meta"  # no allowed list: whatever torch knows
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    # before: torch's "Torch not compiled with CUDA enabled" from deep inside the model's .to()
    with pytest.raises(cnb.DeviceError, match=r"device='cuda:1': this machine has no CUDA device.*device='cpu'"):
        cnb.load_model(tiny_dirs["gpt2"], device="cuda:1")


def test_dtype_is_applied(tiny_dirs):
    model = cnb.load_model(tiny_dirs["gpt2"], device="cpu", dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    # float64: notebook 02 scores in it so that saved scores match on any CPU
    model = cnb.load_model(tiny_dirs["gpt2"], device="cpu", dtype="float64")
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    tokens = torch.tensor([[1, 2, 3]])
    assert model(tokens).dtype == torch.float64
