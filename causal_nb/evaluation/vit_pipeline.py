"""The ViT pipeline's optimise step and its command line (``python -m causal_nb vit optimize|evaluate``).

``optimize_vit`` prunes a ViT at keep ratios (the share of heads and of MLP neurons kept) by each
of the kit's scores (``cnb.score(..., task=ImageClassificationTask)``): EAP's gradient
attribution (``"attribution-abs"``, the mean |first-order estimate| of a unit's removal, on the
task loss with ``use_task_loss=True``, else on the KL from the unpruned model), exact
ablation, Taylor, weight magnitude and random, each physically pruned (``cnb.prune``) and saved
(``cnb.save_pruned``) under the naming convention ``<base>_keep_<r>`` (``optimized_name``; with
the score as a suffix when several are compared). ``method="acdc"`` walks the heads and the
neurons with ``cnb.acdc(model, task=...)`` (KL of the class distributions) at each threshold and
saves ``<base>_threshold_<t>``: the union of the two walks' removals (each walk run on the
unpruned model), physically pruned.

Every folder written reloads with ``cnb.load_model(folder)`` and is what ``vit evaluate
--auto-find`` picks up. With ``finetune_epochs`` (``--finetune-epochs``) each pruned model is
first fine-tuned on the training split by ``zoo.train_vit.finetune_vit`` (the bundled model's
own training loop) and its folder gets ``finetune.json`` (validation top-1 before and after).
``vit run`` (``evaluation.vit_run``) chains training, this step and the evaluation.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import torch

__all__ = ["OPTIMIZE_SCORES", "check_fraction", "find_model_folders", "optimize_vit", "optimized_name",
           "parse_optimized_name"]

#: score name in the pipeline -> its cnb.score method
OPTIMIZE_SCORES = {"attribution": "attribution-abs", "ablation": "ablation", "taylor": "taylor",
                              "magnitude": "magnitude", "random": "random"}

_NAME = re.compile(r"^(?P<base>.+)_(?P<kind>threshold|keep)_(?P<value>[0-9.eE+-]+)(?:_(?P<score>[a-z-]+))?$")


def check_fraction(value, what: str) -> float:
    """A threshold or keep ratio, which must lie in (0, 1]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not a number: give a fraction in (0, 1], e.g. 0.8") from None
    if not (0 < v <= 1) or math.isnan(v):
        raise ValueError(f"{what} {value!r} is outside (0, 1]: give a fraction such as 0.9 0.8 0.7 "
                         f"({'the share of units kept' if 'keep' in what else 'the KL threshold'})")
    return v


def optimized_name(base: str, keep: float | None = None, threshold: float | None = None,
                   score: str | None = None) -> str:
    """The folder name of an optimised model: ``<base>_keep_<r>`` or ``<base>_threshold_<t>``
    (``_<score>`` appended when given), with the fraction written by ``%g`` (0.9 -> ``0.9``)."""
    if (keep is None) == (threshold is None):
        raise ValueError("optimized_name takes exactly one of keep= (EAP and the other scores) or threshold= (ACDC)")
    kind, v = ("keep", check_fraction(keep, "keep ratio")) if keep is not None else (
        "threshold", check_fraction(threshold, "threshold"))
    name = f"{Path(str(base)).name}_{kind}_{v:g}"
    return f"{name}_{score}" if score else name


def parse_optimized_name(name: str) -> dict | None:
    """``{"base", "kind", "value", "score"}`` of a name made by ``optimized_name``; None for a baseline."""
    m = _NAME.match(Path(str(name)).name)
    if not m:
        return None
    return {"base": m["base"], "kind": m["kind"], "value": float(m["value"]), "score": m["score"]}


def find_model_folders(root) -> list[Path]:
    """Every folder under ``root`` (itself included) with a ``config.json``, sorted baseline-first.

    Raises:
        ValueError: ``root`` is not a folder, or holds no model folder (names how to make one).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--auto-find {str(root)!r} is not a folder: pass the folder `vit optimize --out` wrote, or "
                         "list models with --model-paths")
    found = sorted({p.parent for p in root.rglob("config.json")},
                   key=lambda p: (parse_optimized_name(p.name) is not None, str(p)))
    if not found:
        raise ValueError(f"no models under {root}: no folder there has a config.json. Write some with `python -m "
                         "causal_nb vit optimize --out DIR`, or pass model folders or bundled names with --model-paths")
    return found


def optimize_vit(model, task, keep_ratios=(0.9, 0.8, 0.7), scores=tuple(OPTIMIZE_SCORES), units=("head", "neuron"),
                 use_task_loss: bool = False, out=None, base: str | None = None, method: str = "eap", thresholds=None,
                 seed: int = 0, progress: bool = False, finetune_epochs: int = 0, finetune_steps: int | None = None,
                 train_data=None, val_data=None, finetune_config=None, acdc_walks: dict | None = None) -> dict:
    """Prune a ViT at each keep ratio by each score, physically, and save each copy.

    Args:
        model: the unpruned ViT bridge.
        task: ``ImageClassificationTask`` of the images the scores are computed on (validation
            images, never the test split the evaluator reads).
        keep_ratios: share of each unit kind kept, each in (0, 1].
        scores: names in ``OPTIMIZE_SCORES``.
        units: ``"head"`` and/or ``"neuron"``; each kind is pruned to the same keep ratio.
        use_task_loss: exact ablation scored by the task loss (cross-entropy of the labels)
            instead of the KL from the unpruned model. The gradient scores (attribution, Taylor)
            always take the task loss: the KL's gradient at the unpruned model is exactly zero
            (the KL is at its minimum there), so a first-order KL estimate would score every
            unit 0.
        out: folder to save ``<base>_keep_<r>_<score>`` folders into (None: keep in memory).
        base: the name's base (default the model's source name).
        method: ``"eap"`` (the scores above) or ``"acdc"`` (``thresholds``; ``keep_ratios`` and
            ``scores`` are then not used).
        thresholds: ACDC's KL thresholds, each in (0, 1] (default 0.01, 0.05, 0.1).
        seed: the random score's seed (and the fine-tuning's, unless ``finetune_config`` sets one).
        finetune_epochs: recovery fine-tuning of each pruned model (``zoo.train_vit.finetune_vit``,
            the bundled model's training loop) for this many epochs on ``train_data``; 0: none.
            The validation top-1 before and after is saved as ``finetune.json`` in the model's
            folder (in memory: the bridge's ``causal_nb_finetune`` attribute).
        finetune_steps: optimizer steps per fine-tuning epoch (None: the whole training split).
        train_data: the training split (an ``ImageSet``; never the validation or test split).
        val_data: the images the before/after top-1 is read on (default the task's images).
        finetune_config: the other fine-tuning settings (``FinetuneConfig``: lr, batch size,
            warm-up...); its epochs and steps are replaced by ``finetune_epochs``/``finetune_steps``.
        acdc_walks: ``method="acdc"``: precomputed ``cnb.acdc(model, task=..., thresholds=...,
            unit=u, kind="zero")`` tables by unit kind, so a caller that already walked need not
            walk again (their thresholds must be ``thresholds``).

    Returns:
        name -> the saved folder (``out`` given) or the pruned bridge.

    Raises:
        ValueError: a ratio or threshold outside (0, 1], an unknown score or unit, negative
            fine-tuning epochs, fine-tuning without training images, walks of other thresholds.
    """
    from ..analyses.scoring import score  # noqa: PLC0415
    from ..pruning.structure import prune  # noqa: PLC0415

    if method not in ("eap", "acdc"):
        raise ValueError(f"unknown method {method!r}; use 'eap' (keep ratios by score) or 'acdc' (thresholds)")
    ft = _finetune_plan(task, finetune_epochs, finetune_steps, train_data, val_data, finetune_config, seed, progress)
    if method == "acdc":
        return _optimize_acdc(model, task, thresholds, units, out, base, progress, ft, acdc_walks)
    ratios = [check_fraction(r, "keep ratio") for r in keep_ratios]
    bad = [s for s in scores if s not in OPTIMIZE_SCORES]
    if bad:
        raise ValueError(f"unknown score(s) {bad}; valid: {list(OPTIMIZE_SCORES)}")
    units = _checked_units(units)
    base = _base_name(model, base)
    results = {}
    for s in scores:
        method_name = OPTIMIZE_SCORES[s]
        kw = {"metric": "loss" if use_task_loss else "kl", "kind": "zero"} if s == "ablation" else {}
        if s == "attribution":
            kw = {"kind": "zero"}
        tables = [score(model, task=task, method=method_name, unit=u, seed=seed, progress=progress, **kw)
                  for u in units]
        for r in ratios:
            pruned = prune(model, tables, 1.0 - r, physical=True, task=task)
            name = optimized_name(base, keep=r, score=s)
            if progress:
                print(f"{name}: {sum(p.numel() for p in pruned.parameters()):,} parameters", file=sys.stderr)
            results[name] = _finish(pruned, name, out, ft)
    return results


def _finetune_plan(task, epochs, steps, train_data, val_data, config, seed, progress) -> dict | None:
    """The checked fine-tuning request (None: no fine-tuning)."""
    from dataclasses import replace  # noqa: PLC0415

    from ..data.images import ImageSet  # noqa: PLC0415
    from ..zoo.train_vit import FinetuneConfig  # noqa: PLC0415

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"finetune_epochs={epochs!r} must be a whole number of epochs, 0 (no fine-tuning) or more")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"finetune_steps={steps!r} must be a positive number of steps per epoch, or None")
    if epochs == 0:
        return None
    if not isinstance(train_data, ImageSet):
        raise ValueError("fine-tuning needs the training split: pass train_data=cnb.load_fashion_mnist('train') "
                         "(never the validation or test split)")
    if train_data.split in ("val", "test"):
        raise ValueError(f"train_data is the {train_data.split!r} split: fine-tune on the training split "
                         "(cnb.load_fashion_mnist('train')), keep validation and test for measuring")
    if val_data is None:
        val_data = ImageSet(task.images, task.labels, train_data.classes, "val", train_data.source,
                            torch.arange(len(task.labels)))
    cfg = replace(config or FinetuneConfig(seed=seed), epochs=epochs, steps=steps)
    return {"train": train_data, "val": val_data, "cfg": cfg, "progress": progress}


def _finish(pruned, name: str, out, ft: dict | None):
    """Fine-tune a pruned bridge (when asked) and save it (``out`` given) or return it."""
    import json  # noqa: PLC0415

    from ..models.hf import plain_hf  # noqa: PLC0415
    from ..pruning.structure import save_pruned  # noqa: PLC0415
    from ..zoo.train_vit import finetune_vit  # noqa: PLC0415

    record = None
    if ft is not None:
        hf = plain_hf(pruned)  # a copy: the loop trains it, then its weights go back into the bridge
        record = {"model": name, **finetune_vit(hf, ft["train"], ft["val"], ft["cfg"], progress=ft["progress"])}
        plain_hf(pruned, share=True).load_state_dict(hf.state_dict())  # in place, into the bridge's own tensors
        pruned.causal_nb_finetune = record
        if ft["progress"]:
            print(f"{name}: val top-1 {record['val_top1_before']:.4f} -> {record['val_top1_after']:.4f} after "
                  f"fine-tuning", file=sys.stderr)
    if out is None:
        return pruned
    folder = save_pruned(pruned, Path(out) / name)
    if record is not None:
        (folder / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
    return folder


def _checked_units(units) -> tuple[str, ...]:
    bad = [u for u in units if u not in ("head", "neuron")]
    if bad or not units:
        raise ValueError(f"units {list(units)}: give 'head' and/or 'neuron'")
    return tuple(units)


def _base_name(model, base: str | None) -> str:
    """The saved folders' name base: ``base``, else the model's source name."""
    return base or Path(str(getattr(model, "causal_nb_source", {}).get("name", "vit"))).name


def _optimize_acdc(model, task, thresholds, units, out, base, progress, ft, walks) -> dict:
    from ..analyses.acdc import acdc  # noqa: PLC0415
    from ..pruning.structure import prune_units  # noqa: PLC0415

    taus = [check_fraction(t, "threshold") for t in (thresholds or (0.01, 0.05, 0.1))]
    units = _checked_units(units)
    base = _base_name(model, base)
    if walks is not None:
        for u in units:
            if u not in walks:
                raise ValueError(f"acdc_walks has no {u!r} walk: pass cnb.acdc(..., unit={u!r}) too, or leave "
                                 "acdc_walks out to walk here")
            if [float(t) for t in walks[u]["tau"]] != taus or walks[u].attrs.get("kind") != "zero":
                raise ValueError(f"acdc_walks[{u!r}] was walked at thresholds {list(walks[u]['tau'])} (kind "
                                 f"{walks[u].attrs.get('kind')!r}), not {taus} (kind 'zero'): walk at the same "
                                 "thresholds, or leave acdc_walks out")
    else:
        walks = {u: acdc(model, task=task, thresholds=taus, unit=u, kind="zero", progress=progress) for u in units}
    results = {}
    for i, t in enumerate(taus):
        sel = {u: walks[u].attrs["selections"][i] for u in units}
        pruned = prune_units(model, heads=sel.get("head") or None, neurons=sel.get("neuron") or None, task=task)
        name = optimized_name(base, threshold=t)
        if progress:
            removed = ", ".join(f"{int(walks[u]['removed'][i])} {u}s" for u in units)
            print(f"{name}: {removed} removed, {sum(p.numel() for p in pruned.parameters()):,} parameters",
                  file=sys.stderr)
        results[name] = _finish(pruned, name, out, ft)
    return results


def optimize_command(a) -> int:
    """``vit optimize``: score on validation images, prune, save under ``--out``."""
    from ..data.images import load_fashion_mnist  # noqa: PLC0415
    from ..engine.vision import ImageClassificationTask  # noqa: PLC0415
    from ..models.loading import load_model  # noqa: PLC0415

    for t in a.thresholds or ():  # checked before loading anything
        check_fraction(t, "threshold")
    for r in a.keep_ratios:
        check_fraction(r, "keep ratio")
    ft = finetune_args(a)
    model = load_model(a.model, device="cpu")
    val = load_fashion_mnist("val", a.data_dir, val_size=a.val_size)
    task = ImageClassificationTask(val.images[:a.n_images], val.labels[:a.n_images])
    saved = optimize_vit(model, task, a.keep_ratios, a.scores, units=a.units, use_task_loss=a.use_task_loss,
                         out=a.out, method=a.method, thresholds=a.thresholds, seed=a.seed, progress=not a.no_progress,
                         **ft, val_data=val if ft else None)
    print(f"{len(saved)} pruned models -> {a.out}")
    return 0


def finetune_args(a) -> dict:
    """``optimize_vit``'s fine-tuning keywords from the ``--finetune-*`` options (checked first;
    the training split loaded only when fine-tuning is asked for)."""
    from ..data.images import load_fashion_mnist  # noqa: PLC0415
    from ..zoo.train_vit import FinetuneConfig, check_finetune  # noqa: PLC0415

    if a.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs {a.finetune_epochs} is negative: give 0 (no fine-tuning) or more")
    if a.finetune_epochs == 0:
        return {}
    given = {"lr": a.finetune_lr, "batch_size": a.finetune_batch_size}
    cfg = FinetuneConfig(epochs=a.finetune_epochs, steps=a.finetune_steps, seed=a.seed,
                         **{k: v for k, v in given.items() if v is not None})
    check_finetune(cfg)
    return {"finetune_epochs": a.finetune_epochs, "finetune_steps": a.finetune_steps, "finetune_config": cfg,
            "train_data": load_fashion_mnist("train", a.data_dir, val_size=a.val_size)}


def evaluate_command(a) -> int:
    """``vit evaluate``: every model on the test split, the report, the JSON and the figure."""
    from ..data.images import load_fashion_mnist  # noqa: PLC0415
    from .vit_eval import evaluate_vit_models, vit_report, write_vit_evaluation  # noqa: PLC0415

    models = find_model_folders(a.auto_find) if a.auto_find else list(a.model_paths)
    if a.baseline:
        models = [a.baseline, *models]
    test = load_fashion_mnist("test", a.data_dir)
    if a.n_images:
        test = test.head(a.n_images)
    ev = evaluate_vit_models([str(m) for m in models], test, batch_size=a.batch_size, progress=True)
    print(vit_report(ev))
    paths = write_vit_evaluation(ev, a.out, png=not a.no_png)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0
