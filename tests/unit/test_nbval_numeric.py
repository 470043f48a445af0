"""The tolerant nbval comparison (tests/nbval_numeric.py, wired in by the root conftest.py).

The committed notebooks' real outputs are perturbed the way another CPU perturbs them (last
printed digit +-1, plotly float arrays by a relative 1e-6) and must still compare equal; real
changes (a flipped sign, swapped ranked rows, a changed integer or label, a plotly value off
by 20%) must not. One test runs nbval itself on a small notebook, with and without the plugin.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbval.plugin import IPyNbCell, coalesce_streams, transform_streams_for_comparison

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import nbval_numeric as nn  # noqa: E402

PLOTLY = "application/vnd.plotly.v1+json"
# nbval's own list (IPyNbFile.skip_compare without --nbdime), so cells are flattened as it does.
SKIP = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
        "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")


def committed_cells() -> list[tuple[str, dict]]:
    """(``"NN:cell"``, flattened outputs) for every committed code cell with checked outputs."""
    out = []
    for path in sorted((REPO / "notebooks").glob("0*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or not cell.outputs or "nbval-ignore-output" in cell.metadata.get("tags", []):
                continue
            flat = nn.flatten_outputs(transform_streams_for_comparison(coalesce_streams(copy.deepcopy(cell.outputs))),
                                      SKIP)
            if flat:
                out.append((f"{path.name[:2]}:{i}", dict(flat)))
    return out


CELLS = committed_cells()


def by_cell(name: str) -> dict:
    return copy.deepcopy(dict(CELLS)[name])


def nudge_last_digit(text: str, seed: int = 0) -> str:
    """Move the last printed digit of every decimal number by +-1 (alternating), format kept."""
    counter = iter(range(10**9))

    def repl(m):
        tok = m.group(0)
        mantissa, e, exp = tok.partition("e") if "e" in tok else tok.partition("E")
        decimals = len(mantissa.partition(".")[2])
        step = Decimal(1).scaleb(-decimals) * (1 if (next(counter) + seed) % 2 else -1)
        new = Decimal(mantissa) + step
        s = f"{new:.{decimals}f}" if decimals else f"{new:.0f}" + ("." if "." in mantissa else "")
        if mantissa.startswith("+") and not s.startswith("-"):
            s = "+" + s
        return s + e + exp

    return nn.NUMBER.sub(repl, text)


def perturb(value, rel: float = 1e-6, rng=None):
    """Another CPU's version of an output value: text digits nudged, float arrays scaled by 1 +- rel."""
    rng = rng or np.random.default_rng(0)
    if isinstance(value, str):
        return nudge_last_digit(value, seed=int(rng.integers(2)))
    if isinstance(value, dict) and "bdata" in value:
        arr = nn.decode_typed_array(value)
        if arr.dtype.kind == "f":
            arr = arr * (1 + rel * rng.choice([-1.0, 1.0], size=arr.shape))
        return nn.encode_typed_array(arr, value)
    if isinstance(value, dict):
        return {k: perturb(v, rel, rng) for k, v in value.items()}
    if isinstance(value, list):
        return [perturb(v, rel, rng) for v in value]
    if isinstance(value, float):
        return value * (1 + rel * rng.choice([-1.0, 1.0]))
    return value


def test_committed_outputs_survive_another_cpus_rounding():
    changed = 0
    for name, flat in CELLS:
        other = perturb(flat)
        changed += other != flat
        assert nn.compare_outputs(flat, other) is None, name
    # the perturbation really changed most cells (not a vacuous pass): every notebook prints numbers
    assert changed >= 20 and changed >= len(CELLS) // 2, (changed, len(CELLS))


def test_nudge_really_moves_digits():
    assert nudge_last_digit("x +0.405 y 0.679 1.5e-03", seed=1) == "x +0.406 y 0.678 1.6e-03"
    assert nn.compare_text("0.679", "0.678") is None
    assert nn.compare_text("+0.405", "+0.406") is None
    assert nn.compare_text("0.679", "0.673") is None  # 6 units of the last digit but 0.9%
    assert nn.compare_text("0.679", "0.671") is not None  # 1.2%
    assert nn.compare_text("0.0130", "0.0132") is None  # 2 units of the last digit
    assert nn.compare_text("0.0130", "0.0133") is not None  # 3 units, 2.3%


def table(name: str) -> str:
    return by_cell(name)["text/plain"][0]


# The real changes below are found in whatever the committed notebooks print now (so a rebuild
# of the notebooks keeps the test meaningful): DataFrame prints, their numbers and labels.
TABLES = [(name, flat["text/plain"][0]) for name, flat in CELLS
          if "text/plain" in flat and sum(bool(re.match(r"\d+ ", line)) for line in flat["text/plain"][0].split("\n")) >= 3]
BIG = re.compile(r"(?<![\w.#-])(\d+\.\d+)(?![\w.])")  # an unsigned printed decimal
INTEGER = re.compile(r"(?<=\s)(\d{2,})(?=\s|$)")  # a standalone integer of 2+ digits (counts, sizes)
LABELS = ("taylor", "fisher", "magnitude", "random", "ablation", "python", "cpp")


def test_there_are_tables_to_change():
    assert len(TABLES) >= 5, [n for n, _ in TABLES]


def test_flipped_sign_fails():
    flipped = 0
    for name, flat in CELLS:
        text = flat.get("text/plain", [""])[0]
        m = next((m for m in BIG.finditer(text) if float(m.group(1)) >= 0.1), None)
        if m is None:
            continue
        bad = text[: m.start()] + "-" + text[m.start():]
        assert nn.compare_text(text, bad) is not None, (name, m.group(1))
        html = flat.get("text/html", [""])[0]
        if f">{m.group(1)}<" in html:
            wrong = dict(flat, **{"text/html": [html.replace(f">{m.group(1)}<", f">-{m.group(1)}<", 1)]})
            assert nn.compare_outputs(flat, wrong) is not None, name
        flipped += 1
    assert flipped >= 5


def test_swapped_ranked_rows_fail():
    """Two rows' contents swapped, index kept, as a re-sorted table would print them."""
    swapped = 0
    for name, text in TABLES:
        lines = text.split("\n")
        rows = [i for i, line in enumerate(lines) if re.match(r"\d+ ", line)]
        for i, j in zip(rows, rows[1:]):
            a, b = lines[i], lines[j]
            ia, ib = a.split(" ", 1)[0], b.split(" ", 1)[0]
            if nn.compare_text(a[len(ia):], b[len(ib):]) is None:
                continue  # equal rows within tolerance: swapping them is not a change
            lines[i], lines[j] = ia + b[len(ib):], ib + a[len(ia):]
            assert nn.compare_text(text, "\n".join(lines)) is not None, (name, a, b)
            swapped += 1
            break
    assert swapped >= 5


def test_changed_integer_fails():
    changed = 0
    for name, flat in CELLS:
        for key in ("text/plain", "stdout"):
            text = flat.get(key, [""])[0]
            m = INTEGER.search(text)
            if m is None:
                continue
            bad = text[: m.start()] + str(int(m.group(1)) + 1) + text[m.end():]
            assert nn.compare_text(text, bad) is not None, (name, m.group(1))
            changed += 1
    assert changed >= 5


def test_changed_label_fails():
    changed = 0
    for name, text in TABLES:
        label = next((w for w in LABELS if re.search(rf"\b{w}\b", text)), None)
        if label is None:
            continue
        other = "fisher" if label != "fisher" else "taylor"
        assert nn.compare_text(text, re.sub(rf"\b{label}\b", other, text, count=1)) is not None, name
        changed += 1
    assert changed >= 3
    assert nn.compare_text("L3H7 0.5", "L3H6 0.5") is not None
    assert nn.compare_text("[(1, 3), (2, 0)]", "[(1, 4), (2, 0)]") is not None


def float_arrays(node, path=()):
    """(path, typed array node) of every float typed array in a plotly figure."""
    if isinstance(node, dict) and "bdata" in node:
        if nn.decode_typed_array(node).dtype.kind == "f":
            yield path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from float_arrays(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from float_arrays(v, (*path, i))


def set_in(node, path, value):
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def test_plotly_value_off_by_20_percent_fails():
    figures = [(name, flat) for name, flat in CELLS if PLOTLY in flat]
    assert len(figures) >= 5
    checked = 0
    for name, flat in figures:
        for path, node in float_arrays(flat[PLOTLY][0]):
            arr = nn.decode_typed_array(node)
            if not np.isfinite(arr).any() or np.nanmax(np.abs(arr)) == 0:
                continue
            # the largest entry and one a tenth its size (if any) changed by 20%
            flat_arr = np.nan_to_num(arr.ravel())
            picks = [int(np.argmax(np.abs(flat_arr)))]
            mid = np.flatnonzero((np.abs(flat_arr) > 0.05 * np.abs(flat_arr).max())
                                 & (np.abs(flat_arr) < 0.2 * np.abs(flat_arr).max()))
            picks += [int(mid[0])] if mid.size else []
            for j in picks:
                bad_arr = arr.copy().ravel()
                bad_arr[j] *= 1.2
                bad = copy.deepcopy(flat)
                set_in(bad[PLOTLY][0], path, nn.encode_typed_array(bad_arr.reshape(arr.shape), node))
                assert nn.compare_outputs(flat, bad) is not None, (name, path, j)
                checked += 1
    assert checked >= 5


def heatmap_cell() -> dict:
    """The first committed figure whose first trace is a heatmap with a 2-D typed z array."""
    for _, flat in CELLS:
        data = flat.get(PLOTLY, [{}])[0].get("data", [])
        if data and data[0].get("type") == "heatmap" and isinstance(data[0].get("z"), dict) \
                and nn.decode_typed_array(data[0]["z"]).ndim == 2 and isinstance(data[0].get("x"), list) and len(data[0]["x"]) > 1:
            return copy.deepcopy(flat)
    raise AssertionError("no heatmap among the committed figures")


def test_plotly_structure_changes_fail():
    flat = heatmap_cell()
    fig = flat[PLOTLY][0]
    bad = copy.deepcopy(flat)
    bad[PLOTLY][0]["data"][0]["x"] = list(reversed(fig["data"][0]["x"]))  # axis labels reordered
    assert nn.compare_outputs(flat, bad) is not None
    bad = copy.deepcopy(flat)
    z = nn.decode_typed_array(fig["data"][0]["z"])
    bad[PLOTLY][0]["data"][0]["z"] = nn.encode_typed_array(z[::-1].copy(), fig["data"][0]["z"])  # rows swapped
    assert nn.compare_outputs(flat, bad) is not None
    bad = copy.deepcopy(flat)
    bad[PLOTLY][0]["data"][0]["z"] = z.tolist()  # same numbers as a plain list: equal
    assert nn.compare_outputs(flat, bad) is None


def test_number_rule_edges():
    assert nn.compare_text("-0.000", "0.000") is None  # the sign of a printed zero is noise
    assert nn.compare_text("a  -0.000 b", "a   0.000 b") is None  # pandas pads by the sign
    assert nn.compare_text("123.456", "124.5") is None  # 0.85%: within 1% relative
    assert nn.compare_text("123.456", "125.0") is not None  # 1.25%
    assert nn.compare_text("nan", "nan") is None and nn.compare_text("nan 0.5", "inf 0.5") is not None
    assert nn.compare_text("v0.11.0", "v0.12.0") is not None  # versions are text
    assert nn.compare_text("0.5 0.6", "0.5") is not None
    assert nn.compare_values({"a": 1}, {"a": 1.0}) is None and nn.compare_values({"a": 1}, {"a": 2}) is not None
    assert nn.compare_values([True, 0.5], [False, 0.5]) is not None
    assert nn.compare_values([1e-17, 1.0], [0.0, 1.0]) is None  # floor: 0.1% of the array's scale
    assert nn.compare_values([0.01, 1.0], [0.012, 1.0]) is not None  # 20% of an entry at 1% of scale


def test_install_is_idempotent_and_wraps_nbval():
    nn.install(IPyNbCell)
    first = IPyNbCell.compare_outputs
    nn.install(IPyNbCell)
    assert IPyNbCell.compare_outputs is first and first.tolerant


def _small_notebook(path: Path) -> None:
    """Three cells whose stored outputs are "another machine's": two within tolerance, one not."""
    z = np.array([[0.1663, 0.4526], [0.0303, -0.0125]])
    fig_code = ("import base64, numpy as np\nfrom IPython.display import display\n"
                f"z = np.array({z.tolist()!r})\n"
                "display({'application/vnd.plotly.v1+json': {'data': [{'type': 'heatmap', 'x': ['0', '1'], "
                "'z': {'dtype': 'f8', 'bdata': base64.b64encode(z.tobytes()).decode(), 'shape': '2, 2'}}], "
                "'layout': {}}, 'text/plain': 'Figure'}, raw=True)")
    other = z * (1 + 1e-6)
    stored_fig = {"data": [{"type": "heatmap", "x": ["0", "1"],
                            "z": {"dtype": "f8", "bdata": base64.b64encode(other.tobytes()).decode(),
                                  "shape": "2, 2"}}], "layout": {}}
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    cells = [
        ("print('L3H7 score 0.679, delta +0.405, 40 tables')",
         [nbformat.v4.new_output("stream", name="stdout", text="L3H7 score 0.678, delta +0.406, 40 tables\n")]),
        (fig_code, [nbformat.v4.new_output("display_data", data={PLOTLY: stored_fig, "text/plain": "Figure"})]),
        ("print('delta +0.405')", [nbformat.v4.new_output("stream", name="stdout", text="delta -0.405\n")]),
    ]
    for i, (src, outputs) in enumerate(cells, start=1):
        cell = nbformat.v4.new_code_cell(src, execution_count=i, outputs=outputs)
        nb.cells.append(cell)
    nbformat.write(nb, path)


@pytest.mark.slow
def test_nbval_uses_the_tolerant_comparison():
    """nbval itself, on a notebook under the repository (where pytest finds the root conftest)."""
    (REPO / "build").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="nbval-selftest-", dir=REPO / "build"))
    try:
        nb = folder / "small.ipynb"
        _small_notebook(nb)

        def run(*extra):
            r = subprocess.run([sys.executable, "-m", "pytest", str(nb), "--nbval", "--nbval-current-env",
                                "--nbval-cell-timeout", "120", "--nbval-kernel-startup-timeout", "180", "-p", "no:cacheprovider", "-q", *extra],
                               cwd=REPO, capture_output=True, text=True, timeout=300)
            return r.stdout + r.stderr

        with_plugin = run()
        assert re.search(r"\b1 failed, 2 passed\b", with_plugin), with_plugin
        assert "beyond tolerance" in with_plugin and "-0.405 != +0.405" in with_plugin, with_plugin
        without = run("--noconftest")  # nbval's exact comparison: the float noise fails too
        assert re.search(r"\b3 failed\b", without), without
    finally:
        shutil.rmtree(folder, ignore_errors=True)

