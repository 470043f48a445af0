"""The package's layering, read from the source with ``ast`` (nothing is imported).

Every internal import, the lazy ones inside functions included, must go to the same or a lower
layer; no two modules may import each other, directly or round a longer loop; no ``_private``
name may be imported from another module (make it public or move it); no module may pass 500
lines. The layer order is the one the package docstring states.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "causal_nb"
ROOT = "causal_nb"
MAX_LINES = 500

# Lower number = lower layer. A module's layer is its subpackage's; the root package and its
# command line sit on top. The version module imports nothing, so every layer may read it.
LAYERS = {
    "core": 0,
    "models": 1, "data": 1, "zoo": 1,
    "engine": 2,
    "analyses": 3,
    "pruning": 4,
    "evaluation": 5,
    "notebook": 6,
}
TOP = 7


def modules(pkg: Path = PKG, root: str = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (a package is its
    ``__init__``)."""
    out = {}
    for f in sorted(pkg.rglob("*.py")):
        parts = [root, *f.relative_to(pkg).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def package_layer(name: str, root: str = ROOT) -> int:
    parts = name.split(".")
    if len(parts) == 1 or parts[1] in ("__init__", "__main__"):
        return TOP
    if parts[1] not in LAYERS:
        raise AssertionError(f"{name}: its subpackage {parts[1]!r} has no layer in test_layout.LAYERS; add it there")
    return LAYERS[parts[1]]


def imports(name: str, path: Path, known: set[str], root: str = ROOT) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every import of a package module in
    ``path``, lazy ones included. ``from pkg import sub`` counts as importing ``pkg.sub`` when
    ``sub`` is a module, else as importing ``pkg`` (its ``__init__``)."""
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == root]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root:
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, "", node.lineno) if sub in known else (target, a.name, node.lineno))
    return out


def graph(pkg: Path = PKG, root: str = ROOT) -> tuple[dict[str, Path], dict[str, list[tuple[str, str, int]]]]:
    mods = modules(pkg, root)
    return mods, {m: imports(m, p, set(mods), root) for m, p in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_violations(mods, deps, layer=package_layer) -> list[str]:
    return [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)}) at line {line}"
            for m, ds in deps.items() for t, _, line in ds if t in mods and layer(t) > layer(m)]


def private_imports(deps) -> list[str]:
    return [f"{m} imports {n!r} from {t} at line {line}" for m, ds in deps.items() for t, n, line in ds
            if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]


def import_cycles(mods, deps) -> list[list[str]]:
    return cycles({m: {t for t, _, _ in ds if t in mods and t != m} for m, ds in deps.items()})


def long_modules(mods) -> list[str]:
    return [f"{m}: {n} lines" for m, p in mods.items() if (n := len(p.read_text().splitlines())) > MAX_LINES]


MODS, DEPS = graph()


def test_the_package_is_found():
    assert f"{ROOT}.engine.replay" in MODS and f"{ROOT}.notebook.runner" in MODS, sorted(MODS)
    assert all(any(t == f"{ROOT}.core.checks" for t, _, _ in DEPS[m]) for m in (f"{ROOT}.engine.patching",
                                                                              f"{ROOT}.pruning.structure"))


def test_every_module_has_a_layer():
    for m in MODS:
        package_layer(m)


def test_imports_point_down_only():
    bad = layer_violations(MODS, DEPS)
    assert not bad, "imports of a higher layer (move the code down, or the caller up):\n" + "\n".join(bad)


def test_no_import_cycles():
    found = import_cycles(MODS, DEPS)
    assert not found, "import cycles (lazy imports count):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_private_names_imported_across_modules():
    bad = private_imports(DEPS)
    assert not bad, "private names imported from another module (make them public or move them):\n" + "\n".join(bad)


def test_modules_stay_short():
    bad = long_modules(MODS)
    assert not bad, f"modules over {MAX_LINES} lines (split them):\n" + "\n".join(bad)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """Each check fails on a small package that breaks its rule (so a check that cannot fail
    is caught here)."""
    pkg = tmp_path / "causal_nb"
    for sub in ("core", "engine"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("__version__ = '0'\nfrom .engine import a\n")
    (pkg / "core" / "low.py").write_text("def f():\n    from ..engine.a import g  # lazy, still counted\n"
                                         "    from .. import __version__\n")
    (pkg / "engine" / "a.py").write_text("from .b import _helper\n" + "x = 1\n" * MAX_LINES)
    (pkg / "engine" / "b.py").write_text("from . import a\n_helper = 1\n")
    mods, deps = graph(pkg)
    assert layer_violations(mods, deps) == [
        "causal_nb.core.low (layer 0) imports causal_nb.engine.a (layer 2) at line 2",
        "causal_nb.core.low (layer 0) imports causal_nb (layer 7) at line 3"]
    assert import_cycles(mods, deps) == [["causal_nb.engine.a", "causal_nb.engine.b"]]
    assert private_imports(deps) == ["causal_nb.engine.a imports '_helper' from causal_nb.engine.b at line 1"]
    assert long_modules(mods) == [f"causal_nb.engine.a: {MAX_LINES + 1} lines"]


# The top-level API before the package was split into layers (plus the score and sweep I/O the
# notebooks now call as cnb.*): every name must stay importable from the root.
PUBLIC = """FullModelRun IOIPrompts METHODS METRICS ModelNotAvailableError PromptSet PromptSetError ScoredBatch
SweepConfig TokenBatch TokenSet TokenSetError ablate acdc acdc_sweep answer_token_diff available_domains domain_losses
evaluate full_model_run head_roles induction induction_ablation induction_losses induction_scores ioi
ioi_head_patching ioi_logit_diff ioi_prompts list_models load_json load_model load_prompts logit_diff logprob_mass
model_card patch patching_summary plotting progress_enabled prompt_losses prompt_set_summary prune prune_units
repeated_tokens reverse_intervention save_findings save_json save_pruned score setup stats sweep token_set_mass
token_set_path views widgets load_scores save_scores scores_path load_results __version__""".split()


def test_public_api_is_kept():
    import causal_nb

    missing = [n for n in PUBLIC if not hasattr(causal_nb, n)]
    assert not missing, f"names no longer exported by causal_nb: {missing}"
    assert set(PUBLIC) - {"__version__"} <= set(causal_nb.__all__)
    for sub in ("stats", "plotting", "views", "widgets", "induction", "ioi"):
        assert type(getattr(causal_nb, sub)).__name__ == "module", sub
    assert causal_nb.stats.h1_table and causal_nb.views.head_effect and causal_nb.widgets.HeadExplorer
