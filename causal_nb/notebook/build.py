"""Build the committed notebooks from their reviewable py:percent sources.

``notebooks/src/NN_name.py`` (jupytext percent format) is the source of truth;
``python -m causal_nb.notebook.build build`` turns each into ``notebooks/NN_name.ipynb`` and
executes it in place from the canonical CPU defaults of its ``parameters`` cell, with the
notebook folder as working directory (as JupyterLab and nbval run it). Widget state is
stripped, cell tags are kept, and the source's hash is stored in the notebook's metadata so
a test can tell when a committed notebook is stale.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SRC = NOTEBOOKS / "src"


def source_hash(src: Path) -> str:
    """SHA-256 of a notebook source file."""
    return hashlib.sha256(src.read_bytes()).hexdigest()


def build(src: Path, execute: bool = True, timeout: int = 1200) -> Path:
    """Convert one py:percent source to an executed ``.ipynb`` beside ``src/``."""
    import jupytext  # noqa: PLC0415
    import nbformat  # noqa: PLC0415
    from nbclient import NotebookClient  # noqa: PLC0415

    nb = jupytext.read(src)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: rebuilding an unchanged source changes nothing
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["causal_nb"] = {"source": f"src/{src.name}", "source_sha256": source_hash(src)}
    out = src.parent.parent / f"{src.stem}.ipynb"
    if execute:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(out.parent)}}).execute()
    nb.metadata.pop("widgets", None)
    seconds = {}
    for i, cell in enumerate(nb.cells):
        ex = cell.metadata.pop("execution", None)
        if ex and "iopub.execute_input" in ex and "shell.execute_reply" in ex:
            seconds[i] = round((_time(ex["shell.execute_reply"]) - _time(ex["iopub.execute_input"])), 2)
    nbformat.write(nb, out)
    if execute:
        record_timings(src, seconds)
    return out


def _time(stamp: str) -> float:
    from datetime import datetime  # noqa: PLC0415

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


TIMINGS = SRC / "timings.json"


def record_timings(src: Path, seconds: dict[int, float]) -> None:
    """Write each code cell's execution time (s) of this build to ``notebooks/src/timings.json``
    with the source's hash and the machine's CPU count: the evidence for the notebooks' time
    budget (tests/unit/test_notebook_budget.py), kept out of the notebooks so a rebuild of an
    unchanged source changes no notebook."""
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415

    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[src.name] = {"source_sha256": source_hash(src), "cpus": os.cpu_count(),
                      "cells": {str(k): v for k, v in seconds.items()}, "total": round(sum(seconds.values()), 1)}
    TIMINGS.write_text(json.dumps(dict(sorted(data.items())), indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["build"])
    p.add_argument("names", nargs="*", help="notebook number prefixes (default: all)")
    p.add_argument("--no-execute", action="store_true", help="convert only")
    a = p.parse_intermixed_args(argv)
    if not SRC.is_dir():  # an installed package ships the executed notebooks, not their sources
        raise SystemExit(f"{SRC} does not exist: the builder runs in a source checkout of causal_nb. "
                         "For the notebooks themselves: python -m causal_nb notebooks --copy DEST")
    # Outputs of an earlier build (a resumable sweep, say) must not leak into this one.
    shutil.rmtree(NOTEBOOKS / "runs" / "manual", ignore_errors=True)
    for src in sorted(SRC.glob("[0-9][0-9]_*.py")):
        if a.names and not any(src.name.startswith(n) for n in a.names):
            continue
        print(f"build {src.name}", flush=True)
        print(f"  -> {build(src, execute=not a.no_execute)}")


if __name__ == "__main__":
    main()
