"""Statistics for comparing importance metrics and pruning outcomes.

Rank agreement between score tables (Spearman, Kendall, top-k overlap), bootstrap
confidence intervals over prompts, and paired tests with a multiple-comparison correction
(Holm). Everything takes plain arrays or the tidy tables the kit produces and returns
DataFrames; the heavy lifting is scipy.stats.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats as st

__all__ = ["agreement_matrix", "bootstrap_ci", "holm", "paired_tests", "rank_agreement", "topk_overlap"]

_KEYS = ("layer", "head", "neuron", "pos")


def _aligned(a: pd.DataFrame, b: pd.DataFrame, col: str = "score") -> tuple[np.ndarray, np.ndarray]:
    keys = [k for k in _KEYS if k in a.columns and k in b.columns]
    if not keys or len(a) != len(b):
        raise ValueError("score tables must cover the same units (same layer/head/neuron rows)")
    m = a[keys + [col]].merge(b[keys + [col]], on=keys, suffixes=("_a", "_b"), validate="one_to_one")
    if len(m) != len(a):
        raise ValueError("score tables must cover the same units (same layer/head/neuron rows)")
    return m[f"{col}_a"].to_numpy(float), m[f"{col}_b"].to_numpy(float)


def topk_overlap(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Share of the top-k units (by score) that two rankings have in common."""
    k = min(k, len(x))
    return len(set(np.argsort(-x)[:k]) & set(np.argsort(-y)[:k])) / k


def rank_agreement(a: pd.DataFrame, b: pd.DataFrame, k: int | None = None, col: str = "score") -> dict:
    """Spearman and Kendall correlation and top-k overlap of two score tables on the same units.

    ``k`` defaults to a quarter of the units (the set a 75%-sparsity pruning would keep).
    """
    x, y = _aligned(a, b, col)
    k = k or max(1, len(x) // 4)
    rho, p_rho = st.spearmanr(x, y)
    tau, p_tau = st.kendalltau(x, y)
    return {"spearman": float(rho), "spearman_p": float(p_rho), "kendall": float(tau), "kendall_p": float(p_tau),
            f"top{k}_overlap": topk_overlap(x, y, k), "n_units": len(x)}


def agreement_matrix(tables: dict[str, pd.DataFrame], method: str = "spearman") -> pd.DataFrame:
    """Pairwise rank agreement of several methods' score tables (symmetric, 1 on the diagonal)."""
    names = list(tables)
    out = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            v = rank_agreement(tables[a], tables[b])[method]
            out.loc[a, b] = out.loc[b, a] = v
    return out


def bootstrap_ci(values, stat: Callable = np.mean, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap interval over the first axis (prompts)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)] if v.ndim == 1 else v
    if len(v) < 2:
        raise ValueError("a bootstrap interval needs at least 2 values")
    res = st.bootstrap((v,), stat, n_resamples=n_boot, confidence_level=level, method="percentile",
                       random_state=np.random.default_rng(seed), vectorized=False)
    return float(stat(v)), float(res.confidence_interval.low), float(res.confidence_interval.high)


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adj = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p) - rank) * p[i])
        adj[i] = min(1.0, running)
    return adj


def paired_tests(per_prompt: dict[str, np.ndarray], reference: str, alternative: str = "greater") -> pd.DataFrame:
    """Wilcoxon signed-rank tests of ``reference`` vs every other method on paired prompts.

    Args:
        per_prompt: method -> per-prompt quality (same prompts, same order).
        reference: the method tested against the others (e.g. the causal one).
        alternative: ``"greater"``: reference retains more quality.

    Returns:
        One row per other method: mean difference with its bootstrap CI, the Wilcoxon
        statistic, raw and Holm-adjusted p-values.
    """
    if reference not in per_prompt:
        raise ValueError(f"reference {reference!r} is not among {sorted(per_prompt)}")
    ref = np.asarray(per_prompt[reference], float)
    rows = []
    for name, vals in per_prompt.items():
        if name == reference:
            continue
        d = ref - np.asarray(vals, float)
        if len(d) != len(ref):
            raise ValueError(f"{name} has {len(d)} prompts, {reference} has {len(ref)}: tests need pairs")
        stat, p = st.wilcoxon(d, alternative=alternative, zero_method="zsplit") if np.any(d != 0) else (0.0, 1.0)
        mean, lo, hi = bootstrap_ci(d)
        rows.append({"reference": reference, "other": name, "mean_diff": mean, "ci_low": lo, "ci_high": hi,
                     "wilcoxon": float(stat), "p": float(p)})
    df = pd.DataFrame(rows)
    df["p_holm"] = holm(df.p.to_numpy()) if len(df) else []
    return df
