"""The committed notebooks are built from their current sources, executed, tagged and clean."""

import json

import pytest

from causal_nb.notebook.build import NOTEBOOKS, SRC, source_hash

SOURCES = sorted(SRC.glob("[0-9][0-9]_*.py"))


def test_every_source_has_a_notebook_and_back():
    assert SOURCES
    assert {p.stem for p in SOURCES} == {p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")}


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_is_current_and_executed(src):
    nb = json.loads((NOTEBOOKS / f"{src.stem}.ipynb").read_text())
    assert nb["metadata"]["causal_nb"]["source_sha256"] == source_hash(src), (
        f"{src.stem}.ipynb is stale: rebuild it with `make notebooks` (python -m causal_nb.notebook.build build)")
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), "every code cell must be executed"
    assert "parameters" in code[0]["metadata"].get("tags", []), "the first code cell must be tagged 'parameters'"
    assert "cnb.setup(seed=SEED)" in "".join(code[1]["source"]), "the second code cell must call causal_nb.setup"
    assert "widgets" not in nb["metadata"]
    assert not any("%pip" in "".join(c["source"]) for c in code)
