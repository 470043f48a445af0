"""One live unit explorer for every task that carries its inputs: toggle units, watch each item's
metric change.

``TaskExplorer(model, task)`` builds a layer x unit grid of toggle buttons from the task's own
units (a sentence encoder's heads, a T5 stack's ``enc_head``/``dec_head``/``cross_head``, a ViT's
heads, MLPs or blocks) and, on every change, re-runs the task's forward with the selected units
replaced (zero, or their mean over the task's inputs) and redraws each item's metric (cosine per
sentence pair, target log-prob per translation pair, label log-prob per image) beside the
unmodified value. It reads the engine only through the task interface (``engine.tasks.Task``),
so a new task gets the explorer for free. The callbacks are plain methods (``toggle``,
``set_kind``, ``clear``) so tests drive them without a browser.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from ..engine.common import ablation_sources
from ..engine.replay import joint_hooks
from ..engine.tasks import LMTask, as_task

__all__ = ["TaskEffect", "TaskExplorer"]

EXPLORER_KINDS = ("zero", "mean")
_LAYOUT = {"template": "plotly_white", "margin": {"l": 50, "r": 20, "t": 40, "b": 40}, "height": 320}


@dataclass
class TaskEffect:
    """What replacing ``units`` does to every item of the task.

    Attributes:
        ids: one id per item (pairs, images).
        base, new: the metric per item, unmodified / with the units replaced.
        units: the replaced units' labels.
    """

    ids: tuple
    base: np.ndarray
    new: np.ndarray
    units: tuple[str, ...] = ()
    kind: str = "zero"
    metric: str = ""
    seconds: float = field(default=0.0, compare=False)

    @property
    def delta(self) -> np.ndarray:
        return self.new - self.base

    @property
    def mean_change(self) -> float:
        return float(self.delta.mean()) if len(self.delta) else 0.0

    def frame(self, decimals: int = 4) -> pd.DataFrame:
        """One row per item: the metric before, after, and the change."""
        return pd.DataFrame({"id": list(self.ids), "base": self.base, "new": self.new,
                             "delta": self.delta}).round(decimals)


class TaskExplorer:
    """Toggle a task's units on a grid and watch the metric of every item change.

    Args:
        model: the bridge the task reads (``load_model``).
        task: a task that carries its inputs: ``cnb.SentencePairTask(pairs)``,
            ``cnb.Seq2SeqTask(sources, targets)``, ``cnb.ImageClassificationTask(images, labels)``.
            (The decoder LM has ``widgets.HeadExplorer``, which shows tokens.)
        unit: the unit kind on the grid, one the task names (``"head"``; T5: ``"enc_head"``,
            ``"dec_head"``, ``"cross_head"``; also whole ``"mlp"``/``"block"`` units). Neuron kinds
            are refused: thousands of toggles; ``ablate`` scores them.
        metric: the per-item metric (default: the task's own, ``task.patch_metric``).
    """

    def __init__(self, model, task, unit: str = "head", metric=None):
        task = as_task(task)
        if isinstance(task, LMTask) or not task.carries_inputs:
            raise ValueError("TaskExplorer takes a task that carries its inputs (SentencePairTask, Seq2SeqTask, "
                             "ImageClassificationTask); for a decoder LM's prompts use cnb.widgets.HeadExplorer")
        if "neuron" in unit:
            raise ValueError(f"unit {unit!r}: a grid of every neuron is thousands of toggles; score neurons with "
                             "cnb.ablate / cnb.score, or explore 'head', 'mlp' or 'block' units here")
        task.check_model(model, "TaskExplorer")
        self.model, self.task, self.unit = model, task, unit
        self.metric_name = str(getattr(metric, "__name__", metric or task.patch_metric))
        self.metric = task.metric(metric or task.patch_metric)
        self.batch = task.prepare(model)
        self.units = task.units(model, unit)
        hooks = sorted({e.hook for u in self.units for e in u.edits})
        self.scored = task.scoring(model, self.batch)
        with torch.no_grad():
            base = task.run(model, self.batch.tokens, self.scored)
            task.set_reference(self.scored, base)
            self.base = self.metric(base, self.scored).double().cpu().numpy()
            self.sources = {k: ablation_sources(model, k, self.batch, hooks, None, None, 0, task=task)
                            for k in EXPLORER_KINDS}
        self.ids = task.ids(self.batch)
        self.selected: set[int] = set()
        self.kind = "zero"
        self.effect: TaskEffect | None = None
        self.history: list[float] = []

        self.buttons: dict[str, W.ToggleButton] = {}
        rows: dict[int, list] = {}
        for i, u in enumerate(self.units):
            b = W.ToggleButton(value=False, description=u.label.split(" ", 1)[-1] or u.label, tooltip=u.label,
                               layout=W.Layout(width="84px"))
            b.observe(lambda c, i=i: self._on_button(i, c["new"]), "value")
            self.buttons[u.label] = b
            rows.setdefault(u.layer, []).append(b)
        width = max(len(r) for r in rows.values())
        cells = [c for layer in sorted(rows) for c in rows[layer] + [W.HTML() for _ in range(width - len(rows[layer]))]]
        self.grid = W.GridBox(cells, layout=W.Layout(grid_template_columns=f"repeat({width}, 88px)"))
        self.kind_w = W.ToggleButtons(options=list(EXPLORER_KINDS), value="zero", description="replace with")
        self.kind_w.observe(lambda c: self._set_kind(c["new"]), "value")
        self.clear_w = W.Button(description="clear")
        self.clear_w.on_click(lambda _: self.clear())
        self.summary = W.HTML()
        self.fig = go.FigureWidget([go.Bar(x=list(self.ids), y=np.round(self.base, 6).tolist(), name="full"),
                                    go.Bar(x=list(self.ids), y=[], name="units replaced")])
        self.fig.update_layout(title=f"{self.metric_name} per item", yaxis_title=self.metric_name, **_LAYOUT)
        self.widget = W.VBox([W.HBox([self.kind_w, self.clear_w]), self.grid, self.summary, self.fig])
        self.update()

    def _on_button(self, i: int, on: bool) -> None:
        (self.selected.add if on else self.selected.discard)(i)
        self.update()

    def _set_kind(self, kind: str) -> None:
        self.kind = kind
        self.update()

    def toggle(self, label: str) -> TaskEffect:
        """Select or unselect a unit by its label (e.g. ``"head L1 h2"``; ``units_table()`` lists them)."""
        if label not in self.buttons:
            raise ValueError(f"no unit {label!r} on this grid; labels look like {list(self.buttons)[:3]} "
                             "(explorer.units_table() lists them all)")
        self.buttons[label].value = not self.buttons[label].value
        return self.effect

    def set_kind(self, kind: str) -> TaskEffect:
        if kind not in EXPLORER_KINDS:
            raise ValueError(f"unknown replacement {kind!r}; valid: {list(EXPLORER_KINDS)}")
        self.kind_w.value = kind
        return self.effect

    def clear(self) -> TaskEffect:
        for i in sorted(self.selected):
            b = self.buttons[self.units[i].label]
            b.unobserve_all("value")
            b.value = False
            b.observe(lambda c, i=i: self._on_button(i, c["new"]), "value")
        self.selected.clear()
        return self.update()

    def units_table(self) -> pd.DataFrame:
        """The grid's units: label, layer and index."""
        return pd.DataFrame([{"label": u.label, "layer": u.layer, **u.coords()} for u in self.units])

    def update(self) -> TaskEffect:
        """Re-run the task with the selected units replaced and redraw in place."""
        t0 = time.perf_counter()
        chosen = [self.units[i] for i in sorted(self.selected)]
        if chosen:
            with torch.no_grad(), self.model.hooks(fwd_hooks=joint_hooks(chosen, self.sources[self.kind])):
                new = self.metric(self.task.run(self.model, self.batch.tokens, self.scored), self.scored)
            new = new.double().cpu().numpy()
        else:
            new = self.base.copy()
        e = TaskEffect(self.ids, self.base, new, tuple(u.label for u in chosen), self.kind, self.metric_name,
                       time.perf_counter() - t0)
        self.effect = e
        with self.fig.batch_update():
            self.fig.data[1].y = np.round(new, 6).tolist()
        units = ", ".join(e.units) or "none"
        self.summary.value = (f"<b>units:</b> {units} &nbsp; <b>replace with:</b> {e.kind} &nbsp; "
                              f"<b>mean change in {self.metric_name}:</b> "
                              f'<span class="cnb-metric">{e.mean_change:+.4f}</span>')
        self.history.append(e.seconds)
        return e

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.widget._repr_mimebundle_(include=include, exclude=exclude)
