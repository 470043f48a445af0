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

