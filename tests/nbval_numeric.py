"""Tolerant comparison of notebook outputs for nbval: the science, not the last float bit.

The committed notebooks hold the float bits of the machine that executed them; another CPU
(other SIMD width, other BLAS blocking) rounds differently, so a printed ``0.679`` may come
back as ``0.678`` and plotly's base64 float arrays differ in their last bits. nbval compares
outputs as exact strings. This module compares them the way the notebooks' claims are made:

* **Text** (``text/plain``, ``text/html``, streams, and every string inside JSON outputs) is
  split into decimal numbers and the text between them. The text between must match exactly,
  except that runs of spaces/tabs count as one space (pandas pads columns to the widest value,
  so ``-0.000`` against ``0.000`` shifts a column by one space). Integers are text: labels such
  as ``L3H7``, counts, row order and signs must be identical.
* **Decimal numbers** (``0.679``, ``+0.405``, ``1.5e-03``; a number written with a decimal
  point or an exponent) must satisfy ``|a - b| <= max(2 units of the last printed digit,
  1% of max(|a|, |b|))``. Two units cover a value that sits on a rounding boundary of the
  printed precision plus float32 noise; the 1% covers quantities printed with many digits and
  discrete near-tie effects a different CPU can cause (one swapped pair of nearly equal scores
  moves a Kendall tau over 32 heads by 0.004, a Spearman rho by 0.0004). A flipped sign of a
  number that is not near zero, or a change of a few per cent, still fails.
* **JSON outputs** (plotly's ``application/vnd.plotly.v1+json``) are compared structurally:
  the same keys, list lengths and strings (text rule above); booleans, integers and integer
  arrays exactly; plotly typed arrays (``{"dtype": "f8", "bdata": <base64>, "shape": ...}``)
  are decoded with numpy, and numeric lists are read as arrays. Floats that were never printed
  satisfy ``|a - b| <= max(1% of max(|a|, |b|), 0.1% of the largest |value| in the same
  array)``: the floor keeps entries near zero (a correlation of 1e-17 against 0) from failing
  on noise while a change far below what a plot shows is still allowed, and a 20% change of a
  visible entry fails.

``TOLERANCE`` below states the rule in one sentence; the constants are the single place to
change it. ``install(IPyNbCell)`` wraps nbval's ``compare_outputs`` (done by the repository's
root ``conftest.py``); the functions are plain and unit-tested on their own.
"""

from __future__ import annotations

import base64
import math
import re
from collections import defaultdict

import numpy as np

__all__ = ["PRINTED_UNITS", "REL_TOL", "ARRAY_FLOOR", "TOLERANCE", "compare_text", "compare_values",
           "compare_outputs", "decode_typed_array", "encode_typed_array", "flatten_outputs", "install"]

REL_TOL = 0.01  # relative tolerance of every float (1%)
PRINTED_UNITS = 2  # printed decimals: allowed error in units of the last printed digit
ARRAY_FLOOR = 1e-3  # unprinted floats: allowed error as a share of the largest |value| of their array

TOLERANCE = ("decimal numbers are compared numerically, passing when |a - b| <= max(2 units of the last "
             "printed digit, 1% of max(|a|, |b|)) (unprinted plotly/JSON floats: max(1% relative, 0.1% of "
             "the largest |value| in the array)), while integers, labels, row order, signs and all other "
             "text must match exactly")

# A decimal number: a decimal point or an exponent, not glued to a word, a dot or more digits
# (so "L3H7", "v0.11.0", "2026-12-01" and the colour "#3e4989" stay text).
NUMBER = re.compile(r"(?<![\w.#])[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)(?![\w.])")
SPACES = re.compile(r"[ \t]+")

PLOTLY_DTYPES = {"f8": "<f8", "f4": "<f4", "i1": "i1", "u1": "u1", "i2": "<i2", "u2": "<u2",
                 "i4": "<i4", "u4": "<u4", "i8": "<i8", "u8": "<u8", "b1": "?"}


def printed_unit(token: str) -> float:
    """One unit of the last printed digit of a decimal token (``"0.679"`` -> 0.001)."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (-decimals + (int(exponent) if exponent else 0))


def numbers_close(ref: str, test: str) -> bool:
    """Whether two printed decimal numbers agree within the printed-digit / relative rule."""
    a, b = float(ref), float(test)
    if math.isnan(a) or math.isnan(b) or math.isinf(a) or math.isinf(b):
        return ref == test
    unit = max(printed_unit(ref), printed_unit(test))
    return abs(a - b) <= max(PRINTED_UNITS * unit, REL_TOL * max(abs(a), abs(b))) * (1 + 1e-9)


def _split(text: str) -> tuple[list[str], list[str]]:
    numbers = NUMBER.findall(text)
    between = [SPACES.sub(" ", part) for part in NUMBER.split(text)]
    return between, numbers


def compare_text(ref: str, test: str) -> str | None:
    """Compare two strings: text between numbers exactly, decimal numbers with the tolerance.

    Returns:
        None when they agree, else a one-line description of the first difference.
    """
    if ref == test:
        return None
    ref_text, ref_nums = _split(ref)
    test_text, test_nums = _split(test)
    if len(ref_nums) != len(test_nums) or ref_text != test_text:
        for i, (r, t) in enumerate(zip(ref_text, test_text)):
            if r != t:
                return f"text differs after {i} decimal number(s): {r[:80]!r} != {t[:80]!r}"
        return f"{len(ref_nums)} decimal numbers in the reference, {len(test_nums)} in the new output"
    for i, (r, t) in enumerate(zip(ref_nums, test_nums)):
        if not numbers_close(r, t):
            context = ref_text[i][-40:]
            return f"number {i} (after {context!r}): {r} != {t} beyond tolerance"
    return None


def decode_typed_array(node: dict) -> np.ndarray:
    """Decode plotly's ``{"dtype", "bdata", "shape"}`` typed array into a numpy array."""
    dtype = PLOTLY_DTYPES.get(node["dtype"], node["dtype"])
    arr = np.frombuffer(base64.b64decode(node["bdata"]), dtype=np.dtype(dtype))
    shape = node.get("shape")
    if shape is not None:
        dims = [int(s) for s in str(shape).split(",")] if isinstance(shape, str) else [int(s) for s in shape]
        arr = arr.reshape(dims)
    return arr


def encode_typed_array(arr: np.ndarray, like: dict) -> dict:
    """Encode ``arr`` back into the typed-array form of ``like`` (same dtype and shape keys)."""
    out = dict(like)
    out["bdata"] = base64.b64encode(np.ascontiguousarray(arr, dtype=np.dtype(PLOTLY_DTYPES.get(
        like["dtype"], like["dtype"]))).tobytes()).decode("ascii")
    return out


def _is_typed_array(node) -> bool:
    return isinstance(node, dict) and "bdata" in node and "dtype" in node


def _as_array(node) -> np.ndarray | None:
    """A typed array or a (nested, rectangular) list of plain numbers as numpy; else None."""
    if _is_typed_array(node):
        return decode_typed_array(node)
    if isinstance(node, list) and node:
        try:
            arr = np.asarray(node)
        except ValueError:  # ragged
            return None
        if arr.dtype.kind in "fiub" and arr.dtype != object:
            return arr
    return None


def compare_arrays(ref: np.ndarray, test: np.ndarray) -> str | None:
    """Compare two numeric arrays: shape and kind exactly, integers exactly, floats with tolerance."""
    if ref.shape != test.shape:
        return f"array shape {ref.shape} != {test.shape}"
    kind = {"f": "float", "i": "int", "u": "int", "b": "bool"}
    if kind[ref.dtype.kind] != kind[test.dtype.kind]:
        return f"array of {ref.dtype} != array of {test.dtype}"
    if ref.dtype.kind != "f":
        bad = np.flatnonzero(ref.ravel() != test.ravel())
        return None if not bad.size else f"integer entry {bad[0]}: {ref.ravel()[bad[0]]} != {test.ravel()[bad[0]]}"
    r, t = ref.astype(np.float64).ravel(), test.astype(np.float64).ravel()
    same_nan = np.isnan(r) == np.isnan(t)
    if not same_nan.all():
        i = int(np.flatnonzero(~same_nan)[0])
        return f"entry {i}: {r[i]} != {t[i]}"
    ok = np.isnan(r)
    finite = ~ok & np.isfinite(r) & np.isfinite(t)
    ok |= ~finite & (r == t)  # infinities must match exactly
    scale = np.max(np.abs(r[finite]), initial=0.0)
    allowed = np.maximum(REL_TOL * np.maximum(np.abs(r), np.abs(t)), ARRAY_FLOOR * scale)
    with np.errstate(invalid="ignore"):
        ok |= finite & (np.abs(r - t) <= allowed * (1 + 1e-9))
    if ok.all():
        return None
    i = int(np.flatnonzero(~ok)[0])
    return f"entry {i} of {r.size}: {r[i]!r} != {t[i]!r} beyond tolerance (array scale {scale:.3g})"


def compare_values(ref, test, path: str = "") -> str | None:
    """Compare two output values (str, number, list, dict, typed array) recursively.

    Returns:
        None when they agree, else ``"<path>: <difference>"`` for the first difference.
    """
    where = path or "value"
    if isinstance(ref, str) and isinstance(test, str):
        why = compare_text(ref, test)
        return None if why is None else f"{where}: {why}"
    if isinstance(ref, bool) or isinstance(test, bool) or ref is None or test is None:
        return None if ref is test or (type(ref) is type(test) and ref == test) else f"{where}: {ref!r} != {test!r}"
    if isinstance(ref, (int, float)) and isinstance(test, (int, float)):
        if isinstance(ref, int) and isinstance(test, int):
            return None if ref == test else f"{where}: {ref} != {test}"
        why = compare_arrays(np.asarray([float(ref)]), np.asarray([float(test)]))
        return None if why is None else f"{where}: {ref!r} != {test!r} beyond tolerance"
    ref_arr, test_arr = _as_array(ref), _as_array(test)
    if ref_arr is not None and test_arr is not None:
        why = compare_arrays(ref_arr, test_arr)
        return None if why is None else f"{where}: {why}"
    if isinstance(ref, dict) and isinstance(test, dict):
        if set(ref) != set(test):
            return f"{where}: keys {sorted(set(ref) ^ set(test))} in only one of the outputs"
        for key in ref:
            why = compare_values(ref[key], test[key], f"{path}.{key}" if path else str(key))
            if why:
                return why
        return None
    if isinstance(ref, list) and isinstance(test, list):
        if len(ref) != len(test):
            return f"{where}: {len(ref)} items != {len(test)}"
        for i, (r, t) in enumerate(zip(ref, test)):
            why = compare_values(r, t, f"{path}[{i}]")
            if why:
                return why
        return None
    return None if ref == test else f"{where}: {type(ref).__name__} {str(ref)[:60]!r} != {type(test).__name__} {str(test)[:60]!r}"


def flatten_outputs(outputs, skip_compare, sanitize=lambda s: s) -> dict[str, list]:
    """Outputs keyed as nbval compares them: each output key, and each MIME type of ``data``.

    ``outputs`` must already have gone through nbval's ``transform_streams_for_comparison``
    (streams keyed by their name). Keys in ``skip_compare`` are dropped and strings sanitized.
    """
    flat = defaultdict(list)
    for out in outputs:
        for key, value in out.items():
            if key in skip_compare:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime not in skip_compare:
                        flat[mime].append(sanitize(data))
            else:
                flat[key].append(sanitize(value))
    return flat


def compare_outputs(ref: dict[str, list], test: dict[str, list]) -> str | None:
    """Compare two flattened cells (see ``flatten_outputs``); None when they agree."""
    if set(ref) != set(test):
        return f"output fields differ: only in reference {sorted(set(ref) - set(test))}, " \
               f"only in new output {sorted(set(test) - set(ref))}"
    for key in ref:
        if len(ref[key]) != len(test[key]):
            return f"{key}: {len(ref[key])} outputs in the reference, {len(test[key])} in the new run"
        for i, (r, t) in enumerate(zip(ref[key], test[key])):
            why = compare_values(r, t)
            if why:
                return f"{key} output {i}: {why}"
    return None


def install(cell_class) -> None:
    """Wrap ``cell_class.compare_outputs`` (nbval's ``IPyNbCell``) with the tolerant comparison.

    nbval's exact comparison runs first; only when it fails are the same outputs (streams
    coalesced, sanitized, skipped keys dropped, all exactly as nbval prepared them) compared
    again with the tolerance. A cell that still differs fails with nbval's own diff followed
    by the first difference beyond tolerance. Installing twice is a no-op.
    """
    if getattr(cell_class.compare_outputs, "tolerant", False):
        return
    from nbval.plugin import transform_streams_for_comparison  # noqa: PLC0415 - only with nbval

    exact = cell_class.compare_outputs

    def compare_outputs_tolerant(self, test, ref, skip_compare=None):
        if exact(self, test, ref, skip_compare):
            return True
        skip = skip_compare or self.parent.skip_compare
        why = compare_outputs(flatten_outputs(transform_streams_for_comparison(ref), skip, self.sanitize),
                              flatten_outputs(transform_streams_for_comparison(test), skip, self.sanitize))
        if why is None:
            self.comparison_traceback = []
            return True
        self.comparison_traceback.append(f"beyond tolerance ({TOLERANCE}): {why}")
        return False

    compare_outputs_tolerant.tolerant = True
    cell_class.compare_outputs = compare_outputs_tolerant
