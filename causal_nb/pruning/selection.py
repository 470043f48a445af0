"""Which units to prune: the lowest scores, globally or per layer, with a floor per layer."""

from __future__ import annotations

import pandas as pd

from ..core.checks import check_sparsity, check_table_fits, require_scores, strict

__all__ = ["removal_sets", "select_units"]


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


def removal_sets(heads, neurons, n_layers: int, n_heads: int, d_mlp: int) -> dict[str, dict[int, list[int]]]:
    """``prune_units``' selections checked and normalised: ``{"head"|"neuron": {layer: sorted
    indices}}`` for every layer (empty lists where nothing goes). An index or layer the model
    lacks, or a layer losing every head, is an error naming it."""
    remove = {"head": {i: [] for i in range(n_layers)}, "neuron": {i: [] for i in range(n_layers)}}
    for kind, given, n in (("head", heads, n_heads), ("neuron", neurons, d_mlp)):
        for layer, idx in (given or {}).items():
            if not 0 <= int(layer) < n_layers or any(not 0 <= int(i) < n for i in idx):
                raise ValueError(f"{kind}s {list(idx)} of layer {layer} do not exist (the model has {n_layers} layers "
                                 f"of {n} {kind}s)")
            remove[kind][int(layer)] = sorted({int(i) for i in idx})
    full = [layer for layer, idx in remove["head"].items() if len(idx) >= n_heads]
    if full:
        raise ValueError(f"layer(s) {full} would lose every head; keep at least one head per layer (or remove the "
                         "whole block: blocks=[...])")
    return remove
