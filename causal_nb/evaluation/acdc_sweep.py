"""ACDC circuits pruned and evaluated: ``acdc_sweep`` (the walk itself is ``analyses.acdc``)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..analyses.acdc import DEFAULT_THRESHOLDS, acdc
from ..core.checks import strict
from ..engine.common import DEFAULT_N_TOKENS
from ..pruning.structure import prune_units
from .quality import evaluate

__all__ = ["acdc_sweep"]


@strict
def acdc_sweep(model, prompts, eval_prompts, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, unit: str = "head",
               kind: str = "zero", n_tokens: int | None = None, physical: bool = True,
               progress: bool | None = None) -> pd.DataFrame:
    """ACDC at each threshold on ``prompts``, each result pruned and evaluated on ``eval_prompts``.

    Heads and neurons only (``prune_units`` removes them). The pruned model leaves what the
    walk's ablation left: nothing with ``kind="zero"``, and with ``kind="mean"`` each removed
    unit's mean over ``prompts`` (folded into the output bias, ``fill="mean"``), so the
    held-out KL measures the same intervention the walk selected under. (Resample ablation has
    no fixed value a pruned model could keep; ``acdc`` refuses it.)

    Returns:
        ``acdc``'s table plus held-out ``eval_kl``, ``eval_top1`` and ``params`` per threshold.
    """
    if unit not in ("head", "neuron"):
        raise ValueError(f"acdc_sweep prunes heads or neurons, not {unit!r}")
    df = acdc(model, prompts, thresholds, unit, kind, n_tokens=n_tokens, progress=progress)
    # the walk's mean sources are over ``prompts`` at the walk's length: prune with the same
    fill = {"fill": "mean", "reference": prompts, "n_tokens": n_tokens or DEFAULT_N_TOKENS} if kind == "mean" else {}
    extra = []
    for sel in df.attrs["selections"]:
        pruned = prune_units(model, **{f"{unit}s": sel}, physical=physical, **fill)
        ev = evaluate(pruned, eval_prompts, full_model=model, n_tokens=n_tokens or 64, latency_batches=())
        extra.append({"eval_kl": ev["kl"], "eval_top1": ev["top1_agreement"], "params": ev["params"]})
    out = pd.concat([df, pd.DataFrame(extra)], axis=1)
    out.attrs.update(df.attrs)
    return out
