"""Command line: ``python -m causal_nb run|models|notebooks|sweep|duplicate``."""

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
    a = p.parse_args(argv)
    if a.cmd == "duplicate":
        return duplicate_command(a)
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
