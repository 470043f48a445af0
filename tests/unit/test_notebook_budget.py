"""The committed notebooks run light (nbval re-executes them); the run profiles run them heavy.

Notebook 02's exact ablation of every neuron costs one model run per neuron and grows with the
prompts, so its source's default scores on fewer prompts than any run profile, and each
model's neuron scoring has a cell of its own; notebook 03 sweeps a subset of the selection
methods, the profiles all of them. Read from the sources (notebooks/src), which the committed
notebooks are built from, and from the per-cell times the last build recorded
(notebooks/src/timings.json, written by ``python -m causal_nb.notebook.build build``).
"""

import ast
import json

import pytest

from causal_nb.notebook.build import SRC, TIMINGS, source_hash
from causal_nb.notebook.runner import PROFILES, notebook_parameters

CELLS = (SRC / "02_causal_scoring.py").read_text().split("\n# %%")
CELL_LIMIT_S = 70  # "no cell over about a minute on 2 cores": 60 s plus the run-to-run spread here (57.0 and 66.8 s for one cell)
SERIES_LIMIT_S = 540  # all cells of the series (00-10, 09_duplication included): make test runs them (single-threaded) beside the tests, which take longer


def parameters(name: str = "02_causal_scoring.py") -> dict:
    cells = (SRC / name).read_text().split("\n# %%")
    cell = next(c for c in cells if c.startswith(' tags=["parameters"]'))
    tree = ast.parse(cell.split("\n", 1)[1])
    return {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)}


def bundled_profiles():
    """The profiles that run the committed notebooks' own models, heavier (not ``real``)."""
    models = parameters()["MODELS"]
    return {k: v for k, v in PROFILES.items() if v.get("MODELS", models) == models}


def test_profiles_restore_the_heavy_scoring():
    light = parameters()
    assert light["N_PROMPTS"] <= 8 and light["N_NEURON_PROMPTS"] <= light["N_PROMPTS"]
    assert "ablation" in light["NEURON_METHODS"]  # lighter, not cut
    assert set(bundled_profiles()) == {"demo", "standard", "full"}
    for name, params in bundled_profiles().items():
        assert params["N_PROMPTS"] >= 2 * light["N_PROMPTS"], name
        assert params["N_NEURON_PROMPTS"] >= 4 * light["N_NEURON_PROMPTS"], name


def test_profiles_sweep_every_method_the_committed_sweep_leaves_out():
    light, scored = parameters("03_pruning_sweep.py"), parameters()
    for name, params in bundled_profiles().items():
        for unit in ("HEAD", "NEURON"):
            heavy = params[f"SWEEP_{unit}_METHODS"]
            assert set(light[f"SWEEP_{unit}_METHODS"]) < set(heavy), (name, unit)
            # the sweep reads notebook 02's saved scores: it can only select by methods 02 scored
            assert set(heavy) <= set(scored[f"{unit}_METHODS"]), (name, unit)


def test_the_real_profile_selects_neurons_by_a_method_checked_against_exact_ablation():
    real, scored, sweep = PROFILES["real"], parameters(), parameters("03_pruning_sweep.py")
    assert real["MODELS"] == ["smollm2-135m"] and real["MODEL"] == "smollm2-135m"
    # exact neuron ablation on a sample of SmolLM2's 30 layers, early to late
    layers = real["NEURON_ABLATION_LAYERS"]
    assert len(layers) >= 3 and min(layers) < 10 and max(layers) >= 20 and max(layers) < 30
    ref = real["NEURON_REFERENCE"]
    assert ref in real["SWEEP_NEURON_METHODS"] and ref in scored["NEURON_METHODS"] and ref != "ablation"
    assert "ablation" not in real["SWEEP_NEURON_METHODS"]  # partial scores cannot select units
    assert sweep["REFERENCE"] in real["SWEEP_HEAD_METHODS"]
    assert set(real["SWEEP_HEAD_METHODS"]) <= set(scored["HEAD_METHODS"])
    assert set(real["SWEEP_NEURON_METHODS"]) <= set(scored["NEURON_METHODS"])


def test_every_profile_parameter_is_declared_by_a_notebook():
    # a profile key no notebook declares would be dropped without a word
    declared = set().union(*(notebook_parameters(p) for p in sorted(SRC.parent.glob("[0-9][0-9]_*.ipynb"))))
    for name, params in PROFILES.items():
        assert set(params) <= declared, (name, sorted(set(params) - declared))


def test_neuron_scoring_has_a_cell_per_model():
    assert sum('score_all(' in c and '"neuron"' in c and "def " not in c for c in CELLS) == 2
    assert not any('score_all(' in c and '"head"' in c and '"neuron"' in c and "def " not in c for c in CELLS)


def _timings() -> dict:
    if not TIMINGS.exists():
        pytest.fail(f"{TIMINGS} is missing: rebuild the notebooks (make notebooks) to record their cell times")
    return json.loads(TIMINGS.read_text())


@pytest.mark.parametrize("src", sorted(SRC.glob("[0-9][0-9]_*.py")), ids=lambda p: p.stem)
def test_last_build_kept_every_cell_under_a_minute(src):
    entry = _timings().get(src.name)
    assert entry is not None, f"no recorded build of {src.name}: make notebooks"
    assert entry["source_sha256"] == source_hash(src), f"{src.name} changed since its timed build: make notebooks"
    slow = {c: s for c, s in entry["cells"].items() if s > CELL_LIMIT_S}
    assert not slow, f"{src.name}: cells over {CELL_LIMIT_S} s on {entry['cpus']} CPUs in the last build: {slow}"


def test_last_build_of_the_series_fits_the_test_budget():
    total = sum(e["total"] for name, e in _timings().items() if (SRC / name).exists())
    assert total <= SERIES_LIMIT_S, f"the notebooks' cells took {total:.0f} s in the last build"
