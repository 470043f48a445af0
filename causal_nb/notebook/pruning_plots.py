"""Figures of head pruning as the duplication study draws them: head distances, heads removed
per layer, the loss change per layer, and quality against sparsity per criterion with
confidence bands. Each takes tables (pruning logs, result tables), never a model, and returns
``(fig, df)``: a plotly figure and the rounded table behind it (what nbval compares)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from ..core.checks import strict

__all__ = ["head_distance_heatmap", "heads_removed_by_layer", "layer_impact_bars", "sparsity_curves"]

_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 50, "b": 50}}


def _logs(logs) -> dict:
    if isinstance(logs, dict) and "sparsities" in logs:
        return {logs.get("method", "pruned"): logs}
    if not isinstance(logs, dict) or not all(isinstance(v, dict) and "sparsities" in v for v in logs.values()):
        raise TypeError("expected a pruning log (duplication_prune(...).attrs['log'], or pruning_log.json loaded) or "
                        "a dict label -> log")
    return logs


@strict
def head_distance_heatmap(dist: pd.DataFrame, order: str = "layer", title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """The square head distance matrix (``head_distances.parquet``: rows and columns ``LxHy``).

    ``order="cluster"`` puts the heads in the order of their average-linkage dendrogram, so
    near-duplicate heads sit next to each other (dark blocks on the diagonal).
    """
    if order not in ("layer", "cluster"):
        raise ValueError(f"order must be 'layer' or 'cluster', not {order!r}")
    if dist.shape[0] != dist.shape[1] or list(dist.index) != list(dist.columns):
        raise ValueError("head_distance_heatmap takes the square distance table (head_distances.parquet): the same "
                         "head labels as index and columns")
    mat = dist.astype(float)
    if order == "cluster" and len(mat) > 1:
        from scipy.cluster.hierarchy import leaves_list, linkage  # noqa: PLC0415
        from scipy.spatial.distance import squareform  # noqa: PLC0415

        leaves = leaves_list(linkage(squareform(mat.to_numpy(), checks=False), "average"))
        mat = mat.iloc[leaves, leaves]
    mat = mat.round(6)
    fig = px.imshow(mat.values, x=list(mat.columns), y=list(mat.index), color_continuous_scale="Viridis",
                    labels={"color": "distance"}, title=title or "head distances")
    fig.update_layout(**_LAYOUT)
    return fig, mat.round(4)


@strict
def heads_removed_by_layer(logs, sparsity: float | None = None, title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Heads removed in each layer, per pruning (balanced vs imbalanced), per sparsity.

    Args:
        logs: a pruning log or a dict label -> log.
        sparsity: one logged sparsity (default: every one, one panel each).

    Returns:
        The grouped bar chart and ``label, sparsity, layer, removed, kept``.
    """
    rows = []
    for label, log in _logs(logs).items():
        for key, sel in log["sparsities"].items():
            if sparsity is not None and not np.isclose(float(key), sparsity):
                continue
            for layer, heads in sel["removed"].items():
                rows.append({"label": label, "sparsity": float(key), "layer": int(layer), "removed": len(heads),
                             "kept": len(sel["kept"][layer])})
    if not rows:
        have = sorted({float(k) for log in _logs(logs).values() for k in log["sparsities"]})
        raise ValueError(f"sparsity {sparsity} is not in the logs (they have {have})")
    df = pd.DataFrame(rows).sort_values(["label", "sparsity", "layer"]).reset_index(drop=True)
    fig = px.bar(df, x="layer", y="removed", color="label", barmode="group", facet_col="sparsity",
                 hover_data=["kept"], title=title or "heads removed per layer")
    fig.update_layout(yaxis_title="heads removed", **_LAYOUT)
    return fig, df


@strict
def layer_impact_bars(table: pd.DataFrame, title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Held-out loss change when only one layer's chosen heads are removed (``layer_impact``),
    per layer and pruning, with 95% intervals over prompts; one panel per sparsity."""
    need = {"label", "sparsity", "layer", "heads_removed", "delta", "ci_low", "ci_high"}
    if not need <= set(table.columns):
        raise ValueError(f"layer_impact_bars takes a layer_impact(...) table; missing {sorted(need - set(table.columns))}")
    df = table[sorted(need, key=list(table.columns).index)].round(6).sort_values(["label", "sparsity", "layer"])
    df = df.reset_index(drop=True)
    fig = px.bar(df, x="layer", y="delta", color="label", barmode="group", facet_col="sparsity",
                 error_y=df.ci_high - df.delta, error_y_minus=df.delta - df.ci_low, hover_data=["heads_removed"],
                 title=title or "loss change when one layer's chosen heads are removed")
    fig.update_layout(yaxis_title="held-out loss change (nats)", **_LAYOUT)
    return fig, df.round(4)


@strict
def sparsity_curves(table: pd.DataFrame, value: str = "loss", criterion: str = "criterion", facet: str | None = "method",
                    n_boot: int = 2000, seed: int = 0, title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Quality against sparsity, one line per criterion with its 95% band, a panel per ``facet``.

    Args:
        table: either per-item rows (``criterion, [facet,] sparsity, value``: per-prompt losses,
            per-item accuracies; the mean and a percentile bootstrap interval are computed per
            group), or summary rows that already carry the interval in ``ci_low, ci_high`` (or
            ``<value>_ci_low, <value>_ci_high``, as ``duplication_prune`` writes them).
        value: the quality column.
        criterion: the column naming the line (duplication metric, causal, gradient, random).
        facet: the column naming the panel (``method``: balanced / imbalanced; None: one panel).
        n_boot, seed: the bootstrap, for per-item rows.

    Returns:
        The figure and ``[facet,] criterion, sparsity, mean, ci_low, ci_high`` and ``n`` (the
        items per point, for per-item rows or where the summary has an ``n`` column).
    """
    keys = [c for c in (facet, criterion) if c is not None]
    missing = [c for c in (*keys, "sparsity", value) if c not in table.columns]
    if missing:
        raise ValueError(f"sparsity_curves: columns {missing} are not in the table (columns {list(table.columns)})")
    lo_col, hi_col = next(((lo, hi) for lo, hi in (("ci_low", "ci_high"), (f"{value}_ci_low", f"{value}_ci_high"))
                           if lo in table.columns and hi in table.columns), (None, None))
    if lo_col is not None:
        if table.duplicated([*keys, "sparsity"]).any():
            raise ValueError("sparsity_curves: summary rows must be one per (facet, criterion, sparsity); filter the "
                             "table (e.g. one variant, one task and metric) first")
        out = table[[*keys, "sparsity", value, lo_col, hi_col]].rename(
            columns={value: "mean", lo_col: "ci_low", hi_col: "ci_high"})
        if "n" in table.columns:
            out["n"] = table["n"].to_numpy()
    else:
        from ..evaluation.stats import bootstrap_ci  # noqa: PLC0415

        rows = []
        for k, g in table.groupby([*keys, "sparsity"], sort=True):
            v = g[value].to_numpy(float)
            mean, lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed) if len(v) > 1 else (float(v.mean()), np.nan, np.nan)
            rows.append({**dict(zip([*keys, "sparsity"], k)), "mean": mean, "ci_low": lo, "ci_high": hi, "n": len(v)})
        out = pd.DataFrame(rows)
    out = out.sort_values([*keys, "sparsity"]).reset_index(drop=True).round(6)
    panels = list(dict.fromkeys(out[facet])) if facet is not None else [None]
    from plotly.subplots import make_subplots  # noqa: PLC0415

    fig = make_subplots(1, len(panels), subplot_titles=[str(p) if p is not None else "" for p in panels],
                        shared_yaxes=True)
    colors = {c: px.colors.qualitative.Plotly[i % 10] for i, c in enumerate(dict.fromkeys(out[criterion]))}
    for j, panel in enumerate(panels, 1):
        block = out if panel is None else out[out[facet] == panel]
        for crit, g in block.groupby(criterion, sort=False):
            color = colors[crit]
            if g.ci_low.notna().all():
                fig.add_trace(go.Scatter(x=list(g.sparsity) + list(g.sparsity[::-1]),
                                         y=list(g.ci_high) + list(g.ci_low[::-1]), fill="toself", fillcolor=color,
                                         opacity=0.15, line={"width": 0}, showlegend=False, hoverinfo="skip"), 1, j)
            fig.add_trace(go.Scatter(x=g.sparsity, y=g["mean"], mode="lines+markers", name=str(crit),
                                     legendgroup=str(crit), showlegend=j == 1, line={"color": color}), 1, j)
    fig.update_xaxes(title_text="sparsity")
    fig.update_yaxes(title_text=value, col=1)
    fig.update_layout(title=title or f"{value} against sparsity", **_LAYOUT)
    return fig, out.round(4)
