"""A vision transformer (``ViTForImageClassification``) in Hugging Face form: its layers and slicing.

What ``models.hf`` dispatches to for the ``"vit"`` layout: the encoder layers
(``vit.layers``), a layer's attention (``attention``, with separate ``q_proj``/``k_proj``/
``v_proj``/``o_proj``) and MLP (``mlp.fc1``/``fc2``), the Hugging Face class to rebuild a copy
with, and the slicing that physical pruning cuts: a head is ``head_dim`` rows of each of the
query, key and value projections and the same columns of the output projection; a neuron is a
row of ``fc1`` and a column of ``fc2``. ``ViTAttention`` reshapes by ``head_dim`` (``view(...,
-1, head_dim)``), so a sliced layer needs only its head count updated.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .families import VISION_FAMILIES, family

__all__ = ["is_vision", "saved_vit_key", "slice_vit_heads", "slice_vit_neurons", "vision_model_class", "vit_layers",
           "vit_out_projections", "set_vit_layers"]


def is_vision(model) -> bool:
    """Whether a bridge, Hugging Face model or config is of a vision family (ViT)."""
    return family(model) in VISION_FAMILIES


def vision_model_class():
    """The Hugging Face auto class a ViT classifier is rebuilt with (``from_config``)."""
    from transformers import AutoModelForImageClassification  # noqa: PLC0415

    return AutoModelForImageClassification


# transformers 5 writes ViT checkpoints in the pre-flattening layout (``save_pretrained`` reverts
# its own loading renames, conversion_mapping.py's "ViTModel" entry) and renames them back in
# ``from_pretrained``; a pruned folder is loaded without ``from_pretrained``, so the same renames
# are applied here, in the same order (a checkpoint already in module names passes unchanged).
_SAVED_RENAMES = ((r"encoder\.layer\.", "layers."), (r"attention\.query", "q_proj"), (r"attention\.key", "k_proj"),
                  (r"attention\.value", "v_proj"), (r"attention\.output\.dense", "attention.o_proj"),
                  (r"intermediate\.dense", "mlp.fc1"), (r"output\.dense", "mlp.fc2"))


def saved_vit_key(key: str) -> str:
    """A ViT checkpoint key, as ``save_pretrained`` writes it, -> the module's parameter name."""
    for pattern, new in _SAVED_RENAMES:
        key = re.sub(pattern, new, key)
    return key


def vit_layers(hf) -> nn.ModuleList:
    """The encoder layers of a ``ViTForImageClassification`` (``vit.layers``)."""
    return hf.vit.layers


def set_vit_layers(hf, layers: nn.ModuleList) -> None:
    """Replace the encoder layers (dropping whole blocks)."""
    hf.vit.layers = layers


def vit_out_projections(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The attention output projection (input: the heads' concatenated ``z``) and the MLP's
    output projection (input: the neurons)."""
    return layer.attention.o_proj, layer.mlp.fc2


def _rows(lin: nn.Linear, idx: list[int]) -> nn.Linear:
    new = nn.Linear(lin.in_features, len(idx), bias=lin.bias is not None, dtype=lin.weight.dtype,
                    device=lin.weight.device)
    with torch.no_grad():
        new.weight.copy_(lin.weight[idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias[idx])
    return new


def _cols(lin: nn.Linear, idx: list[int]) -> nn.Linear:
    new = nn.Linear(len(idx), lin.out_features, bias=lin.bias is not None, dtype=lin.weight.dtype,
                    device=lin.weight.device)
    with torch.no_grad():
        new.weight.copy_(lin.weight[:, idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return new


def slice_vit_heads(layer: nn.Module, keep: list[int]) -> dict:
    """Keep heads ``keep`` of a ViT layer: their q/k/v rows and output-projection columns."""
    att = layer.attention
    dh = att.head_dim
    span = [h * dh + i for h in keep for i in range(dh)]
    att.q_proj, att.k_proj, att.v_proj = (_rows(p, span) for p in (att.q_proj, att.k_proj, att.v_proj))
    att.o_proj = _cols(att.o_proj, span)
    att.num_attention_heads = len(keep)
    return {"q_heads": list(keep), "kv_heads": list(keep), "kv_groups": 1}


def slice_vit_neurons(layer: nn.Module, keep: list[int]) -> None:
    """Keep MLP neurons ``keep`` of a ViT layer (``fc1`` rows, ``fc2`` columns)."""
    layer.mlp.fc1, layer.mlp.fc2 = _rows(layer.mlp.fc1, keep), _cols(layer.mlp.fc2, keep)
