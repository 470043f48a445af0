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

from ..core.checks import require_scores, strict, table_kind

__all__ = ["agreement_matrix", "bootstrap_ci", "cross_domain_table", "h1_table", "h2_summary", "h2_table", "holm",
           "paired_tests", "rank_agreement", "topk_overlap"]

_KEYS = ("layer", "head", "neuron", "pos")


def _aligned(a: pd.DataFrame, b: pd.DataFrame, col: str = "score") -> tuple[np.ndarray, np.ndarray]:
    for t in (a, b):
        if col == "score" and table_kind(t) != "score":
            require_scores(t, "rank agreement")  # raises, naming the call that makes a score table
        elif col not in t.columns:
            raise ValueError(f"column {col!r} is not in the table (columns {list(t.columns)})")
    ua, ub = ([k for k in ("head", "neuron") if k in t.columns] for t in (a, b))
    if ua != ub:
        raise ValueError(f"the tables score different units ({ua or ['layer']} vs {ub or ['layer']}): compare "
                         "tables of the same unit kind")
    # a table scored on a layer sample (score(..., layers=...)) is compared on those layers only
    subset = [set(t.attrs["layers"]) for t in (a, b) if t.attrs.get("layers") is not None]
    if subset and "layer" in a.columns and "layer" in b.columns:
        keep = set.intersection(*subset)
        a, b = (t[t.layer.isin(keep)] for t in (a, b))
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


@strict
def rank_agreement(a: pd.DataFrame, b: pd.DataFrame, k: int | None = None, col: str = "score") -> dict:
    """Spearman and Kendall correlation and top-k overlap of two score tables on the same units.

    ``k`` defaults to a quarter of the units (the set a 75%-sparsity pruning would keep).
    """
    x, y = _aligned(a, b, col)
    k = k or max(1, len(x) // 4)
    rho, p_rho = st.spearmanr(x, y)
    tau, p_tau = st.kendalltau(x, y)
    return {"spearman": float(rho), "spearman_p": float(p_rho), "kendall": float(tau), "kendall_p": float(p_tau),
            f"top{k}_overlap": topk_overlap(x, y, k), "k": k, "n_units": len(x)}


@strict
def agreement_matrix(tables: dict[str, pd.DataFrame], method: str = "spearman") -> pd.DataFrame:
    """Pairwise rank agreement of several methods' score tables (symmetric, 1 on the diagonal)."""
    names = list(tables)
    out = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            v = rank_agreement(tables[a], tables[b])[method]
            out.loc[a, b] = out.loc[b, a] = v
    return out


@strict
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


@strict
def paired_tests(per_prompt: dict[str, np.ndarray], reference_method: str, alternative: str = "greater") -> pd.DataFrame:
    """Wilcoxon signed-rank tests of ``reference_method`` vs every other method on paired prompts.

    Args:
        per_prompt: method -> per-prompt quality (same prompts, same order).
        reference_method: the method tested against the others (e.g. the causal one).
        alternative: ``"greater"``: reference_method retains more quality.

    Returns:
        One row per other method: mean difference with its bootstrap CI, the Wilcoxon
        statistic, raw and Holm-adjusted p-values.
    """
    if reference_method not in per_prompt:
        raise ValueError(f"reference {reference_method!r} is not among {sorted(per_prompt)}")
    ref = np.asarray(per_prompt[reference_method], float)
    rows = []
    for name, vals in per_prompt.items():
        if name == reference_method:
            continue
        d = ref - np.asarray(vals, float)
        if len(d) != len(ref):
            raise ValueError(f"{name} has {len(d)} prompts, {reference_method} has {len(ref)}: tests need pairs")
        stat, p = st.wilcoxon(d, alternative=alternative, zero_method="zsplit") if np.any(d != 0) else (0.0, 1.0)
        mean, lo, hi = bootstrap_ci(d)
        rows.append({"reference": reference_method, "other": name, "mean_diff": mean, "ci_low": lo, "ci_high": hi,
                     "wilcoxon": float(stat), "p": float(p)})
    df = pd.DataFrame(rows)
    df["p_holm"] = holm(df.p.to_numpy()) if len(df) else []
    return df


@strict
def h1_table(scores: dict[str, pd.DataFrame], removal_effect: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """H1: does a method's importance predict the quality drop when the unit is removed?

    Args:
        scores: method -> score table of the same units.
        removal_effect: the measured drop per unit when that unit alone is removed (e.g. the
            ``ablation`` score: KL to the full model), as a score table.

    Returns:
        One row per method: Spearman and Kendall correlation with the measured drop and the
        top-k overlap (``topk_overlap``, with ``k``), sorted by Spearman.
    """
    rows = []
    for m, df in scores.items():
        r = rank_agreement(df, removal_effect, k)
        # one column name whatever k is, so tables for heads and neurons stack
        r["topk_overlap"] = r.pop(f"top{r['k']}_overlap")
        rows.append({"method": m, **r})
    return pd.DataFrame(rows).sort_values("spearman", ascending=False).reset_index(drop=True)


@strict
def h2_table(results: pd.DataFrame, reference_method: str, quality: str = "python_per_prompt_top1",
             unit: str | None = None, model: str | None = None) -> pd.DataFrame:
    """H2: does the reference (causal) selection retain more quality than each other method?

    For every sparsity: mean retained quality per method with a bootstrap CI over prompts,
    the ratio reference / method, and a paired Wilcoxon test (Holm-corrected across methods
    at that sparsity). ``results`` is the sweep table with per-prompt lists (``sweep`` output).
    """
    df = results
    if unit is not None:
        df = df[df.unit == unit]
    if model is not None:
        df = df[df.model == model]
    if reference_method not in set(df.method):
        raise ValueError(f"reference method {reference_method!r} is not in the results ({sorted(set(df.method))})")
    rows = []
    for s, block in df.groupby("sparsity"):
        per = {m: np.mean(np.stack(g[quality].to_list()), axis=0) for m, g in block.groupby("method")}
        tests = paired_tests(per, reference_method).set_index("other")
        for m, v in per.items():
            mean, lo, hi = bootstrap_ci(v)
            row = {"sparsity": s, "method": m, "retained": mean, "ci_low": lo, "ci_high": hi}
            if m != reference_method:
                row.update({"ratio_ref_over_method": float(np.mean(per[reference_method]) / mean) if mean else np.inf,
                            "p": tests.loc[m, "p"], "p_holm": tests.loc[m, "p_holm"]})
            rows.append(row)
    return pd.DataFrame(rows)


@strict
def cross_domain_table(results: pd.DataFrame, reference_method: str, domains, metric: str = "top1", unit: str | None = None,
                       sparsity: float | None = None) -> pd.DataFrame:
    """Cross-domain generalisation: scores computed on one domain, pruned models judged on each.

    ``h2_table`` once per evaluation domain (quality column ``<domain>_per_prompt_<metric>``),
    at one sparsity (default the highest), side by side: does the causal selection's advantage
    carry over to a domain its scores never saw?
    """
    parts = []
    for d in domains:
        t = h2_table(results, reference_method, quality=f"{d}_per_prompt_{metric}", unit=unit)
        s = t.sparsity.max() if sparsity is None else sparsity
        parts.append(t[t.sparsity == s].assign(domain=d))
    cols = ["domain", "sparsity", "method", "retained", "ci_low", "ci_high", "ratio_ref_over_method", "p_holm"]
    return pd.concat(parts, ignore_index=True)[cols]


@strict
def h2_summary(results: pd.DataFrame, reference_methods: dict[str, str], quality: str = "python_per_prompt_top1",
               sparsity: float | None = None) -> pd.DataFrame:
    """H2 for every model and unit kind of a sweep, at one sparsity (default each one's highest).

    Args:
        results: a sweep table (``sweep`` output) with ``model`` and ``unit`` columns.
        reference_methods: unit kind -> the causal method the others are compared with
            (``{"head": "ablation", "neuron": "attribution"}``); unit kinds not in the results
            are skipped.

    Returns:
        One row per model, unit kind and compared method: retained quality with its bootstrap
        CI, the ratio reference / method and the Holm-corrected p-value (as in ``h2_table``).
    """
    parts = []
    for (model, unit), block in results.groupby(["model", "unit"], sort=False):
        if unit not in reference_methods:
            continue
        t = h2_table(block, reference_methods[unit], quality=quality)
        s = t.sparsity.max() if sparsity is None else sparsity
        t = t[(t.sparsity == s) & (t.method != reference_methods[unit])]
        parts.append(t.assign(model=model, unit=unit, reference=reference_methods[unit]))
    if not parts:
        raise ValueError(f"no results for the unit kinds {sorted(reference_methods)} (have {sorted(set(results.unit))})")
    cols = ["model", "unit", "reference", "method", "sparsity", "retained", "ci_low", "ci_high", "ratio_ref_over_method",
            "p_holm"]
    return pd.concat(parts, ignore_index=True)[cols]
