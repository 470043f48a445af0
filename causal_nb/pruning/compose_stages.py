"""Composable pruning, the pipeline stages over one work folder (what ``python -m causal_nb compose`` runs).

``configure`` -> ``make_scheme`` (``compose_scheme``) -> ``prune_variants`` (each distinct variant
pruned once: ``<dir>/pruned/<key>.safetensors``) -> ``finetune_variants`` (each trained alone
against the dense module: ``<dir>/finetuned/<key>.safetensors`` and ``.csv``; a variant already
trained is skipped, so an interrupted run resumes) -> ``build`` (configuration k composed from
the fine-tuned variants) -> ``finetune_configuration`` with ``arm="composed"`` (that model
fine-tuned end to end) or ``arm="baseline"`` (the control: configuration k pruned directly, i.e.
composed from the *un*-fine-tuned variants, fine-tuned end to end with the same settings).
Results: ``<dir>/runs/c<k>_<arm>.csv`` (curves) and ``.json`` (held-out loss, seconds).

A T5 family (``compose_t5``) reads translation pairs instead of code windows (``_data``: the same
``DATA`` counts, in pairs; ``seq`` and the file counts unused) and scores its held-out loss per
target token; its runs also record BLEU on ``bleu_pairs`` validation pairs when asked.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.io import load_json, save_json
from .compose_modules import (
    compose_model,
    load_dense,
    load_variant,
    make_variant,
    prunable_modules,
    save_variant,
    weights_fingerprint,
)
from .compose_scheme import ComposeError, make_configurations
from .compose_t5 import bleu, check_t5_criterion, is_t5, t5_module_data, translation_pairs
from .compose_train import capture, code_windows, finetune_model, finetune_module, heldout_loss

__all__ = ["build", "configure", "finetune_configuration", "finetune_variants", "prune_variants",
           "data_settings", "run_configuration", "shared_data"]

#: Data settings every stage shares: window length, training files per domain (a seeded subset),
#: held-out windows (from every held-out file: there are about 150), the training-window pool;
#: ``bleu_pairs``: a T5's BLEU on that many validation pairs before and after each run (0: none);
#: ``bleu_curve_pairs``: a T5's BLEU on that many validation pairs at every evaluation of a run, a
#: ``val_bleu`` column in its curve (0: none); ``bleu_curve_every``: only at the evaluations whose
#: step is a multiple of it, and the last (0: every evaluation).
DATA = {"seq": 128, "n_files": 100, "n_heldout": 64, "n_files_heldout": 1000, "n_train": 512, "bleu_pairs": 0,
        "bleu_curve_pairs": 0, "bleu_curve_every": 0}


def data_settings(data: dict | None = None) -> dict:
    """``DATA`` with the given keys replaced (fewer files or windows make a quick demonstration,
    not a measurement); unknown keys refused."""
    data = dict(data or {})
    unknown = sorted(set(data) - set(DATA))
    if unknown:
        raise ComposeError(f"unknown data settings {unknown}; the keys are {sorted(DATA)}")
    return {**DATA, **data}


def _data(hf, tok, split: str, n: int, seed: int, d: dict):
    """``n`` training or held-out examples of the model's task: code windows, or (a T5) translation pairs."""
    if is_t5(hf):
        return translation_pairs(tok, split, n, seed)
    return code_windows(tok, split, n, d["seq"], seed, d["n_files"] if split == "train" else d["n_files_heldout"])


def configure(model: str, attention, linear, n: int | None = None, criterion: str = "l1") -> dict:
    """``make_configurations`` for a model name or folder (its modules and weight digest read from it)."""
    hf, _ = load_dense(model)
    check_t5_criterion(hf, criterion)
    return make_configurations(model, prunable_modules(hf), attention, linear, n, criterion, weights_fingerprint(hf))


def _dense(scheme: dict):
    hf, tok = load_dense(scheme["model"])
    if weights_fingerprint(hf) != scheme["base_fingerprint"]:
        raise ComposeError(f"{scheme['model']} now has other weights than when the family was configured; "
                           "configure it again (compose config, compose scheme)")
    return hf, tok


def _head_scores(scheme: dict, workdir: Path, tok, seed: int):
    """The kit's causal head scores (mean-ablation KL on training windows), computed once per work folder."""
    import pandas as pd  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from ..analyses.scoring import score  # noqa: PLC0415
    from ..data.prompts import TokenBatch  # noqa: PLC0415
    from ..models.loading import load_model  # noqa: PLC0415

    path = workdir / "head_scores.csv"
    if path.exists():
        return pd.read_csv(path)
    x = code_windows(tok, "train", 32, 64, seed + 1, DATA["n_files"])
    batch = TokenBatch(x, torch.ones_like(x, dtype=torch.bool), tuple(f"w{i}" for i in range(len(x))))
    bridge = load_model(scheme["model"], device="cpu")
    df = score(bridge, batch, method="ablation", unit="head", progress=False)
    workdir.mkdir(parents=True, exist_ok=True)
    df[["layer", "head", "score"]].to_csv(path, index=False)
    return df


def prune_variants(scheme: dict, workdir, seed: int = 0) -> list[Path]:
    """Prune every variant of the scheme once into ``<workdir>/pruned/`` (existing files kept)."""
    workdir = Path(workdir)
    hf, tok = _dense(scheme)
    scores = None
    if any(v["criterion"] == "causal" for v in scheme["variants"]):
        check_t5_criterion(hf, "causal")
        scores = _head_scores(scheme, workdir, tok, seed)
    out = []
    for v in scheme["variants"]:
        path = workdir / "pruned" / f"{v['key']}.safetensors"
        if not path.exists():
            mod, masks, meta = make_variant(hf, v, scores)
            save_variant(path, mod, masks, meta, v, scheme["base_fingerprint"], finetuned=False)
        out.append(path)
    return out


class ModuleSetup:
    """A worker's state for module-level fine-tuning: the dense model and the captured inputs
    and outputs of the modules to train (picklable, so Ray or SLURM workers build it themselves)."""

    def __init__(self, scheme: dict, modules: list[str], n_windows: int, seed: int, data: dict | None = None):
        self.scheme, self.modules, self.n_windows, self.seed = scheme, modules, n_windows, seed
        self.data = data_settings(data)

    def __call__(self):
        t0 = time.perf_counter()
        hf, tok = _dense(self.scheme)
        x = _data(hf, tok, "train", self.n_windows, self.seed, self.data)
        return hf, capture(hf, self.modules, x), time.perf_counter() - t0


def train_variant(state, job: tuple) -> dict:
    """Fine-tune one pruned variant against its dense module; writes its file and stats CSV."""
    hf, data, setup_s = state
    v, workdir, steps, lr, seed, base = job
    folder = Path(workdir) / "finetuned"
    folder.mkdir(parents=True, exist_ok=True)
    mod, masks, meta = load_variant(Path(workdir) / "pruned" / f"{v['key']}.safetensors", hf, base)
    stats = finetune_module(mod, masks, t5_module_data(v["module"], meta["keep"], data[v["module"]]), steps, lr, seed)
    stats.to_csv(folder / f"{v['key']}.csv", index=False)
    save_variant(folder / f"{v['key']}.safetensors", mod, masks,
                 {k: meta[k] for k in meta if k not in ("variant", "finetuned")}, v, base, finetuned=True)
    batch = stats[stats.scope == "batch"].seconds.to_numpy()
    per_step = float(np.median(np.diff(np.concatenate([[0.0], batch])))) if len(batch) else float("nan")
    return {"seconds": float(stats.seconds.iloc[-1]), "setup_seconds": setup_s, "mse_before": float(stats.mse.iloc[0]),
            "mse_after": float(stats.mse.iloc[-1]), "steps": steps, "seconds_per_step": per_step, "lr": lr,
            "seed": seed}


def finetune_variants(scheme: dict, workdir, steps: int = 100, lr: float = 1e-3, n_windows: int = 32,
                      seed: int = 0, executor=None, data: dict | None = None) -> dict:
    """Module-level fine-tuning of every pruned variant, each once; already trained ones skipped.

    Inputs are captured once per worker from the dense model on ``n_windows`` training windows.

    Args:
        executor: where the variants train (``core.executors.make_executor``: ``None`` in this
            process, ``"ray"`` or an executor object: variants are independent jobs).
        data: ``DATA`` keys to replace (``data_settings``).

    Returns:
        ``{key: {"seconds" (training plus its share of the capture), "mse_before", "mse_after",
        "skipped", ...}}`` (also ``<workdir>/finetuned/summary.json``).
    """
    from ..core.executors import Failure, make_executor  # noqa: PLC0415

    workdir = Path(workdir)
    todo = [v for v in scheme["variants"] if not (workdir / "finetuned" / f"{v['key']}.safetensors").exists()]
    summary_path = workdir / "finetuned" / "summary.json"
    summary = load_json(summary_path) if summary_path.exists() else {}
    if todo:
        missing = [v["key"] for v in todo if not (workdir / "pruned" / f"{v['key']}.safetensors").exists()]
        if missing:
            raise ComposeError(f"variants {missing[:3]} are not pruned yet: run `compose prune` first")
        setup = ModuleSetup(scheme, sorted({v["module"] for v in todo}), n_windows, seed, data)
        jobs = [(v, str(workdir.resolve()), steps, lr, seed, scheme["base_fingerprint"]) for v in todo]
        for i, r in make_executor(executor).run(setup, train_variant, jobs):
            if isinstance(r, Failure):
                raise ComposeError(f"fine-tuning {todo[i]['key']} failed: {r.error}\n{r.traceback}")
            r["setup_share"] = r["setup_seconds"] / len(todo)  # the one dense pass, shared out
            r["seconds"] += r["setup_share"]
            summary[todo[i]["key"]] = r
            save_json(summary, summary_path)
    return {v["key"]: {**summary.get(v["key"], {}), "skipped": v not in todo} for v in scheme["variants"]}


def build(scheme: dict, workdir, k: int, out=None, finetuned: bool = True):
    """Configuration ``k`` composed from the fine-tuned (or, ``finetuned=False``, the merely pruned)
    variants; saved as a Hugging Face folder (``load_model`` reads it) when ``out`` is given.

    Returns:
        ``(model, masks, heldout_loss)``.
    """
    workdir = Path(workdir)
    hf, tok = _dense(scheme)
    model, masks = compose_model(hf, scheme, k, workdir / ("finetuned" if finetuned else "pruned"))
    loss = heldout_loss(model, _data(hf, tok, "heldout", DATA["n_heldout"], 0, DATA))
    if out is not None:
        model.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
    return model, masks, loss


def shared_data(scheme: dict, seed: int = 0, data: dict | None = None) -> dict:
    """What every model-level run of a family reads, loaded once: the dense model (checked against
    the scheme), its tokenizer, the held-out windows and the pool of training windows.

    Args:
        data: ``DATA`` keys to replace (``data_settings``).

    Returns:
        ``{"hf", "tok", "heldout", "train", "dense_heldout", "bleu_pairs", "dense_bleu"}`` (BLEU:
        a T5 with ``bleu_pairs`` > 0, else NaN).
    """
    hf, tok = _dense(scheme)
    d = data_settings(data)
    held = _data(hf, tok, "heldout", d["n_heldout"], 0, d)
    # one pool of training windows whatever the step count, so both arms draw from the same data
    train = _data(hf, tok, "train", d["n_train"], seed + 7, d)
    asked = {k: d[k] for k in ("bleu_pairs", "bleu_curve_pairs") if d[k]}
    if asked and not is_t5(hf):
        raise ComposeError(f"{sorted(asked)} measure a translation model's BLEU; {scheme['model']} is a language "
                           "model, judged by its held-out loss: leave them at 0")
    n_bleu = d["bleu_pairs"]
    return {"hf": hf, "tok": tok, "heldout": held, "train": train, "dense_heldout": heldout_loss(hf, held),
            "bleu_pairs": n_bleu, "dense_bleu": bleu(hf, tok, n_bleu) if n_bleu else float("nan"),
            "bleu_curve_pairs": d["bleu_curve_pairs"], "bleu_curve_every": d["bleu_curve_every"]}


def finetune_configuration(scheme: dict, workdir, k: int, arm: str = "composed", steps: int = 100,
                           batch_size: int = 8, lr: float = 5e-5, kl: float = 0.0, seed: int = 0,
                           eval_every: int = 0, out=None, target: float | None = None) -> dict:
    """Model-level fine-tuning of configuration ``k``: ``arm="composed"`` starts from the
    fine-tuned variants, ``arm="baseline"`` from direct pruning (the control, same settings).

    Args:
        target: stop at the first held-out evaluation at or below this loss (every
            ``eval_every`` steps; ``None``: run all ``steps``).

    Returns:
        The result written to ``<workdir>/runs/c<k>_<arm>.json``: held-out loss before and after,
        model-level seconds and steps run, and for the composed arm the module-level seconds of
        its variants; the curve (step, train_loss, val_loss, seconds) is ``c<k>_<arm>.csv``.
    """
    return run_configuration(shared_data(scheme, seed), scheme, workdir, k, arm, steps, batch_size, lr, kl, seed,
                             eval_every, out, target)


def run_configuration(data: dict, scheme: dict, workdir, k: int, arm: str = "composed", steps: int = 100,
                      batch_size: int = 8, lr: float = 5e-5, kl: float = 0.0, seed: int = 0, eval_every: int = 0,
                      out=None, target: float | None = None) -> dict:
    """``finetune_configuration`` on data already loaded by ``shared_data`` (a family's runs share it)."""
    if arm not in ("composed", "baseline"):
        raise ValueError(f"arm must be 'composed' or 'baseline', got {arm!r}")
    workdir = Path(workdir)
    hf, tok, held = data["hf"], data["tok"], data["heldout"]
    model, masks = compose_model(hf, scheme, k, workdir / ("finetuned" if arm == "composed" else "pruned"))
    n_bleu, n_curve = data.get("bleu_pairs", 0), data.get("bleu_curve_pairs", 0)
    # the curve's BLEU on the same pairs gives the end points without translating them again
    from_curve = bool(n_bleu) and n_curve == n_bleu
    bleu_before = bleu(model, tok, n_bleu) if n_bleu and not from_curve else float("nan")
    metrics = (lambda m: {"val_bleu": bleu(m, tok, n_curve)}) if n_curve else None
    stats = finetune_model(model, masks, data["train"], steps, batch_size, lr, seed, kl, hf if kl else None, held,
                           eval_every, target, metrics, data.get("bleu_curve_every", 0) if metrics else 0)
    runs = workdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stats.to_csv(runs / f"c{k}_{arm}.csv", index=False)
    if from_curve:
        bleu_before = float(stats.val_bleu.iloc[0])
    last_in_curve = from_curve and not np.isnan(stats.val_bleu.iloc[-1])
    bleu_after = (float(stats.val_bleu.iloc[-1]) if last_in_curve
                  else bleu(model, tok, n_bleu) if n_bleu else float("nan"))
    mods = {}
    if arm == "composed":
        summary_path = workdir / "finetuned" / "summary.json"
        summary = load_json(summary_path) if summary_path.exists() else {}
        mods = {key: summary.get(key, {}).get("seconds", float("nan"))
                for key in scheme["configurations"][str(k)].values()}
    result = {"configuration": k, "arm": arm, "heldout_before": float(stats.val_loss.iloc[0]),
              "heldout_after": float(stats.val_loss.iloc[-1]), "dense_heldout": data["dense_heldout"],
              "model_seconds": float(stats.seconds.iloc[-1]), "module_seconds": mods, "steps": steps,
              "steps_run": int(stats.step.iloc[-1]), "target": target,
              "reached": bool(target is not None and stats.val_loss.iloc[-1] <= target),
              "batch_size": batch_size, "lr": lr, "kl": kl, "seed": seed,
              "bleu_before": bleu_before, "bleu_after": bleu_after,
              "dense_bleu": data.get("dense_bleu", float("nan")), "bleu_pairs": n_bleu}
    save_json(result, runs / f"c{k}_{arm}.json")
    if out is not None:
        model.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
    return result
