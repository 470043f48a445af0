"""Plot helpers. Each takes tables (DataFrames or saved result objects), never a model, and
returns ``(fig, df)``: a plotly figure for people and the rounded table behind it for nbval."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

__all__ = ["loss_bars", "token_set_bars", "token_set_layers", "unit_heatmap"]

_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 50, "b": 50}}


def token_set_bars(ts, n: int = 20) -> tuple[go.Figure, pd.DataFrame]:
    """Top-``n`` tokens of a token set by score (mean log-prob change)."""
    df = ts.to_frame().head(n)[["rank", "id", "token", "score"]]
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
