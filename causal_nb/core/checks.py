"""Argument and input checks shared by the public API, so bad input fails early and says the fix.

Low level (imports nothing from the kit): the engine, the analyses and the notebook face all
use it. Everything here either returns its (normalised) input or raises an error whose
message names the problem and what to call instead; nothing here computes results.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence

__all__ = ["check_n_tokens", "check_positions", "check_sparsity", "check_table_fits", "checked_metric", "reject_unused",
           "require_scores", "strict", "table_kind", "unexpected_keyword"]


def unexpected_keyword(func: str, name: str, valid: Sequence[str]) -> TypeError:
    """The ``TypeError`` for an unknown keyword, with the nearest valid one when there is one."""
    near = difflib.get_close_matches(name, list(valid), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else f"; valid keywords: {', '.join(valid)}"
    return TypeError(f"{func}() got an unexpected keyword argument {name!r}{hint}")


def strict(fn: Callable) -> Callable:
    """Decorate a public function so a misspelled keyword names the nearest valid one.

    Python rejects unknown keywords by itself, but without a suggestion; this adds it (and
    costs one set lookup per call). Functions taking ``**kwargs`` are not meant for it.
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise TypeError(f"strict() cannot check {fn.__qualname__}: it takes **kwargs")
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    known = set(valid)
    name = fn.__qualname__.replace(".__init__", "")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for k in kwargs:
            if k not in known:
                raise unexpected_keyword(name, k, [v for v in valid if v != "self"])
        return fn(*args, **kwargs)

    return wrapper


def reject_unused(method: str, given: Mapping[str, object], users: Mapping[str, Sequence[str]],
                  why: Mapping[tuple[str, str], str] | None = None, what: str = "method") -> None:
    """Refuse options the chosen method would ignore (a silent ignore is a silent wrong answer).

    Args:
        method: the chosen method.
        given: option name -> value as passed; ``None`` means "not passed".
        users: option name -> the methods that use it.
        why: (option, method) -> a short reason shown in the message (e.g. "it scores the loss").
        what: what ``method`` is called in the message (``"method"``, ``"kind"``).

    Raises:
        ValueError: ``"metric= is not used by method 'taylor' (it scores the loss); methods that
            take metric=: ablation, patching"``.
    """
    for name, value in given.items():
        if value is None or method in users[name]:
            continue
        reason = (why or {}).get((name, method))
        reason = f" ({reason})" if reason else ""
        raise ValueError(f"{name}= is not used by {what} {method!r}{reason}; {what}s that take {name}=: "
                         f"{', '.join(users[name])}")


def check_sparsity(sparsity) -> float:
    """A share of units to remove, in [0, 1); a percent (e.g. 50) gets a 'did you mean 0.5?'."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity is a share in [0, 1) (a number), got {type(sparsity).__name__} {sparsity!r}")
    s = float(sparsity)
    if 1 < s < 100:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}: it is a share, not a percent; did you mean "
                         f"{s / 100:g}?")
    if not 0 <= s < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r} (the share of units removed)")
    return s


def check_n_tokens(n_tokens) -> None:
    """``n_tokens`` (tokens per prompt, BOS included) must leave at least one token to predict."""
    if n_tokens is None:
        return
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, numbers.Integral):
        raise TypeError(f"n_tokens is a number of tokens per prompt (an int), got {n_tokens!r}")
    if n_tokens <= 1:
        raise ValueError(f"n_tokens={n_tokens} leaves no token to predict: it counts BOS too, so use at least 2")


def check_positions(positions, n_pos: int, name: str = "positions") -> list[int] | None:
    """Token positions as a list of ints in 0..n_pos-1 (None passes through).

    Args:
        positions: the positions given (any iterable of ints, or None for "all").
        n_pos: the number of token positions of the prompts (``n_tokens`` after tokenising).
        name: the argument's name, for the message.
    """
    if positions is None:
        return None
    try:
        pos = [int(p) for p in positions]
    except TypeError as e:
        raise TypeError(f"{name}= is a list of token positions, got {positions!r}") from e
    if not pos:
        raise ValueError(f"{name}= is empty; pass None for every position")
    bad = [p for p in pos if not 0 <= p < n_pos]
    if bad:
        raise ValueError(f"{name}= {bad} lie outside the prompts' token positions 0..{n_pos - 1} (BOS is 0); "
                         "use smaller positions or a larger n_tokens")
    return pos


def checked_metric(fn: Callable, *, n_values: Callable | None = None, per: str = "prompt",
                   hint: str | None = None) -> Callable:
    """Wrap a user metric so that an output other than one value per item fails at once.

    A metric must return a tensor of shape [batch] (one value per prompt, averaged over the
    scored positions); a scalar or a [batch, pos] tensor would otherwise be broadcast or
    summed silently somewhere inside the engine.

    Args:
        fn: the metric, ``fn(outputs, batch) -> Tensor``.
        n_values: how many values the metric must return, from its first argument (default:
            ``outputs.shape[0]``; a sentence-pair task passes ``emb.shape[0] // 2``).
        per: what one value belongs to, for the message ("prompt", "image", "pair").
        hint: the message's closing advice (default: how an LM metric averages positions).
    """
    import torch  # noqa: PLC0415

    name = getattr(fn, "__name__", type(fn).__name__)
    count = n_values or (lambda x: x.shape[0])
    advice = hint if hint is not None else (
        " (average over the scored positions, e.g. with causal_nb.engine.metrics.masked_mean(x, batch.valid))")

    @functools.wraps(fn)
    def metric(outputs, batch):
        out = fn(outputs, batch)
        want = (count(outputs),)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"metric {name!r} returned {got}; a metric returns one value per {per}, a tensor of "
                             f"shape [batch] = {want}{advice}")
        return out

    metric.__name__ = name
    return metric


# What each table maker produces, for telling tables apart (attrs["method"], columns).
_PATCH_METHODS = ("exact", "attribution", "eap-ig")


def table_kind(df) -> str:
    """Which kit function made a table: ``"score"``, ``"patch"``, ``"ablate"``, ``"acdc"`` or ``"other"``."""
    cols = set(getattr(df, "columns", ()))
    method = str(getattr(df, "attrs", {}).get("method", ""))
    if "tau" in cols and "removed" in cols:
        return "acdc"
    if "score" in cols:
        return "score"
    if "value" in cols:
        if method.endswith("-ablation"):
            return "ablate"
        if method in _PATCH_METHODS or "normalized" in cols:
            return "patch"
    return "other"


_FIX = {
    "patch": "this is a patch() table (column 'value', raw metric values); {consumer} needs importance scores: "
             "use score(model, prompts, 'patching', corrupted=...)",
    "ablate": "this is an ablate() table (column 'value', raw metric values); {consumer} needs importance "
              "scores: use score(model, prompts, 'ablation', kind=...)",
    "acdc": "this is an acdc() threshold table (one row per tau); {consumer} needs importance scores: use "
            "score(model, prompts, 'acdc') for per-unit scores, or prune_units(model, heads=table.attrs"
            "['selections'][i]) for one threshold's selection",
    "other": "{consumer} needs a score() table (columns layer, head|neuron, score); got columns {cols}",
}


def require_scores(df, consumer: str, units: Sequence[str] = ("head", "neuron")) -> str:
    """Check that ``df`` is an importance table of one of ``units``; returns its unit kind.

    Raises:
        TypeError: not a DataFrame.
        ValueError: a patch/ablate/acdc table, or scores of another unit kind (k/v heads,
            neurons where heads are expected...), with what to call instead.
    """
    import pandas as pd  # noqa: PLC0415

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{consumer} needs a score() table (a DataFrame), got {type(df).__name__}")
    kind = table_kind(df)
    if kind != "score":
        raise ValueError(_FIX[kind].format(consumer=consumer, cols=list(df.columns)))
    attr_unit = df.attrs.get("unit")
    unit = "head" if "head" in df.columns else "neuron" if "neuron" in df.columns else attr_unit
    if attr_unit in ("q", "k", "v"):
        unit = attr_unit
    if unit not in units:
        what = {"k": "key heads (unit='k')", "v": "value heads (unit='v')", "q": "query heads (unit='q')"}.get(
            unit, f"{unit}s (unit={unit!r})" if unit else "units of unknown kind")
        raise ValueError(f"{consumer} needs scores of {' or '.join(repr(u) for u in units)} units, but this table "
                         f"scores {what}: use score(model, prompts, method, unit={units[0]!r})")
    return unit


def check_table_fits(df, unit: str, n_layers: int, n_per_layer: int, consumer: str) -> None:
    """Refuse a score table whose coordinates are not this model's (scores from another model shape),
    or that scores only some layers (``score(..., layers=...)``)."""
    col = {"head": "head", "neuron": "neuron"}.get(unit)
    subset = df.attrs.get("layers")
    if subset is not None and len(subset) < n_layers:
        raise ValueError(f"{consumer}: these {unit} scores cover layers {subset} only (score(..., layers=...)); "
                         f"selecting units to remove needs every layer's. Score all layers, or use a method whose "
                         "scores cover the model")
    if df.attrs.get("unit_range") is not None:
        raise ValueError(f"{consumer}: these {unit} scores are units {tuple(df.attrs['unit_range'])} only "
                         "(score(..., unit_range=...)): one slice of a split table; merge the slices "
                         "(engine.split.merge_layers) or score every unit")
    problems = []
    if len(df) and (df["layer"].min() < 0 or df["layer"].max() >= n_layers):
        problems.append(f"layers {int(df['layer'].min())}..{int(df['layer'].max())} (the model has 0..{n_layers - 1})")
    if col and len(df) and (df[col].min() < 0 or df[col].max() >= n_per_layer):
        problems.append(f"{col}s {int(df[col].min())}..{int(df[col].max())} (the model has 0..{n_per_layer - 1})")
    expected = n_layers * (n_per_layer if col else 1)
    if len(df) != expected:
        problems.append(f"{len(df)} rows (the model has {n_layers} x {n_per_layer if col else 1} {unit}s)")
    if problems:
        raise ValueError(f"{consumer}: these {unit} scores do not fit this model: {'; '.join(problems)}. Were they "
                         "computed on another model? Score this model: score(model, prompts, method, "
                         f"unit={unit!r})")
