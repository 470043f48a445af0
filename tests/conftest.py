"""Shared fixtures. Unit tests build tiny random-config models in a temp folder; integration
tests use the bundled models (session-scoped, read-only)."""

from __future__ import annotations

import os

from jaxtyping import install_import_hook

# CAUSAL_NB_TYPECHECK=1 checks every jaxtyping shape annotation in causal_nb at call time
# (beartype) for the whole run. Off by default: it costs 25-40% more CPU on the unit tests
# (measured); tests/unit/test_typecheck.py always runs a representative path under the hook.
if os.environ.get("CAUSAL_NB_TYPECHECK", "0") == "1":
    install_import_hook("causal_nb", "beartype.beartype")

import pytest  # noqa: E402
import torch  # noqa: E402

from causal_nb.zoo.tiny import make_tiny_model


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Tiny GPT-2 and Llama (GQA: 4 query heads, 2 key/value heads) Hugging Face folders."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "gpt2": make_tiny_model(root / "gpt2", "gpt2", n_layers=2, d_model=32, n_heads=4, d_mlp=64, seed=1),
        "llama": make_tiny_model(root / "llama", "llama", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                                 d_mlp=64, seed=2),
    }


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_model(request, tiny_dirs):
    """A tiny TransformerBridge of each architecture (read-only: don't add persistent hooks)."""
    import causal_nb

    torch.manual_seed(0)
    return causal_nb.load_model(tiny_dirs[request.param], device="cpu")


@pytest.fixture(scope="session")
def bert_folder(tmp_path_factory):
    """A tiny random-config sentence-transformers BERT folder (tests/unit/test_encoders.py, test_tasks.py)."""
    from causal_nb.zoo.tiny import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture(scope="session")
def bert(bert_folder):
    import causal_nb as cnb

    return cnb.load_model(bert_folder, device="cpu")
