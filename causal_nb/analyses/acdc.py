"""ACDC-style pruning: walk the units from the last layer to the first and remove each one whose
removal raises the KL divergence to the full model by less than a threshold tau.

This is the node version of Conmy et al.'s Automatic Circuit DisCovery (2023): units
(heads, neurons, MLPs, blocks) rather than edges, ablated with zeros or their mean. Because
the walk goes late to early, every unit removed so far sits at or after the one under test, so
each test replays only the blocks from the unit's layer on, from the cached clean residual.

Tasks (``task=``): the decoder LM (KL of the next-token distributions) and a ViT's
``ImageClassificationTask`` (KL of the class distributions) measure the KL divergence to the
full model; a ``SentencePairTask`` has no distribution, so its walk measures the mean absolute
change of the task's per-pair metric (cosine, or separation) from the full model's. A
``Seq2SeqTask`` (T5) walks one stack's units (``unit="enc_head"``, ``"cross_head"``...) on the KL
of the decoder's target-token distributions, replaying through the task's ``replay_from``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..core.checks import reject_unused, strict
from ..core.env import progress_enabled
from ..engine.common import ablation_sources
from ..engine.replay import joint_hooks, run_from, scored_run
from ..engine.tasks import LMTask, as_task
from ..engine.units import Unit, unit_columns

__all__ = ["ACDC_UNITS", "DEFAULT_THRESHOLDS", "Walk", "acdc", "acdc_scores", "acdc_walk"]

ACDC_UNITS = ("head", "neuron", "mlp", "block")
DEFAULT_THRESHOLDS = (0.001, 0.003, 0.01, 0.03, 0.1)


def _index(u: Unit) -> int | None:
    return u.head if u.head is not None else u.neuron


def _order(units: Sequence[Unit]) -> list[int]:
    # last layer first, and within a layer the highest index first
    return sorted(range(len(units)), key=lambda i: (-units[i].layer, -(_index(units[i]) or 0)))


class Walk:
    """What an ACDC pass needs: the units, the clean run, the ablation sources, and how far a
    readout is from the full model's (``distance``).

    ``quantity`` names that distance: ``"kl"`` (the LM, images: mean KL divergence to the full
    model) or ``"abs_change"`` (sentence pairs: mean over pairs of |metric - full model's|).
    """

    def __init__(self, model, prompts, unit: str, kind: str, reference, n_tokens, task):
        task = as_task(task)
        valid = getattr(task, "acdc_units", ACDC_UNITS)
        if unit not in valid:
            raise ValueError(f"unknown unit {unit!r} for ACDC; valid: {list(valid)}")
        if kind not in ("zero", "mean"):
            raise ValueError(f"ACDC ablates with 'zero' or 'mean', got {kind!r}")
        reject_unused(kind, {"reference": reference}, {"reference": ("mean",)},
                      {("reference", "zero"): "zero ablation reads no prompts"}, what="kind")
        task.check_model(model, "acdc")
        self.task = None if isinstance(task, LMTask) else task  # the engine's LM path takes task=None
        pb = task.prepare(model, prompts, n_tokens)
        self.units = task.units(model, unit)
        hooks = sorted({e.hook for u in self.units for e in u.edits})
        self.scored = task.scoring(model, pb)
        self.positions = getattr(self.scored, "positions", None)
        try:
            self.metric, self.quantity = task.metric("kl"), "kl"
        except ValueError:  # no distribution to compare (sentence embeddings): the task's own metric
            self.metric, self.quantity = task.metric(task.ablation_metric), "abs_change"
        self.base, self.full = scored_run(model, pb.tokens, hooks, self.scored, self.metric, reference=True,
                                          task=self.task)
        with torch.no_grad():
            self.sources = ablation_sources(model, kind, pb, hooks, reference, n_tokens, 0, task=self.task)

    def replay(self, model, unit: Unit):
        """The readout with the blocks from ``unit``'s layer on replayed from the clean run."""
        if hasattr(self.task, "replay_from"):  # a task with its own replay (an encoder-decoder's stacks)
            return self.task.replay_from(model, self.base, unit, self.scored)
        return run_from(model, self.base, unit.layer, 1, self.positions, task=self.task, scored=self.scored)

    def distance(self, readout) -> float:
        """Mean KL to the full model, or mean |metric change| (``quantity``)."""
        value = self.metric(readout, self.scored).double()
        if self.quantity == "abs_change":
            value = (value - self.full.double()).abs()
        return float(value.mean())


@torch.no_grad()
def acdc_walk(model, walk: Walk, threshold: float, floor: int = 1,
              progress: bool | None = None) -> tuple[list[int], np.ndarray, float]:
    """One ACDC pass at ``threshold``.

    Args:
        walk: the setup (units, clean run, ablation sources, distance to the full model).
        floor: units of a layer that are never removed (heads: 1, so every layer keeps a head).

    Returns:
        Indices into ``walk.units`` removed; each unit's distance increase when it was tested
        (NaN for units kept by the floor without a test); the final distance of the pruned
        model on these inputs.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    units = walk.units
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
        with model.hooks(fwd_hooks=joint_hooks(trial, walk.sources)):
            readout = walk.replay(model, u)
        value = walk.distance(readout)
        delta[i] = value - current
        if delta[i] < threshold:
            removed.append(i)
            left[u.layer] -= 1
            current = value
    return removed, delta, current


@strict
def acdc(model, prompts=None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, unit: str = "head",
         kind: str = "zero", reference=None, n_tokens: int | None = None, floor: int | None = None,
         progress: bool | None = None, task=None) -> pd.DataFrame:
    """ACDC over a sweep of thresholds: what each tau removes and what that costs.

    Args:
        prompts: the prompts the KL is measured on (held-out prompts evaluate the result); a
            task that carries its inputs (images, sentence pairs) takes none.
        thresholds: distance increases (KL in nats; with sentence pairs, mean |metric change|)
            below which a unit is removed.
        unit: ``"head"``, ``"neuron"``, ``"mlp"`` or ``"block"`` (T5: a stack's kind, ``"enc_head"``,
            ``"dec_head"``, ``"cross_head"``, ``"enc_neuron"``...).
        kind: ``"zero"`` or ``"mean"`` (over ``reference``, default ``prompts``).
        floor: units per layer never removed (default 1 for heads and neurons, so a physically
            pruned model keeps every layer; 0 for whole MLPs and blocks).
        task: None (the decoder LM), ``cnb.ImageClassificationTask(images, labels)`` (KL of the
            class distributions), ``cnb.SentencePairTask(pairs)`` (the task's metric) or
            ``cnb.Seq2SeqTask(sources, targets)`` (KL of the target-token distributions).

    Returns:
        One row per threshold: ``tau``, ``removed``, ``units``, ``sparsity`` and the pruned
        model's distance on these inputs, ``kl`` (or ``abs_change`` for sentence pairs;
        ``attrs["quantity"]`` names it). ``attrs["selections"][i]`` is row i's removed units as
        ``{layer: [index, ...]}`` (heads/neurons; ``prune_units`` takes it) or a list of
        layers (MLPs/blocks); ``attrs["delta"][i]`` each unit's increase when tested.
    """
    if not thresholds or any(t < 0 for t in thresholds):
        raise ValueError(f"thresholds must be a non-empty list of non-negative increases, got {list(thresholds)}")
    floor = (1 if unit.endswith(("head", "neuron")) else 0) if floor is None else floor
    walk = Walk(model, prompts, unit, kind, reference, n_tokens, task)
    units = walk.units
    rows, selections, deltas = [], [], []
    for tau in thresholds:
        removed, delta, final = acdc_walk(model, walk, float(tau), floor, progress)
        rows.append({"tau": float(tau), "removed": len(removed), "units": len(units),
                     "sparsity": len(removed) / len(units), walk.quantity: final})
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
                     "delta": deltas, "quantity": walk.quantity})
    if walk.task is not None:
        df.attrs["task"] = repr(walk.task)
    return df


@strict
def acdc_scores(model, prompts=None, unit: str = "head", kind: str = "zero", threshold: float = 0.01,
                reference=None, n_tokens: int | None = None, progress: bool | None = None,
                task=None) -> pd.DataFrame:
    """Importance from one ACDC pass: each unit's distance increase when the walk tested it.

    Higher = more important; a unit ACDC removed scores below ``threshold``. With no floor,
    every unit is tested, so the table ranks all of them (``prune`` can then cut at any
    sparsity). ``task`` as in ``acdc``.
    """
    walk = Walk(model, prompts, unit, kind, reference, n_tokens, task)
    removed, delta, final = acdc_walk(model, walk, float(threshold), 0, progress)
    df = pd.DataFrame([{c: u.coords().get(c) for c in unit_columns(unit)} for u in walk.units])
    df["score"] = delta
    df.attrs.update({"method": "acdc", "unit": unit, "kind": kind, "threshold": float(threshold),
                     "removed": len(removed), walk.quantity: final, "quantity": walk.quantity})
    if walk.task is not None:
        df.attrs["task"] = repr(walk.task)
    return df
