"""Live widgets: pick heads and watch the effect, slide sparsity and watch quality.

``HeadExplorer`` is a layer x head grid of toggle buttons with an intervention selector
(zero / mean / patch with the other domain's mean) and a prompt selector; every change
re-runs one prompt (``views.head_effect``, tens of milliseconds on the bundled models) and
updates, in place, the metric change, the per-token effect along the prompt and the most
promoted/demoted tokens. ``SparsityExplorer`` has one slider per importance metric; moving it
masks that metric's least important heads and re-plots quality (KL to the full model, top-1
agreement) on held-out prompts. ``ImageHeadExplorer`` (``notebook.image_views``) is the vision
transformer's head grid: an image's class probabilities and the CLS attention map;
``TaskExplorer`` (``notebook.task_explorer``) is the grid for any task that carries its inputs
(sentence pairs, T5 translation pairs, images): each item's metric, live. The callbacks are plain methods (``toggle``, ``set_kind``, ``set_prompt``, ``set_sparsity``) so tests
drive them without a browser.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from ..core.checks import check_table_fits, require_scores, strict
from ..engine.common import prepare, scored_batch
from ..engine.metrics import get_metric
from ..pruning.selection import select_units
from . import views
from .head_grid import head_grid
from .image_views import ImageHeadExplorer
from .task_explorer import TaskExplorer

__all__ = ["HeadExplorer", "ImageHeadExplorer", "SparsityExplorer", "TaskExplorer"]

_LAYOUT = {"template": "plotly_white", "margin": {"l": 50, "r": 20, "t": 40, "b": 40}, "height": 300}


def _mime(widget, include=None, exclude=None):
    return widget._repr_mimebundle_(include=include, exclude=exclude)


class HeadExplorer:
    """Toggle heads on a grid; see what replacing them does to a prompt, live.

    Args:
        model: a bridge from ``load_model``.
        prompts: the prompts to choose from (PromptSet or list of strings).
        reference: prompts whose mean head outputs "mean" replacement uses (default: ``prompts``).
        source: the other domain's prompts, for "patch" (their mean head outputs); without it
            the "patch" option is not offered.
        n_tokens: tokens per prompt.
        top_k: promoted/demoted tokens shown.
    """

    @strict
    def __init__(self, model, prompts, reference=None, source=None, n_tokens: int = 64, top_k: int = 8):
        self.model, self.top_k, self.n_tokens = model, top_k, n_tokens
        self.batch = prepare(model, prompts, n_tokens)
        self.means = views.head_means(model, reference if reference is not None else self.batch, n_tokens)
        self.source_means = views.head_means(model, source, n_tokens) if source is not None else None
        self.selected: set[tuple[int, int]] = set()
        self.kind = "zero"
        self.index = 0
        self._base: dict[int, torch.Tensor] = {}
        self.effect: views.Effect | None = None
        self.history: list[float] = []  # seconds per update, for the responsiveness figure

        self.buttons, self.grid = head_grid(model, self._on_button)
        kinds = [k for k in views.HEAD_KINDS if k != "patch" or self.source_means is not None]
        self.kind_w = W.ToggleButtons(options=kinds, value="zero", description="replace with")
        self.kind_w.observe(self._on_kind, "value")
        self.prompt_w = W.Dropdown(options=[(pid, i) for i, pid in enumerate(self.batch.ids)], value=0,
                                   description="prompt")
        self.prompt_w.observe(self._on_prompt, "value")
        self.clear_w = W.Button(description="clear")
        self.clear_w.on_click(lambda _: self.clear())
        self.summary = W.HTML()
        self.text = W.HTML()
        self.token_fig = go.FigureWidget(go.Bar(x=[], y=[], marker_color=[], name="delta"))
        self.token_fig.update_layout(title="change in next-token log-prob along the prompt", xaxis_title="position",
                                     yaxis_title="nats", **_LAYOUT)
        self.vocab_fig = go.FigureWidget([go.Bar(x=[], y=[], orientation="h", name="promoted",
                                                 marker_color="#1f77b4"),
                                          go.Bar(x=[], y=[], orientation="h", name="demoted",
                                                 marker_color="#d62728")])
        self.vocab_fig.update_layout(title="most promoted / demoted tokens (mean over positions)",
                                     xaxis_title="mean change in log-prob (nats)", barmode="overlay", **_LAYOUT)
        self.widget = W.VBox([W.HBox([self.kind_w, self.prompt_w, self.clear_w]), self.grid, self.summary,
                              self.token_fig, self.vocab_fig, self.text])
        self.update()

    # -- callbacks (plain methods, so tests can drive them) --
    def _on_button(self, change):
        owner = change["owner"]
        layer, head = (int(x) for x in owner.description[1:].split("H"))
        if change["new"]:
            self.selected.add((layer, head))
        else:
            self.selected.discard((layer, head))
        self.update()

    def toggle(self, layer: int, head: int) -> views.Effect:
        """Select or unselect a head (as clicking its button does); returns the new effect."""
        views.head_sets(self.model, [(layer, head)])  # a clear error for a head that doesn't exist
        self.buttons[(layer, head)].value = not self.buttons[(layer, head)].value
        return self.effect

    def _on_kind(self, change):
        self.kind = change["new"]
        self.update()

    def _on_prompt(self, change):
        self.index = change["new"]
        self.update()

    def set_kind(self, kind: str) -> views.Effect:
        """Choose the replacement (as the toggle buttons do); returns the new effect."""
        if kind not in self.kind_w.options:
            raise ValueError(f"unknown intervention {kind!r}; valid here: {list(self.kind_w.options)}")
        if self.kind_w.value != kind:
            self.kind_w.value = kind  # the observer updates
        return self.effect

    def set_prompt(self, index: int) -> views.Effect:
        """Choose the prompt (as the dropdown does); returns the new effect."""
        if not 0 <= index < len(self.batch):
            raise ValueError(f"prompt index {index} out of range 0..{len(self.batch) - 1}")
        if self.prompt_w.value != index:
            self.prompt_w.value = index  # the observer updates
        return self.effect

    def clear(self) -> views.Effect:
        for (layer, head) in sorted(self.selected):
            b = self.buttons[(layer, head)]
            b.unobserve(self._on_button, "value")
            b.value = False
            b.observe(self._on_button, "value")
        self.selected.clear()
        return self.update()

    # -- the work --
    def update(self) -> views.Effect:
        """Recompute the effect of the current selection and redraw in place."""
        t0 = time.perf_counter()
        prompt = _row(self.batch, self.index)
        if self.index not in self._base:
            self._base[self.index] = views.prompt_logprobs(self.model, prompt, self.n_tokens)
        e = views.head_effect(self.model, prompt, sorted(self.selected), self.kind, self.means, self.source_means,
                              self.top_k, self.n_tokens, base_logprobs=self._base[self.index])
        self.effect = e
        d = e.delta
        with self.token_fig.batch_update():
            bar = self.token_fig.data[0]
            bar.x = list(range(len(d)))
            bar.y = np.round(d, 6).tolist()
            bar.marker.color = ["#d62728" if v < 0 else "#1f77b4" for v in d]
            bar.hovertext = [f"{t!r} -> {n!r}" for t, n in zip(e.tokens[:-1], e.tokens[1:])]
        with self.vocab_fig.batch_update():
            up, dn = self.vocab_fig.data
            up.x, up.y = np.round(e.promoted.change, 6).tolist(), [repr(t) for t in e.promoted.token]
            dn.x, dn.y = np.round(e.demoted.change, 6).tolist(), [repr(t) for t in e.demoted.token]
        heads = ", ".join(f"L{a}H{b}" for a, b in e.heads) or "none"
        self.summary.value = (f"<b>heads:</b> {heads} &nbsp; <b>replace with:</b> {e.kind} &nbsp; "
                              f"<b>mean change in next-token log-prob:</b> "
                              f'<span class="cnb-metric">{e.metric_change:+.4f}</span> nats')
        self.text.value = views.token_html(e.tokens[1:], d, title="each token coloured by the change in its log-prob")
        self.history.append(time.perf_counter() - t0)
        return e

    def _repr_mimebundle_(self, include=None, exclude=None):
        return _mime(self.widget, include, exclude)


def _row(batch, i: int):
    from ..data.prompts import TokenBatch  # noqa: PLC0415

    return TokenBatch(batch.tokens[i : i + 1], batch.mask[i : i + 1], batch.ids[i : i + 1])


class SparsityExplorer:
    """One sparsity slider per importance metric; quality of the head-masked model, live.

    Moving a metric's slider zero-masks its least important heads (global budget, at least
    one head per layer: the same selection as ``prune(..., physical=False)``) and evaluates
    on the held-out prompts. Results are cached per (metric, sparsity).

    Args:
        model: a bridge from ``load_model``.
        scores: metric name -> head score table (``score(..., unit="head")``).
        prompts: held-out prompts to evaluate on.
        quality: ``"kl"`` (KL to the full model, lower is better) or ``"top1"`` (agreement).
    """

    @strict
    def __init__(self, model, scores: Mapping[str, pd.DataFrame], prompts, n_tokens: int = 64,
                 quality: str = "kl", step: float = 0.05, max_sparsity: float = 0.9):
        if quality not in ("kl", "top1"):
            raise ValueError(f"quality must be 'kl' or 'top1', got {quality!r}")
        if not scores:
            raise ValueError("scores is empty: give at least one metric's head scores")
        for name, t in scores.items():
            check_table_fits(t, require_scores(t, f"SparsityExplorer scores[{name!r}]", units=("head",)),
                             model.cfg.n_layers, model.cfg.n_heads, f"SparsityExplorer scores[{name!r}]")
        self.model, self.scores, self.quality = model, dict(scores), quality
        self.batch = prepare(model, prompts, n_tokens)
        self.scored = scored_batch(self.batch)
        with torch.no_grad():
            ref = model(self.batch.tokens, return_type="logits")[:, self.scored.positions]
        self.scored.ref_logprobs = torch.log_softmax(ref.float(), -1)
        self._metric = get_metric(quality)
        self._cache: dict[tuple[str, float], float] = {}
        self.values = {name: 0.0 for name in self.scores}
        self.sliders = {}
        for name in self.scores:
            s = W.FloatSlider(value=0.0, min=0.0, max=max_sparsity, step=step, description=name,
                              readout_format=".2f", continuous_update=False)
            s.observe(lambda c, name=name: self._redraw(name, c["new"]), "value")
            self.sliders[name] = s
        label = "KL to the full model (nats)" if quality == "kl" else "top-1 agreement with the full model"
        self.fig = go.FigureWidget(go.Bar(x=list(self.scores), y=[0.0] * len(self.scores),
                                          text=["s=0.00"] * len(self.scores)))
        self.fig.update_layout(title="quality of the head-masked model at each metric's sparsity", yaxis_title=label,
                               **_LAYOUT)
        self.widget = W.VBox([*self.sliders.values(), self.fig])
        self._redraw(next(iter(self.scores)), 0.0)

    def removed_heads(self, name: str, sparsity: float) -> dict[int, list[int]]:
        """Heads that metric ``name`` removes at ``sparsity``, by layer."""
        cfg = self.model.cfg
        return select_units(self.scores[name], sparsity, cfg.n_heads, cfg.n_layers, "global")

    @torch.no_grad()
    def quality_at(self, name: str, sparsity: float) -> float:
        """Mean quality over the prompts with ``name``'s least important heads zeroed."""
        key = (name, round(float(sparsity), 6))
        if key not in self._cache:
            heads = [(layer, h) for layer, hs in self.removed_heads(name, sparsity).items() for h in hs]
            with self.model.hooks(fwd_hooks=views.head_hooks(self.model, heads, "zero")):
                logits = self.model(self.batch.tokens, return_type="logits")[:, self.scored.positions]
            self._cache[key] = float(self._metric(logits, self.scored).mean())
        return self._cache[key]

    def set_sparsity(self, name: str, sparsity: float) -> float:
        """Move ``name``'s slider (as dragging it does) and re-plot; returns the new quality."""
        if name not in self.scores:
            raise ValueError(f"unknown metric {name!r}; this explorer has {list(self.scores)}")
        if self.sliders[name].value != sparsity:
            self.sliders[name].value = sparsity  # the observer redraws
        return self.quality_at(name, self.values[name])

    def _redraw(self, name: str, sparsity: float) -> None:
        self.values[name] = float(sparsity)
        names = list(self.scores)
        with self.fig.batch_update():
            self.fig.data[0].y = [round(self.quality_at(n, self.values[n]), 6) for n in names]
            self.fig.data[0].text = [f"s={self.values[n]:.2f}" for n in names]

    def table(self) -> pd.DataFrame:
        """Current sparsity and quality per metric (rounded)."""
        return pd.DataFrame({"metric": list(self.scores), "sparsity": [self.values[n] for n in self.scores],
                             self.quality: [self.quality_at(n, self.values[n]) for n in self.scores]}).round(4)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return _mime(self.widget, include, exclude)
