"""Structured pruning of an encoder-decoder (T5): heads of its three attention kinds and MLP
neurons, masked (output weights zeroed) or physical (weights sliced, ``models.t5``), saved and
reloaded (``load_model`` rebuilds a saved pruned folder). ``fill="mean"`` folds each removed
unit's mean output over reference pairs (its head's ``z`` or its neuron's ``wo`` input averaged
over the real tokens of its stack, as ``ablate(kind="mean")`` averages) into a bias of the
attention's ``o`` or the MLP's ``wo``, so the pruned model equals mean-ablating the removed
units all at once.

Units are ``Seq2SeqTask``'s (``engine.units.STACK_UNIT_KINDS``): ``enc_head``, ``dec_head``,
``cross_head``, ``enc_neuron``, ``dec_neuron``; layers count within their stack.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from ..core.checks import check_sparsity, require_scores
from ..engine.seq2seq_replay import stack_sizes, unit_count, unit_prefix
from ..engine.units import STACK_UNIT_KINDS
from ..models.hf import hf_state, quiet_loading
from ..models.t5 import HEAD_KINDS, NEURON_KINDS, apply_t5_structure, t5_attention, t5_mlp
from .selection import select_units

__all__ = ["plain_t5", "prune_seq2seq", "prune_seq2seq_units", "save_pruned_seq2seq"]


def plain_t5(model):
    """An editable plain ``T5ForConditionalGeneration`` copy of a T5 bridge (full size)."""
    import copy  # noqa: PLC0415

    from transformers import T5ForConditionalGeneration  # noqa: PLC0415

    wrapped = model.original_model
    if getattr(wrapped.config, "causal_nb_pruned", None):
        raise ValueError("this T5 is already pruned; prune the original model once, with the combined selection")
    p = next(wrapped.parameters())
    hf = T5ForConditionalGeneration(copy.deepcopy(wrapped.config)).to(p.dtype)
    state = hf_state(wrapped)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("embed_tokens.weight") and m != "lm_head.weight"]
    # the bridge gives bias-free layers a zero bias (lm_head's b_U): dropping a zero bias is exact
    unexpected = [u for u in unexpected if not (u.endswith(".bias") and not state[u].any())]
    if missing or unexpected:
        raise RuntimeError(f"could not copy the T5 bridge's weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
    hf.tie_weights()
    return hf.to(p.device).eval()


def _check_removed(model, removed: dict) -> dict:
    out = {}
    for kind, layers in (removed or {}).items():
        if kind not in HEAD_KINDS + NEURON_KINDS:
            raise ValueError(f"unit kind {kind!r} can't be pruned from a T5; kinds: {list(HEAD_KINDS + NEURON_KINDS)}")
        n_layers = stack_sizes(model)[0 if STACK_UNIT_KINDS[kind][0] == "encoder" else 1]
        out[kind] = {}
        for layer, idx in layers.items():
            layer = int(layer)
            if not 0 <= layer < n_layers:
                raise ValueError(f"{kind} layer {layer} does not exist: the stack has layers 0..{n_layers - 1}")
            n = unit_count(model, kind, layer)
            idx = sorted({int(i) for i in idx})
            if any(not 0 <= i < n for i in idx):
                raise ValueError(f"{kind} {idx} of layer {layer} do not all exist (the layer has {n})")
            if kind in HEAD_KINDS and len(idx) >= n:
                raise ValueError(f"{kind} layer {layer} would lose every head; keep at least one")
            out[kind][layer] = idx
    return out


def _boot(hf, model):
    from transformer_lens.model_bridge import TransformerBridge  # noqa: PLC0415

    p = next(hf.parameters())
    src = getattr(model, "causal_nb_source", {}) if model is not None else {}
    with quiet_loading(False):
        bridge = TransformerBridge.boot_transformers(src.get("source") or "t5", hf_model=hf,
                                                     tokenizer=model.tokenizer, device=str(p.device), dtype=p.dtype)
    return bridge.eval()


def _mean_pairs(model, reference, task):
    """The task and batch a mean fill averages over: ``reference`` (a ``Seq2SeqTask`` or
    ``(sources, targets)``), else ``task``'s own pairs."""
    from ..engine.seq2seq import Seq2SeqTask  # noqa: PLC0415

    if task is not None and not isinstance(task, Seq2SeqTask):
        raise TypeError(f"a T5 is pruned with task=cnb.Seq2SeqTask(sources, targets) (or none), not {task!r}")
    if reference is None:
        if task is None:
            raise ValueError("fill='mean' needs the pairs to average over: reference=cnb.Seq2SeqTask(sources, "
                             "targets) or (sources, targets), or task=cnb.Seq2SeqTask(...) (its pairs)")
        return task, task.prepare(model)
    if isinstance(reference, Seq2SeqTask):
        return reference, reference.prepare(model)
    if isinstance(reference, tuple) and len(reference) == 2:
        t = Seq2SeqTask(*reference)
        return t, t.prepare(model)
    raise TypeError("reference= for a T5: a Seq2SeqTask or a (sources, targets) tuple of two lists")


def _mean_biases(model, hf, removed: dict, reference, task) -> dict[str, torch.Tensor]:
    """Per output projection (HF name) the bias that stands in for its removed units: the sum of
    each removed unit's mean input slice times its columns of the full-size weight."""
    hooks = {STACK_UNIT_KINDS[k][1][0].format(l=la): (k, la) for k, d in removed.items() for la, v in d.items() if v}
    if not hooks:
        return {}
    t, batch = _mean_pairs(model, reference, task)
    means = t.mean_activations(model, batch, sorted(hooks))
    dk, out = hf.config.d_kv, {}
    for hook, (kind, layer) in hooks.items():
        idx = removed[kind][layer]
        cols = [h * dk + i for h in idx for i in range(dk)] if kind in HEAD_KINDS else idx
        name = unit_prefix(kind, layer) + (".o" if kind in HEAD_KINDS else ".wo")
        w = hf.get_submodule(name).weight.detach()
        m = means[hook].reshape(-1).to(w.dtype)  # [heads * d_kv] or [d_ff]
        out[name] = out.get(name, 0) + w[:, cols] @ m[cols]
    return out


def prune_seq2seq_units(model, removed: dict[str, dict[int, list[int]]], physical: bool = True, fill: str = "zero",
                        reference=None, task=None):
    """A copy of a T5 bridge without the given units: ``{kind: {layer: [indices]}}``.

    Args:
        removed: per unit kind (``HEAD_KINDS``, ``NEURON_KINDS``) and layer of its stack, the
            heads or neurons to remove; every attention layer keeps at least one head.
        physical: slice the weights (smaller); False zeroes the removed units' o / wo columns
            (same shapes; equals zero-ablating them all at once).
        fill: ``"zero"``, or ``"mean"``: the removed units' mean output over ``reference`` (a
            ``Seq2SeqTask`` or ``(sources, targets)``; default: ``task``'s pairs) becomes a bias
            of their o / wo, so the result equals mean-ablating them all at once.
        task: a ``Seq2SeqTask``, the default pairs of ``fill="mean"``.

    Returns:
        A new bridge; ``.causal_nb_pruned`` holds the spec.
    """
    if fill not in ("zero", "mean"):
        raise ValueError(f"unknown fill {fill!r}; valid: 'zero', 'mean'")
    if fill == "zero" and reference is not None:
        raise ValueError("reference= is not used with fill='zero' (it is the pairs fill='mean' averages over)")
    removed = _check_removed(model, removed)
    hf = plain_t5(model)
    spec = {"arch": "t5", "physical": bool(physical),
            "removed": {k: {str(la): v for la, v in d.items()} for k, d in removed.items()}}
    biases = _mean_biases(model, hf, removed, reference, task) if fill == "mean" else {}
    if fill == "mean":
        spec.update(fill="mean", biased=sorted(biases))
    if not physical:
        dk = hf.config.d_kv
        with torch.no_grad():
            for kind, layers in removed.items():
                for layer, idx in layers.items():
                    if kind in HEAD_KINDS:
                        t5_attention(hf, kind, layer).o.weight[:, [h * dk + i for h in idx for i in range(dk)]] = 0
                    else:
                        t5_mlp(hf, kind, layer).wo.weight[:, idx] = 0
    if physical or biases:  # the spec rebuilds the sliced shapes and the added biases on loading
        apply_t5_structure(hf, spec)
        hf.config.causal_nb_pruned = spec
    with torch.no_grad():
        for name, b in biases.items():
            hf.get_submodule(name).bias.copy_(b)
    bridge = _boot(hf, model)
    bridge.causal_nb_source = {**getattr(model, "causal_nb_source", {}), "pruned": True}
    bridge.causal_nb_pruned = spec
    return bridge


def prune_seq2seq(model, scores, sparsity: float, physical: bool = True, budget: str = "global", fill: str = "zero",
                  reference=None, task=None):
    """The lowest-scoring share of each scored unit kind removed (``score(..., task=Seq2SeqTask)``
    tables of ``HEAD_KINDS``/``NEURON_KINDS``; one table per kind, or a list); ``fill``,
    ``reference`` and ``task`` as in ``prune_seq2seq_units``."""
    sparsity = check_sparsity(sparsity)
    tables = scores if isinstance(scores, (list, tuple)) else [scores]
    removed = {}
    for t in tables:
        if not isinstance(t, pd.DataFrame):
            raise TypeError(f"prune needs score() tables, got {type(t).__name__}")
        kind = t.attrs.get("unit")
        if kind not in HEAD_KINDS + NEURON_KINDS:
            raise ValueError(f"a T5 is pruned from score tables of {list(HEAD_KINDS + NEURON_KINDS)} "
                             f"(score(model, task=cnb.Seq2SeqTask(...), method=..., unit=...)); this one scores "
                             f"{kind!r}")
        if kind in removed:
            raise ValueError(f"two score tables of {kind!r}: pass one per unit kind")
        require_scores(t, "prune", units=("head", "neuron"))
        n_layers = stack_sizes(model)[0 if STACK_UNIT_KINDS[kind][0] == "encoder" else 1]
        removed[kind] = select_units(t, sparsity, unit_count(model, kind, 0), n_layers, budget)
    return prune_seq2seq_units(model, removed, physical, fill=fill, reference=reference, task=task)


def save_pruned_seq2seq(model, folder) -> Path:
    """Save a (pruned) T5 bridge's weights, config (with the spec) and tokenizer."""
    from safetensors.torch import save_file  # noqa: PLC0415

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    import copy  # noqa: PLC0415

    hf = model.original_model
    cfg = copy.deepcopy(hf.config)
    cfg.output_attentions = False  # the bridge's setting (it hooks the patterns), not the model's
    cfg.save_pretrained(str(folder))
    # embed_tokens and lm_head are tied to shared.weight; T5 has no biases (the bridge's are zeros)
    state = {k: v.detach().contiguous().cpu() for k, v in hf_state(hf).items()
             if not k.endswith("embed_tokens.weight") and k != "lm_head.weight"
             and not (k.endswith(".bias") and not v.any())}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.tokenizer.save_pretrained(str(folder))
    return folder


