"""Repository-wide pytest plugin: nbval compares notebook outputs with a stated tolerance.

pytest loads this file for every path under the repository, so it applies to ``make test``
(nbval over the copy in ``build/nbval/notebooks``) and to ``pytest --nbval notebooks/`` alike.
The rule and its reasons live in ``tests/nbval_numeric.py`` (``TOLERANCE``); this file only
wires it into nbval.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent / "tests")


def pytest_configure(config):
    """With ``--nbval``/``--nbval-lax``, make nbval's output comparison tolerant of float noise."""
    if not (getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False)):
        return
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import nbval_numeric  # noqa: PLC0415 - test infrastructure beside the tests, not the package
    from nbval.plugin import IPyNbCell  # noqa: PLC0415

    nbval_numeric.install(IPyNbCell)


# Notebooks that pass results through files must run in order in one process: 03 reads the
# scores 02 writes. Under pytest-xdist (`make test` runs two workers, `--dist loadgroup`) each
# notebook is one group (its cells in order, one kernel), 02 and 03 share one; without xdist the
# marks do nothing.
NOTEBOOK_GROUPS = {"02_causal_scoring": "nb-02-03", "03_pruning_sweep": "nb-02-03"}


def pytest_collection_modifyitems(config, items):
    import pytest  # noqa: PLC0415

    for item in items:
        path = Path(str(item.fspath))
        if path.suffix == ".ipynb":
            item.add_marker(pytest.mark.xdist_group(NOTEBOOK_GROUPS.get(path.stem, f"nb-{path.stem}")))
