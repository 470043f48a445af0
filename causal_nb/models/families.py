"""Which model families the kit handles, checked once where a model enters it.

A family is a Hugging Face ``config.model_type``. Each one listed here is covered by
``tests/unit/test_families.py`` on a tiny random-weight model: the engine's head and neuron
ablations equal a plain one-forward-per-unit hook loop (which in turn equals the Hugging Face
model with the head zeroed at its output projection's input), and, for the pruning families,
masked pruning equals zero-ablation and physical pruning equals masked. A family that is not
listed is refused by name rather than run with silently wrong numbers.
"""

from __future__ import annotations

__all__ = ["ANALYSIS_FAMILIES", "ENCODER_FAMILIES", "PRUNING_FAMILIES", "UnsupportedModelError", "check_loadable",
           "check_supported", "family", "refuse_encoder"]

#: Families whose prunable layers are GPT-2 or Llama-style (q/k/v/o and gate/up/down projections).
PRUNING_FAMILIES: tuple[str, ...] = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")

#: Families the analyses (patch, ablate, score, evaluate...) are tested exact on.
ANALYSIS_FAMILIES: tuple[str, ...] = PRUNING_FAMILIES

_WHY = {
    "bloom": "its fused query_key_value layout and ALiBi attention are not handled",
    "opt": "its decoder layout (fc1/fc2, out_proj) is not handled",
    "gpt_neox": "its parallel attention+MLP residual and fused QKV are not handled",
}


class UnsupportedModelError(ValueError):
    """A model family the kit has not been tested exact on."""


def family(model) -> str:
    """The Hugging Face ``model_type`` of a bridge, a Hugging Face model or a config."""
    hf = getattr(model, "original_model", model)
    cfg = getattr(hf, "config", hf)
    return str(getattr(cfg, "model_type", None) or type(hf).__name__)


def check_supported(model, purpose: str = "analysis") -> str:
    """Raise ``UnsupportedModelError`` unless the model's family is tested for ``purpose``.

    Args:
        model: a bridge, a Hugging Face model or its config.
        purpose: ``"analysis"`` (loading, patching, ablation, scoring) or ``"pruning"``.

    Returns:
        The family name.
    """
    refuse_encoder(model, purpose)
    allowed = PRUNING_FAMILIES if purpose == "pruning" else ANALYSIS_FAMILIES
    name = family(model)
    if name not in allowed:
        why = f" ({_WHY[name]})" if name in _WHY else ""
        what = "cannot be pruned yet" if purpose == "pruning" else "is not supported yet"
        raise UnsupportedModelError(
            f"model family {name!r} {what}{why} (supported: {', '.join(allowed)}); a family is added once "
            "tests/unit/test_families.py shows it exact (see causal_nb/models/families.py)")
    return name


#: Encoder families: they load (``load_model``) for sentence embeddings
#: (``causal_nb.models.embeddings``), but the decoder-LM analyses refuse them (``refuse_encoder``).
ENCODER_FAMILIES: tuple[str, ...] = ("bert",)


def refuse_encoder(model, what: str = "analysis") -> None:
    """Raise ``UnsupportedModelError`` for an encoder: patch, ablate, score, evaluate and prune read
    next-token logits, which an encoder does not predict (a BERT booted for masked LM has a
    random head when the checkpoint is an embedding model)."""
    name = family(model)
    if name in ENCODER_FAMILIES:
        raise UnsupportedModelError(
            f"model family {name!r} is an encoder: the {what} reads next-token logits, and encoder tasks "
            "(embedding similarity, probes, masked tokens) are not in the engine yet. Use "
            "cnb.sentence_embeddings / similarity_eval / probe_eval with it, or a decoder family "
            f"({', '.join(ANALYSIS_FAMILIES)})")


def check_loadable(model) -> str:
    """``check_supported`` for loading: an encoder family loads too (for embeddings)."""
    name = family(model)
    return name if name in ENCODER_FAMILIES else check_supported(model)
