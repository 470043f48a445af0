"""Structured pruning of BERT-family sentence encoders: heads, MLP neurons and blocks.

``prune``/``prune_units`` come here for an encoder (with ``task=SentencePairTask(pairs)``).
The units are the task's: a head is its ``attn.hook_z`` slice, a neuron its ``mlp.hook_post``
entry, a block the attention and MLP output denses before BERT's add-and-norm (the layer then
leaves ``LN2(LN1(x))``; see ``SentencePairTask``). Masked pruning zeroes the removed units'
output weights (a block's denses, biases too), which equals zero-ablating them; physical
pruning slices the weights (``models.hf_encoders``), which equals masked. ``fill="mean"``
folds each removed unit's mean output over the reference sentences (real tokens only, through
the task's forward with its attention mask, as ``ablate(kind="mean")`` averages) into the
output dense's bias, so the pruned model equals mean-ablation of the removed units.
"""

from __future__ import annotations

import torch

from ..models.hf import quiet_loading
from ..models.hf_encoders import (
    ENCODER_ARCH,
    compensate_encoder,
    encoder_layers,
    fit_encoder_heads,
    plain_encoder,
    slice_encoder_heads,
    slice_encoder_neurons,
    zero_encoder_block,
    zero_encoder_units,
)
from .selection import removal_sets

__all__ = ["encoder_unit_means", "prune_encoder_units"]


def encoder_unit_means(model, task, reference, heads: dict, neurons: dict) -> dict[str, torch.Tensor]:
    """Mean ``hook_z`` and ``mlp.hook_post`` of the layers that lose units, over the real
    tokens of ``reference`` (pairs, a task or sentences; None: the task's own sentences)."""
    from ..engine.common import mean_activations  # noqa: PLC0415

    hooks = [f"blocks.{la}.attn.hook_z" for la, v in heads.items() if v]
    hooks += [f"blocks.{la}.mlp.hook_post" for la, v in neurons.items() if v]
    if not hooks:
        return {}
    batch = task.prepare(model) if reference is None else task.reference_batch(model, reference)
    with torch.no_grad():
        means = mean_activations(model, batch, hooks, task=task)
    return {h: m[0, 0] for h, m in means.items()}


def prune_encoder_units(model, heads: dict, neurons: dict, blocks: list[int], physical: bool, fill: str, reference,
                        task):
    """``prune_units`` for an encoder bridge (arguments checked there; see the module docstring).

    Args:
        heads, neurons: layer -> indices to remove (layers in ``blocks`` already dropped).
        blocks: layers whose attention and MLP outputs are removed (fill must be "zero").
        task: the encoder task (``SentencePairTask``): its forward and tokenizer give the
            reference means for ``fill="mean"``.
    """
    from ..models.bridge_fit import boot_bridge  # noqa: PLC0415

    hf = plain_encoder(model)
    if getattr(hf.config, "causal_nb_pruned", None):
        raise ValueError("this model is already pruned; prune the original model once, with the combined selection "
                         "(prune_units(original, heads=..., neurons=..., task=...))")
    layers = encoder_layers(hf)
    n_layers, n_heads = len(layers), hf.config.num_attention_heads
    d_mlp = layers[0].intermediate.dense.out_features
    remove = removal_sets(heads, neurons, n_layers, n_heads, d_mlp)
    means = encoder_unit_means(model, task, reference, remove["head"], remove["neuron"]) if fill == "mean" else {}
    spec = {"arch": ENCODER_ARCH, "physical": physical, "removed_blocks": blocks, "layers": []}
    for i, layer in enumerate(layers):
        if i in blocks:
            zero_encoder_block(layer)
            entry = {"removed_heads": [], "removed_neurons": [], "fill": fill, "removed_block": True}
            if physical:
                # no neurons at all; one head (zeroed with the rest of the dense) stands in for the
                # attention, since Hugging Face's attention cannot reshape a zero-width projection
                slice_encoder_heads(layer, [0])
                slice_encoder_neurons(layer, [])
                entry.update({"removed_heads": list(range(n_heads)), "removed_neurons": list(range(d_mlp)),
                              "q_heads": [0], "kv_heads": [0], "kv_groups": 1, "zeroed_heads": [0], "neurons": []})
            spec["layers"].append(entry)
            continue
        rh, rn = remove["head"][i], remove["neuron"][i]
        entry = {"removed_heads": rh, "removed_neurons": rn, "fill": fill}
        if fill == "mean":
            compensate_encoder(layer, rh, rn, means.get(f"blocks.{i}.attn.hook_z"), means.get(f"blocks.{i}.mlp.hook_post"))
        if physical:
            keep_h = [h for h in range(n_heads) if h not in set(rh)]
            keep_n = [j for j in range(d_mlp) if j not in set(rn)]
            if rh:
                slice_encoder_heads(layer, keep_h)
            if rn:
                slice_encoder_neurons(layer, keep_n)
            entry.update({"q_heads": keep_h if rh else None, "kv_heads": keep_h if rh else None,
                          "kv_groups": 1 if rh else None, "neurons": keep_n if rn else None})
        else:
            zero_encoder_units(layer, rh, rn)
        spec["layers"].append(entry)
    if physical or fill == "mean":  # the spec rebuilds the shapes on loading and records the fill
        hf.config.causal_nb_pruned = spec
    src = getattr(model, "causal_nb_source", {})
    bridge = boot_bridge(hf, src.get("source"), model.tokenizer, lambda: quiet_loading(False))
    fit_encoder_heads(bridge)
    bridge.causal_nb_source = {**src, "pruned": True}
    bridge.causal_nb_pruned = spec
    return bridge
