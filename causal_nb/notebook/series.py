"""The notebook series on disk: where it is, its notebooks in order, their declared parameters,
and which of a run folder's notebooks finished.

Shared by ``runner`` (which runs the series) and ``report`` (which reads a run), below both.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

__all__ = ["NOTEBOOKS", "REPO", "RunError", "copy_notebooks", "default_notebooks_dir", "finished_notebooks",
           "notebook_parameters", "packaged_notebooks_dir", "series"]

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"


class RunError(RuntimeError):
    """A notebook of the series failed, or the run was asked for something it cannot do."""


def packaged_notebooks_dir() -> Path:
    """The copy of the notebooks installed with the package (``causal_nb/series/``)."""
    return Path(__file__).resolve().parents[1] / "series"


def default_notebooks_dir() -> Path:
    """The repository's ``notebooks/`` in a source checkout, else the packaged copy."""
    return NOTEBOOKS if series(NOTEBOOKS) else packaged_notebooks_dir()


def series(notebooks_dir: Path | None = None) -> list[Path]:
    """The series in order: ``NN_name.ipynb`` files, sorted by their number (default folder:
    ``default_notebooks_dir()``)."""
    notebooks_dir = default_notebooks_dir() if notebooks_dir is None else Path(notebooks_dir)
    return sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))


def copy_notebooks(dest: str | Path, notebooks_dir: Path | None = None) -> list[Path]:
    """Copy the series (``default_notebooks_dir()``) into ``dest`` to open it in Jupyter; an
    existing notebook there is an error (nothing is overwritten).

    The copies' folder defaults (``SCORES_DIR = "../scores"``...) are relative to ``dest``;
    ``python -m causal_nb run`` sets them to folders of its run instead.
    """
    import shutil  # noqa: PLC0415

    nbs = series(notebooks_dir)
    if not nbs:
        raise RunError(f"no notebooks found in {notebooks_dir or default_notebooks_dir()}")
    dest = Path(dest)
    clash = [p.name for p in nbs if (dest / p.name).exists()]
    if clash:
        raise RunError(f"{dest} already holds {clash}; choose an empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(p, dest / p.name)) for p in nbs]


def finished_notebooks(run: Path) -> dict[str, dict]:
    """The notebooks marked finished in a run folder (``.done/<stem>``, from any invocation):
    name -> ``{"notebook", "seconds", "parameters"}``, in series order. An unreadable marker
    counts as not finished (``--resume`` reruns that notebook)."""
    out = {}
    for marker in sorted((Path(run) / ".done").glob("[0-9][0-9]_*")):
        if marker.name.startswith(".") or marker.suffix == ".tmp":
            continue
        try:
            entry = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(entry, dict) and "notebook" in entry:
            out[entry["notebook"]] = entry
    return out


def notebook_parameters(path: Path) -> dict:
    """Names and default values declared in a notebook's ``parameters`` cell."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse("".join(cell["source"]))
            return {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                    for t in ([n.target] if isinstance(n, ast.AnnAssign) else n.targets) if isinstance(t, ast.Name)}
    raise RunError(f"{path.name} has no cell tagged 'parameters'")
