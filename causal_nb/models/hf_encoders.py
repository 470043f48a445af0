"""BERT-family encoders behind a bridge: the plain Hugging Face copy, slicing, rebuilding.

The encoder counterpart of ``models.hf`` for structured pruning of a post-LN BERT
(``BertForMaskedLM`` as the bridge boots it, ``bert.encoder.layer[i]``):

- a head is a ``attention_head_size`` slice of ``attention.self.query/key/value``'s rows and of
  ``attention.output.dense``'s input columns (its ``hook_z`` slice), a neuron a row of
  ``intermediate.dense`` and a column of ``output.dense`` (its ``mlp.hook_post`` entry);
- a block is what ``SentencePairTask``'s ``"block"`` unit ablates: the attention output dense
  and the MLP output dense (weights and biases) before their add-and-norm, so the layer leaves
  ``LN2(LN1(x))``; the two LayerNorms stay. Physically the MLP is cut to no neurons and the
  attention to one head whose output columns are zeroed (Hugging Face's attention reshapes by
  ``-1`` heads, which a zero-width projection cannot take), so the block's cost is one head's
  Q/K/V;
- head widths come from each layer's ``attention_head_size``; the per-layer structure is kept
  in the config (``causal_nb_pruned``, the same keys as the decoders': ``q_heads``,
  ``kv_heads``, ``neurons``) so ``load_pruned_encoder`` rebuilds the shapes of a saved folder;
- ``fit_encoder_heads`` gives each sliced layer's attention bridge its own head count (its
  per-head weight views ``W_Q``/``W_O`` read it); the bridge's hook reshapes already follow the
  projection widths.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from .families import ENCODER_FAMILIES, family
from .hf import add_bias, head_span, hf_state, keep_cols, keep_rows

__all__ = ["ENCODER_ARCH", "SENTENCE_FILES", "apply_encoder_structure", "copy_sentence_files", "encoder_base",
           "encoder_head_width", "encoder_layers", "encoder_out_projections", "fit_encoder_heads", "is_encoder",
           "compensate_encoder", "load_pruned_encoder", "plain_encoder", "slice_encoder_heads", "slice_encoder_neurons",
           "warnings_off", "zero_encoder_block", "zero_encoder_units"]

#: The layout name pruning specs record for BERT-family encoders.
ENCODER_ARCH = "bert"

#: The sentence-transformers files that say how embeddings are pooled (``embeddings.pooling_config``).
SENTENCE_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "config_sentence_transformers.json")


def is_encoder(model) -> bool:
    """Whether a bridge, Hugging Face model or config is of an encoder family (BERT)."""
    return family(model) in ENCODER_FAMILIES


def _wrapped(model):
    return model.original_model if hasattr(model, "original_model") else model


def _orig(m: nn.Module) -> nn.Module:
    """The Hugging Face module under a bridge component (or ``m`` itself)."""
    return m._modules.get("_original_component") or m


def encoder_base(hf) -> nn.Module:
    """The bare encoder (``BertModel``) of a ``BertFor...`` model, or the model itself."""
    return getattr(hf, "bert", hf)


def encoder_layers(hf) -> nn.ModuleList:
    """The encoder layers (``BertLayer``) of a plain Hugging Face BERT."""
    return encoder_base(hf).encoder.layer


def encoder_out_projections(layer: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The attention output dense (its input is the heads' concatenated ``z``) and the MLP
    output dense (its input is the neurons) of a ``BertLayer``."""
    return layer.attention.output.dense, layer.output.dense


def encoder_head_width(layer: nn.Module) -> int:
    return int(layer.attention.self.attention_head_size)


@contextlib.contextmanager
def _no_init():
    """Skip the random initialisation of weights that are loaded next (where supported)."""
    try:
        from transformers.initialization import no_init_weights  # noqa: PLC0415
    except ImportError:
        yield
        return
    with no_init_weights():
        yield


def _build(cfg, cls, dtype) -> nn.Module:
    with _no_init():
        hf = cls(cfg)
    return hf.to(dtype)


def plain_encoder(model, share: bool = False) -> nn.Module:
    """A plain Hugging Face copy of an encoder bridge's model, of the class the bridge wraps
    (``BertForMaskedLM``); ``share`` holds the bridge's own tensors (read-only uses)."""
    wrapped = _wrapped(model)
    p = next(wrapped.parameters())
    hf = _build(copy.deepcopy(wrapped.config), type(wrapped), p.dtype)
    spec = getattr(wrapped.config, "causal_nb_pruned", None)
    if spec:
        apply_encoder_structure(hf, spec)
    state = hf_state(wrapped)
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=share)
    if missing or unexpected:
        raise RuntimeError(f"could not copy the encoder's weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
    hf.tie_weights()
    return hf.to(p.device).eval()


def slice_encoder_heads(layer: nn.Module, keep: list[int]) -> None:
    """Keep heads ``keep`` of a ``BertLayer``: Q/K/V rows and the output dense's columns."""
    sa = layer.attention.self
    cols = head_span(keep, encoder_head_width(layer))
    sa.query, sa.key, sa.value = (keep_rows(p, cols) for p in (sa.query, sa.key, sa.value))
    layer.attention.output.dense = keep_cols(layer.attention.output.dense, cols)
    sa.num_attention_heads, sa.all_head_size = len(keep), len(cols)


def slice_encoder_neurons(layer: nn.Module, keep: list[int]) -> None:
    """Keep MLP neurons ``keep`` of a ``BertLayer`` (none is allowed: the MLP then adds its bias)."""
    with warnings_off():  # nn.Linear warns that initialising a zero-width weight does nothing
        layer.intermediate.dense = keep_rows(layer.intermediate.dense, keep)
        layer.output.dense = keep_cols(layer.output.dense, keep)


@contextlib.contextmanager
def warnings_off():
    """Silence Python warnings inside the block."""
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def zero_encoder_units(layer: nn.Module, heads: list[int], neurons: list[int]) -> None:
    """Zero the removed heads' and neurons' output weights (masked pruning = zero ablation)."""
    o, down = encoder_out_projections(layer)
    with torch.no_grad():
        o.weight[:, head_span(heads, encoder_head_width(layer))] = 0
        down.weight[:, neurons] = 0


def zero_encoder_block(layer: nn.Module) -> None:
    """Zero both output denses (weights and biases): the sublayers add nothing before their norms."""
    with torch.no_grad():
        for lin in encoder_out_projections(layer):
            lin.weight.zero_()
            lin.bias.zero_()


def compensate_encoder(layer: nn.Module, heads: list[int], neurons: list[int], z, post) -> None:
    """Fold the removed units' mean contribution (``z``: hook_z mean [head, d_head]; ``post``:
    mlp.hook_post mean [d_mlp]) into the output biases, before the units are cut or zeroed."""
    o, down = encoder_out_projections(layer)
    with torch.no_grad():
        if heads:
            span = head_span(heads, encoder_head_width(layer))
            add_bias(o, o.weight[:, span] @ z.reshape(-1)[span].to(o.weight.dtype))
        if neurons:
            add_bias(down, down.weight[:, neurons] @ post[neurons].to(down.weight.dtype))


def apply_encoder_structure(hf, spec: dict) -> None:
    """Slice a full-size BERT in place to a saved pruning spec (for loading and copying)."""
    for layer, s in zip(encoder_layers(hf), spec["layers"]):
        if s.get("q_heads") is not None:
            slice_encoder_heads(layer, s["q_heads"])
        if s.get("neurons") is not None:
            slice_encoder_neurons(layer, s["neurons"])


def load_pruned_encoder(folder: Path, dtype=torch.float32) -> nn.Module:
    """Rebuild a physically pruned encoder from ``save_pruned`` output."""
    import transformers  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    folder = Path(folder)
    cfg = transformers.AutoConfig.from_pretrained(str(folder))
    spec = json.loads((folder / "config.json").read_text())["causal_nb_pruned"]
    arch = (getattr(cfg, "architectures", None) or ["BertForMaskedLM"])[0]
    cls = getattr(transformers, arch, None) or transformers.BertForMaskedLM
    hf = _build(cfg, cls, dtype)
    apply_encoder_structure(hf, spec)
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = hf.load_state_dict(state, strict=False)
    tied = bool(getattr(cfg, "tie_word_embeddings", True))
    missing = [m for m in missing if not (tied and m.startswith("cls.predictions.decoder."))]  # the embedding
    if missing or unexpected:
        raise ValueError(f"{folder}: weights do not fit the pruned encoder structure (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    hf.tie_weights()
    return hf.to(dtype).eval()


def copy_sentence_files(source, folder) -> list[str]:
    """Copy the sentence-transformers pooling files from the model's source folder to ``folder``
    (so a saved pruned encoder pools as the original does); the names copied."""
    src = Path(str(source or ""))
    copied = []
    for name in SENTENCE_FILES:
        f = src / name
        if f.is_file():
            (Path(folder) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, Path(folder) / name)
            copied.append(name)
    return copied


def fit_encoder_heads(bridge) -> None:
    """Give each attention bridge of a (sliced) BERT its own layer's head count."""
    for i, layer in enumerate(encoder_layers(_wrapped(bridge))):
        sa = _orig(_orig(_orig(layer).attention).self)
        n = _orig(sa.query).weight.shape[0] // sa.attention_head_size
        ab = bridge.blocks[i].attn
        if n != ab.config.n_heads:
            cfg = copy.copy(ab.config)
            object.__setattr__(cfg, "n_heads", n)
            if getattr(cfg, "n_key_value_heads", None):
                object.__setattr__(cfg, "n_key_value_heads", n)
            ab.config = cfg
