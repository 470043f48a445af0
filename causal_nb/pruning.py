"""Structured pruning: remove the least important heads and MLP neurons.

``prune`` picks the lowest-scoring units (globally or per layer, at least one head per
layer) and returns a new model: *masked* (same shapes, the pruned units' output weights
zeroed, which equals zero-ablating them) or *physical* (weights sliced, so the model is
smaller and faster). Under grouped-query attention a layer keeps its key/value grouping: where
the surviving groups keep different numbers of query heads, the smaller ones are padded with
removed heads whose output weights are zeroed (exact, and never larger than the dense layer).
The per-layer structure is
stored in the config (``causal_nb_pruned``) so ``save_pruned`` folders load with ``load_model``.
Supports the families in ``causal_nb.families.PRUNING_FAMILIES`` (GPT-2 and the Llama-style
q/k/v/o, gate/up/down decoders); others are refused by name. Head widths come from each
attention module (``head_dim``), not ``hidden_size // n_heads``, which is wrong for Qwen3 and
Gemma checkpoints. Sliced GPT-2 layers are booted through ``bridge_fit.boot_bridge``.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .checks import check_sparsity, check_table_fits, require_scores, strict

__all__ = ["apply_structure", "hf_state", "load_pruned_hf", "plain_hf", "prune", "prune_units", "save_pruned",
           "select_units"]


def _hf(model):
    return model.original_model if hasattr(model, "original_model") else model


def _no_init():
    """Skip the random initialisation of a model whose every weight is loaded next (SmolLM2:
    seconds per copy); a no-op where this transformers version lacks the switch."""
    try:
        from transformers.initialization import no_init_weights  # noqa: PLC0415
    except ImportError:  # older transformers: the weights are initialised, then overwritten
        return contextlib.nullcontext()
    return no_init_weights()


def plain_hf(model, share: bool = False):
    """A plain Hugging Face copy of a bridge's model (the bridge wraps the original modules in
    place, so its ``original_model`` cannot be sliced or saved as is).

    Args:
        share: hold the bridge's own tensors instead of copies (no memory cost; for read-only
            uses such as counting parameters or timing a forward, never for editing).
    """
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    wrapped = _hf(model)
    p = next(wrapped.parameters())
    with _no_init():
        hf = AutoModelForCausalLM.from_config(copy.deepcopy(wrapped.config), dtype=p.dtype)
    spec = getattr(wrapped.config, "causal_nb_pruned", None)
    if spec:
        apply_structure(hf, spec)
    # The bridge registers aliases (ln1, attn.q...) beside the original modules: read the
    # original modules' own tensors, under their Hugging Face names.
    state = hf_state(wrapped)
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=share)
    # the bridge gives bias-free layers a zero bias (lm_head's b_U): dropping a zero bias is exact
    unexpected = [u for u in unexpected if not (u.endswith(".bias") and not state[u].any())]
    tied = bool(getattr(hf.config, "tie_word_embeddings", False))
    missing = [m for m in missing if not (tied and m.startswith("lm_head."))]  # the embedding, when tied
    if missing or unexpected:
        raise RuntimeError(f"could not copy the bridge's weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
    hf.tie_weights()
    return hf.to(p.device).eval()


def hf_state(wrapped) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of a bridge-wrapped model: only its original modules' tensors.

    The bridge replaces each wrapped module by a component that holds it as
    ``_original_component`` next to bridge-only aliases (``ln1``, ``attn.q``...); walking
    through the original components alone gives exactly the Hugging Face parameter names.
    """
    out: dict[str, torch.Tensor] = {}

    def walk(mod: nn.Module, prefix: str) -> None:
        inner = mod._modules.get("_original_component")
        if inner is not None:
            walk(inner, prefix)
            return
        for n, t in mod._parameters.items():
            if t is not None:
                out[prefix + n] = t
        for n, t in mod._buffers.items():
            if t is not None and n not in mod._non_persistent_buffers_set:
                out[prefix + n] = t
        for n, c in mod._modules.items():
            if c is not None:
                walk(c, f"{prefix}{n}.")

    walk(wrapped, "")
    return out


def _arch(hf) -> tuple[str, nn.ModuleList]:
    from .families import check_supported  # noqa: PLC0415

    check_supported(hf, "pruning")
    if hasattr(hf, "transformer") and hasattr(hf.transformer, "h"):
        return "gpt2", hf.transformer.h
    return "llama", hf.model.layers


def _head_dim(arch: str, layer: nn.Module) -> int:
    """One head's width, read from the attention module (Qwen3/Gemma set it apart from d_model)."""
    return layer.attn.head_dim if arch == "gpt2" else layer.self_attn.head_dim


@strict
def select_units(scores: pd.DataFrame, sparsity: float, n_per_layer: int, n_layers: int, budget: str = "global",
                 floor: int = 1) -> dict[int, list[int]]:
    """Indices to remove per layer: the lowest scores, keeping at least ``floor`` per layer.

    Args:
        scores: ``layer``, ``head`` or ``neuron``, ``score`` (higher = more important).
        sparsity: share of units to remove, in [0, 1).
        budget: ``"global"`` (lowest scores anywhere) or ``"per_layer"`` (the same share in each).
    """
    sparsity = check_sparsity(sparsity)
    check_table_fits(scores, require_scores(scores, "select_units"), n_layers, n_per_layer, "select_units")
    if budget not in ("global", "per_layer"):
        raise ValueError(f"budget must be 'global' or 'per_layer', got {budget!r}")
    col = "head" if "head" in scores.columns else "neuron"
    if len(scores) != n_per_layer * n_layers:
        raise ValueError(f"scores cover {len(scores)} units but the model has {n_layers} x {n_per_layer} {col}s: "
                         "were they computed on another model?")
    # Ties broken by position, so selections are reproducible.
    order = scores.sort_values(["score", "layer", col], kind="mergesort")
    removed: dict[int, list[int]] = {layer: [] for layer in range(n_layers)}
    if budget == "per_layer":
        k = min(round(sparsity * n_per_layer), n_per_layer - floor)
        for layer in range(n_layers):
            removed[layer] = sorted(order[order.layer == layer][col].head(k).astype(int).tolist())
        return removed
    target = round(sparsity * n_per_layer * n_layers)
    count = 0
    for layer, idx in zip(order.layer.astype(int), order[col].astype(int)):
        if count == target:
            break
        if n_per_layer - len(removed[layer]) > floor:
            removed[layer].append(idx)
            count += 1
    return {layer: sorted(v) for layer, v in removed.items()}


def _rows(lin: nn.Module, idx: list[int], conv: bool = False) -> nn.Module:
    """Keep output features ``idx`` (Linear rows; Conv1D columns)."""
    if conv:
        new = type(lin)(len(idx), lin.weight.shape[0])
        new.weight.data = lin.weight.data[:, idx].clone()
        new.bias.data = lin.bias.data[idx].clone()
        return new
    new = nn.Linear(lin.in_features, len(idx), bias=lin.bias is not None, dtype=lin.weight.dtype,
                    device=lin.weight.device)
    new.weight.data = lin.weight.data[idx].clone()
    if lin.bias is not None:
        new.bias.data = lin.bias.data[idx].clone()
    return new


def _cols(lin: nn.Module, idx: list[int], conv: bool = False) -> nn.Module:
    """Keep input features ``idx`` (Linear columns; Conv1D rows)."""
    if conv:
        new = type(lin)(lin.weight.shape[1], len(idx))
        new.weight.data = lin.weight.data[idx].clone()
        new.bias.data = lin.bias.data.clone()
        return new
    new = nn.Linear(len(idx), lin.out_features, bias=lin.bias is not None, dtype=lin.weight.dtype,
                    device=lin.weight.device)
    new.weight.data = lin.weight.data[:, idx].clone()
    if lin.bias is not None:
        new.bias.data = lin.bias.data.clone()
    return new


def _span(heads, dh):
    return [h * dh + i for h in heads for i in range(dh)]


def _slice_heads(arch: str, layer: nn.Module, keep: list[int], cfg) -> dict:
    if arch == "gpt2":
        att = layer.attn
        dh, d = att.head_dim, att.embed_dim
        cols = _span(keep, dh)
        att.c_attn = _rows(att.c_attn, cols + [d + c for c in cols] + [2 * d + c for c in cols], conv=True)
        att.c_proj = _cols(att.c_proj, cols, conv=True)
        att.split_size, att.num_heads = len(cols), len(keep)
        return {"q_heads": keep, "kv_heads": keep, "kv_groups": 1}
    att = layer.self_attn
    dh = att.head_dim
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    by_group: dict[int, list[int]] = {}
    for h in keep:
        by_group.setdefault(h // group, []).append(h)
    # repeat_kv needs equal, contiguous groups. Where the kept heads leave groups uneven, the
    # smaller groups are padded back with some of their removed heads, whose output columns are
    # zeroed (exactly removal): the key/value heads stay shared, so the model never grows.
    rep = max(len(v) for v in by_group.values())
    padded: list[int] = []
    for g, hs in by_group.items():
        spare = [h for h in range(g * group, (g + 1) * group) if h not in hs]
        padded += spare[: rep - len(hs)]
        by_group[g] = sorted(hs + spare[: rep - len(hs)])
    q_order = [h for g in sorted(by_group) for h in by_group[g]]
    kv = sorted(by_group)
    att.q_proj, att.o_proj = _rows(att.q_proj, _span(q_order, dh)), _cols(att.o_proj, _span(q_order, dh))
    att.k_proj, att.v_proj = _rows(att.k_proj, _span(kv, dh)), _rows(att.v_proj, _span(kv, dh))
    with torch.no_grad():
        att.o_proj.weight[:, _span([q_order.index(h) for h in padded], dh)] = 0
    att.num_key_value_groups = rep
    return {"q_heads": q_order, "kv_heads": kv, "kv_groups": rep, "zeroed_heads": sorted(padded)}


def _slice_neurons(arch: str, layer: nn.Module, keep: list[int]) -> None:
    if arch == "gpt2":
        layer.mlp.c_fc = _rows(layer.mlp.c_fc, keep, conv=True)
        layer.mlp.c_proj = _cols(layer.mlp.c_proj, keep, conv=True)
        return
    mlp = layer.mlp
    mlp.gate_proj, mlp.up_proj = _rows(mlp.gate_proj, keep), _rows(mlp.up_proj, keep)
    mlp.down_proj = _cols(mlp.down_proj, keep)


def _zero(arch: str, layer: nn.Module, heads: list[int], neurons: list[int], dh: int) -> None:
    with torch.no_grad():
        if arch == "gpt2":
            layer.attn.c_proj.weight[_span(heads, dh)] = 0
            layer.mlp.c_proj.weight[neurons] = 0
        else:
            layer.self_attn.o_proj.weight[:, _span(heads, dh)] = 0
            layer.mlp.down_proj.weight[:, neurons] = 0


def _n_neurons(arch, layer) -> int:
    return layer.mlp.c_fc.weight.shape[1] if arch == "gpt2" else layer.mlp.up_proj.out_features


def apply_structure(hf, spec: dict) -> None:
    """Slice a full-size Hugging Face model in place to a saved pruning spec (for loading)."""
    arch, layers = _arch(hf)
    for layer, s in zip(layers, spec["layers"]):
        if s.get("o_bias") and layer.self_attn.o_proj.bias is None:
            _add_bias(layer.self_attn.o_proj, torch.zeros(()))
        if s.get("down_bias") and layer.mlp.down_proj.bias is None:
            _add_bias(layer.mlp.down_proj, torch.zeros(()))
        if s.get("q_heads") is not None:
            # The saved head order is group-contiguous, so slicing by it rebuilds the same layout.
            _slice_heads(arch, layer, s["q_heads"], hf.config)
        if s.get("neurons") is not None:
            _slice_neurons(arch, layer, s["neurons"])


@strict
def prune(model, scores, sparsity: float, physical: bool = True, budget: str = "global", fill: str = "zero",
          reference=None, n_tokens: int = 64):
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
        reference: prompts for ``fill="mean"``.

    Returns:
        A new ``TransformerBridge``; ``model.causal_nb_pruned`` holds the removed units.
    """
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
                       physical=physical, fill=fill, reference=reference, n_tokens=n_tokens)


def _unit_means(model, reference, n_tokens: int, heads: dict, neurons: dict) -> dict[str, torch.Tensor]:
    """Mean head outputs (hook_z) and neuron activations (hook_post) of the layers that lose units."""
    from .patching import mean_activations, prepare  # noqa: PLC0415

    if reference is None:
        raise ValueError("fill='mean' needs reference prompts (reference=...) to average the removed units over")
    hooks = [f"blocks.{la}.attn.hook_z" for la, v in (heads or {}).items() if v]
    hooks += [f"blocks.{la}.mlp.hook_post" for la, v in (neurons or {}).items() if v]
    if not hooks:
        return {}
    with torch.no_grad():
        means = mean_activations(model, prepare(model, reference, n_tokens), hooks)
    return {h: m[0, 0] for h, m in means.items()}


def _add_bias(lin: nn.Module, b: torch.Tensor) -> None:
    if lin.bias is None:  # Llama's projections have none: give this one a bias
        lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
    lin.bias.data += b.to(lin.bias.dtype)


def _compensate(arch: str, layer: nn.Module, heads: list[int], neurons: list[int], z: torch.Tensor | None,
                post: torch.Tensor | None, dh: int) -> dict:
    """Fold the removed units' mean contribution into the output biases (before they are cut)."""
    flags = {}
    with torch.no_grad():
        if heads:
            zs = z.reshape(-1)[_span(heads, dh)].to(_layer_dtype(layer))
            if arch == "gpt2":
                _add_bias(layer.attn.c_proj, zs @ layer.attn.c_proj.weight[_span(heads, dh)])
            else:
                _add_bias(layer.self_attn.o_proj, layer.self_attn.o_proj.weight[:, _span(heads, dh)] @ zs)
                flags["o_bias"] = True
        if neurons:
            ps = post[neurons].to(_layer_dtype(layer))
            if arch == "gpt2":
                _add_bias(layer.mlp.c_proj, ps @ layer.mlp.c_proj.weight[neurons])
            else:
                _add_bias(layer.mlp.down_proj, layer.mlp.down_proj.weight[:, neurons] @ ps)
                flags["down_bias"] = True
    return flags


def _layer_dtype(layer: nn.Module) -> torch.dtype:
    return next(layer.parameters()).dtype


def _zero_block(arch: str, layer: nn.Module) -> None:
    """Zero a block's attention and MLP outputs (biases too): the residual stream passes through."""
    outs = (layer.attn.c_proj, layer.mlp.c_proj) if arch == "gpt2" else (layer.self_attn.o_proj, layer.mlp.down_proj)
    with torch.no_grad():
        for lin in outs:
            lin.weight.zero_()
            if lin.bias is not None:
                lin.bias.zero_()


def _drop_blocks(arch: str, hf, keep: list[int]) -> None:
    """Delete the other decoder layers; renumber the kept ones and the config to match."""
    owner, name = (hf.transformer, "h") if arch == "gpt2" else (hf.model, "layers")
    layers = getattr(owner, name)
    setattr(owner, name, nn.ModuleList([layers[i] for i in keep]))
    for new, layer in enumerate(getattr(owner, name)):
        att = layer.attn if arch == "gpt2" else layer.self_attn
        if hasattr(att, "layer_idx"):
            att.layer_idx = new  # indexes the KV cache when generating
    if getattr(hf.config, "layer_types", None):
        hf.config.layer_types = [hf.config.layer_types[i] for i in keep]
    hf.config.num_hidden_layers = len(keep)


@strict
def prune_units(model, heads: dict[int, list[int]] | None = None, neurons: dict[int, list[int]] | None = None,
                blocks: list[int] | None = None, physical: bool = True, fill: str = "zero", reference=None,
                n_tokens: int = 64):
    """A copy of ``model`` without the given heads and neurons (layer -> indices) and blocks.

    The explicit-set form of ``prune`` (see there for ``fill``), for selections made elsewhere
    (ACDC, by hand). Every layer must keep at least one head. A removed block (a whole decoder
    layer: ShortGPT-style depth pruning) is deleted when ``physical`` and has its attention and
    MLP outputs zeroed otherwise; both equal zero-ablating the block, and any heads or neurons
    named for it are moot. Layer indices always refer to the unpruned model.
    """
    from .bridge_fit import boot_bridge  # noqa: PLC0415

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
    means = _unit_means(model, reference, n_tokens, heads, neurons) if fill == "mean" else {}

    hf = plain_hf(model)
    arch, layers = _arch(hf)
    cfg = hf.config
    if getattr(cfg, "causal_nb_pruned", None):
        # its layer indices, head counts and added biases would need composing with the new cut
        raise ValueError("this model is already pruned; prune the original model once, with the combined selection "
                         "(prune_units(original, heads=..., neurons=...))")
    n_layers, n_heads = len(layers), cfg.num_attention_heads
    remove = {"head": {i: [] for i in range(n_layers)}, "neuron": {i: [] for i in range(n_layers)}}
    for kind, given in (("head", heads), ("neuron", neurons)):
        for layer, idx in (given or {}).items():
            n = n_heads if kind == "head" else _n_neurons(arch, layers[0])
            if not 0 <= int(layer) < n_layers or any(not 0 <= int(i) < n for i in idx):
                raise ValueError(f"{kind}s {list(idx)} of layer {layer} do not exist (the model has {n_layers} layers "
                                 f"of {n} {kind}s)")
            remove[kind][int(layer)] = sorted({int(i) for i in idx})
    full = [layer for layer, idx in remove["head"].items() if len(idx) >= n_heads]
    if full:
        raise ValueError(f"layer(s) {full} would lose every head; keep at least one head per layer")
    spec = {"arch": arch, "physical": physical, "removed_blocks": blocks, "layers": []}
    for i, layer in enumerate(layers):
        if i in blocks:
            if not physical:
                _zero_block(arch, layer)
                spec["layers"].append({"removed_heads": [], "removed_neurons": [], "fill": fill, "removed_block": True})
            continue  # physical: the layer is dropped below, and the spec lists kept layers only
        keep_h = [h for h in range(n_heads) if h not in set(remove["head"][i])]
        keep_n = [j for j in range(_n_neurons(arch, layer)) if j not in set(remove["neuron"][i])]
        entry = {"removed_heads": remove["head"][i], "removed_neurons": remove["neuron"][i], "fill": fill}
        dh = _head_dim(arch, layer)
        if fill == "mean":
            entry.update(_compensate(arch, layer, remove["head"][i], remove["neuron"][i],
                                     means.get(f"blocks.{i}.attn.hook_z"), means.get(f"blocks.{i}.mlp.hook_post"), dh))
        if physical:
            entry.update(_slice_heads(arch, layer, keep_h, cfg) if remove["head"][i] else
                         {"q_heads": None, "kv_heads": None, "kv_groups": None})
            if remove["neuron"][i]:
                _slice_neurons(arch, layer, keep_n)
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
    from .loading import _quiet_loading  # noqa: PLC0415

    return _quiet_loading(False)


def save_pruned(model, folder: str | Path) -> Path:
    """``save_pretrained`` a (pruned) bridge's Hugging Face model and tokenizer to ``folder``."""
    folder = Path(folder)
    hf = plain_hf(model)
    hf.save_pretrained(str(folder), safe_serialization=True)
    model.tokenizer.save_pretrained(str(folder))
    return folder


def load_pruned_hf(folder: Path, dtype=torch.float32):
    """Rebuild a physically pruned Hugging Face model from ``save_pruned`` output."""
    from safetensors.torch import load_file  # noqa: PLC0415
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

    cfg = AutoConfig.from_pretrained(str(folder))
    spec = json.loads((folder / "config.json").read_text())["causal_nb_pruned"]
    with _no_init():
        hf = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    apply_structure(hf, spec)
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = hf.load_state_dict(state, strict=False)
    tied = bool(getattr(hf.config, "tie_word_embeddings", False))
    missing = [m for m in missing if not (tied and m.startswith("lm_head."))]  # the embedding, when tied
    if missing or unexpected:
        raise ValueError(f"{folder}: weights do not fit the pruned structure (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    hf.tie_weights()
    return hf.to(dtype).eval()
