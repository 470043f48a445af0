"""Command line: ``python -m causal_nb run|models|notebooks|sweep|compose|vit|t5|duplicate``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m causal_nb", description="causal_nb command line")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the notebook series with papermill into runs/<timestamp>/")
    r.add_argument("--profile", default="demo", help="demo | standard | full (bundled code model) | real (SmolLM2-135M)")
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a notebook parameter, e.g. -p MODEL code-gpt2-2l")
    r.add_argument("--out", default=None, help="run folder (default runs/<timestamp>)")
    r.add_argument("--only", nargs="*", default=None, help="notebook number prefixes to run, e.g. 01 02")
    r.add_argument("--resume", action="store_true", help="skip notebooks finished earlier in --out")
    r.add_argument("--force", action="store_true", help="with --resume: resume even with other parameters")
    r.add_argument("--notebooks", default=None, metavar="DIR",
                   help="folder of the NN_name.ipynb series (default: the repository's notebooks/, else the "
                        "copy installed with the package)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("models", help="list the bundled and installed pretrained models with their cards")
    nbp = sub.add_parser("notebooks", help="list the notebook series, or copy it out to open in Jupyter")
    nbp.add_argument("--copy", default=None, metavar="DEST", help="copy the notebooks into DEST (created)")
    sw = sub.add_parser("sweep", help="run a pruning sweep from a YAML config")
    sw.add_argument("config", help="YAML file (keys: see causal_nb.SweepConfig)")
    sw.add_argument("--resume", action="store_true", help="continue an interrupted sweep in its 'out' folder")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.add_argument("--executor", choices=["inprocess", "ray", "submitit"], default="inprocess",
                    help="where the cells run: this process (default), Ray, or SLURM through submitit")
    sw.add_argument("--address", default=None, help="ray: 'auto', 'host:port' or 'ray://host:port' (default: start a "
                                                     "local cluster)")
    sw.add_argument("--workers", type=int, default=None, help="ray: cells in flight at once (default 2)")
    sw.add_argument("--partition", default=None, help="submitit: SLURM partition")
    sw.add_argument("--gpus-per-job", type=int, default=None, help="submitit: GPUs per array task")
    sw.add_argument("--jobs", type=int, default=None, help="submitit: array tasks (default one per cell)")
    sw.add_argument("--submitit-folder", default=None, help="submitit: log folder (default <out>/submitit)")
    from .pruning.compose_cli import add_compose_parser  # noqa: PLC0415

    add_compose_parser(sub)
    add_vit_commands(sub)
    add_t5_commands(sub)
    add_duplicate_parser(sub)
    a = p.parse_args(argv)
    if a.cmd == "duplicate":
        return duplicate_command(a)
    if a.cmd == "vit":
        return vit_command(a)
    if a.cmd == "t5":
        return t5_command(a)
    if a.cmd == "compose":
        from .core.executors import ExecutorError  # noqa: PLC0415
        from .models.families import UnsupportedModelError  # noqa: PLC0415
        from .models.loading import ModelNotAvailableError  # noqa: PLC0415
        from .pruning.compose_cli import run_compose  # noqa: PLC0415

        try:
            return run_compose(a)
        except (ValueError, UnsupportedModelError, ModelNotAvailableError, ExecutorError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    if a.cmd == "models":
        from .models.loading import list_models  # noqa: PLC0415

        print(list_models(cards=True).to_string(index=False))
        from .zoo.pretrained import available_pretrained, describe  # noqa: PLC0415

        for name in available_pretrained():
            print(f"\n{describe(name)}")
        return 0
    if a.cmd == "notebooks":
        from .notebook.runner import RunError, copy_notebooks, default_notebooks_dir, series  # noqa: PLC0415

        if a.copy is None:
            print(f"{default_notebooks_dir()}:")
            print("\n".join(f"  {p.name}" for p in series()))
            return 0
        try:
            copied = copy_notebooks(a.copy)
        except RunError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{len(copied)} notebooks -> {a.copy}")
        return 0
    if a.cmd == "sweep":
        from .core.executors import ExecutorError  # noqa: PLC0415
        from .evaluation.sweep import SweepError, load_config, sweep  # noqa: PLC0415

        try:
            cfg = load_config(a.config)
            df = sweep(cfg, resume=a.resume, progress=not a.no_progress, executor=sweep_executor(a, cfg.out))
        except (SweepError, ExecutorError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{len(df)} cells -> {cfg.out}/results.csv")
        return 0
    from .notebook.runner import RunError, parse_value, run_series  # noqa: PLC0415

    try:
        run = run_series(a.profile, {k: parse_value(v) for k, v in a.param}, a.out, a.only, a.resume,
                         progress=not a.no_progress, notebooks_dir=a.notebooks, force=a.force)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done: {run}")
    return 0


def add_vit_commands(sub) -> None:
    """The ``vit`` group: ``train`` the bundled ViT, ``optimize`` it by pruning, ``evaluate`` models, ``run`` all three."""
    v = sub.add_parser("vit", help="vision transformers: train the Fashion-MNIST ViT, prune it, evaluate models")
    vs = v.add_subparsers(dest="vit_cmd", required=True)
    t = vs.add_parser("train", help="train vit-fashion-mnist (seeded, resumable, checkpoint per epoch)")
    t.add_argument("--epochs", type=int, default=12, help="epochs (the cosine schedule spans all of them)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    t.add_argument("--out", default="runs/vit-fashion-mnist", help="run folder (checkpoint.pt, model/)")
    t.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST (or MNIST) idx files")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val-size", type=int, default=5000, help="training images held out for validation")
    t.add_argument("--warmup", type=int, default=300, help="linear warm-up steps")
    t.add_argument("--weight-decay", type=float, default=0.05, help="AdamW's decoupled weight decay")
    t.add_argument("--init-from", default=None, metavar="DIR",
                   help="start from an earlier run's model/ folder (a further phase with its own schedule)")
    t.add_argument("--no-augment", action="store_true", help="no random shifts and flips")
    t.add_argument("--ship", action="store_true", help="copy the trained model into the package zoo")
    t.add_argument("--device", default="cpu", help="cpu (bit-exact, resumable) or cuda (the same batches, faster)")
    for key, flag in (("n_layers", "--n-layers"), ("d_model", "--d-model"), ("n_heads", "--n-heads"),
                      ("d_mlp", "--d-mlp"), ("patch_size", "--patch-size")):
        t.add_argument(flag, type=int, default=None, dest=key, help="the model's shape (default the bundled one's)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    o = vs.add_parser("optimize", help="prune a ViT at keep ratios by each score; save <base>_keep_<r> folders")
    o.add_argument("--model", default="vit-fashion-mnist", help="bundled name or folder of the ViT to prune")
    o.add_argument("--method", default="eap", choices=["eap", "acdc"],
                   help="eap: keep the top fraction of units by score; acdc: remove units below KL thresholds")
    o.add_argument("--keep-ratios", type=float, nargs="+", default=[0.9, 0.8, 0.7], help="fractions in (0, 1]")
    o.add_argument("--thresholds", type=float, nargs="+", default=None, help="acdc: KL thresholds in (0, 1]")
    o.add_argument("--scores", nargs="+", default=["attribution", "ablation", "taylor", "magnitude", "random"],
                   help="score methods (attribution is EAP's |gradient x activation|)")
    o.add_argument("--units", nargs="+", default=["head", "neuron"], help="unit kinds pruned to the keep ratio")
    o.add_argument("--use-task-loss", action="store_true",
                   help="exact ablation scored by the task loss (default: KL from the unpruned model); attribution, "
                        "Taylor always take the task loss")
    o.add_argument("--n-images", type=int, default=512, help="validation images the scores are computed on")
    o.add_argument("--out", default="runs/vit-optimized", help="folder of the pruned models")
    o.add_argument("--data-dir", default=None, help="folder of the idx files")
    o.add_argument("--seed", type=int, default=0, help="the random score's (and the fine-tuning's) seed")
    o.add_argument("--val-size", type=int, default=5000,
                   help="training images held out as validation (the baseline's split: 5000 for the bundled model)")
    from .evaluation.vit_run import add_finetune_args, add_run_parser  # noqa: PLC0415

    add_finetune_args(o)
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    e = vs.add_parser("evaluate", help="evaluate ViT models: accuracy, confidence, speed, Pareto front, figure")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--auto-find", metavar="DIR", help="evaluate every model folder under DIR")
    g.add_argument("--model-paths", nargs="+", metavar="P", help="model folders or bundled names")
    e.add_argument("--baseline", default=None, help="a model evaluated first, e.g. vit-fashion-mnist (with --auto-find)")
    e.add_argument("--out", default="runs/vit-evaluation", help="folder for evaluation_metrics.json and the figure")
    e.add_argument("--data-dir", default=None, help="folder of the idx files")
    e.add_argument("--n-images", type=int, default=None, help="test images to use (default all 10,000)")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--no-png", action="store_true", help="write the figure as HTML only")
    add_run_parser(vs)


def vit_command(a) -> int:
    """Run a ``vit`` subcommand; a bad request prints its error and returns 1."""
    from .data.images import ImageDataError  # noqa: PLC0415

    try:
        if a.vit_cmd == "train":
            from .zoo.train_vit import TrainConfig, train_vit  # noqa: PLC0415
            from .zoo.vit_card import SHAPE_FLAGS, shape_spec  # noqa: PLC0415

            cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, augment=not a.no_augment,
                              val_size=a.val_size, warmup=a.warmup, weight_decay=a.weight_decay,
                              init_from=a.init_from, spec=shape_spec(**{k: getattr(a, k) for k in SHAPE_FLAGS}))
            card = train_vit(a.out, cfg, data_dir=a.data_dir, resume=a.resume, progress=not a.no_progress,
                             ship=a.ship, device=a.device)
            print(f"test top-1 {card['test_top1']:.4f} -> {a.out}/model" + (" (shipped to the zoo)" if a.ship else ""))
            return 0
        from .evaluation.vit_pipeline import evaluate_command, optimize_command  # noqa: PLC0415
        from .evaluation.vit_run import run_command  # noqa: PLC0415

        return {"optimize": optimize_command, "evaluate": evaluate_command, "run": run_command}[a.vit_cmd](a)
    except (ValueError, TypeError, ImageDataError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def add_t5_commands(sub) -> None:
    """The ``t5`` group: ``train`` the bundled English-to-German T5."""
    v = sub.add_parser("t5", help="encoder-decoders: train the Tatoeba English-to-German T5")
    vs = v.add_subparsers(dest="t5_cmd", required=True)
    t = vs.add_parser("train", help="train t5-tatoeba-en-de (seeded, resumable, checkpoint per epoch)")
    t.add_argument("--epochs", type=int, default=4, help="epochs (the cosine schedule spans all of them)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    t.add_argument("--out", default="runs/t5-tatoeba-en-de", help="run folder (tokenizer/, checkpoint.pt, model/)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--warmup", type=int, default=300, help="linear warm-up steps")
    t.add_argument("--weight-decay", type=float, default=0.05, help="AdamW's decoupled weight decay")
    t.add_argument("--init-from", default=None, metavar="DIR",
                   help="start from an earlier run's model/ folder (its weights and tokenizer): a further phase")
    t.add_argument("--test-pairs", type=int, default=None, help="test pairs for the card's BLEU (default all)")
    t.add_argument("--data-dir", default=None, help="folder of the tatoeba_en_de_*.jsonl.gz files (default: shipped)")
    t.add_argument("--ship", action="store_true", help="copy the trained model into the package zoo")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def t5_command(a) -> int:
    """Run a ``t5`` subcommand; a bad request prints its error and returns 1."""
    from .zoo.train_t5 import T5TrainConfig, train_t5  # noqa: PLC0415

    try:
        cfg = T5TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, warmup=a.warmup,
                            init_from=a.init_from)
        card = train_t5(a.out, cfg, resume=a.resume, progress=not a.no_progress, ship=a.ship, test_pairs=a.test_pairs,
                         data_dir=a.data_dir)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"test BLEU {card['test_bleu']:.2f} -> {a.out}/model" + (" (shipped to the zoo)" if a.ship else ""))
    return 0


def add_duplicate_parser(sub) -> None:
    """The ``duplicate`` command's arguments."""
    dup = sub.add_parser("duplicate", help="prune heads by duplication and evaluate the pruned models",
                         description="Cluster near-duplicate heads on TASK's prompts and prune one per cluster at "
                                     "each sparsity; writes pruning_log.json, head_importance.parquet/json, "
                                     "head_distances.parquet, results.csv (and lm_eval.csv) into OUT.")
    dup.add_argument("metric", metavar="METRIC", help="head distance: euclidean | cosine | random")
    dup.add_argument("model", metavar="MODEL", help="a bundled or pretrained name (python -m causal_nb models) or a folder")
    dup.add_argument("out", metavar="OUT", help="output folder (created)")
    dup.add_argument("task", metavar="TASK", help="prompt domain (train split clustered, test split evaluated) or a "
                                                  "JSONL prompt file")
    dup.add_argument("group_metric", metavar="GROUP_METRIC", help="prompt grouping: euclidean | cosine | random")
    dup.add_argument("prune_method", metavar="PRUNE_METHOD", help="balanced | imbalanced")
    dup.add_argument("--sparsities", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    dup.add_argument("--groups", type=int, default=2, help="prompt groups (default 2)")
    dup.add_argument("--n-prompts", type=int, default=32)
    dup.add_argument("--n-tokens", type=int, default=32)
    dup.add_argument("--eval-tokens", type=int, default=64)
    dup.add_argument("--lm-eval-tasks", nargs="*", default=None, help="lm-evaluation-harness tasks (shipped: "
                                                                       "cnb_next_line_python, cnb_heldout_ppl_cpp, ...)")
    dup.add_argument("--limit", type=int, default=None, help="lm-eval items per task")
    dup.add_argument("--include-path", default=None, help="folder of your own lm-eval task YAML")
    dup.add_argument("--masked-only", action="store_true", help="skip the physically pruned models")
    dup.add_argument("--device", default="auto")
    dup.add_argument("--seed", type=int, default=0)


def duplicate_command(a) -> int:
    """``duplicate METRIC MODEL OUT TASK GROUP_METRIC PRUNE_METHOD``: a bad choice is an error line."""
    from .data.prompts import PromptSetError  # noqa: PLC0415
    from .evaluation.duplication_prune import duplication_prune  # noqa: PLC0415
    from .evaluation.harness import HarnessTaskError  # noqa: PLC0415
    from .models.families import UnsupportedModelError  # noqa: PLC0415
    from .models.loading import ModelNotAvailableError, load_model  # noqa: PLC0415
    from .pruning.duplication import DISTANCE_METRICS, PRUNE_METHODS, DuplicationError, check_choice  # noqa: PLC0415

    try:
        check_choice(a.metric, DISTANCE_METRICS, "metric")
        check_choice(a.group_metric, DISTANCE_METRICS, "group metric")
        check_choice(a.prune_method, PRUNE_METHODS, "prune method")
        model = load_model(a.model, device=a.device)
        res = duplication_prune(model, a.task, a.metric, a.group_metric, a.prune_method, a.sparsities, out=a.out,
                                n_groups=a.groups, n_prompts=a.n_prompts, n_tokens=a.n_tokens, eval_tokens=a.eval_tokens,
                                tasks=a.lm_eval_tasks, limit=a.limit, include_path=a.include_path,
                                physical=not a.masked_only, seed=a.seed)
    except (DuplicationError, HarnessTaskError, ModelNotAvailableError, PromptSetError, UnsupportedModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(res.to_string(index=False))
    if res.attrs["lm_eval"] is not None:
        import pandas as pd  # noqa: PLC0415

        print(pd.DataFrame(res.attrs["lm_eval"]).to_string(index=False))
    print(f"-> {a.out}")
    return 0


def sweep_executor(a, out: str):
    """The executor the sweep command's options name; an option of another executor is an error."""
    from .core.executors import ExecutorError, make_executor  # noqa: PLC0415

    ray = {"address": a.address, "workers": a.workers}
    sub = {"partition": a.partition, "gpus_per_job": a.gpus_per_job, "jobs": a.jobs, "folder": a.submitit_folder}
    given = {"ray": [k for k, v in ray.items() if v is not None], "submitit": [k for k, v in sub.items() if v is not None]}
    for name, keys in given.items():
        if keys and a.executor != name:
            flags = ", ".join("--" + {"folder": "submitit-folder"}.get(k, k).replace("_", "-") for k in keys)
            raise ExecutorError(f"{flags}: option(s) of --executor {name}, but the executor is {a.executor}")
    if a.executor == "ray":
        return make_executor("ray", **{k: v for k, v in ray.items() if v is not None})
    if a.executor == "submitit":
        sub["folder"] = sub["folder"] or f"{out}/submitit"
        return make_executor("submitit", **{k: v for k, v in sub.items() if v is not None})
    return None


if __name__ == "__main__":
    sys.exit(main())
