"""ACDC-style pruning: walk the units from the last layer to the first and remove each one whose
removal raises the KL divergence to the full model by less than a threshold tau.

This is the node version of Conmy et al.'s Automatic Circuit DisCovery (2023): units
(heads, neurons, MLPs, blocks) rather than edges, ablated with zeros or their mean. Because
the walk goes late to early, every unit removed so far sits at or after the one under test, so
each test replays only the blocks from the unit's layer on, from the cached clean residual.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..core.checks import reject_unused, strict
from ..core.env import progress_enabled
from ..engine.common import ablation_sources, prepare, scored_batch
from ..engine.metrics import get_metric
from ..engine.replay import joint_hooks, run_from, scored_run
from ..engine.units import Unit, enumerate_units, unit_columns

__all__ = ["ACDC_UNITS", "DEFAULT_THRESHOLDS", "acdc", "acdc_scores", "acdc_walk"]

ACDC_UNITS = ("head", "neuron", "mlp", "block")
DEFAULT_THRESHOLDS = (0.001, 0.003, 0.01, 0.03, 0.1)


def _index(u: Unit) -> int | None:
    return u.head if u.head is not None else u.neuron


def _order(units: Sequence[Unit]) -> list[int]:
    # last layer first, and within a layer the highest index first
    return sorted(range(len(units)), key=lambda i: (-units[i].layer, -(_index(units[i]) or 0)))


@torch.no_grad()
def acdc_walk(model, base, sources, units: Sequence[Unit], scored, threshold: float, floor: int = 1,
              progress: bool | None = None) -> tuple[list[int], np.ndarray, float]:
    """One ACDC pass at ``threshold``.

    Args:
        base: the clean run's ``Capture`` (``scored.ref_logprobs`` set from it).
        sources: replacement activations per hook (zero or mean ablation).
        floor: units of a layer that are never removed (heads: 1, so every layer keeps a head).

    Returns:
        Indices into ``units`` removed; each unit's KL increase when it was tested (NaN for units
        kept by the floor without a test); the final KL of the pruned model on these prompts.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    kl = get_metric("kl")
    left: dict[int, int] = {}
    for u in units:
        left[u.layer] = left.get(u.layer, 0) + 1
    removed: list[int] = []
    delta = np.full(len(units), np.nan)
    current = 0.0
    for i in tqdm(_order(units), desc=f"ACDC tau={threshold:g}", disable=not progress_enabled(progress), leave=False):
        u = units[i]
        if left[u.layer] <= floor:
            continue
        trial = [units[j] for j in removed] + [u]
        with model.hooks(fwd_hooks=joint_hooks(trial, sources)):
            logits = run_from(model, base, u.layer, 1, scored.positions)
        value = float(kl(logits, scored).double().mean())
        delta[i] = value - current
        if delta[i] < threshold:
            removed.append(i)
            left[u.layer] -= 1
            current = value
    return removed, delta, current


def _setup(model, prompts, unit, kind, reference, n_tokens):
    if unit not in ACDC_UNITS:
        raise ValueError(f"unknown unit {unit!r} for ACDC; valid: {list(ACDC_UNITS)}")
    if kind not in ("zero", "mean"):
        raise ValueError(f"ACDC ablates with 'zero' or 'mean', got {kind!r}")
    reject_unused(kind, {"reference": reference}, {"reference": ("mean",)},
                  {("reference", "zero"): "zero ablation reads no prompts"}, what="kind")
    pb = prepare(model, prompts, n_tokens)
    units = enumerate_units(model, unit)
    hooks = sorted({e.hook for u in units for e in u.edits})
    scored = scored_batch(pb)
    base, _ = scored_run(model, pb.tokens, hooks, scored, get_metric("kl"), reference=True)
    sources = ablation_sources(model, kind, pb, hooks, reference, n_tokens, 0)
    return pb, units, scored, base, sources


@strict
def acdc(model, prompts, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, unit: str = "head", kind: str = "zero",
         reference=None, n_tokens: int | None = None, floor: int | None = None,
         progress: bool | None = None) -> pd.DataFrame:
    """ACDC over a sweep of thresholds: what each tau removes and what that costs.

    Args:
        prompts: the prompts the KL is measured on (held-out prompts evaluate the result).
        thresholds: KL increases (nats) below which a unit is removed.
        unit: ``"head"``, ``"neuron"``, ``"mlp"`` or ``"block"``.
        kind: ``"zero"`` or ``"mean"`` (over ``reference``, default ``prompts``).
        floor: units per layer never removed (default 1 for heads and neurons, so a physically
            pruned model keeps every layer; 0 for whole MLPs and blocks).

    Returns:
        One row per threshold: ``tau``, ``removed``, ``units``, ``sparsity``, ``kl`` (of the
        pruned model on ``prompts``). ``attrs["selections"][i]`` is row i's removed units as
        ``{layer: [index, ...]}`` (heads/neurons; ``prune_units`` takes it) or a list of
        layers (MLPs/blocks); ``attrs["delta"][i]`` each unit's KL increase when tested.
    """
    if not thresholds or any(t < 0 for t in thresholds):
        raise ValueError(f"thresholds must be a non-empty list of non-negative KL increases, got {list(thresholds)}")
    floor = (1 if unit in ("head", "neuron") else 0) if floor is None else floor
    _, units, scored, base, sources = _setup(model, prompts, unit, kind, reference, n_tokens)
    rows, selections, deltas = [], [], []
    for tau in thresholds:
        removed, delta, final = acdc_walk(model, base, sources, units, scored, float(tau), floor, progress)
        rows.append({"tau": float(tau), "removed": len(removed), "units": len(units),
                     "sparsity": len(removed) / len(units), "kl": final})
        if _index(units[0]) is None:
            selections.append(sorted(units[i].layer for i in removed))
        else:
            sel: dict[int, list[int]] = {}
            for i in removed:
                sel.setdefault(units[i].layer, []).append(_index(units[i]))
            selections.append({k: sorted(v) for k, v in sorted(sel.items())})
        deltas.append(delta.tolist())
    df = pd.DataFrame(rows)
    df.attrs.update({"method": "acdc", "unit": unit, "kind": kind, "floor": floor, "selections": selections,
                     "delta": deltas})
    return df


@strict
def acdc_scores(model, prompts, unit: str = "head", kind: str = "zero", threshold: float = 0.01, reference=None,
                n_tokens: int | None = None, progress: bool | None = None) -> pd.DataFrame:
    """Importance from one ACDC pass: each unit's KL increase when the walk tested it.

    Higher = more important; a unit ACDC removed scores below ``threshold``. With no floor,
    every unit is tested, so the table ranks all of them (``prune`` can then cut at any
    sparsity).
    """
    _, units, scored, base, sources = _setup(model, prompts, unit, kind, reference, n_tokens)
    removed, delta, final = acdc_walk(model, base, sources, units, scored, float(threshold), 0, progress)
    df = pd.DataFrame([{c: u.coords().get(c) for c in unit_columns(unit)} for u in units])
    df["score"] = delta
    df.attrs.update({"method": "acdc", "unit": unit, "kind": kind, "threshold": float(threshold),
                     "removed": len(removed), "kl": final})
    return df


