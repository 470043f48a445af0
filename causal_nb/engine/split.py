"""Exact per-unit runs split into unit ranges over an executor's workers, merged into one table.

``score(..., executor=...)`` and ``ablate(..., executor=...)`` run themselves once per
contiguous range of units (``unit_range=(start, stop)``, ranges of about equal cost from
``unit_parts``, as many as the executor runs jobs at once) on the workers of a
``core.executors`` executor and concatenate the range tables in order: the rows, and the
per-unit attrs (``per_prompt``) row-wise, so the result is the single-process table. Each worker loads the model once, from where ``load_model`` read it
(``model.causal_nb_source``); a checksum of the weights guards against a model changed in memory
since, which the workers could not see.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..core.executors import Failure, make_executor

__all__ = ["ModelWorker", "RangeJob", "SplitError", "executor_width", "merge_layers", "model_worker", "split_units",
           "unit_parts", "weight_digest"]


class SplitError(ValueError):
    """A model or run that cannot be split over workers (the message says what to do)."""


def weight_digest(model) -> float:
    """Sum over parameters of sum(p) + sum(|p|), in float64: equal for the same weights."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum() + p.detach().double().abs().sum() for p in model.parameters()))


@dataclass(frozen=True)
class ModelWorker:
    """A worker's set-up: the model loaded once per worker from its folder or name."""

    source: str
    device: str
    dtype: str
    digest: float

    def __call__(self):
        from ..models.loading import load_model  # noqa: PLC0415

        model = load_model(self.source, device=self.device, dtype=self.dtype)
        got = weight_digest(model)
        if abs(got - self.digest) > 1e-6 * max(1.0, abs(self.digest)):
            raise SplitError(f"the model a worker loaded from {self.source} has other weights than the driver's "
                             f"(checksum {got:.6g} vs {self.digest:.6g}): the folder changed, or the driver's model "
                             "was edited in memory; save it (save_pruned / save_pretrained) and load that folder")
        return model


def model_worker(model) -> ModelWorker:
    """The set-up that reloads ``model`` on a worker; refuses models the workers cannot reload."""
    src = getattr(model, "causal_nb_source", None) or {}
    if "source" not in src or src.get("pruned"):
        why = "was pruned in memory" if src.get("pruned") else "was not loaded with causal_nb.load_model"
        raise SplitError(f"executor= reloads the model on every worker from where load_model read it, but this model "
                         f"{why}; save it (cnb.save_pruned(model, folder)) and pass cnb.load_model(folder)")
    p = next(model.parameters())
    return ModelWorker(src["source"], str(p.device), str(p.dtype).removeprefix("torch."), weight_digest(model))


@dataclass(frozen=True)
class RangeJob:
    """``fn(model, unit_range=(start, stop), **kwargs)`` for one range (fn: a module-level function)."""

    fn: object
    kwargs: dict

    def __call__(self, model, unit_range: tuple[int, int]) -> pd.DataFrame:
        return self.fn(model, unit_range=unit_range, **self.kwargs)


def executor_width(executor, default: int = 4) -> int:
    """How many jobs ``executor`` runs at once (``workers``, else ``jobs``, else ``default``)."""
    return max(1, int(getattr(executor, "workers", None) or getattr(executor, "jobs", None) or default))


def merge_layers(parts: list[pd.DataFrame], layers: list[int] | None) -> pd.DataFrame:
    """One table from per-layer tables (in layer order): rows and per-unit attrs concatenated,
    the other attrs (baselines, settings) equal in every part and kept once."""
    bare = []
    for p in parts:  # concat compares attrs, which holds DataFrames: concatenate attr-less views
        q = p.copy(deep=False)
        q.attrs = {}
        bare.append(q)
    df = pd.concat(bare, ignore_index=True)
    attrs = {}
    for k, v in parts[0].attrs.items():
        if k in ("layers", "unit_range"):  # a part's subset: the merged table covers them all
            continue
        if isinstance(v, pd.DataFrame) and len(v) == len(parts[0]):  # one row per unit: per_prompt
            attrs[k] = pd.concat([p.attrs[k] for p in parts], ignore_index=True)
        else:
            attrs[k] = v
    if layers is not None and "layers" in parts[0].attrs:  # score records a layer subset; ablate does not
        attrs["layers"] = sorted(layers)
    df.attrs = attrs
    return df


def unit_parts(counts: list[int], n_parts: int) -> list[tuple[int, int]]:
    """Contiguous ranges ``(start, stop)`` of a table's units (layer-major; ``counts[l]`` units in
    layer ``l``) for ``n_parts`` workers, of about equal cost, for ``unit_range=``.

    Ablating or patching a unit of layer ``l`` reruns layers ``l .. n_layers - 1`` (the run up
    to ``l`` is cached), so its cost is taken as ``n_layers - l`` (measured: a 2-layer model's
    layer-0 neurons take twice as long as its layer-1 neurons); a range may cut a layer, so
    two workers balance a 2-layer model too. Empty ranges are left out (fewer units than
    parts).
    """
    n_layers = len(counts)
    total = sum(c * (n_layers - layer) for layer, c in enumerate(counts))
    if total == 0:
        return []
    cuts, cost, i = [0], 0, 0
    for layer, c in enumerate(counts):
        w = n_layers - layer
        for _ in range(c):
            # unit i spans cumulative costs cost .. cost + w: it opens part k when its middle first
            # reaches k/n of the total
            while len(cuts) < n_parts and (2 * cost + w) * n_parts >= 2 * len(cuts) * total:
                cuts.append(i)
            cost += w
            i += 1
    cuts.append(i)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def split_units(fn, model, kwargs: dict, units: list, layers, executor) -> pd.DataFrame:
    """Run ``fn(model, layers=layers, unit_range=r, **kwargs)`` for ranges ``r`` of about equal
    cost on ``executor``'s workers (as many as it runs at once) and merge them in order.

    Args:
        units: the units ``fn`` would compute for ``layers`` (table order), to cut into ranges.

    Raises:
        SplitError: a range's job raised (its traceback in the message), or the model cannot
            be reloaded by the workers.
    """
    ex = make_executor(executor)
    # every layer's slot, so that unit_parts weighs a unit by its layer (a T5's stacks share the indices)
    counts = [0] * max([model.cfg.n_layers] + [u.layer + 1 for u in units])
    for u in units:
        counts[u.layer] += 1
    ranges = unit_parts(counts, executor_width(ex))
    setup = model_worker(model)
    out: dict[int, pd.DataFrame] = {}
    job = RangeJob(fn, {**kwargs, "layers": layers, "progress": False})
    for i, res in ex.run(setup, job, ranges):
        if isinstance(res, Failure):
            raise SplitError(f"units {ranges[i][0]}..{ranges[i][1] - 1} failed on a worker: {res.error}\n{res.traceback}")
        out[i] = res
    return merge_layers([out[i] for i in range(len(ranges))], None if layers is None else sorted({int(x) for x in layers}))
