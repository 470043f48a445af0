"""Plot helpers. Each takes tables (DataFrames or saved result objects), never a model, and
returns ``(fig, df)``: a plotly figure for people and the rounded table behind it for nbval."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

__all__ = ["agreement_heatmap", "degradation_curves", "loss_bars", "pareto_front", "token_set_bars", "token_set_layers",
           "unit_heatmap"]

_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 50, "b": 50}}


def token_set_bars(ts, n: int = 20) -> tuple[go.Figure, pd.DataFrame]:
    """Top-``n`` tokens of a token set by score (mean log-prob change)."""
    df = ts.to_frame().head(n)[["rank", "id", "token", "score"]].round(6)
    a, b = ts.domains
    fig = px.bar(df, x="score", y="token", orientation="h",
                 title=f"{ts.model}: tokens promoted in {a} runs by {b} activity")
    fig.update_layout(yaxis={"autorange": "reversed"}, xaxis_title="mean change in log-prob (nats)", **_LAYOUT)
    return fig, df.round(4).reset_index(drop=True)


def token_set_layers(ts, n: int = 20) -> tuple[go.Figure, pd.DataFrame]:
    """Rank of each top token at each layer (0 = most promoted): where the promotion happens."""
    df = ts.to_frame().head(n)
    cols = [c for c in df.columns if c.startswith("rank_L")]
    mat = df.set_index("token")[cols]
    fig = px.imshow(mat.values, x=[c.replace("rank_", "") for c in cols], y=mat.index.tolist(), aspect="auto",
                    color_continuous_scale="Viridis_r", zmin=0, zmax=max(50, n),
                    labels={"color": "rank", "x": "layer", "y": "token"},
                    title=f"{ts.model}: per-layer rank of the {ts.domains[1]} tokens")
    fig.update_layout(**_LAYOUT)
    return fig, mat.reset_index()


def unit_heatmap(df: pd.DataFrame, value: str = "value", title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Layer x head (or neuron) heatmap of a unit table from ``patch``/``ablate``/``score``."""
    col = "head" if "head" in df.columns else "neuron" if "neuron" in df.columns else None
    if col is None:
        mat = df.set_index("layer")[[value]]
    else:
        mat = df.pivot_table(index="layer", columns=col, values=value)
    # Rounded before plotting: the figure's JSON (compared by nbval) must not move with the last bit.
    mat = mat.round(6)
    fig = px.imshow(mat.values, x=[str(c) for c in mat.columns], y=[str(i) for i in mat.index], aspect="auto",
                    color_continuous_scale="RdBu", color_continuous_midpoint=0.0,
                    labels={"x": col or "", "y": "layer", "color": value}, title=title)
    fig.update_layout(**_LAYOUT)
    return fig, mat.round(4)


def loss_bars(df: pd.DataFrame, title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Per-domain loss next to the unigram baseline (a ``domain_losses`` table)."""
    long = df.melt(id_vars="domain", value_vars=[c for c in ("loss", "unigram") if c in df.columns],
                   var_name="kind", value_name="nats")
    fig = px.bar(long, x="domain", y="nats", color="kind", barmode="group", title=title)
    fig.update_layout(**_LAYOUT)
    return fig, long.round(4)


def agreement_heatmap(mat: pd.DataFrame, title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Method x method rank-agreement matrix (``stats.agreement_matrix``)."""
    mat = mat.round(6)
    fig = px.imshow(mat.values, x=list(mat.columns), y=list(mat.index), zmin=-1, zmax=1,
                    color_continuous_scale="RdBu", text_auto=".2f", title=title)
    fig.update_layout(**_LAYOUT)
    return fig, mat.round(3)


def degradation_curves(results: pd.DataFrame, quality: str = "python_per_prompt_top1", unit: str | None = None,
                       title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Quality vs sparsity per method, with 95% bootstrap bands over prompts (sweep results)."""
    from .stats import bootstrap_ci  # noqa: PLC0415

    df = results if unit is None else results[results.unit == unit]
    rows = []
    for (method, s), g in df.groupby(["method", "sparsity"]):
        vals = [v for lst in g[quality] for v in lst]
        mean, lo, hi = bootstrap_ci(vals)
        rows.append({"method": method, "sparsity": s, "mean": mean, "ci_low": lo, "ci_high": hi})
    table = pd.DataFrame(rows).sort_values(["method", "sparsity"]).reset_index(drop=True).round(6)
    fig = go.Figure()
    for i, (method, g) in enumerate(table.groupby("method")):
        color = px.colors.qualitative.Plotly[i % 10]
        fig.add_trace(go.Scatter(x=list(g.sparsity) + list(g.sparsity[::-1]), y=list(g.ci_high) + list(g.ci_low[::-1]),
                                 fill="toself", fillcolor=color, opacity=0.15, line={"width": 0}, showlegend=False,
                                 hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=g.sparsity, y=g["mean"], mode="lines+markers", name=method, line={"color": color}))
    fig.update_layout(title=title, xaxis_title="sparsity", yaxis_title=quality.replace("_per_prompt_", " "), **_LAYOUT)
    return fig, table.round(4)


def pareto_front(results: pd.DataFrame, quality: str = "python_top1_agreement", cost: str = "params",
                 title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Quality vs cost of every pruned model; the Pareto-optimal ones (no other is both
    cheaper and better) are marked."""
    df = results[["model", "method", "unit", "sparsity", cost, quality]].round(6).sort_values([cost, quality],
                                                                                             ascending=[True, False])
    best, front = -float("inf"), []
    for q in df[quality]:
        front.append(q > best)
        best = max(best, q)
    df["pareto"] = front
    fig = px.scatter(df, x=cost, y=quality, color="method", symbol="unit", hover_data=["sparsity"], title=title)
    pf = df[df.pareto]
    fig.add_trace(go.Scatter(x=pf[cost], y=pf[quality], mode="lines", name="Pareto front", line={"dash": "dot"}))
    fig.update_layout(**_LAYOUT)
    return fig, df.round(4).reset_index(drop=True)


def save_figure(fig: go.Figure, folder, name: str):
    """Write ``<folder>/<name>.html`` (plotly.js from the bundle, works offline) and, when
    kaleido is installed, ``<name>.png``. Returns the HTML path."""
    from pathlib import Path  # noqa: PLC0415

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    html = folder / f"{name}.html"
    fig.write_html(html, include_plotlyjs=True, full_html=True)
    try:
        fig.write_image(folder / f"{name}.png", scale=2)
    except Exception:  # noqa: BLE001 - static export needs kaleido and a browser; HTML is enough
        pass
    return html
