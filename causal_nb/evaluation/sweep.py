"""Pruning sweeps: methods x units x sparsities x seeds x models, one result row per cell.

Each cell (model, method, unit, sparsity, seed) scores the units on the scoring prompts
(scores are computed once per model/method/unit/seed and saved under ``scores/``), prunes,
and evaluates on held-out prompts of every evaluation domain. Every finished cell is written
atomically to ``cells/<id>.json`` before the next starts, so a sweep killed at any moment
(even SIGKILL) loses at most the cell in flight and, restarted with ``resume=True``,
recomputes no finished cell; the final table is the same as an uninterrupted run's. Cells
are independent jobs handed to an executor (``core.executors``: in-process by default, Ray or
SLURM through submitit); the workers return each cell's row and this process writes the cell
files, so the store and ``resume`` are one code path whatever the executor. A cell that raises
is reported with its traceback (also saved as ``failures/<id>.txt``) and the others go on;
the sweep then raises ``SweepError`` listing the failed cells (a resume retries them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

from ..core.checks import strict
from ..core.env import progress_enabled
from ..core.executors import Failure, InProcessExecutor, make_executor
from ..core.io import atomic_write_text, load_json, save_json

__all__ = ["SPLIT_METHODS", "CellWorker", "InProcessExecutor", "SweepConfig", "SweepError", "load_config", "load_results",
           "run_cell", "score_job", "score_phase", "sweep"]


class SweepError(ValueError):
    """A sweep config or results folder that cannot be used (nothing is overwritten)."""


@dataclass
class SweepConfig:
    """What a sweep runs. Unknown keys in a config file are errors (typos would be silent)."""

    out: str = "runs/sweep"  # results folder
    models: list[str] = field(default_factory=lambda: ["code-llama-4l"])  # names or folders
    domain: str = "python"  # prompts the scores are computed on (train split)
    eval_domains: list[str] = field(default_factory=lambda: ["python", "cpp"])  # test splits evaluated
    n_prompts: int = 16  # scoring prompts
    n_eval_prompts: int = 16  # evaluation prompts per domain
    n_tokens: int = 64  # tokens per prompt, BOS included
    methods: list[str] = field(default_factory=lambda: ["ablation", "attribution", "taylor", "magnitude", "random"])
    units: list[str] = field(default_factory=lambda: ["head", "neuron"])  # "head", "neuron", "both" or "block"
    sparsities: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 0.8])
    seeds: list[int] = field(default_factory=lambda: [0])
    physical: bool = True  # slice weights (else zero them)
    budget: str = "global"  # "global" or "per_layer"
    fill: str = "zero"  # what removed units leave: "zero", or "mean" over the scoring prompts (bias-folded)
    latency: bool = False  # time each pruned model (slower)
    device: str = "cpu"
    scores_dir: str | None = None  # read scores saved by notebook 02 here instead of computing them

    def fingerprint(self) -> str:
        """Hash of everything that changes results: the settings (not ``out``) and, with
        ``scores_dir``, the content of the saved score files the sweep reads from it (so
        resuming after notebook 02 wrote other scores is refused; moving the folder is not)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("out", "scores_dir")}
        if d.get("fill") == "zero":
            del d["fill"]  # added later: a zero-fill sweep keeps the fingerprint it had before
        if self.scores_dir:
            d["saved_scores"] = self.saved_scores_digest()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def saved_scores_digest(self) -> dict[str, str | None]:
        """SHA-256 of each score file the sweep would read from ``scores_dir`` (None: missing),
        keyed by its path relative to ``scores_dir``."""
        from ..analyses.scoring import scores_path  # noqa: PLC0415

        kinds = sorted({k for u in self.units for k in (["head", "neuron"] if u == "both" else [u])})
        out: dict[str, str | None] = {}
        for m in self.models:
            for meth in self.methods:
                for kind in kinds:
                    f = scores_path(self.scores_dir, m, self.domain, meth, kind)
                    rel = f.relative_to(self.scores_dir).as_posix()
                    out[rel] = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else None
        return out

    def cells(self) -> list[dict]:
        """All cells, in a fixed order."""
        return [{"model": m, "method": meth, "unit": u, "sparsity": float(s), "seed": int(seed)}
                for m in self.models for u in self.units for meth in self.methods for seed in self.seeds
                for s in self.sparsities]


def load_config(source: str | Path | dict) -> SweepConfig:
    """A ``SweepConfig`` from a YAML file or dict; unknown keys and bad values are errors."""
    import yaml  # noqa: PLC0415

    from ..analyses.scoring import METHODS  # noqa: PLC0415

    if isinstance(source, dict):
        raw, where = dict(source), "config"
    else:
        path = Path(source)
        if not path.exists():
            raise SweepError(f"{path}: no such sweep config")
        raw, where = yaml.safe_load(path.read_text()) or {}, str(path)
    valid = [f.name for f in fields(SweepConfig)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")
    cfg = SweepConfig(**raw)
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise SweepError(f"{where}: unknown method(s) {bad}; valid: {list(METHODS)}")
    bad = [u for u in cfg.units if u not in ("head", "neuron", "both", "block")]
    if bad:
        raise SweepError(f"{where}: unknown unit(s) {bad}; valid: 'head', 'neuron', 'both', 'block'")
    if cfg.fill not in ("zero", "mean"):
        raise SweepError(f"{where}: fill must be 'zero' or 'mean', got {cfg.fill!r}")
    bad = [s for s in cfg.sparsities if not 0 <= s < 1]
    if bad:
        raise SweepError(f"{where}: sparsities {bad} are outside [0, 1)")
    return cfg


def cell_id(cell: dict) -> str:
    model = cell["model"].replace("/", "_")
    return f"{model}__{cell['method']}__{cell['unit']}__s{cell['sparsity']:.3f}__seed{cell['seed']}"


class _Context:
    """Models, prompts and scores loaded once per process and reused across cells."""

    def __init__(self, cfg: SweepConfig, root: Path):
        self.cfg, self.root = cfg, root
        self.models: dict = {}
        self.scores: dict = {}
        self.runs: dict = {}

    def model(self, name):
        from ..models.loading import load_model  # noqa: PLC0415

        if name not in self.models:
            self.models[name] = load_model(name, device=self.cfg.device)
        return self.models[name]

    def full_run(self, name, domain):
        """The unpruned model's log-probs on a domain's evaluation prompts, once per process."""
        from ..data.prompts import load_prompts  # noqa: PLC0415
        from .quality import full_model_run  # noqa: PLC0415

        key = (name, domain)
        if key not in self.runs:
            self.runs[key] = full_model_run(self.model(name), load_prompts(domain, split="test", n=self.cfg.n_eval_prompts),
                                            n_tokens=self.cfg.n_tokens)
        return self.runs[key]

    def scoring_prompts(self, cell) -> tuple:
        """The scoring prompts of a cell and the extra ``score`` arguments (``corrupted``).

        Patching and EAP-IG pair prompt i of the clean and corrupted sets position by
        position, so they take the prompts that fill ``n_tokens`` (as notebook 02 does);
        the other methods take the first ``n_prompts``, padded where short.
        """
        from ..data.prompts import load_prompts  # noqa: PLC0415

        cfg = self.cfg
        if cell["method"] not in ("patching", "eap-ig"):
            return load_prompts(cfg.domain, split="train", n=cfg.n_prompts), {}
        model = self.model(cell["model"])
        fit = [load_prompts(d, split="train").fitting(model, cfg.n_tokens).head(cfg.n_prompts)
               for d in (cfg.domain, cfg.eval_domains[-1])]
        n = min(len(f) for f in fit)  # equal counts: prompt i is paired with prompt i
        return fit[0].head(n), {"corrupted": fit[1].head(n)}

    def score_file(self, cell, kind) -> Path:
        """Where a cell's ``kind`` scores are saved (shared by the cells of other sparsities)."""
        from ..analyses.reverse import model_key  # noqa: PLC0415

        return self.root / "scores" / model_key(cell["model"]) / self.cfg.domain / \
            f"{cell['method']}_{kind}_seed{cell['seed']}.json"

    def compute_scores(self, cell, kind, unit_range=None) -> pd.DataFrame:
        """``score`` of a cell's method on its scoring prompts (``unit_range``: only those units)."""
        from ..analyses.scoring import score  # noqa: PLC0415

        prompts, kw = self.scoring_prompts(cell)
        if unit_range is not None:
            kw["unit_range"] = unit_range
        return score(self.model(cell["model"]), prompts, cell["method"], unit=kind, n_tokens=self.cfg.n_tokens,
                     seed=cell["seed"], progress=False, **kw)

    def save_scores(self, cell, kind, df: pd.DataFrame, seconds: float) -> None:
        save_json({"model": cell["model"], "domain": self.cfg.domain, "method": cell["method"], "unit": kind,
                   "seed": cell["seed"], "n_prompts": self.cfg.n_prompts, "n_tokens": self.cfg.n_tokens,
                   "seconds": round(seconds, 2), "scores": df.to_dict(orient="records")}, self.score_file(cell, kind))

    def unit_scores(self, cell) -> list[pd.DataFrame]:
        kinds = ["head", "neuron"] if cell["unit"] == "both" else [cell["unit"]]
        out = []
        for kind in kinds:
            key = (cell["model"], cell["method"], kind, cell["seed"])
            path = self.score_file(cell, kind)
            if key not in self.scores and self.cfg.scores_dir:
                from ..analyses.scoring import load_scores, scores_path  # noqa: PLC0415

                saved = scores_path(self.cfg.scores_dir, cell["model"], self.cfg.domain, cell["method"], kind)
                if not saved.exists():
                    raise SweepError(f"{saved}: no saved {cell['method']} {kind} scores for {cell['model']}; run "
                                     "notebooks/02_causal_scoring.ipynb first (or drop scores_dir to compute them)")
                self.scores[key] = load_scores(saved, self.model(cell["model"]))
            if key not in self.scores:
                if path.exists():
                    self.scores[key] = pd.DataFrame(load_json(path)["scores"])
                    self.scores[key].attrs["unit"] = kind  # block tables are told apart by it
                else:
                    t0 = time.time()
                    df = self.compute_scores(cell, kind)
                    self.save_scores(cell, kind, df, time.time() - t0)
                    self.scores[key] = df
            out.append(self.scores[key])
        return out


@dataclass(frozen=True)
class CellWorker:
    """A worker's set-up for a sweep (picklable: shipped to Ray/SLURM workers): calling it
    builds the per-process context that loads each model once for all the cells it runs."""

    config: dict
    out: str

    def __call__(self) -> _Context:
        return _Context(SweepConfig(**self.config), Path(self.out))


def compute_scores(ctx: _Context, cell: dict) -> None:
    """Compute (or read) and save the unit scores a cell prunes by (a whole-model score job)."""
    ctx.unit_scores(cell)


#: Exact per-unit methods: their cost grows with the number of units (one ablated run each), so
#: the scoring phase of a distributed sweep splits each of their tables into unit ranges of about
#: equal cost over the workers (``engine.split.unit_parts``; the merged table is bit-identical to
#: one process's). The other methods compute every unit in a few passes and run as one job.
SPLIT_METHODS = ("ablation", "patching")


def score_job(ctx: _Context, job: dict):
    """One job of a distributed sweep's scoring phase.

    ``{"cell": c}``: the cell's whole score tables, computed and saved by the worker (``None``
    returned). ``{"cell": c, "kind": k, "part": i, "of": n}``: part ``i`` of
    ``unit_parts(counts, n)`` of the table of kind ``k`` (``counts``: units per layer), returned
    as ``(n_units, {(start, stop): table}, seconds)`` for the driver to merge and save (no
    table when the part is empty: fewer units than parts).
    """
    from ..engine.split import unit_parts  # noqa: PLC0415
    from ..engine.units import enumerate_units  # noqa: PLC0415

    if "part" not in job:
        compute_scores(ctx, job["cell"])
        return None
    t0 = time.time()
    model = ctx.model(job["cell"]["model"])
    counts = [len(enumerate_units(model, job["kind"], [layer])) for layer in range(model.cfg.n_layers)]
    ranges = unit_parts(counts, job["of"])
    tables = {ranges[job["part"]]: ctx.compute_scores(job["cell"], job["kind"], unit_range=ranges[job["part"]])} \
        if job["part"] < len(ranges) else {}
    return sum(counts), tables, time.time() - t0


def score_phase(executor, worker, ctx: _Context, todo: list[dict]) -> None:
    """Compute every score table the cells in ``todo`` need, once each, on ``executor``'s workers.

    The tables of ``SPLIT_METHODS`` are split into as many unit ranges of about equal cost as
    the executor runs jobs at once (``workers``, else ``jobs``, else 4), the split parts first so
    that no long job starts last; the driver merges the ranges in order and saves the table
    where the cells read it. A part that fails leaves its table unsaved: its cells compute it
    and report the error.
    """
    from ..engine.split import executor_width, merge_layers  # noqa: PLC0415

    first = list({(c["model"], c["method"], c["unit"], c["seed"]): c for c in reversed(todo)}.values())[::-1]
    n_parts = executor_width(executor)
    split, whole = [], []
    for c in first:
        kinds = ["head", "neuron"] if c["unit"] == "both" else [c["unit"]]
        if c["method"] not in SPLIT_METHODS or c["unit"] == "block":
            whole.append({"cell": c})
            continue
        split += [{"cell": c, "kind": k, "part": i, "of": n_parts} for k in kinds if not ctx.score_file(c, k).exists()
                  for i in range(n_parts)]
    parts: dict[tuple, list] = {}
    jobs = split + whole
    for i, res in executor.run(worker, score_job, jobs):
        job = jobs[i]
        if "part" in job and not isinstance(res, Failure):
            parts.setdefault((cell_id(job["cell"]), job["kind"]), [job]).append(res)
    for (_, kind), (job, *got) in parts.items():
        n_units = got[0][0]
        tables = {r: t for _, ts, _ in got for r, t in ts.items()}
        ranges = sorted(tables)
        # every part came back and the ranges tile the table: else its cells compute it themselves
        if len(got) == n_parts and [a for a, _ in ranges] == [0] + [b for _, b in ranges[:-1]] \
                and ranges[-1][1] == n_units:
            merged = merge_layers([tables[r] for r in ranges], None)
            ctx.save_scores(job["cell"], kind, merged, sum(s for *_, s in got))


def run_cell(ctx: _Context, cell: dict) -> dict:
    """Score, prune and evaluate one cell; returns its result row (per-prompt losses included)."""
    from ..data.prompts import load_prompts  # noqa: PLC0415
    from ..pruning.structure import prune  # noqa: PLC0415
    from .quality import evaluate  # noqa: PLC0415

    t0 = time.time()
    cfg = ctx.cfg
    model = ctx.model(cell["model"])
    reference = load_prompts(cfg.domain, split="train", n=cfg.n_prompts) if cfg.fill == "mean" else None
    pruned = prune(model, ctx.unit_scores(cell), cell["sparsity"], physical=cfg.physical, budget=cfg.budget,
                   fill=cfg.fill, reference=reference, n_tokens=cfg.n_tokens)
    row = dict(cell)
    for d in cfg.eval_domains:
        ev = evaluate(pruned, load_prompts(d, split="test", n=cfg.n_eval_prompts), full_model=ctx.full_run(cell["model"], d),
                      n_tokens=cfg.n_tokens, latency_batches=(1, 32) if cfg.latency else ())
        for k, v in ev.items():
            row[f"{d}_{k}" if k not in ("params",) and not k.startswith("latency") else k] = v
    row["seconds"] = round(time.time() - t0, 2)
    return row


@strict
def sweep(config: SweepConfig | dict | str | Path, resume: bool = False, executor=None,
          progress: bool | None = None, on_cell: Callable[[dict], None] | None = None,
          on_failure: Callable[[Failure], None] | None = None) -> pd.DataFrame:
    """Run every cell not yet finished and return the results table (one row per cell).

    Args:
        config: a ``SweepConfig``, dict or YAML path.
        resume: continue in an existing results folder; without it an existing folder is an
            error (nothing is overwritten).
        executor: ``None``/``"inprocess"``, ``"ray"`` (a local Ray cluster of 2 workers), or an
            executor object: ``core.executors.RayExecutor(address=..., workers=...)``,
            ``SubmititExecutor(...)``, anything with ``run(setup, fn, cells)``, or (the original
            interface) ``map(fn, cells)``, whose exceptions then propagate.
        on_cell: called with each finished cell's row, as it is written (any order).
        on_failure: called with the ``Failure`` of each cell that raised (default: its
            traceback is printed to stderr).

    Writes ``<out>/sweep.json``, ``<out>/cells/*.json``, ``<out>/scores/...`` and the table as
    ``<out>/results.csv`` and ``results.parquet`` (per-prompt losses stay in the cell files).

    Raises:
        SweepError: a bad config or results folder; after the run, cells that raised (listed
            with their errors; the finished cells are written and in ``results.csv``).
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    cfg = config if isinstance(config, SweepConfig) else load_config(config)
    root = Path(cfg.out)
    meta = root / "sweep.json"
    if meta.exists():
        old = load_json(meta)
        if old["fingerprint"] != cfg.fingerprint():
            raise SweepError(f"{root} holds results of an incompatible sweep (config {old['fingerprint']} vs "
                             f"{cfg.fingerprint()}); choose another 'out' folder")
        if not resume:
            raise SweepError(f"{root} already holds this sweep's results; pass resume=True (--resume) to continue")
    else:
        save_json({"fingerprint": cfg.fingerprint(), "config": asdict(cfg)}, meta)
    cells_dir = root / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cfg.cells() if not (cells_dir / f"{cell_id(c)}.json").exists()]
    bar = tqdm(total=len(cfg.cells()), initial=len(cfg.cells()) - len(todo), desc="sweep",
               disable=not progress_enabled(progress))
    executor = make_executor(executor)
    failed = []
    # one cluster for both phases: an executor that starts its own (Ray) starts it once, and its
    # workers keep the models they loaded in the scoring phase for the cells
    with executor if hasattr(executor, "__enter__") else contextlib.nullcontext():
        if not todo:
            results = iter(())
        elif hasattr(executor, "run"):
            worker = CellWorker(asdict(cfg), str(root))
            if not isinstance(executor, InProcessExecutor) and not cfg.scores_dir:
                # Cells that share scores (other sparsities) would run at once on several workers and
                # each compute them: compute each score table once first (saved under <out>/scores; a
                # worker that cannot see that folder recomputes, as before). A failure here shows again
                # in its cells.
                score_phase(executor, worker, _Context(cfg, root), todo)
            results = (r for _, r in executor.run(worker, run_cell, todo))
        else:  # an executor of the original interface: map(fn, cells), here in this process
            ctx = _Context(cfg, root)
            results = executor.map(lambda c: run_cell(ctx, c), todo)
        for row in results:
            if isinstance(row, Failure):
                failed.append(row)
                atomic_write_text(root / "failures" / f"{cell_id(row.item)}.txt", row.traceback or row.error)
                (on_failure or _print_failure)(row)
                continue
            atomic_write_text(cells_dir / f"{cell_id(row)}.json", json.dumps(row))
            (root / "failures" / f"{cell_id(row)}.txt").unlink(missing_ok=True)  # failed before, done now
            bar.update(1)
            if on_cell:
                on_cell(row)
    bar.close()
    df = collect(cfg)
    if failed:
        lines = "\n".join(f"  {cell_id(f.item)}: {f.error}" for f in failed)
        raise SweepError(f"{len(failed)} of {len(todo)} cells failed (tracebacks in {root / 'failures'}; the other "
                         f"{len(df)} cells are in {root / 'results.csv'}; fix and rerun with resume=True / --resume):\n"
                         f"{lines}")
    return df


def _print_failure(f: Failure) -> None:
    import sys  # noqa: PLC0415

    print(f"sweep: cell {cell_id(f.item)} failed:\n{f.traceback or f.error}", file=sys.stderr)


def collect(cfg: SweepConfig) -> pd.DataFrame:
    """The results table from the finished cell files, in cell order; also written to disk."""
    root = Path(cfg.out)
    rows = [load_json(root / "cells" / f"{cell_id(c)}.json") for c in cfg.cells()
            if (root / "cells" / f"{cell_id(c)}.json").exists()]
    df = pd.DataFrame(rows)
    flat = df.drop(columns=[c for c in df.columns if "per_prompt" in c])
    atomic_write_text(root / "results.csv", flat.to_csv(index=False))
    tmp = root / ".results.parquet.tmp"
    flat.to_parquet(tmp, index=False)
    tmp.replace(root / "results.parquet")
    return df


@strict
def load_results(folder: str | Path) -> pd.DataFrame:
    """The results of a sweep folder (finished cells, per-prompt lists included)."""
    meta = Path(folder) / "sweep.json"
    if not meta.exists():
        raise SweepError(f"{folder} holds no sweep (no sweep.json); run notebooks/03_pruning_sweep.ipynb first")
    cfg = SweepConfig(**load_json(meta)["config"])
    cfg.out = str(folder)
    return collect(cfg)
