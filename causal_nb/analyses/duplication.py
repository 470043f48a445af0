"""Duplicate heads: heads whose outputs over a prompt set are nearly the same direction.

Each head's output (z_h @ W_O[h], [batch, pos, d_model]) over the real positions of the
prompts is flattened into one vector; heads are compared pairwise by cosine similarity or
Euclidean distance, with random vectors of the same shapes as a control. Agglomerative
clustering (scipy) groups near-duplicates; keeping one representative per cluster is a
pruning rule ("balanced": clusters within each layer; "imbalanced": across all layers).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from ..engine.common import prepare
from ..engine.replay import capture

__all__ = ["head_outputs", "head_similarity", "duplicate_clusters", "uniqueness"]


@torch.no_grad()
def head_outputs(model, prompts, n_tokens: int | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Flattened output of every head over the prompts' real positions: [layer*head, features]."""
    pb = prepare(model, prompts, n_tokens)
    cfg = model.cfg
    hooks = [f"blocks.{layer}.attn.hook_z" for layer in range(cfg.n_layers)]
    cap = capture(model, pb.tokens, hooks)
    mask = pb.mask
    rows, labels = [], []
    for layer, hook in enumerate(hooks):
        z = cap.acts[hook].float()[mask]  # [n_real, head, d_head]
        # this layer's own W_O: a physically pruned model's layers keep different head counts
        out = torch.einsum("nhd,hdm->hnm", z, model.blocks[layer].attn.W_O.detach().float())
        for h in range(out.shape[0]):
            rows.append(out[h].flatten().cpu().numpy())
            labels.append((layer, h))
    return np.stack(rows), labels


def head_similarity(model, prompts, kind: str = "cosine", n_tokens: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Square table of pairwise head similarity (``cosine``), distance (``euclidean``), or the
    cosine similarity of random vectors of the same shapes (``random``, the control)."""
    x, labels = head_outputs(model, prompts, n_tokens)
    # float64: sq_i + sq_j - 2 x_i.x_j cancels, and in float32 near-duplicates (the pairs that
    # matter) got distances off by sqrt(float32 eps) * |x|
    x = x.astype(np.float64)
    if kind == "random":
        x = np.random.default_rng(seed).standard_normal(x.shape)
        kind = "cosine"
    if kind == "cosine":
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        m = unit @ unit.T
    elif kind == "euclidean":
        sq = (x**2).sum(1)
        m = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))
    else:
        raise ValueError(f"unknown similarity {kind!r}; valid: 'cosine', 'euclidean', 'random'")
    idx = pd.MultiIndex.from_tuples(labels, names=["layer", "head"])
    return pd.DataFrame(m, index=idx, columns=idx)


def duplicate_clusters(sim: pd.DataFrame, threshold: float = 0.5, selection: str = "imbalanced",
                       norms: pd.Series | None = None) -> pd.DataFrame:
    """Cluster heads whose cosine similarity exceeds ``threshold`` (average linkage) and mark one
    representative per cluster (the largest-norm head, or the first without ``norms``).

    Args:
        sim: a cosine table from ``head_similarity``.
        selection: ``"imbalanced"`` clusters across layers; ``"balanced"`` within each layer.
    """
    if selection not in ("balanced", "imbalanced"):
        raise ValueError(f"selection must be 'balanced' or 'imbalanced', got {selection!r}")
    groups = [sim.index] if selection == "imbalanced" else [
        sim.index[sim.index.get_level_values("layer") == layer] for layer in sorted(set(sim.index.get_level_values("layer")))]
    rows, next_id = [], 0
    for idx in groups:
        sub = sim.loc[idx, idx].to_numpy()
        if len(idx) == 1:
            labels = np.array([1])
        else:
            dist = np.clip(1 - sub, 0, 2)
            np.fill_diagonal(dist, 0)
            labels = fcluster(linkage(squareform(dist, checks=False), "average"), t=1 - threshold, criterion="distance")
        for lab in np.unique(labels):
            members = [idx[i] for i in np.flatnonzero(labels == lab)]
            rep = max(members, key=lambda m: norms.loc[m]) if norms is not None else members[0]
            for m in members:
                rows.append({"layer": m[0], "head": m[1], "cluster": next_id, "size": len(members),
                             "representative": m == rep})
            next_id += 1
    return pd.DataFrame(rows).sort_values(["layer", "head"]).reset_index(drop=True)


def uniqueness(sim: pd.DataFrame) -> np.ndarray:
    """1 - the largest cosine similarity to any other head, per head (higher = less duplicated)."""
    m = sim.to_numpy().copy()
    np.fill_diagonal(m, -np.inf)
    return 1 - m.max(1)
