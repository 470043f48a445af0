"""Which heads to remove by duplication: near-identical heads clustered, one kept per cluster.

Each head's output (``z_h @ W_O[h]``) over the real positions of the prompts (from
``analyses.duplication.head_outputs``) is compared between heads. The prompts are first split
into groups (``group_metric``: agglomerative clustering of the prompts' mean head outputs by
``euclidean`` or ``cosine`` distance, or a seeded ``random`` split), the head distances are
computed within each group and averaged over the groups, so two heads count as duplicates only
where they agree on every kind of prompt. Euclidean distances are divided by the group's mean
pairwise distance first (groups of longer prompts would otherwise weigh more); ``metric="random"``
replaces the head outputs by Gaussian vectors of the same shape: the random-pruning control.

Heads are then clustered hierarchically (scipy, average linkage). Removing ``k`` heads is the
partition after the first ``k`` merges (``n - k`` clusters, exactly; ``fcluster`` with
``maxclust`` gives the same partition when no merge heights tie); each cluster keeps one head,
the one whose output has the largest norm, and the others are removed. ``balanced`` clusters
each layer's heads apart and removes the same number from every layer; ``imbalanced`` clusters
all heads together, then moves a representative where a layer would lose every head (where
no move can save it, it merges further and keeps that layer's largest-norm head besides its
cluster's representative: ``extra_kept`` in the selection).
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist, squareform

from ..analyses.duplication import head_outputs
from ..engine.common import prepare

__all__ = ["DISTANCE_METRICS", "PRUNE_METHODS", "DuplicationError", "check_choice", "cut_after_merges", "group_prompts",
           "head_distances", "head_output_table", "select_duplicates"]

DISTANCE_METRICS = ("euclidean", "cosine", "random")
PRUNE_METHODS = ("balanced", "imbalanced")


class DuplicationError(ValueError):
    """A duplication-pruning request that cannot be met; the message names the fix."""


def check_choice(value: str, valid: tuple[str, ...], what: str) -> str:
    if value not in valid:
        raise DuplicationError(f"unknown {what} {value!r}; valid: {', '.join(repr(v) for v in valid)}")
    return value


def head_output_table(model, prompts, n_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Head outputs ``[head, position, d_model]`` over the prompts' real positions (float64),
    the prompt each position belongs to, and the ``(layer, head)`` labels."""
    x, labels = head_outputs(model, prompts, n_tokens)
    mask = prepare(model, prompts, n_tokens).mask.cpu().numpy()
    prompt_of = np.nonzero(mask)[0]  # boolean indexing is batch-major, as head_outputs reads it
    d_model = model.cfg.d_model
    return x.astype(np.float64).reshape(len(labels), len(prompt_of), d_model), prompt_of, labels


def group_prompts(x: np.ndarray, prompt_of: np.ndarray, n_groups: int, group_metric: str, seed: int = 0) -> np.ndarray:
    """A group label (0..n_groups-1) per prompt, from each prompt's mean head outputs."""
    check_choice(group_metric, DISTANCE_METRICS, "group metric")
    n_prompts = int(prompt_of.max()) + 1
    if not 1 <= n_groups <= n_prompts:
        raise DuplicationError(f"n_groups={n_groups}: needs 1..{n_prompts} (the number of prompts)")
    if n_groups == 1:
        return np.zeros(n_prompts, dtype=int)
    if group_metric == "random":
        return np.random.default_rng(seed).permutation(np.arange(n_prompts) % n_groups)
    feats = np.stack([x[:, prompt_of == p].mean(1).ravel() for p in range(n_prompts)])
    labels = fcluster(linkage(pdist(feats, group_metric), "average"), t=n_groups, criterion="maxclust")
    _, dense = np.unique(labels, return_inverse=True)
    return dense


def head_distances(x: np.ndarray, prompt_of: np.ndarray, groups: np.ndarray, metric: str,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The square head distance matrix, averaged over prompt groups, and each head's output norm."""
    check_choice(metric, DISTANCE_METRICS, "metric")
    if metric == "random":
        x = np.random.default_rng(seed).standard_normal(x.shape)
    per_group = []
    for g in np.unique(groups):
        xg = x[:, np.isin(prompt_of, np.flatnonzero(groups == g))].reshape(len(x), -1)
        d = pdist(xg, "euclidean" if metric == "euclidean" else "cosine")
        if metric == "euclidean":
            d = d / max(d.mean(), 1e-300)
        per_group.append(d)
    dist = squareform(np.mean(per_group, axis=0))
    return dist, np.linalg.norm(x.reshape(len(x), -1), axis=1)


def cut_after_merges(z: np.ndarray, n: int, k: int) -> list[list[int]]:
    """Clusters (sorted lists of leaf indices) after the first ``k`` merges of linkage ``z``."""
    members = {i: [i] for i in range(n)}
    for j in range(k):
        a, b = int(z[j, 0]), int(z[j, 1])
        members[n + j] = members.pop(a) + members.pop(b)
    return sorted(sorted(m) for m in members.values())


def _cluster(dist: np.ndarray, idx: list[int], k: int) -> tuple[list[list[int]], list[float]]:
    """Clusters of heads ``idx`` (global indices) after ``k`` merges, and those merges' heights."""
    if k == 0 or len(idx) < 2:
        return [[i] for i in idx], []
    z = linkage(squareform(dist[np.ix_(idx, idx)], checks=False), "average")
    return [[idx[i] for i in c] for c in cut_after_merges(z, len(idx), k)], [float(h) for h in z[:k, 2]]


def select_duplicates(dist: np.ndarray, norms: np.ndarray, labels: list[tuple[int, int]], sparsity: float,
                      method: str) -> dict:
    """Heads to remove at ``sparsity`` (a share of all heads) and the clusters behind them.

    Returns:
        ``removed`` (layer -> heads), ``kept`` (layer -> heads), ``clusters`` (lists of
        ``[layer, head]``, the kept head first) and ``merge_distances`` (the heights of the
        merges made, in order).
    """
    check_choice(method, PRUNE_METHODS, "prune method")
    if not 0 <= sparsity < 1:
        raise DuplicationError(f"sparsity must be in [0, 1), got {sparsity}")
    layers = sorted({la for la, _ in labels})
    by_layer = {la: [i for i, (l2, _) in enumerate(labels) if l2 == la] for la in layers}
    clusters, heights = [], []
    if method == "balanced":
        n_heads = min(len(v) for v in by_layer.values())
        k = round(sparsity * n_heads)
        if k >= n_heads:
            raise DuplicationError(f"sparsity {sparsity} removes {k} of {n_heads} heads in every layer under 'balanced', "
                                   f"that is all of them; use a sparsity below {(n_heads - 0.5) / n_heads:.3f} or "
                                   "method='imbalanced'")
        for la in layers:
            c, h = _cluster(dist, by_layer[la], k)
            clusters += c
            heights += h
    else:
        n = len(labels)
        k = round(sparsity * n)
        if k > n - len(layers):
            raise DuplicationError(f"sparsity {sparsity} removes {k} of {n} heads, leaving fewer than one per layer "
                                   f"({len(layers)} layers); use a sparsity of at most {(n - len(layers)) / n:.3f}")
        clusters, heights = _cluster(dist, list(range(n)), k)
    reps = [max(c, key=lambda i: (norms[i], -i)) for c in clusters]
    forced: list[int] = []
    if method == "imbalanced":
        try:
            reps = _keep_every_layer(clusters, reps, labels, norms)
        except DuplicationError:
            clusters, heights, reps, forced = _merge_further(dist, norms, labels, k)
    kept_idx = set(reps) | set(forced)
    removed = {la: sorted(labels[i][1] for i in by_layer[la] if i not in kept_idx) for la in layers}
    kept = {la: sorted(labels[i][1] for i in by_layer[la] if i in kept_idx) for la in layers}
    out_clusters = [[list(labels[r])] + [list(labels[i]) for i in c if i != r] for c, r in zip(clusters, reps)]
    return {"removed": removed, "kept": kept, "clusters": out_clusters, "merge_distances": heights,
            "extra_kept": [list(labels[i]) for i in forced]}


def _merge_further(dist, norms, labels, k: int):
    """Imbalanced removals where moving representatives cannot save a layer (its heads all sit
    in clusters whose representative is its own layer's last head): merge further, and keep
    the largest-norm head of each layer left empty besides its cluster's representative, until
    exactly ``k`` heads go."""
    n, layer = len(labels), [la for la, _ in labels]
    for extra in range(1, n - k):
        clusters, heights = _cluster(dist, list(range(n)), k + extra)
        reps = [max(c, key=lambda i: (norms[i], -i)) for c in clusters]
        empty = sorted(set(layer) - {layer[r] for r in reps})
        forced = [max((i for i in range(n) if layer[i] == la), key=lambda i: (norms[i], -i)) for la in empty]
        if len(forced) == extra:
            return clusters, heights, reps, forced
    raise DuplicationError(f"no cut of the clusters removes {k} heads and keeps one in every layer; use a lower sparsity")


def _keep_every_layer(clusters, reps, labels, norms) -> list[int]:
    """Move representatives so that every layer keeps a head (a cluster's largest-norm head
    from the empty layer replaces a representative whose layer keeps another)."""
    reps = list(reps)
    layer = [la for la, _ in labels]
    for empty in sorted(set(layer)):
        if any(layer[r] == empty for r in reps):
            continue
        options = []
        for ci, c in enumerate(clusters):
            cand = [i for i in c if layer[i] == empty]
            if cand and sum(layer[r] == layer[reps[ci]] for r in reps) > 1:
                best = max(cand, key=lambda i: (norms[i], -i))
                options.append((norms[best], -best, ci, best))
        if not options:
            raise DuplicationError(f"layer {empty} would lose every head; use a lower sparsity")
        _, _, ci, best = max(options)
        reps[ci] = best
    return reps
