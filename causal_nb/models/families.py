"""Which model families the kit handles, checked once where a model enters it.

A family is a Hugging Face ``config.model_type``. Each one listed here is covered by
``tests/unit/test_families.py`` on a tiny random-weight model: ``patch`` and zero/mean
``ablate`` of heads, neurons, MLPs and blocks equal a plain one-forward-per-unit hook loop
(which in turn equals the Hugging Face model with the head zeroed at its output projection's
input), ``score`` runs (magnitude = the Hugging Face weight norms), masked pruning equals
zero-ablation and, for ``PHYSICAL_FAMILIES``, physical pruning equals masked.

The decoders: GPT-2; the Llama-style q/k/v/o + gate/up/down families (Llama, Mistral, Qwen2,
Qwen3, Gemma 1/2; explicit ``head_dim``, Qwen3's per-head q/k norms, Gemma's scaled embeddings
and soft-caps); OPT (pre-LN only: post-LN OPT, and OPT whose ``word_embed_proj_dim`` differs
from ``hidden_size``, as opt-350m, are refused by name); GPT-NeoX/Pythia (fused per-head QKV,
partial rotary; parallel or sequential residual: the engine's resume-after-a-sublayer fast
paths fall back to full block replay); BLOOM (ALiBi, which the engine passes to replayed
blocks and slices to a sliced layer's kept heads). A family that is not listed is
refused by name rather than run with silently wrong numbers. Vision transformers
(``VISION_FAMILIES``: ViT) are analysed through ``engine.vision.ImageClassificationTask`` and
pruned masked and physically (``tests/unit/test_vit.py``); the LM task refuses them.

The encoder-decoder T5 (``SEQ2SEQ_FAMILIES``) is tested in ``tests/unit/test_t5.py``: it loads
as a bridge and is read with ``engine.seq2seq.Seq2SeqTask`` (ablate, patch, score with the
gradient methods, evaluate: ``tests/unit/test_t5_analyses.py``), its units per stack and
attention kind; ``prune`` slices its heads and neurons, zero or mean fill (``pruning.seq2seq``).
"""

from __future__ import annotations

__all__ = ["ANALYSIS_FAMILIES", "ENCODER_FAMILIES", "ENCODER_TASK_CALLS", "MASKED_ONLY", "PHYSICAL_FAMILIES",
           "PRUNING_FAMILIES", "SEQ2SEQ_FAMILIES", "VISION_FAMILIES", "UnsupportedModelError", "check_loadable",
           "check_supported", "family", "refuse_encoder", "refuse_seq2seq"]

#: Families pruned both ways: masked (output weights zeroed) and physical (weights sliced).
PHYSICAL_FAMILIES: tuple[str, ...] = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "opt",
                                        "gpt_neox", "bloom")

#: Families that can be pruned masked only, with the reason physical slicing is refused (none
#: at present: the route for a family whose slicing is not yet exact).
MASKED_ONLY: dict[str, str] = {}

#: Families ``prune`` handles (masked; physical too for ``PHYSICAL_FAMILIES``).
PRUNING_FAMILIES: tuple[str, ...] = PHYSICAL_FAMILIES + tuple(MASKED_ONLY)

#: Families the analyses (patch, ablate, score, evaluate...) are tested exact on.
ANALYSIS_FAMILIES: tuple[str, ...] = PRUNING_FAMILIES

#: Why a known family is refused (none at present; shown in the error).
_WHY: dict[str, str] = {}


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
        purpose: ``"analysis"`` (loading, patching, ablation, scoring), ``"pruning"`` (masked)
            or ``"physical"`` (physical pruning).

    Returns:
        The family name.
    """
    name = family(model)
    if name in VISION_FAMILIES and purpose in ("pruning", "physical"):
        return name  # pruned masked and physical (tests/unit/test_vit.py); analysed through ImageClassificationTask
    refuse_encoder(model, purpose)
    allowed = {"pruning": PRUNING_FAMILIES, "physical": PHYSICAL_FAMILIES}.get(purpose, ANALYSIS_FAMILIES)
    name = family(model)
    if purpose == "physical" and name in MASKED_ONLY:
        raise UnsupportedModelError(
            f"model family {name!r} cannot be pruned physically: {MASKED_ONLY[name]}; use prune(..., physical=False) "
            f"(masked: same numbers, same size) or a family of {', '.join(PHYSICAL_FAMILIES)}")
    cfg = getattr(getattr(model, "original_model", model), "config", model)
    if name == "opt" and getattr(cfg, "do_layer_norm_before", True) is False:
        raise UnsupportedModelError(
            "post-LN OPT (do_layer_norm_before=False, as in opt-350m) is not supported: TransformerLens's OPT "
            "bridge expects the final layer norm such models lack and fails under hooks; pre-LN OPT models "
            "(opt-125m, opt-1.3b...) are")
    if name == "opt" and getattr(cfg, "word_embed_proj_dim", None) not in (None, getattr(cfg, "hidden_size", None)):
        raise UnsupportedModelError(
            f"OPT with word_embed_proj_dim {cfg.word_embed_proj_dim} != hidden_size {cfg.hidden_size} (project_in / "
            "project_out around the decoder, as in opt-350m) is not supported: the engine unembeds a replayed "
            "residual without project_out; OPT models whose embedding width equals hidden_size (opt-125m, "
            "opt-1.3b...) are")
    if name not in allowed:
        why = f" ({_WHY[name]})" if name in _WHY else ""
        what = "cannot be pruned yet" if purpose in ("pruning", "physical") else "is not supported yet"
        raise UnsupportedModelError(
            f"model family {name!r} {what}{why} (supported: {', '.join(allowed)}); a family is added once "
            "tests/unit/test_families.py shows it exact (see causal_nb/models/families.py)")
    return name


#: Vision families: they load (``load_model``), are analysed with ``task=ImageClassificationTask(images,
#: labels)`` (``engine.vision``) and pruned masked and physically; the LM task refuses them.
VISION_FAMILIES: tuple[str, ...] = ("vit",)

#: Encoder families: they load (``load_model``) for sentence embeddings
#: (``causal_nb.models.embeddings``) and take an encoder task in ``ENCODER_TASK_CALLS`` (pruned
#: masked and physical by ``pruning.encoders``); under the LM task they are refused (``refuse_encoder``).
ENCODER_FAMILIES: tuple[str, ...] = ("bert",)

#: The calls that take an encoder with an encoder task (``task=SentencePairTask(pairs)``); the
#: encoder tests (tests/unit/test_tasks.py, test_prune_encoders.py, test_acdc_tasks.py) cover each.
#: ``patch`` needs paired clean/corrupted inputs, which the sentence-pair task does not have.
ENCODER_TASK_CALLS: tuple[str, ...] = ("ablate", "score", "acdc", "prune", "prune_units", "evaluate",
                                       "encoder_sweep")


def refuse_encoder(model, what: str = "analysis") -> None:
    """Raise ``UnsupportedModelError`` for an encoder under the LM task: patch, ablate, score,
    evaluate and prune then read next-token logits, which an encoder does not predict (a BERT
    booted for masked LM has a random head when the checkpoint is an embedding model). The
    encoder route is ``task=SentencePairTask(pairs)`` (``engine.tasks``) for the calls in
    ``ENCODER_TASK_CALLS``."""
    refuse_seq2seq(model, what)
    name = family(model)
    if name in VISION_FAMILIES:
        raise UnsupportedModelError(
            f"model family {name!r} is a vision transformer: the {what} with the default LM task reads next-token "
            "logits of text prompts, which an image classifier does not predict. Pass images through the image "
            "task instead: task=cnb.ImageClassificationTask(images, labels) (ablate, patch, score and acdc read "
            "the class logits on the CLS token; images from e.g. cnb.load_fashion_mnist('test'))")
    if name in ENCODER_FAMILIES:
        raise UnsupportedModelError(
            f"model family {name!r} is an encoder: the {what} with the default LM task reads next-token logits, "
            "which an encoder does not predict. Pass an encoder task instead: task=cnb.SentencePairTask(pairs) "
            f"({', '.join(ENCODER_TASK_CALLS)} take it and read the pooled sentence embeddings, cosine per pair; "
            "patch needs paired clean/corrupted inputs the pair task lacks; see also "
            "cnb.sentence_embeddings / similarity_eval / probe_eval), or use a decoder family "
            f"({', '.join(ANALYSIS_FAMILIES)})")


#: Encoder-decoder families: they load (``load_model``) and are read by
#: ``engine.seq2seq.Seq2SeqTask`` (ablate, patch, score, prune, evaluate); the decoder-LM task refuses them.
SEQ2SEQ_FAMILIES: tuple[str, ...] = ("t5",)


def refuse_seq2seq(model, what: str = "analysis") -> None:
    """Raise ``UnsupportedModelError`` for an encoder-decoder under a task that is not seq2seq:
    the LM task feeds one token sequence and reads next-token logits of it, while T5 needs
    source tokens for its encoder and target tokens for its decoder."""
    name = family(model)
    if name in SEQ2SEQ_FAMILIES:
        raise UnsupportedModelError(
            f"model family {name!r} is an encoder-decoder: the {what} with the default LM task (or a sentence-pair "
            "task) feeds one token sequence, while it needs source and target sequences. Pass "
            "task=cnb.Seq2SeqTask(sources, targets) to ablate, patch, score, acdc or evaluate (units 'enc_head', "
            "'dec_head', 'cross_head', 'enc_neuron', 'dec_neuron'...); prune takes its score tables")


def check_loadable(model) -> str:
    """``check_supported`` for loading: an encoder or encoder-decoder family loads too."""
    name = family(model)
    return name if name in ENCODER_FAMILIES + SEQ2SEQ_FAMILIES + VISION_FAMILIES else check_supported(model)
