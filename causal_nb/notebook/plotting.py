"""Plot helpers. Each takes tables (DataFrames or saved result objects), never a model, and
returns ``(fig, df)``: a plotly figure for people and the rounded table behind it for nbval."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from ..core.checks import strict

__all__ = ["agreement_heatmap", "attention_heatmap", "compose_loss_curves", "compose_scheme_matrix", "degradation_curves",
           "loss_bars", "pareto_front", "token_effects", "token_set_bars", "token_set_layers", "unit_heatmap"]

_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 50, "b": 50}}


@strict
def token_set_bars(ts, n: int = 20) -> tuple[go.Figure, pd.DataFrame]:
    """Top-``n`` tokens of a token set by score (mean log-prob change)."""
    df = ts.to_frame().head(n)[["rank", "id", "token", "score"]].round(6)
    a, b = ts.domains
    fig = px.bar(df, x="score", y="token", orientation="h",
                 title=f"{ts.model}: tokens promoted in {a} runs by {b} activity")
    fig.update_layout(yaxis={"autorange": "reversed"}, xaxis_title="mean change in log-prob (nats)", **_LAYOUT)
    return fig, df.round(4).reset_index(drop=True)


@strict
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


@strict
def unit_heatmap(df: pd.DataFrame, value: str | None = None, title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Layer x head (or neuron) heatmap of a unit table from ``patch``/``ablate``/``score``.

    ``value``: the column shown (default ``score`` for a ``score`` table, ``value`` for a
    ``patch``/``ablate`` table).
    """
    if value is None:
        value = "score" if "score" in df.columns else "value"
    if value not in df.columns:
        raise ValueError(f"unit_heatmap: column {value!r} is not in the table (columns {list(df.columns)}); "
                         "score() tables have 'score', patch()/ablate() tables 'value'")
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


@strict
def loss_bars(df: pd.DataFrame, title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Per-domain loss next to the unigram baseline (a ``domain_losses`` table)."""
    long = df.melt(id_vars="domain", value_vars=[c for c in ("loss", "unigram") if c in df.columns],
                   var_name="kind", value_name="nats")
    fig = px.bar(long, x="domain", y="nats", color="kind", barmode="group", title=title)
    fig.update_layout(**_LAYOUT)
    return fig, long.round(4)


@strict
def agreement_heatmap(mat: pd.DataFrame, title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Method x method rank-agreement matrix (``stats.agreement_matrix``)."""
    mat = mat.round(6)
    fig = px.imshow(mat.values, x=list(mat.columns), y=list(mat.index), zmin=-1, zmax=1,
                    color_continuous_scale="RdBu", text_auto=".2f", title=title)
    fig.update_layout(**_LAYOUT)
    return fig, mat.round(3)


@strict
def degradation_curves(results: pd.DataFrame, quality: str = "python_per_prompt_top1", unit: str | None = None,
                       title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Quality vs sparsity per method, with 95% bootstrap bands over prompts (sweep results)."""
    from ..evaluation.stats import bootstrap_ci  # noqa: PLC0415

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


@strict
def pareto_front(results: pd.DataFrame, quality: str = "python_top1_agreement", cost: str = "params",
                 title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Quality vs cost of every pruned model; the Pareto-optimal ones (no other is both
    cheaper and better) are marked."""
    # ties (same cost and quality, e.g. two methods that select the same units) are broken by
    # name, not by the order the sweep happened to finish in, so the table is the same everywhere
    keys = [cost, quality, "model", "unit", "method", "sparsity"]
    df = results[["model", "method", "unit", "sparsity", cost, quality]].round(6).sort_values(
        keys, ascending=[True, False, True, True, True, True])
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


@strict
def compose_loss_curves(curves: pd.DataFrame, targets: pd.DataFrame | None = None, x: str = "step", smooth: int = 1,
                        title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Training and validation loss of both composability arms, one panel per configuration.

    Args:
        curves: ``compose_compare(...)["curves"]``: ``config``, ``arm``, ``step``, ``train_loss``
            (per batch), ``val_loss`` (NaN where not evaluated), ``seconds``.
        targets: optional ``equal_quality`` rows of one rule (``config``, ``target``): drawn as a
            dotted line in each panel.
        x: ``"step"`` (model-level steps) or ``"seconds"`` (training seconds, evaluations excluded).
        smooth: the training loss is the rolling mean of this many steps (1: the raw batch loss).

    Returns:
        The figure and the long table behind it: ``config``, ``arm``, ``kind`` (``train`` or
        ``validation``), ``step``, ``seconds``, ``loss``.
    """
    need = {"config", "arm", "step", "train_loss", "val_loss", "seconds"}
    if not need <= set(curves.columns):
        raise ValueError(f"compose_loss_curves: the table lacks {sorted(need - set(curves.columns))} "
                         "(pass compose_compare(...)['curves'])")
    if x not in ("step", "seconds"):
        raise ValueError(f"x must be 'step' or 'seconds', got {x!r}")
    if smooth < 1:
        raise ValueError(f"smooth must be >= 1 steps, got {smooth}")
    parts = []
    for (k, arm), g in curves.sort_values("step").groupby(["config", "arm"], sort=True):
        tr = g.dropna(subset=["train_loss"])
        parts.append(pd.DataFrame({"config": k, "arm": arm, "kind": "train", "step": tr.step, "seconds": tr.seconds,
                                   "loss": tr.train_loss.rolling(smooth, min_periods=1).mean()}))
        va = g.dropna(subset=["val_loss"])
        parts.append(pd.DataFrame({"config": k, "arm": arm, "kind": "validation", "step": va.step,
                                   "seconds": va.seconds, "loss": va.val_loss}))
    df = pd.concat(parts, ignore_index=True).round(6)
    fig = px.line(df, x=x, y="loss", color="arm", line_dash="kind", facet_col="config", markers=False,
                  labels={"step": "model-level step", "seconds": "training seconds", "loss": "loss (nats)"},
                  title=title or "composed (module-level first) vs baseline (pruned directly): loss while fine-tuning")
    if targets is not None:
        order = sorted(df.config.unique())
        for _, t in targets.iterrows():
            if t.config in order:
                fig.add_hline(y=round(float(t.target), 6), line_dash="dash", line_width=1, line_color="grey",
                              col=order.index(t.config) + 1)
    fig.update_layout(**_LAYOUT)
    return fig, df.round(4)


@strict
def compose_scheme_matrix(scheme: dict, title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """A composability scheme as a picture: configurations x distinct pruned variants.

    A cell is coloured where the configuration uses the variant, by how many configurations
    share it (each variant is pruned and module-level fine-tuned once, however many use it).

    Returns:
        The figure and the 0/1 table: one row per configuration (index ``config``), one column
        per variant key, in the scheme's order.
    """
    if not isinstance(scheme, dict) or "variants" not in scheme or "configurations" not in scheme:
        raise ValueError("compose_scheme_matrix takes a scheme (make_scheme or load_scheme), not a configuration file")
    keys = [v["key"] for v in scheme["variants"]]
    ids = sorted(int(k) for k in scheme["configurations"])
    df = pd.DataFrame(0, index=pd.Index(ids, name="config"), columns=keys)
    for k in ids:
        for key in scheme["configurations"][str(k)].values():
            df.loc[k, key] = 1
    shared = df * df.sum(axis=0)
    labels = [f"{v['module'].removeprefix('transformer.').removeprefix('model.')} {v['rate']:g}"
              for v in scheme["variants"]]
    fig = go.Figure(go.Heatmap(z=shared.where(shared > 0).values, x=labels, y=[f"config {k}" for k in ids],
                               colorscale="Blues", zmin=0, zmax=max(len(ids), 1), xgap=2, ygap=2,
                               colorbar={"title": "configs sharing"},
                               hovertemplate="%{y}<br>%{x}<br>shared by %{z} configurations<extra></extra>"))
    fig.update_layout(title=title or f"{len(keys)} distinct variants for {len(ids)} configurations",
                      xaxis={"tickangle": -45}, yaxis={"autorange": "reversed"}, **_LAYOUT)
    return fig, df


def _browser_for_kaleido() -> None:
    # kaleido 1.x drives a Chrome-family browser; Debian's chromium is not on its search path.
    import os  # noqa: PLC0415
    import shutil  # noqa: PLC0415

    if "BROWSER_PATH" not in os.environ:
        found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if found:
            os.environ["BROWSER_PATH"] = found


@strict
def save_figure(fig: go.Figure, folder, name: str, png: bool = True):
    """Write ``<folder>/<name>.html`` (plotly.js from the bundle, works offline) and, with
    ``png`` and where kaleido and a Chromium-family browser are installed, ``<name>.png``.
    Returns the HTML path."""
    from pathlib import Path  # noqa: PLC0415

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    html = folder / f"{name}.html"
    fig.write_html(html, include_plotlyjs=True, full_html=True)
    if png:
        import contextlib  # noqa: PLC0415
        import io  # noqa: PLC0415
        import warnings  # noqa: PLC0415

        _browser_for_kaleido()
        # kaleido drives a headless browser and, on a loaded machine, logs its retries to stderr;
        # that noise would become a notebook output (and fail nbval), so the export is kept quiet.
        # The PNG is a convenience beside the HTML: a failed export leaves the HTML.
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fig.write_image(folder / f"{name}.png", scale=2)
            except Exception:  # noqa: BLE001 - static export needs kaleido and a browser; HTML is enough
                pass
    return html


@strict
def token_effects(effect, title: str = "") -> tuple[go.Figure, pd.DataFrame]:
    """Change in each next token's log-prob along a prompt (a ``views.Effect``)."""
    df = effect.frame(6)
    heads = " ".join(f"L{a}H{b}" for a, b in effect.heads) or "no heads"
    fig = go.Figure(go.Bar(x=df.pos, y=df.delta, marker_color=["#d62728" if v < 0 else "#1f77b4" for v in df.delta],
                           hovertext=[f"{t!r} -> {n!r}" for t, n in zip(df.token, df.next)]))
    fig.update_layout(title=title or f"{effect.kind}-replacing {heads}: change in next-token log-prob",
                      xaxis_title="position (predicting the next token)", yaxis_title="nats", **_LAYOUT)
    return fig, df.round(4)


@strict
def attention_heatmap(patterns, tokens, heads, max_tokens: int = 40) -> tuple[go.Figure, pd.DataFrame]:
    """Attention patterns of chosen heads on one prompt, side by side.

    Args:
        patterns: [head, query, key] from ``views.attention_patterns``.
        tokens: the prompt's token strings.
        heads: the (layer, head) pairs, in the order of ``patterns``.

    Returns:
        The figure, and per head: attention to the previous token, to BOS, to itself (means
        over queries after the first), and the mean entropy in nats.
    """
    import numpy as np  # noqa: PLC0415
    from plotly.subplots import make_subplots  # noqa: PLC0415

    p = patterns.double().numpy()
    n = min(p.shape[-1], max_tokens)
    labels = [f"{i}:{t!r}"[:14] for i, t in enumerate(tokens[:n])]
    fig = make_subplots(1, len(heads), subplot_titles=[f"L{a}H{b}" for a, b in heads], horizontal_spacing=0.04)
    rows = []
    for j, (a, b) in enumerate(heads):
        fig.add_trace(go.Heatmap(z=np.round(p[j, :n, :n], 6), x=labels, y=labels, coloraxis="coloraxis"), 1, j + 1)
        q = np.arange(1, p.shape[1])
        ent = -(p[j] * np.log(np.clip(p[j], 1e-12, None))).sum(-1)
        rows.append({"layer": a, "head": b, "prev_token": p[j, q, q - 1].mean(), "bos": p[j, q, 0].mean(),
                     "self": p[j, q, q].mean(), "entropy": ent[1:].mean()})
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title="attention patterns (rows: query, columns: key)", coloraxis={"colorscale": "Blues"},
                      height=420, **_LAYOUT)
    return fig, pd.DataFrame(rows).round(4)
