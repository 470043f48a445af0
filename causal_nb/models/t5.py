"""The Hugging Face T5 sliced per head and neuron, and rebuilt from a saved pruning spec.

Physical slicing keeps a head's q/k/v rows and its o columns, a neuron's wi (wi_0/wi_1) row and
its wo column. The relative position bias needs care: T5 computes it once per stack, in the
first block's self-attention (its ``relative_attention_bias`` table has one column per head),
and every later block adds that same [1, heads, q, k] bias to its own scores, head by head.
Once layers keep different heads no sliced table can serve them all, so the table stays whole
(buckets x heads: 32 x 8 numbers in T5-small) and each self-attention takes its kept heads' rows
of the full bias at use; the first block hands the full bias on to the later ones (hooks that
``apply_t5_structure`` installs, and rebuilds on loading from the spec in ``config.json``). The
cross-attention bias is zero (T5's cross-attention has no position bias; the mask is added
apart from it), so each cross-attention builds its own zeros.

A spec is ``{"arch": "t5", "physical": True, "removed": {kind: {layer: [indices]}}}`` with the
kinds ``HEAD_KINDS`` and ``NEURON_KINDS`` (``engine.seq2seq``'s unit kinds) and layers counted
within their stack. A mean-filled spec (``"fill": "mean"``, physical or not) also lists in
``"biased"`` the output projections (``o``, ``wo``; bias-free in T5) that carry the removed
units' mean output as a bias; ``apply_t5_structure`` gives them a zero bias for the weights to
fill.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

__all__ = ["HEAD_KINDS", "NEURON_KINDS", "apply_t5_structure", "load_pruned_t5", "set_bias", "slice_t5_heads",
           "t5_attention", "t5_mlp"]

HEAD_KINDS = ("enc_head", "dec_head", "cross_head")
NEURON_KINDS = ("enc_neuron", "dec_neuron")


def _stack(hf, kind: str):
    return hf.encoder if kind.startswith("enc") else hf.decoder


def t5_attention(hf, kind: str, layer: int) -> nn.Module:
    """The T5Attention of a head kind in ``layer`` of its stack."""
    blk = _stack(hf, kind).block[layer]
    return blk.layer[1].EncDecAttention if kind == "cross_head" else blk.layer[0].SelfAttention


def t5_mlp(hf, kind: str, layer: int) -> nn.Module:
    """The DenseReluDense (wi/wo) of a neuron kind in ``layer`` of its stack."""
    return _stack(hf, kind).block[layer].layer[-1].DenseReluDense


def set_bias(hf, name: str, bias: torch.Tensor | None = None) -> nn.Linear:
    """Give the bias-free projection ``name`` (e.g. ``encoder.block.0.layer.0.SelfAttention.o``) a
    bias: ``bias``, or zeros. Returns the new Linear (weights shared with the old one)."""
    parent, attr = name.rsplit(".", 1)
    old = hf.get_submodule(name)
    w = old.weight
    new = nn.Linear(old.in_features, old.out_features, bias=True, dtype=w.dtype, device=w.device)
    new.weight = old.weight
    with torch.no_grad():
        new.bias.copy_(torch.zeros(old.out_features) if bias is None else bias)
    setattr(hf.get_submodule(parent), attr, new)
    return new


def _rows(lin: nn.Linear, idx: list[int]) -> nn.Linear:
    new = nn.Linear(lin.in_features, len(idx), bias=False, dtype=lin.weight.dtype, device=lin.weight.device)
    new.weight.data = lin.weight.data[idx].clone()
    return new


def _cols(lin: nn.Linear, idx: list[int]) -> nn.Linear:
    new = nn.Linear(len(idx), lin.out_features, bias=False, dtype=lin.weight.dtype, device=lin.weight.device)
    new.weight.data = lin.weight.data[:, idx].clone()
    return new


def slice_t5_heads(att: nn.Module, keep: list[int]) -> None:
    """Keep only heads ``keep`` of a T5 attention module, in place (its q/k/v rows and o columns;
    the relative position bias is the stack's, fitted by ``apply_t5_structure``)."""
    dk = att.key_value_proj_dim
    cols = [h * dk + i for h in keep for i in range(dk)]
    att.q, att.k, att.v = (_rows(m, cols) for m in (att.q, att.k, att.v))
    att.o = _cols(att.o, cols)
    att.n_heads, att.inner_dim = len(keep), len(cols)


def _fit_position_bias(hf, stack: nn.Module, keeps: dict[int, list[int]], n_full: int) -> None:
    """Self-attention of a stack whose layers keep heads ``keeps`` (layer -> kept heads): the
    full bias is computed in layer 0 and handed on; each layer adds its kept heads' rows."""
    first = stack.block[0].layer[0]
    att0 = first.SelfAttention
    full: dict[str, torch.Tensor] = {}
    if 0 in keeps:
        compute = att0.compute_bias
        k0 = list(keeps[0])

        def compute_bias(*args, **kwargs):
            full["bias"] = compute(*args, **kwargs)  # [1, n_full, q, k]
            return full["bias"][:, k0]

        att0.compute_bias = compute_bias

        def hand_on(mod, args, out):  # noqa: ARG001 - the forward hook signature
            return (out[0], full.pop("bias", out[1]), *out[2:])

        first.register_forward_hook(hand_on)
    for layer, keep in keeps.items():
        if layer:
            stack.block[layer].layer[0].SelfAttention.register_forward_pre_hook(_taker(keep, n_full), with_kwargs=True)


def _taker(keep: list[int], n_full: int):
    """A pre-hook giving a sliced self-attention its kept heads' rows of the stack's full bias."""
    keep = list(keep)

    def take(mod, args, kwargs):  # noqa: ARG001 - the forward pre-hook signature
        bias = kwargs.get("position_bias")
        if bias is not None and bias.shape[1] == n_full:
            kwargs["position_bias"] = bias[:, keep]
        return args, kwargs

    return take


def _own_zero_bias(mod, args, kwargs):  # noqa: ARG001 - the forward pre-hook signature
    kwargs["position_bias"] = None  # T5's cross-attention bias is zeros: each layer builds its own
    return args, kwargs


def apply_t5_structure(hf, spec: dict) -> None:
    """Slice a full-size T5 in place to a pruning spec (a physical one) and fit its position
    biases; give the spec's ``"biased"`` projections a zero bias."""
    n_full = hf.config.num_heads
    removed = spec["removed"] if spec.get("physical", True) else {}
    for kind in HEAD_KINDS:
        keeps = {}
        for layer, idx in removed.get(kind, {}).items():
            layer = int(layer)
            keep = [h for h in range(n_full) if h not in set(idx)]
            if idx:
                slice_t5_heads(t5_attention(hf, kind, layer), keep)
                keeps[layer] = keep
        if not keeps:
            continue
        if kind == "cross_head":
            for blk in hf.decoder.block:
                blk.layer[1].EncDecAttention.register_forward_pre_hook(_own_zero_bias, with_kwargs=True)
        else:
            _fit_position_bias(hf, _stack(hf, kind), keeps, n_full)
    for kind in NEURON_KINDS:
        for layer, idx in removed.get(kind, {}).items():
            if not idx:
                continue
            ff = t5_mlp(hf, kind, int(layer))
            keep = [i for i in range(ff.wo.in_features) if i not in set(idx)]
            for name in ("wi", "wi_0", "wi_1"):
                if hasattr(ff, name):
                    setattr(ff, name, _rows(getattr(ff, name), keep))
            ff.wo = _cols(ff.wo, keep)
    for name in spec.get("biased", ()):
        set_bias(hf, name)


def load_pruned_t5(folder, dtype=torch.float32):
    """Rebuild a physically pruned T5 from ``save_pruned_seq2seq`` output (plain Hugging Face)."""
    from safetensors.torch import load_file  # noqa: PLC0415
    from transformers import AutoConfig, T5ForConditionalGeneration  # noqa: PLC0415

    folder = Path(folder)
    cfg = AutoConfig.from_pretrained(str(folder))
    spec = json.loads((folder / "config.json").read_text())["causal_nb_pruned"]
    hf = T5ForConditionalGeneration(cfg).to(dtype)
    apply_t5_structure(hf, spec)
    missing, unexpected = hf.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    missing = [m for m in missing if not m.endswith("embed_tokens.weight") and m != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"{folder}: weights do not fit the pruned structure (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    hf.tie_weights()
    return hf.eval()
