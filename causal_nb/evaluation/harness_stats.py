"""Item-level confidence intervals and paired tests for lm-evaluation-harness results.

``lm_eval`` keeps the harness's per-item records (``attrs["items"]``): per multiple-choice item
the log-likelihood of every choice and its ``acc``/``acc_norm``, per rolling document its
total log-likelihood and the words and bytes it covers. From them:

- ``harness_ci``: each metric with a percentile bootstrap interval over items. Per-item
  metrics (``acc``, ``acc_norm``, and ``target_loglikelihood``, the log-likelihood of the
  correct choice, a finer reading of the same items) are means; perplexities are ratios over
  the resampled items (``word_perplexity = exp(-sum ll / sum words)``, ``byte_perplexity`` per
  byte, ``bits_per_byte = -sum ll / sum bytes / ln 2``), as the harness aggregates them.
- ``harness_paired_test``: a model against a control (random pruning, the full model) on the
  same items: the difference with a paired bootstrap interval, and a test per metric: exact
  McNemar (a binomial test on the discordant items) for 0/1 metrics, Wilcoxon signed-rank on
  the per-item values (per-document log-likelihoods for perplexities) otherwise; p-values
  Holm-adjusted over the rows.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as st

from ..core.checks import strict
from .stats import bootstrap_ci, holm

__all__ = ["HIGHER_IS_BETTER", "harness_ci", "harness_items", "harness_paired_test", "item_metrics"]

# what the harness's metric names mean for the sign of a difference
HIGHER_IS_BETTER = {"acc": True, "acc_norm": True, "target_loglikelihood": True, "word_perplexity": False,
                    "byte_perplexity": False, "bits_per_byte": False}
_RATIOS = {"word_perplexity": "words", "byte_perplexity": "bytes", "bits_per_byte": "bytes"}
_NOT_METRICS = {"task", "doc_id", "target", "loglikelihoods", "loglikelihood", "words", "bytes", "sparsity", "variant",
                "criterion", "method"}


def harness_items(result) -> pd.DataFrame:
    """The per-item table of a harness result: an ``lm_eval`` table (its ``attrs["items"]``),
    a list of item records, or an item DataFrame; ``target_loglikelihood`` is added for
    multiple-choice items."""
    if isinstance(result, pd.DataFrame) and "items" in result.attrs:
        items = pd.DataFrame(result.attrs["items"])
    elif isinstance(result, pd.DataFrame) and "doc_id" in result.columns:
        items = result.copy()
    elif isinstance(result, list):
        items = pd.DataFrame(result)
    else:
        raise TypeError("harness_items takes an lm_eval(...) table (with its attrs['items']), a list of item records "
                        "or a DataFrame with task and doc_id columns; a table that lost its attrs (a concatenation, "
                        "a CSV) has no items: keep cnb.lm_eval's return value, or duplication_prune's "
                        "attrs['lm_eval_items']")
    if items.empty or not {"task", "doc_id"} <= set(items.columns):
        raise ValueError("no harness items (the result has no task/doc_id records): run cnb.lm_eval on at least one "
                         "item")
    if "loglikelihoods" in items.columns and "target" in items.columns:
        def target_ll(row):
            lls, t = row["loglikelihoods"], row["target"]
            if not isinstance(lls, (list, tuple, np.ndarray)) or t is None or pd.isna(t):
                return np.nan
            return float(lls[int(t)])
        items["target_loglikelihood"] = items.apply(target_ll, axis=1)
    return items


def item_metrics(items: pd.DataFrame, task: str) -> list[str]:
    """The metrics ``harness_ci`` reports for ``task``: per-item means, then perplexity ratios."""
    block = items[items.task == task]
    means = [c for c in block.columns if c not in _NOT_METRICS and c not in _RATIOS
             and pd.api.types.is_numeric_dtype(block[c]) and block[c].notna().all()]
    ratios = [m for m, w in _RATIOS.items() if "loglikelihood" in block and w in block
              and block["loglikelihood"].notna().all() and block[w].notna().all()]
    return means + ratios


def _ratio(metric: str, ll: np.ndarray, w: np.ndarray) -> float:
    per = -np.sum(ll) / np.sum(w)
    return per / math.log(2) if metric == "bits_per_byte" else math.exp(per)


def _bootstrap(data: tuple, stat, n_boot: int, level: float, seed: int) -> tuple[float, float]:
    if len(data[0]) < 2:
        return np.nan, np.nan
    res = st.bootstrap(data, stat, paired=True, vectorized=False, n_resamples=n_boot, confidence_level=level,
                       method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@strict
def harness_ci(result, by=None, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Each task's metrics with a percentile bootstrap interval over its items.

    Args:
        result: an ``lm_eval`` table, item records, or an item DataFrame (``harness_items``).
        by: item columns that tell evaluations apart (e.g. ``["sparsity", "variant"]`` for
            ``duplication_prune``'s ``lm_eval_items``): one set of rows per group, the group's
            values in those columns.
        n_boot, level, seed: bootstrap resamples, confidence level and seed.

    Returns:
        One row per ([by...,] task, metric): ``task, metric, value, ci_low, ci_high, n``;
        ``value`` is the harness's own aggregate (the mean of per-item values, or the
        perplexity ratio).
    """
    items = harness_items(result)
    if by is not None:
        by = [by] if isinstance(by, str) else list(by)
        missing = [c for c in by if c not in items.columns]
        if missing:
            raise ValueError(f"by={missing}: not item columns (have {list(items.columns)})")
        parts = [harness_ci(g.drop(columns=by), n_boot=n_boot, level=level, seed=seed).assign(**dict(zip(by, k)))
                 for k, g in items.groupby(by, sort=True)]
        df = pd.concat(parts, ignore_index=True)
        return df[[*by, *[c for c in df.columns if c not in by]]]
    if items.duplicated(["task", "doc_id"]).any():
        raise ValueError("the items hold several evaluations of the same documents (e.g. several sparsities): pass "
                         "by=[...] naming the columns that tell them apart, or filter the items first")
    rows = []
    for task in sorted(items.task.unique()):
        block = items[items.task == task].sort_values("doc_id")
        for m in item_metrics(items, task):
            if m in _RATIOS:
                ll, w = block["loglikelihood"].to_numpy(float), block[_RATIOS[m]].to_numpy(float)
                value = _ratio(m, ll, w)
                lo, hi = _bootstrap((ll, w), lambda a, b, m=m: _ratio(m, a, b), n_boot, level, seed)
            else:
                v = block[m].to_numpy(float)
                value, lo, hi = bootstrap_ci(v, n_boot=n_boot, level=level, seed=seed) if len(v) > 1 else \
                    (float(v.mean()), np.nan, np.nan)
            rows.append({"task": task, "metric": m, "value": value, "ci_low": lo, "ci_high": hi, "n": len(block)})
    return pd.DataFrame(rows, columns=["task", "metric", "value", "ci_low", "ci_high", "n"])


def _paired(a: pd.DataFrame, b: pd.DataFrame, task: str) -> pd.DataFrame:
    ka, kb = (set(t.loc[t.task == task, "doc_id"]) for t in (a, b))
    if ka != kb:
        raise ValueError(f"task {task!r}: the two results cover different items ({len(ka)} vs {len(kb)} docs, "
                         f"{len(ka ^ kb)} not shared); evaluate both with the same tasks and limit")
    return a[a.task == task].merge(b[b.task == task], on=["task", "doc_id"], suffixes=("", "_control"),
                                   validate="one_to_one").sort_values("doc_id")


@strict
def harness_paired_test(result, control, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                        alternative: str = "two-sided") -> pd.DataFrame:
    """``result`` against ``control`` (e.g. random pruning at the same sparsity), item by item.

    Args:
        result, control: harness results on the same tasks and items (``lm_eval`` tables, item
            records or item DataFrames).
        n_boot, level, seed: the paired bootstrap of the difference.
        alternative: ``"two-sided"``, or ``"better"`` (one-sided: ``result`` is better, read
            with each metric's direction, ``HIGHER_IS_BETTER``).

    Returns:
        One row per (task, metric): ``value`` and ``control`` (the two aggregates), ``diff``
        (value - control) with ``ci_low, ci_high``, ``test`` (``mcnemar_exact`` or
        ``wilcoxon``), ``statistic``, ``p``, ``p_holm`` (over all rows), ``n`` and
        ``higher_is_better``.
    """
    if alternative not in ("two-sided", "better"):
        raise ValueError(f"alternative must be 'two-sided' or 'better', not {alternative!r}")
    a, b = harness_items(result), harness_items(control)
    for name, t in (("result", a), ("control", b)):
        if t.duplicated(["task", "doc_id"]).any():
            raise ValueError(f"{name} holds several evaluations of the same documents (e.g. several sparsities); "
                             "filter it to one (items[(items.sparsity == s) & (items.variant == 'masked')])")
    if set(a.task) != set(b.task):
        raise ValueError(f"the results cover different tasks ({sorted(set(a.task))} vs {sorted(set(b.task))}); "
                         "evaluate both with the same tasks")
    rows = []
    for task in sorted(a.task.unique()):
        m = _paired(a, b, task)
        for metric in item_metrics(a, task):
            hib = HIGHER_IS_BETTER.get(metric, True)
            if metric in _RATIOS:
                w = m[_RATIOS[metric]].to_numpy(float)
                if not np.allclose(w, m[f"{_RATIOS[metric]}_control"].to_numpy(float)):
                    raise ValueError(f"task {task!r}: the two results count different {_RATIOS[metric]} per document "
                                     "(different tokenizers read the same text alike): were they run on the same data?")
                x, y = m["loglikelihood"].to_numpy(float), m["loglikelihood_control"].to_numpy(float)
                value, ctrl = _ratio(metric, x, w), _ratio(metric, y, w)
                lo, hi = _bootstrap((x, y, w), lambda p, q, r, mt=metric: _ratio(mt, p, r) - _ratio(mt, q, r),
                                    n_boot, level, seed)
                d_test, better_is_positive = x - y, True  # a higher log-likelihood is the better model
            else:
                x, y = m[metric].to_numpy(float), m[f"{metric}_control"].to_numpy(float)
                value, ctrl = float(x.mean()), float(y.mean())
                d = x - y
                _, lo, hi = bootstrap_ci(d, n_boot=n_boot, level=level, seed=seed) if len(d) > 1 else (0, np.nan, np.nan)
                d_test, better_is_positive = d, hib
            alt = "two-sided" if alternative == "two-sided" else ("greater" if better_is_positive else "less")
            binary = metric not in _RATIOS and np.isin(np.concatenate([x, y]), (0.0, 1.0)).all()
            if binary:
                n10, n01 = int(np.sum(d_test > 0)), int(np.sum(d_test < 0))
                test, stat = "mcnemar_exact", float(n10)
                p = st.binomtest(n10, n10 + n01, 0.5, alternative=alt).pvalue if n10 + n01 else 1.0
            else:
                test = "wilcoxon"
                stat, p = st.wilcoxon(d_test, alternative=alt, zero_method="zsplit") if np.any(d_test != 0) else (0.0, 1.0)
            rows.append({"task": task, "metric": metric, "value": value, "control": ctrl, "diff": value - ctrl,
                         "ci_low": lo, "ci_high": hi, "test": test, "statistic": float(stat), "p": float(p),
                         "n": len(m), "higher_is_better": hib})
    df = pd.DataFrame(rows)
    df.insert(df.columns.get_loc("p") + 1, "p_holm", holm(df.p.to_numpy()) if len(df) else [])
    return df
