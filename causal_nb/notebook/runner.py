"""Run the notebook series headlessly with papermill: ``python -m causal_nb run --profile demo``.

Each notebook ``NN_name.ipynb`` of the series (a source checkout's ``notebooks/``, else the
copy installed with the package, or ``--notebooks DIR``) is executed in order into
``runs/<timestamp>/``, with the profile's parameters (and ``-p key value`` overrides) injected
into those notebooks that declare them. Notebooks hand results to each other only through
paths under the run folder (``OUT_DIR``). A failed notebook stops the run with the failing cell
shown; finished notebooks are marked, so ``--resume`` (with the same parameters) skips them.
After the series, and after a failed notebook too, ``write_report`` (``causal_nb.notebook.report``)
writes ``report.md`` and ``report.html``: findings first, then notebooks and tables.
"""

from __future__ import annotations

import ast
import datetime as _dt
import difflib
import json
import time
from pathlib import Path

from ..core.io import atomic_write_text, save_json
from .report import write_report
from .series import (
    NOTEBOOKS,
    REPO,
    RunError,
    copy_notebooks,
    default_notebooks_dir,
    finished_notebooks,
    notebook_parameters,
    packaged_notebooks_dir,
    series,
)

__all__ = ["NOTEBOOKS", "PROFILES", "REPO", "RunError", "copy_notebooks", "default_notebooks_dir", "finished_notebooks", "notebook_parameters", "packaged_notebooks_dir",
           "run_series", "series", "write_report"]

# Parameters per profile; each notebook receives the ones its `parameters` cell declares.
# The code prompts are file chunks of 53 to ~130 tokens (80 test and 160 train per domain): at
# 64 tokens nearly all fill every position, which paired patching needs, so the profiles grow
# in prompts, not length. Every profile sets N_PROMPTS and N_NEURON_PROMPTS, so notebook 02
# scores heads and neurons on 16/48/80 prompts (exact ablation of every neuron of both models
# included) where its committed defaults are 8 and 3, and every profile sweeps all the
# selection methods in notebook 03 where the committed notebook sweeps a subset.
_SWEEP = {"SWEEP_HEAD_METHODS": ["ablation", "attribution", "attribution-abs", "acdc", "taylor", "fisher", "magnitude",
                                 "random"],
          "SWEEP_NEURON_METHODS": ["ablation", "attribution", "attribution-abs", "taylor", "fisher", "magnitude", "random"]}
PROFILES: dict[str, dict] = {
    "demo": {"MODEL": "code-llama-4l", "SEED": 0, "N_PROMPTS": 16, "N_NEURON_PROMPTS": 16, "N_TOKENS": 64, **_SWEEP},
    "standard": {"MODEL": "code-llama-4l", "SEED": 0, "N_PROMPTS": 48, "N_NEURON_PROMPTS": 48, "N_EVAL_PROMPTS": 48,
                 "N_TOKENS": 64, **_SWEEP},
    "full": {"MODEL": "code-llama-4l", "SEED": 0, "N_PROMPTS": 80, "N_NEURON_PROMPTS": 80, "N_EVAL_PROMPTS": 80,
             "N_TOKENS": 64, **_SWEEP},
    # The series on a real pretrained model (SmolLM2-135M: 30 layers x 9 heads, 46,080 MLP
    # neurons). One exact run per unit costs ~1-4 s on 2 CPU cores (30 layers, 49k vocabulary),
    # so heads are scored on 4 prompts x 63 positions, ACDC walks at one threshold, and exact
    # neuron ablation runs on a sample of three layers (early, middle, late; 2 prompts), where
    # notebook 02 measures how well the whole-model methods agree with it; the neuron sweep
    # then selects by attribution-abs. Held-out evaluation: 16 prompts per domain.
    "real": {"MODEL": "smollm2-135m", "MODELS": ["smollm2-135m"], "SEED": 0, "N_PROMPTS": 4, "N_NEURON_PROMPTS": 2,
             "N_EVAL_PROMPTS": 16, "N_TOKENS": 64, "NEURON_ABLATION_LAYERS": [1, 15, 28],
             "NEURON_REFERENCE": "attribution-abs", "ACDC_THRESHOLDS": [0.1],
             "SWEEP_HEAD_METHODS": _SWEEP["SWEEP_HEAD_METHODS"],
             "SWEEP_NEURON_METHODS": [m for m in _SWEEP["SWEEP_NEURON_METHODS"] if m != "ablation"]},
}


def _nearest(name: str, valid) -> str:
    """`` (did you mean 'A' or 'B'?)`` for the closest valid names (up to 3), else ``""``."""
    close = [repr(c) for c in difflib.get_close_matches(name, sorted(valid), n=3)]
    if not close:
        return ""
    return f" (did you mean {close[0] if len(close) == 1 else ', '.join(close[:-1]) + ' or ' + close[-1]}?)"


def _check_resume(run: Path, profile: str, params: dict) -> None:
    """Refuse to resume a run with other parameters than its earlier invocations used."""
    old: dict = {}
    if (run / "run.json").exists():
        meta = json.loads((run / "run.json").read_text())
        old = {"profile": meta.get("profile"), **meta.get("parameters", {})}
    else:  # a run from before run.json was written up front: what its finished notebooks got
        for entry in finished_notebooks(run).values():
            old.update({k: v for k, v in entry["parameters"].items() if not k.endswith("_DIR")})
    new = json.loads(json.dumps({"profile": profile, **params}))  # as run.json holds it (tuples -> lists)
    # run.json holds the whole earlier setting; markers only what their notebooks declared
    keys = set(old) | set(new) if "profile" in old else set(old)
    differ = sorted(k for k in keys if old.get(k) != new.get(k))
    if differ:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ)
        raise RunError(f"{run} was run with other parameters ({shown}); resuming would mix results of two settings. "
                       "Resume with the same --profile and -p values, use another --out, or pass --force")


def parse_value(text: str):
    """A ``-p`` value as a Python literal when it is one (``16``, ``0.5``, ``True``), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_series(profile: str = "demo", overrides: dict | None = None, out_dir: str | Path | None = None,
               only: list[str] | None = None, resume: bool = False, progress: bool = True,
               notebooks_dir: Path | None = None, force: bool = False) -> Path:
    """Execute the notebook series with papermill and return the run folder.

    Args:
        profile: ``"demo"``, ``"standard"``, ``"full"`` (the bundled code model) or ``"real"``
            (SmolLM2-135M), see ``PROFILES``.
        overrides: parameter values that replace the profile's (``{"MODEL": "gpt2"}``).
        out_dir: run folder; default ``runs/<timestamp>``. With ``resume`` pass the old one.
        only: notebook name prefixes to run (``["01", "02"]``); default all.
        resume: skip notebooks already marked finished in ``out_dir``; refused when the profile
            or a parameter differs from the run's first invocation (unless ``force``).
        progress: papermill's cell progress bar.
        notebooks_dir: the series' folder (default ``default_notebooks_dir()``).
        force: resume even with other parameters (each notebook's own are in the report).

    Raises:
        RunError: unknown profile or parameter (the nearest valid name suggested), resuming
            with other parameters, or a notebook that failed (cell and error named).
    """
    import papermill as pm  # noqa: PLC0415 - heavy import, only for runs

    if profile not in PROFILES:
        raise RunError(f"unknown profile {profile!r}{_nearest(profile, PROFILES)}; choose one of {sorted(PROFILES)}")
    notebooks_dir = default_notebooks_dir() if notebooks_dir is None else Path(notebooks_dir)
    # Folder parameters given on the command line are relative to the caller's directory.
    overrides = {k: (str(Path(v).resolve()) if k.endswith("_DIR") or (k == "MODEL" and Path(str(v)).exists()) else v)
                 for k, v in (overrides or {}).items()}
    params = {**PROFILES[profile], **overrides}
    nbs = series(notebooks_dir)
    if only:
        nbs = [p for p in nbs if any(p.name.startswith(o) for o in only)]
    if not nbs:
        raise RunError(f"no notebooks to run in {notebooks_dir} (only={only})")
    declared = {p.name: notebook_parameters(p) for p in nbs}
    known = set().union(*[set(d) for d in declared.values()])
    unknown = sorted(set(overrides) - known)
    if unknown:
        hints = "".join(f"; {u}{_nearest(u, known)}" for u in unknown if _nearest(u, known))
        raise RunError(f"parameter(s) {unknown} not declared by any notebook run ({', '.join(declared)}){hints}; "
                       f"known: {sorted(known)}")
    if resume and out_dir is None:
        raise RunError("--resume needs the run folder to resume (--out runs/<timestamp>)")
    # a source checkout keeps its runs beside the notebooks; an installed package, where you are
    root = REPO if notebooks_dir.resolve() == NOTEBOOKS.resolve() else Path.cwd()
    run = Path(out_dir).resolve() if out_dir else root / "runs" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if resume and not force:
        _check_resume(run, profile, params)
    (run / ".done").mkdir(parents=True, exist_ok=True)
    # written up front, so a later --resume can check its parameters against this invocation's
    if not resume or not (run / "run.json").exists() or force:
        done = finished_notebooks(run)
        save_json({"profile": profile, "parameters": params, "notebooks": list(done.values())}, run / "run.json")
    log = []
    for nb in nbs:
        marker = run / ".done" / nb.stem
        if resume and nb.name in finished_notebooks(run):
            print(f"skip {nb.name} (finished earlier)")
            continue
        nb_params = {k: v for k, v in params.items() if k in declared[nb.name]}
        for name in declared[nb.name]:
            # Results travel between notebooks only through folders of the run: OUT_DIR is the
            # run itself, TOKEN_SETS_DIR -> <run>/token_sets, SCORES_DIR -> <run>/scores...
            if name.endswith("_DIR") and name not in overrides:
                nb_params[name] = str(run if name == "OUT_DIR" else run / name[: -len("_DIR")].lower())
        print(f"run  {nb.name} {nb_params}", flush=True)
        t0 = time.time()
        try:
            pm.execute_notebook(str(nb), str(run / nb.name), parameters=nb_params, cwd=str(nb.parent),
                                progress_bar=progress, kernel_name="python3")
        except pm.PapermillExecutionError as e:
            write_report(run, [p.name for p in nbs])  # what finished so far, the failed notebook named
            raise RunError(f"{nb.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                           f"partial outputs (and report.html) are in {run}; the executed notebook is {run / nb.name}") from None
        log.append({"notebook": nb.name, "seconds": round(time.time() - t0, 1), "parameters": nb_params})
        atomic_write_text(marker, json.dumps(log[-1]))
        _record(run, profile, params)
    write_report(run, [p.name for p in nbs])
    return run


def _record(run: Path, profile: str, params: dict) -> None:
    """Rewrite ``run.json`` (atomically) with every notebook finished in the run folder so far,
    this invocation's and earlier ones' (their markers), in series order."""
    meta = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    save_json({"profile": meta.get("profile", profile), "parameters": meta.get("parameters", params),
               "notebooks": list(finished_notebooks(run).values())}, run / "run.json")
