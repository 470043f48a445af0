"""The committed notebooks run light (nbval re-executes them); the run profiles run them heavy.

Notebook 02's exact ablation of every neuron costs one model run per neuron and grows with the
prompts, so its source's default scores on fewer prompts than any run profile, and each
model's neuron scoring has a cell of its own. Read from the source (notebooks/src), which the
committed notebook is built from.
"""

import ast

from causal_nb.notebooks import SRC
from causal_nb.runner import PROFILES

CELLS = (SRC / "02_causal_scoring.py").read_text().split("\n# %%")


def parameters() -> dict:
    cell = next(c for c in CELLS if c.startswith(' tags=["parameters"]'))
    tree = ast.parse(cell.split("\n", 1)[1])
    return {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)}


def test_profiles_restore_the_heavy_scoring():
    light = parameters()["N_PROMPTS"]
    assert light <= 8
    assert "ablation" in parameters()["NEURON_METHODS"]  # lighter, not cut
    for name, params in PROFILES.items():
        assert params["N_PROMPTS"] >= 2 * light, name


def test_neuron_scoring_has_a_cell_per_model():
    assert sum('score_all(' in c and '"neuron"' in c and "def " not in c for c in CELLS) == 2
    assert not any('score_all(' in c and '"head"' in c and '"neuron"' in c and "def " not in c for c in CELLS)
