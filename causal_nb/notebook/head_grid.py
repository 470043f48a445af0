"""The layer x head grid of toggle buttons the head explorers share (LM and ViT)."""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as W

from .views import heads_per_layer

__all__ = ["head_grid"]


def head_grid(model, on_change: Callable) -> tuple[dict[tuple[int, int], W.ToggleButton], W.GridBox]:
    """One toggle button per head, a row per layer; a physically pruned layer's missing heads are
    blank cells. ``on_change`` observes each button's ``value`` (its description is ``L<l>H<h>``).

    Returns:
        ``{(layer, head): button}`` and the grid.
    """
    n_h = model.cfg.n_heads
    buttons, cells = {}, []
    for layer, count in enumerate(heads_per_layer(model)):
        for head in range(n_h):
            if head >= count:
                cells.append(W.HTML(layout=W.Layout(width="64px")))
                continue
            b = W.ToggleButton(value=False, description=f"L{layer}H{head}", tooltip=f"layer {layer}, head {head}",
                               layout=W.Layout(width="64px"))
            b.observe(on_change, "value")
            buttons[(layer, head)] = b
            cells.append(b)
    return buttons, W.GridBox(cells, layout=W.Layout(grid_template_columns=f"repeat({n_h}, 68px)"))
