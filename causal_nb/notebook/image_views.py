"""What heads do to an image: class probabilities and the CLS token's attention map, live.

``image_head_effect`` replaces heads' outputs (zero, or their mean over reference images) in one
ViT forward and reports the class distribution before and after, the KL between them and the
CLS token's attention over the patch grid at a chosen layer. ``ImageHeadExplorer`` puts a
layer x head grid of toggle buttons over it (the vision counterpart of ``widgets.HeadExplorer``);
its callbacks are plain methods (``toggle``, ``set_kind``, ``set_image``, ``set_layer``) so tests
drive them without a browser.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from ..core.checks import strict
from ..engine.vision import ImageClassificationTask, image_batch, vit_geometry
from .head_grid import head_grid
from .views import head_hooks, head_sets

__all__ = ["ImageEffect", "ImageHeadExplorer", "cls_attention", "image_head_effect", "image_head_means"]

IMAGE_HEAD_KINDS = ("zero", "mean")
_LAYOUT = {"template": "plotly_white", "margin": {"l": 50, "r": 20, "t": 40, "b": 40}, "height": 300}


def _images(model, images) -> Tensor:
    """Checked pixel values on the model's device (a task or an ``ImageSet`` gives its images)."""
    return image_batch(model, images).tokens


@torch.no_grad()
def image_head_means(model, images) -> Float[Tensor, "layer head d_head"]:
    """Every head's output (``hook_z``) averaged over the images and their tokens (CLS and patches);
    a physically pruned layer is zero-padded to ``cfg.n_heads`` rows, as ``views.head_means``."""
    x = _images(model, images)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(x, names_filter=names)
    rows = [cache[n].float().mean((0, 1)) for n in names]
    out = rows[0].new_zeros(len(rows), model.cfg.n_heads, rows[0].shape[-1])
    for layer, r in enumerate(rows):
        out[layer, : r.shape[0]] = r
    return out


def _grid(n_patches: int, geometry: dict) -> tuple[int, int]:
    ph, pw = geometry["size"][0] // geometry["patch"][0], geometry["size"][1] // geometry["patch"][1]
    if ph * pw != n_patches:
        raise ValueError(f"the attention covers {n_patches} patches, the image grid is {ph}x{pw}")
    return ph, pw


@dataclass
class ImageEffect:
    """What replacing ``heads`` does to one image.

    Attributes:
        base, new: class probabilities before / after, [classes].
        attention: the CLS token's attention over the patch grid at ``layer`` (mean over that
            layer's heads), after the replacement, [grid_h, grid_w].
        label: the image's label (None without labels).
    """

    base: np.ndarray
    new: np.ndarray
    attention: np.ndarray
    layer: int
    heads: tuple[tuple[int, int], ...] = ()
    kind: str = "zero"
    label: int | None = None
    seconds: float = field(default=0.0, compare=False)

    @property
    def kl(self) -> float:
        """KL(base || new) in nats."""
        p, q = self.base.astype(np.float64), np.clip(self.new.astype(np.float64), 1e-30, None)
        return float(np.sum(p * (np.log(np.clip(p, 1e-30, None)) - np.log(q))))

    @property
    def label_change(self) -> float:
        """Change in the label's probability (NaN without a label)."""
        return float("nan") if self.label is None else float(self.new[self.label] - self.base[self.label])

    def frame(self, class_names=None, decimals: int = 4) -> pd.DataFrame:
        """One row per class: probability before, after, change."""
        names = list(class_names) if class_names is not None else list(range(len(self.base)))
        return pd.DataFrame({"class": names, "base": self.base, "new": self.new,
                             "change": self.new - self.base}).round(decimals)


@torch.no_grad()
def cls_attention(model, image, layer: int, heads_hooks=()) -> Float[Tensor, "head grid_h grid_w"]:
    """The CLS token's attention to each patch at ``layer``, per head, as the image grid (hooks
    in ``heads_hooks`` active: the map after an intervention in an earlier layer)."""
    x = _images(model, image)
    if x.shape[0] != 1:
        raise ValueError(f"cls_attention looks at one image; got {x.shape[0]} (index them first)")
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} does not exist: the model has layers 0..{model.cfg.n_layers - 1}")
    name = f"blocks.{layer}.attn.hook_pattern"
    with model.hooks(fwd_hooks=list(heads_hooks)):
        _, cache = model.run_with_cache(x, names_filter=[name])
    row = cache[name][0, :, 0, 1:].float()  # [head, patches]: the CLS query over the patch keys
    gh, gw = _grid(row.shape[-1], vit_geometry(model))
    return row.reshape(row.shape[0], gh, gw)


@strict
def image_head_effect(model, image, heads, kind: str = "zero", means: Tensor | None = None, layer: int | None = None,
                      label: int | None = None, base_probs: Tensor | None = None) -> ImageEffect:
    """Replace ``heads`` ((layer, head) pairs) in one image's forward.

    Args:
        image: one image, [1, channels, h, w] (or [channels, h, w]).
        kind: ``"zero"`` or ``"mean"`` (``means`` from ``image_head_means``).
        layer: the layer whose CLS attention map is returned (default: the last).
        base_probs: the unmodified class probabilities, when already computed.
    """
    if kind not in IMAGE_HEAD_KINDS:
        raise ValueError(f"unknown intervention {kind!r}; valid: {list(IMAGE_HEAD_KINDS)}")
    t0 = time.perf_counter()
    image = image[None] if image.dim() == 3 else image
    x = _images(model, image)
    sel = sorted({(la, h) for la, hs in head_sets(model, heads).items() for h in hs})
    hooks = head_hooks(model, sel, kind, means) if sel else []
    layer = model.cfg.n_layers - 1 if layer is None else int(layer)
    with torch.no_grad():
        if base_probs is None:
            base_probs = torch.softmax(model(x, return_type="logits").double(), -1)[0]
        with model.hooks(fwd_hooks=hooks):
            new = torch.softmax(model(x, return_type="logits").double(), -1)[0]
    att = cls_attention(model, x, layer, hooks).mean(0)
    return ImageEffect(base=base_probs.cpu().numpy(), new=new.cpu().numpy(), attention=att.cpu().numpy(),
                       layer=layer, heads=tuple(sel), kind=kind, label=label,
                       seconds=time.perf_counter() - t0)


class ImageHeadExplorer:
    """Toggle ViT heads on a grid; watch an image's class probabilities and CLS attention change.

    Args:
        model: a ViT bridge (``load_model``).
        task: an ``ImageClassificationTask`` (its images and labels are offered) or an ``ImageSet``.
        class_names: names of the classes, for the bar chart (default 0..n-1).
        reference: images whose mean head outputs the "mean" replacement uses (default: the task's).
    """

    def __init__(self, model, task, class_names=None, reference=None):
        self.task = task if isinstance(task, ImageClassificationTask) else ImageClassificationTask(task)
        self.task.check_model(model, "ImageHeadExplorer")
        self.model = model
        self.images, self.labels = self.task.images, self.task.labels
        n_classes = vit_geometry(model)["n_classes"]
        self.class_names = [str(c) for c in (class_names if class_names is not None else range(n_classes))]
        if len(self.class_names) != n_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names, the model has {n_classes} classes")
        self.means = image_head_means(model, reference if reference is not None else self.task)
        self.selected: set[tuple[int, int]] = set()
        self.kind, self.index, self.layer = "zero", 0, model.cfg.n_layers - 1
        self._base: dict[int, Tensor] = {}
        self.effect: ImageEffect | None = None
        self.history: list[float] = []

        self.buttons, self.grid = head_grid(model, self._on_button)
        self.kind_w = W.ToggleButtons(options=list(IMAGE_HEAD_KINDS), value="zero", description="replace with")
        self.kind_w.observe(lambda c: self._set("kind", c["new"]), "value")
        self.image_w = W.Dropdown(options=[(str(i), i) for i in range(len(self.images))], value=0,
                                  description="image")
        self.image_w.observe(lambda c: self._set("index", c["new"]), "value")
        self.layer_w = W.IntSlider(value=self.layer, min=0, max=model.cfg.n_layers - 1, description="attention L")
        self.layer_w.observe(lambda c: self._set("layer", c["new"]), "value")
        self.summary = W.HTML()
        img = self.images[0].float().mean(0).numpy()
        self.image_fig = go.FigureWidget(go.Heatmap(z=img[::-1], colorscale="gray", showscale=False))
        self.image_fig.update_layout(title="image", **{**_LAYOUT, "height": 260})
        self.prob_fig = go.FigureWidget([go.Bar(x=self.class_names, y=[], name="full"),
                                         go.Bar(x=self.class_names, y=[], name="heads replaced")])
        self.prob_fig.update_layout(title="class probabilities", yaxis_title="probability", **_LAYOUT)
        self.att_fig = go.FigureWidget(go.Heatmap(z=[[0.0]], colorscale="Viridis"))
        self.att_fig.update_layout(title="CLS attention to the patches", **{**_LAYOUT, "height": 260})
        self.widget = W.VBox([W.HBox([self.kind_w, self.image_w, self.layer_w]), self.grid, self.summary,
                              W.HBox([self.image_fig, self.att_fig]), self.prob_fig])
        self.update()

    def _on_button(self, change):
        layer, head = (int(v) for v in change["owner"].description[1:].split("H"))
        (self.selected.add if change["new"] else self.selected.discard)((layer, head))
        self.update()

    def _set(self, name: str, value) -> None:
        setattr(self, name, value)
        self.update()

    def toggle(self, layer: int, head: int) -> ImageEffect:
        """Select or unselect a head (as clicking its button does); returns the new effect."""
        head_sets(self.model, [(layer, head)])  # a clear error for a head that doesn't exist
        self.buttons[(layer, head)].value = not self.buttons[(layer, head)].value
        return self.effect

    def set_kind(self, kind: str) -> ImageEffect:
        if kind not in IMAGE_HEAD_KINDS:
            raise ValueError(f"unknown intervention {kind!r}; valid: {list(IMAGE_HEAD_KINDS)}")
        self.kind_w.value = kind
        return self.effect

    def set_image(self, index: int) -> ImageEffect:
        if not 0 <= index < len(self.images):
            raise ValueError(f"image index {index} out of range 0..{len(self.images) - 1}")
        self.image_w.value = index
        return self.effect

    def set_layer(self, layer: int) -> ImageEffect:
        if not 0 <= layer < self.model.cfg.n_layers:
            raise ValueError(f"layer {layer} does not exist: the model has layers 0..{self.model.cfg.n_layers - 1}")
        self.layer_w.value = layer
        return self.effect

    def update(self) -> ImageEffect:
        """Recompute the current selection's effect on the current image and redraw in place."""
        t0 = time.perf_counter()
        image = self.images[self.index : self.index + 1]
        label = int(self.labels[self.index])
        e = image_head_effect(self.model, image, sorted(self.selected), self.kind, self.means, self.layer, label,
                              self._base.get(self.index))
        self._base[self.index] = torch.as_tensor(e.base)
        self.effect = e
        with self.image_fig.batch_update():
            self.image_fig.data[0].z = image[0].float().mean(0).numpy()[::-1].tolist()
        with self.att_fig.batch_update():
            self.att_fig.data[0].z = np.round(e.attention[::-1], 6).tolist()
        with self.prob_fig.batch_update():
            self.prob_fig.data[0].y = np.round(e.base, 6).tolist()
            self.prob_fig.data[1].y = np.round(e.new, 6).tolist()
        heads = ", ".join(f"L{a}H{b}" for a, b in e.heads) or "none"
        lab = f" &nbsp; <b>label {self.class_names[label]}:</b> {e.base[label]:.3f} → {e.new[label]:.3f}"
        self.summary.value = (f"<b>heads:</b> {heads} &nbsp; <b>replace with:</b> {e.kind} &nbsp; "
                              f"<b>KL:</b> <span class=\"cnb-metric\">{e.kl:.4f}</span> nats{lab}")
        self.history.append(time.perf_counter() - t0)
        return e

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.widget._repr_mimebundle_(include=include, exclude=exclude)
