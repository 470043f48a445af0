"""Structured pruning: remove the least important heads and MLP neurons (and whole blocks).

``prune`` picks the lowest-scoring units (``selection.select_units``: globally or per layer,
at least one head per layer) and returns a new model: *masked* (same shapes, the pruned units'
output weights zeroed, which equals zero-ablating them) or *physical* (weights sliced, so the
model is smaller and faster). Under grouped-query attention a layer keeps its key/value
grouping: where the surviving groups keep different numbers of query heads, the smaller ones
are padded with removed heads whose output weights are zeroed (exact, and never larger than the
dense layer). The per-layer structure is
stored in the config (``causal_nb_pruned``) so ``save_pruned`` folders load with ``load_model``.
Supports the families in ``causal_nb.models.families.PRUNING_FAMILIES`` (GPT-2, the
Llama-style q/k/v/o, gate/up/down decoders, OPT, GPT-NeoX and BLOOM, whose sliced layers
take their kept heads' rows of the ALiBi bias); others are refused by name. The slicing itself
lives in ``causal_nb.models.hf``. Sliced GPT-2, GPT-NeoX and BLOOM layers are booted through
``bridge_fit.boot_bridge``. A BERT sentence encoder is pruned with ``task=SentencePairTask(pairs)``
(``pruning.encoders``); under the default LM task it is refused, naming that task.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..core.checks import check_sparsity, check_table_fits, require_scores, strict
from ..engine.tasks import as_task
from ..models.families import SEQ2SEQ_FAMILIES, check_supported, family
from ..models.hf import (
    add_bias,
    attention,
    head_span,
    head_width,
    hf_arch,
    layer_list,
    n_neurons,
    out_projections,
    plain_hf,
    quiet_loading,
    set_layer_list,
    slice_heads,
    slice_neurons,
)
from ..models.hf_encoders import copy_sentence_files, is_encoder, plain_encoder
from ..models.hf_vision import is_vision
from .encoders import prune_encoder_units
from .selection import removal_sets, select_units
from .seq2seq import prune_seq2seq, save_pruned_seq2seq

__all__ = ["prune", "prune_units", "save_pruned"]


def _zero(arch: str, layer: nn.Module, heads: list[int], neurons: list[int], dh: int) -> None:
    with torch.no_grad():
        if arch == "gpt2":
            layer.attn.c_proj.weight[head_span(heads, dh)] = 0
            layer.mlp.c_proj.weight[neurons] = 0
        else:
            o_proj, down_proj = out_projections(arch, layer)
            o_proj.weight[:, head_span(heads, dh)] = 0
            down_proj.weight[:, neurons] = 0


@strict
def prune(model, scores, sparsity: float, physical: bool = True, budget: str = "global", fill: str = "zero",
          reference=None, n_tokens: int = 64, task=None):
    """A pruned copy of ``model``: the lowest-scoring heads and/or neurons removed.

    Args:
        model: a ``TransformerBridge`` from ``load_model`` (left untouched).
        scores: a ``score`` table of heads or neurons, or a list of both.
        sparsity: share of each unit kind to remove, in [0, 1).
        physical: slice the weights (smaller, faster); ``False`` zeroes the pruned units'
            output weights instead (same shapes; equals zero-ablation).
        budget: ``"global"`` or ``"per_layer"``; every layer keeps at least one head.
        fill: what a removed unit leaves behind: ``"zero"`` (nothing), or ``"mean"``: its mean
            output over ``reference`` prompts, folded into the output projection's bias (the
            "bias compensation" of FLAP, An et al. 2024), so the pruned model equals
            mean-ablation of the removed units, masked or physical alike.
        reference: prompts for ``fill="mean"``; with ``SentencePairTask``, pairs, a task or
            sentences (default: the task's own sentences), read through ``reference_batch``; a
            ViT: images, an ``ImageSet`` or an ``ImageClassificationTask`` (default: the task's
            own images; the mean is over images and token positions).
        task: None (the decoder LM) or, for a BERT sentence encoder, ``SentencePairTask(pairs)``
            (``pruning.encoders``: heads, neurons and blocks as that task's units; an encoder
            without it is refused); for a ViT, ``ImageClassificationTask(images, labels)``
            (required, as the analyses require it; its images are ``fill="mean"``'s default
            reference).

    A T5 takes ``score(..., task=Seq2SeqTask(...))`` tables of ``enc_head``, ``dec_head``,
    ``cross_head``, ``enc_neuron`` or ``dec_neuron`` (one per kind), and ``sparsity`` applies to
    each kind (``pruning.seq2seq``); ``fill="mean"`` averages over ``reference=`` pairs (a
    ``Seq2SeqTask`` or ``(sources, targets)``) or ``task=Seq2SeqTask(...)``'s own.

    Returns:
        A new ``TransformerBridge``; ``model.causal_nb_pruned`` holds the removed units.
    """
    if family(model) in SEQ2SEQ_FAMILIES:  # a T5: heads of three attention kinds, two stacks
        return prune_seq2seq(model, scores, sparsity, physical, budget, fill=fill, reference=reference, task=task)
    task = as_task(task)
    task.check_model(model, "prune")  # an encoder needs its task; a pair task needs an encoder
    sparsity = check_sparsity(sparsity)
    tables = scores if isinstance(scores, (list, tuple)) else [scores]
    cfg = model.cfg
    for t in tables:
        u = require_scores(t, "prune", units=("head", "neuron", "block"))
        check_table_fits(t, u, cfg.n_layers, {"head": cfg.n_heads, "neuron": cfg.d_mlp}.get(u, 1), "prune")
    remove = {}
    for t in tables:
        kind = "head" if "head" in t.columns else "neuron" if "neuron" in t.columns else t.attrs.get("unit")
        if kind == "block":
            # whole blocks: the lowest-scoring share of layers, at least one layer kept
            k = min(round(sparsity * cfg.n_layers), cfg.n_layers - 1)
            remove["block"] = sorted(t.sort_values(["score", "layer"], kind="mergesort").layer.astype(int)[:k])
            continue
        if kind not in ("head", "neuron"):
            raise ValueError("scores must be a head or neuron table (columns layer, head|neuron, score) or a block "
                             "table (from score(..., unit='block'))")
        n = cfg.n_heads if kind == "head" else cfg.d_mlp
        remove[kind] = select_units(t, sparsity, n, cfg.n_layers, budget)
    return prune_units(model, heads=remove.get("head"), neurons=remove.get("neuron"), blocks=remove.get("block"),
                       physical=physical, fill=fill, reference=reference, n_tokens=n_tokens, task=task)


def _unit_means(model, reference, n_tokens: int, heads: dict, neurons: dict) -> dict[str, torch.Tensor]:
    """Mean head outputs (hook_z) and neuron activations (hook_post) of the layers that lose units."""
    from ..engine.common import mean_activations, prepare  # noqa: PLC0415

    if reference is None:
        raise ValueError("fill='mean' needs reference prompts (reference=...) to average the removed units over")
    hooks = [f"blocks.{la}.attn.hook_z" for la, v in (heads or {}).items() if v]
    hooks += [f"blocks.{la}.mlp.hook_post" for la, v in (neurons or {}).items() if v]
    if not hooks:
        return {}
    if is_vision(model):  # reference images (a tensor, ImageSet or ImageClassificationTask); positions averaged too
        from ..engine.vision import image_batch  # noqa: PLC0415

        batch = image_batch(model, reference, what="reference images")
    else:
        batch = prepare(model, reference, n_tokens)
    with torch.no_grad():
        means = mean_activations(model, batch, hooks)
    return {h: m[0, 0] for h, m in means.items()}


def _compensate(arch: str, layer: nn.Module, heads: list[int], neurons: list[int], z: torch.Tensor | None,
                post: torch.Tensor | None, dh: int) -> dict:
    """Fold the removed units' mean contribution into the output biases (before they are cut)."""
    flags = {}
    with torch.no_grad():
        if heads:
            zs = z.reshape(-1)[head_span(heads, dh)].to(_layer_dtype(layer))
            if arch == "gpt2":
                add_bias(layer.attn.c_proj, zs @ layer.attn.c_proj.weight[head_span(heads, dh)])
            else:
                o_proj = out_projections(arch, layer)[0]
                add_bias(o_proj, o_proj.weight[:, head_span(heads, dh)] @ zs)
                flags["o_bias"] = True
        if neurons:
            ps = post[neurons].to(_layer_dtype(layer))
            if arch == "gpt2":
                add_bias(layer.mlp.c_proj, ps @ layer.mlp.c_proj.weight[neurons])
            else:
                down_proj = out_projections(arch, layer)[1]
                add_bias(down_proj, down_proj.weight[:, neurons] @ ps)
                flags["down_bias"] = True
    return flags


def _layer_dtype(layer: nn.Module) -> torch.dtype:
    return next(layer.parameters()).dtype


def _zero_block(arch: str, layer: nn.Module) -> None:
    """Zero a block's attention and MLP outputs (biases too): the residual stream passes through."""
    outs = (layer.attn.c_proj, layer.mlp.c_proj) if arch == "gpt2" else out_projections(arch, layer)
    with torch.no_grad():
        for lin in outs:
            lin.weight.zero_()
            if lin.bias is not None:
                lin.bias.zero_()


def _drop_blocks(arch: str, hf, keep: list[int]) -> None:
    """Delete the other decoder layers; renumber the kept ones and the config to match."""
    layers = layer_list(arch, hf)
    set_layer_list(arch, hf, nn.ModuleList([layers[i] for i in keep]))
    for new, layer in enumerate(layer_list(arch, hf)):
        att = attention(arch, layer)
        if hasattr(att, "layer_idx"):
            att.layer_idx = new  # indexes the KV cache when generating
    if getattr(hf.config, "layer_types", None):
        hf.config.layer_types = [hf.config.layer_types[i] for i in keep]
    hf.config.num_hidden_layers = len(keep)


@strict
def prune_units(model, heads: dict[int, list[int]] | None = None, neurons: dict[int, list[int]] | None = None,
                blocks: list[int] | None = None, physical: bool = True, fill: str = "zero", reference=None,
                n_tokens: int = 64, task=None):
    """A copy of ``model`` without the given heads and neurons (layer -> indices) and blocks.

    The explicit-set form of ``prune`` (see there for ``fill``), for selections made elsewhere
    (ACDC, by hand). Every layer must keep at least one head. A removed block (a whole decoder
    layer: ShortGPT-style depth pruning) is deleted when ``physical`` and has its attention and
    MLP outputs zeroed otherwise; both equal zero-ablating the block, and any heads or neurons
    named for it are moot. Layer indices always refer to the unpruned model.

    A BERT encoder takes ``task=SentencePairTask(pairs)`` (``pruning.encoders``): a block is then
    its attention and MLP output denses (the layer leaves ``LN2(LN1(x))``, as the task's
    ``"block"`` unit), and ``reference`` goes through the task.
    """
    from ..models.bridge_fit import boot_bridge  # noqa: PLC0415

    if family(model) in SEQ2SEQ_FAMILIES:
        raise ValueError("prune_units takes a decoder LM's layer -> indices; a T5's units have a stack and an "
                         "attention kind: use causal_nb.pruning.seq2seq.prune_seq2seq_units(model, "
                         "{'enc_head': {layer: [heads]}, 'cross_head': ..., 'dec_neuron': ...})")
    task = as_task(task)
    task.check_model(model, "prune_units")
    if fill not in ("zero", "mean"):
        raise ValueError(f"fill must be 'zero' or 'mean', got {fill!r}")
    blocks = sorted({int(b) for b in blocks or []})
    if blocks and fill == "mean":
        raise ValueError("whole blocks are removed with fill='zero' only (a block's mean output has no bias to go to)")
    if blocks and (blocks[0] < 0 or blocks[-1] >= model.cfg.n_layers):
        raise ValueError(f"blocks {blocks} do not all exist: the model has layers 0..{model.cfg.n_layers - 1}")
    if len(blocks) >= model.cfg.n_layers:
        raise ValueError("that removes every block; keep at least one")
    heads = {la: v for la, v in (heads or {}).items() if int(la) not in blocks}
    neurons = {la: v for la, v in (neurons or {}).items() if int(la) not in blocks}
    if is_encoder(model):
        return prune_encoder_units(model, heads, neurons, blocks, physical, fill, reference, task)
    if reference is None and is_vision(model):  # a ViT's mean defaults to the task's own images
        reference = task
    means = _unit_means(model, reference, n_tokens, heads, neurons) if fill == "mean" else {}

    hf = plain_hf(model)
    arch, layers = hf_arch(hf)
    if physical:
        check_supported(hf, "physical")
    cfg = hf.config
    if getattr(cfg, "causal_nb_pruned", None):
        # its layer indices, head counts and added biases would need composing with the new cut
        raise ValueError("this model is already pruned; prune the original model once, with the combined selection "
                         "(prune_units(original, heads=..., neurons=...))")
    n_layers, n_heads = len(layers), cfg.num_attention_heads
    remove = removal_sets(heads, neurons, n_layers, n_heads, n_neurons(arch, layers[0]))
    spec = {"arch": arch, "physical": physical, "removed_blocks": blocks, "layers": []}
    for i, layer in enumerate(layers):
        if i in blocks:
            if not physical:
                _zero_block(arch, layer)
                spec["layers"].append({"removed_heads": [], "removed_neurons": [], "fill": fill, "removed_block": True})
            continue  # physical: the layer is dropped below, and the spec lists kept layers only
        keep_h = [h for h in range(n_heads) if h not in set(remove["head"][i])]
        keep_n = [j for j in range(n_neurons(arch, layer)) if j not in set(remove["neuron"][i])]
        entry = {"removed_heads": remove["head"][i], "removed_neurons": remove["neuron"][i], "fill": fill}
        dh = head_width(arch, layer)
        if fill == "mean":
            entry.update(_compensate(arch, layer, remove["head"][i], remove["neuron"][i],
                                     means.get(f"blocks.{i}.attn.hook_z"), means.get(f"blocks.{i}.mlp.hook_post"), dh))
        if physical:
            entry.update(slice_heads(arch, layer, keep_h, cfg) if remove["head"][i] else
                         {"q_heads": None, "kv_heads": None, "kv_groups": None})
            if remove["neuron"][i]:
                slice_neurons(arch, layer, keep_n)
            entry["neurons"] = keep_n if remove["neuron"][i] else None
        else:
            _zero(arch, layer, remove["head"][i], remove["neuron"][i], dh)
        spec["layers"].append(entry)
    if physical and blocks:
        _drop_blocks(arch, hf, [i for i in range(n_layers) if i not in blocks])
    if physical or fill == "mean":  # the spec rebuilds the shapes (and added biases) on loading
        hf.config.causal_nb_pruned = spec
    src = getattr(model, "causal_nb_source", {})
    bridge = boot_bridge(hf, src.get("source"), model.tokenizer, _quiet)
    bridge.causal_nb_source = {**src, "pruned": True}
    bridge.causal_nb_pruned = spec
    return bridge


def _quiet():
    return quiet_loading(False)


def save_pruned(model, folder: str | Path) -> Path:
    """``save_pretrained`` a (pruned) bridge's Hugging Face model and tokenizer to ``folder``
    (an encoder's sentence-transformers pooling files too, so it pools as before)."""
    if family(model) in SEQ2SEQ_FAMILIES:
        return save_pruned_seq2seq(model, folder)
    folder = Path(folder)
    hf = plain_encoder(model) if is_encoder(model) else plain_hf(model)
    hf.save_pretrained(str(folder), safe_serialization=True)
    if model.tokenizer is not None:  # a ViT has none
        model.tokenizer.save_pretrained(str(folder))
    if is_encoder(model):
        copy_sentence_files(getattr(model, "causal_nb_source", {}).get("source"), folder)
    return folder


