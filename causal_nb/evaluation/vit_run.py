"""The whole ViT pipeline in one command (``python -m causal_nb vit run``): train → optimise → evaluate.

It mirrors the original pipeline's command line: ``--method acdc|eap|both``,
``--acdc-thresholds``, ``--eap-keep-ratios``, ``--skip-training``, ``--mode`` (one stage
alone, reading the earlier stages' output from ``--out``) and ``--use-task-loss``. The run folder:

- ``OUT/baseline/``: ``train_vit``'s run folder (``checkpoint.pt``, ``model/``); with
  ``--skip-training`` nothing is trained and the baseline is ``--model`` (default the bundled
  ``vit-fashion-mnist``), recorded in ``OUT/run.json``;
- ``OUT/optimized/``: one folder per pruned model, ``<base>_keep_<r>_<score>`` (EAP and the
  kit's other scores) and ``<base>_threshold_<t>`` (ACDC), each with ``finetune.json`` when
  ``--finetune-epochs`` is given;
- ``OUT/evaluation/``: ``evaluation_metrics.json``, ``evaluation.html`` (and ``.png``) of the
  baseline and every optimised model on the test split;
- ``OUT/run.json``: the baseline used and each stage's settings.

The scores and ACDC read validation images (``--n-images``), fine-tuning the training split,
the evaluation the test split (``--n-test-images``, default all).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["RUN_MODES", "add_finetune_args", "add_run_parser", "run_command", "run_vit_pipeline"]

RUN_MODES = ("all", "train", "optimize", "evaluate")


def _baseline(out: Path, skip_training: bool, model: str) -> str:
    """The baseline model: ``--model`` with ``--skip-training``, else the trained ``baseline/model``."""
    if skip_training:
        return model
    trained = out / "baseline" / "model"
    if not (trained / "config.json").exists():
        raise ValueError(f"no trained baseline at {trained}: run `vit run --mode train --out {out}` first, or pass "
                         "--skip-training to start from --model (default the bundled vit-fashion-mnist)")
    return str(trained)


def run_vit_pipeline(out, method: str = "both", mode: str = "all", skip_training: bool = False,
                     model: str = "vit-fashion-mnist", acdc_thresholds=(0.01, 0.05, 0.1),
                     eap_keep_ratios=(0.9, 0.8, 0.7), scores=("attribution",), units=("head", "neuron"),
                     use_task_loss: bool = False, train_config=None, data_dir=None, val_size: int = 5000,
                     n_images: int = 512, n_test_images: int | None = None, batch_size: int = 256,
                     finetune: dict | None = None, seed: int = 0, png: bool = True, progress: bool = True) -> dict:
    """Train (or take) a baseline ViT, optimise it by ACDC and/or EAP, evaluate every model.

    Args:
        out: the run folder (``baseline/``, ``optimized/``, ``evaluation/``, ``run.json``).
        method: ``"eap"`` (keep ratios by ``scores``), ``"acdc"`` (thresholds) or ``"both"``.
        mode: ``"all"`` stages, or one of ``"train"``, ``"optimize"``, ``"evaluate"``.
        skip_training: no training: the baseline is ``model``.
        model: the baseline with ``skip_training`` (a bundled name or a folder).
        acdc_thresholds: ACDC's KL thresholds, each in (0, 1].
        eap_keep_ratios: shares of heads and neurons kept, each in (0, 1].
        scores: the EAP route's scores (``OPTIMIZE_SCORES``; ``"attribution"`` is EAP's).
        units: unit kinds pruned (``"head"``, ``"neuron"``).
        use_task_loss: the EAP route's exact-ablation score on the task loss instead of the KL
            (attribution and Taylor always take the task loss; ACDC walks the KL).
        train_config: ``zoo.train_vit.TrainConfig`` of the train stage (default the bundled model's).
        data_dir: the idx files' folder.
        val_size: training images held out as validation (the baseline's split).
        n_images: validation images the scores and ACDC read.
        n_test_images: test images evaluated (None: all).
        batch_size: the evaluation's batch (and timed batch) size.
        finetune: ``optimize_vit``'s fine-tuning keywords (``finetune_epochs``, ``finetune_config``,
            ``train_data``...), or None.
        seed: the random score's seed.
        png: also write the figure as PNG.
        progress: progress bars and the stage lines.

    Returns:
        The ``run.json`` record: ``baseline``, and per stage what it wrote.

    Raises:
        ValueError: an unknown method or mode, fractions outside (0, 1], a stage whose input is
            missing (the message names the stage to run first).
    """
    from ..data.images import load_fashion_mnist  # noqa: PLC0415
    from ..engine.vision import ImageClassificationTask  # noqa: PLC0415
    from ..models.loading import load_model  # noqa: PLC0415
    from .vit_eval import evaluate_vit_models, vit_report, write_vit_evaluation  # noqa: PLC0415
    from .vit_pipeline import check_fraction, find_model_folders, optimize_vit  # noqa: PLC0415

    if method not in ("acdc", "eap", "both"):
        raise ValueError(f"unknown method {method!r}: use acdc, eap or both")
    if mode not in RUN_MODES:
        raise ValueError(f"unknown mode {mode!r}: use {', '.join(RUN_MODES)}")
    if skip_training and mode == "train":
        raise ValueError("--mode train with --skip-training does nothing: drop one of them")
    taus = [check_fraction(t, "threshold") for t in acdc_thresholds] if method != "eap" else []
    ratios = [check_fraction(r, "keep ratio") for r in eap_keep_ratios] if method != "acdc" else []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "run.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}

    def say(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    if mode in ("all", "train") and not skip_training:
        from ..zoo.train_vit import TrainConfig, train_vit  # noqa: PLC0415

        cfg = train_config or TrainConfig(val_size=val_size)
        say(f"[train] {cfg.epochs} epochs -> {out / 'baseline'}")
        card = train_vit(out / "baseline", cfg, data_dir=data_dir, progress=progress)
        record["train"] = {"folder": str(out / "baseline" / "model"), "test_top1": card["test_top1"],
                           "command": card["training"]["command"]}
    baseline = _baseline(out, skip_training, model) if mode != "train" else None
    base = "vit-fashion-mnist" if baseline is not None and Path(baseline).name == "model" else (
        Path(str(baseline)).name if baseline else None)
    record["baseline"] = baseline or str(out / "baseline" / "model")
    if mode in ("all", "optimize"):
        val = load_fashion_mnist("val", data_dir, val_size=val_size)
        task = ImageClassificationTask(val.images[:n_images], val.labels[:n_images])
        net = load_model(baseline, device="cpu")
        ft = dict(finetune or {})
        if ft:
            ft.setdefault("val_data", val)
        saved = {}
        if ratios:
            say(f"[optimize] EAP keep ratios {ratios} by {list(scores)} -> {out / 'optimized'}")
            saved.update(optimize_vit(net, task, ratios, scores, units=units, use_task_loss=use_task_loss,
                                      out=out / "optimized", base=base, method="eap", seed=seed, progress=progress,
                                      **ft))
        if taus:
            say(f"[optimize] ACDC thresholds {taus} -> {out / 'optimized'}")
            saved.update(optimize_vit(net, task, units=units, out=out / "optimized", base=base, method="acdc",
                                      thresholds=taus, progress=progress, **ft))
        record["optimize"] = {"method": method, "thresholds": taus, "keep_ratios": ratios, "scores": list(scores),
                              "units": list(units), "use_task_loss": use_task_loss, "n_images": len(task.labels),
                              "models": sorted(saved)}
    if mode in ("all", "evaluate"):
        optimized = find_model_folders(out / "optimized") if (out / "optimized").is_dir() else []
        if not optimized:
            raise ValueError(f"no optimised models under {out / 'optimized'}: run `vit run --mode optimize --out "
                             f"{out}` first (with --skip-training when the baseline is a bundled model)")
        test = load_fashion_mnist("test", data_dir)
        test = test.head(n_test_images) if n_test_images else test
        say(f"[evaluate] {1 + len(optimized)} models on {len(test)} test images -> {out / 'evaluation'}")
        ev = evaluate_vit_models([baseline, *map(str, optimized)], test, names=[base, *(p.name for p in optimized)],
                                 batch_size=batch_size, progress=progress)
        if progress:
            print(vit_report(ev))
        paths = write_vit_evaluation(ev, out / "evaluation", png=png)
        record["evaluate"] = {"n_images": len(test), **{k: str(v) for k, v in paths.items()}}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def add_finetune_args(p) -> None:
    """The recovery fine-tuning options of ``vit optimize`` and ``vit run``."""
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="recovery fine-tuning of each pruned model on the training split (0: none)")
    p.add_argument("--finetune-steps", type=int, default=None, help="fine-tuning steps per epoch (default: all)")
    p.add_argument("--finetune-lr", type=float, default=None, help="fine-tuning peak learning rate (default 2e-4)")
    p.add_argument("--finetune-batch-size", type=int, default=None, help="fine-tuning batch size (default 128)")


def add_run_parser(vs) -> None:
    """The ``vit run`` subcommand's arguments (``vs``: the ``vit`` group's subparsers)."""
    from .vit_pipeline import OPTIMIZE_SCORES  # noqa: PLC0415

    r = vs.add_parser("run", help="the whole pipeline: train (or --skip-training) -> optimize -> evaluate",
                      description="Train a baseline ViT (or take --model with --skip-training), prune it by ACDC "
                                  "and/or EAP, evaluate every model. Writes OUT/baseline (training), OUT/optimized "
                                  "(<base>_keep_<r>_<score>, <base>_threshold_<t>), OUT/evaluation "
                                  "(evaluation_metrics.json, figure) and OUT/run.json.")
    r.add_argument("--method", default="both", choices=["acdc", "eap", "both"])
    r.add_argument("--acdc-thresholds", type=float, nargs="+", default=[0.01, 0.05, 0.1], help="in (0, 1]")
    r.add_argument("--eap-keep-ratios", type=float, nargs="+", default=[0.9, 0.8, 0.7], help="in (0, 1]")
    r.add_argument("--scores", nargs="+", default=["attribution"], choices=list(OPTIMIZE_SCORES),
                   help="the EAP route's scores (attribution is EAP's; add ablation, taylor, ... to compare)")
    r.add_argument("--units", nargs="+", default=["head", "neuron"])
    r.add_argument("--skip-training", action="store_true", help="no training: start from --model")
    r.add_argument("--model", default="vit-fashion-mnist", help="the baseline with --skip-training")
    r.add_argument("--mode", default="all", choices=list(RUN_MODES),
                   help="one stage alone (the earlier stages' output is read from --out)")
    r.add_argument("--use-task-loss", action="store_true", help="score by the task loss instead of the KL")
    r.add_argument("--out", default="runs/vit-pipeline", help="run folder")
    r.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST (or MNIST) idx files")
    r.add_argument("--val-size", type=int, default=5000, help="training images held out as validation")
    r.add_argument("--epochs", type=int, default=12, help="training epochs")
    r.add_argument("--train-batch-size", type=int, default=128)
    r.add_argument("--steps-per-epoch", type=int, default=None, help="training steps per epoch (default: all)")
    r.add_argument("--n-images", type=int, default=512, help="validation images the scores and ACDC read")
    r.add_argument("--n-test-images", type=int, default=None, help="test images evaluated (default all)")
    r.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-png", action="store_true", help="write the figure as HTML only")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_finetune_args(r)


def run_command(a) -> int:
    """``vit run``: the pipeline from parsed arguments."""
    from ..zoo.train_vit import TrainConfig  # noqa: PLC0415
    from .vit_pipeline import finetune_args  # noqa: PLC0415

    ft = finetune_args(a)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.train_batch_size, seed=a.seed, val_size=a.val_size,
                      max_steps_per_epoch=a.steps_per_epoch)
    rec = run_vit_pipeline(a.out, a.method, a.mode, a.skip_training, a.model, a.acdc_thresholds, a.eap_keep_ratios,
                           a.scores, a.units, a.use_task_loss, cfg, a.data_dir, a.val_size, a.n_images,
                           a.n_test_images, a.batch_size, ft or None, a.seed, not a.no_png, not a.no_progress)
    print(f"done: {a.out} (baseline {rec['baseline']})")
    return 0
