"""EleutherAI's lm-evaluation-harness on any model of the kit: a bridge, a pruned bridge, a saved
(pruned) folder or a plain Hugging Face model.

``lm_eval`` hands ``lm_eval.simple_evaluate`` an ``HFLM`` built from the plain Hugging Face
model and its tokenizer, both passed explicitly: given a name, HFLM looks the tokenizer up on
the hub, which fails offline. Tasks are the ones shipped in ``causal_nb/data/lm_eval_tasks/``
(``shipped_tasks()``), any folder of lm-eval YAML given as ``include_path``, and lm-eval's own
tasks (whose data then come from the hub, or its cache). A local task's ``data_files`` are
read relative to its YAML file (lm-eval alone reads them relative to the working directory):
the YAML files are copied to a temporary folder with those paths made absolute.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..core.env import progress_enabled

__all__ = ["HarnessTaskError", "TASK_DIR", "lm_eval", "shipped_tasks"]

TASK_DIR = Path(__file__).resolve().parents[1] / "data" / "lm_eval_tasks"
_OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling", "generate_until")
_FIELDS = {"multiple_choice": ("doc_to_text", "doc_to_choice", "doc_to_target"), "loglikelihood": ("doc_to_text", "doc_to_target"),
           "loglikelihood_rolling": ("doc_to_target",), "generate_until": ("doc_to_text",)}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


class HarnessTaskError(ValueError):
    """A task the harness cannot find or run; the message names the file and the fix."""


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix in (".yaml", ".yml"))


def _load_yaml(path: Path) -> dict | None:
    """A task YAML as a dict; None for files with lm-eval's ``!function`` tags (left to lm-eval)."""
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.constructor.ConstructorError:
        return None
    return cfg if isinstance(cfg, dict) else None


def shipped_tasks() -> list[str]:
    """Names of the tasks shipped with the kit (``causal_nb/data/lm_eval_tasks/``)."""
    return sorted(c["task"] for p in _yaml_files(TASK_DIR) if (c := _load_yaml(p)) and "task" in c)


def _check_task(path: Path, cfg: dict) -> None:
    """Fail on a task file lm-eval would reject obscurely (or run wrongly): a missing field."""
    out = cfg.get("output_type", "generate_until")
    if out not in _OUTPUT_TYPES:
        raise HarnessTaskError(f"{path}: output_type {out!r} is not one of {_OUTPUT_TYPES}")
    need = ("dataset_path", *_FIELDS[out]) if "include" not in cfg else ()
    missing = [k for k in need if k not in cfg]
    if missing:
        raise HarnessTaskError(f"{path}: task {cfg.get('task')!r} lacks {missing} (a {out} task needs "
                               f"{['task', 'dataset_path', *_FIELDS[out]]})")


def _check_records(path: Path, cfg: dict, files: dict[str, str]) -> None:
    """Every ``{{field}}`` the templates read must be in each record of the JSON data files."""
    import json  # noqa: PLC0415

    templates = " ".join(str(cfg.get(k, "")) for k in ("doc_to_text", "doc_to_choice", "doc_to_target"))
    fields = set(re.findall(r"{{\s*([A-Za-z_]\w*)", templates))
    for data in files.values():
        for i, line in enumerate(Path(data).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            missing = sorted(fields - set(json.loads(line)))
            if missing:
                raise HarnessTaskError(f"{data}:{i}: record lacks field(s) {missing} that task {cfg.get('task')!r} "
                                       f"({path.name}) reads; every record needs {sorted(fields)}")


def _localised(folders: list[Path], dest: Path) -> None:
    """Copy the task YAML of ``folders`` into ``dest``, relative ``data_files`` made absolute."""
    for k, folder in enumerate(folders):
        for path in _yaml_files(folder):
            target = dest / str(k) / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            cfg = _load_yaml(path)
            if cfg is None or "task" not in cfg:
                target.write_text(path.read_text())  # groups, tags, !function files: as they are
                continue
            _check_task(path, cfg)
            files = (cfg.get("dataset_kwargs") or {}).get("data_files")
            if cfg.get("dataset_path") == "json" and files:
                files = {"test": files} if isinstance(files, str) else dict(files)
                files = {s: str(Path(f) if Path(f).is_absolute() else (path.parent / f).resolve()) for s, f in files.items()}
                for f in files.values():
                    if not Path(f).exists():
                        raise HarnessTaskError(f"{path}: data file {f} does not exist (data_files are read relative "
                                               "to the YAML file)")
                _check_records(path, cfg, files)
                cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": files}
            target.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


@contextlib.contextmanager
def _datasets_offline(on: bool):
    """``HF_DATASETS_OFFLINE`` for one evaluation (``datasets`` also reads it once at import)."""
    if not on:
        yield
        return
    import datasets  # noqa: PLC0415

    env, const = os.environ.get("HF_DATASETS_OFFLINE"), datasets.config.HF_DATASETS_OFFLINE
    os.environ["HF_DATASETS_OFFLINE"], datasets.config.HF_DATASETS_OFFLINE = "1", True
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_OFFLINE = const
        if env is None:
            os.environ.pop("HF_DATASETS_OFFLINE", None)
        else:
            os.environ["HF_DATASETS_OFFLINE"] = env


def _hf_and_tokenizer(model, tokenizer, device):
    """The plain Hugging Face model and its tokenizer, from whatever ``lm_eval`` was given."""
    from transformers import PreTrainedModel  # noqa: PLC0415

    from ..models.hf import plain_hf  # noqa: PLC0415
    from ..models.loading import load_model  # noqa: PLC0415

    if isinstance(model, (str, os.PathLike)):
        folder = Path(model)
        if folder.is_dir() and tokenizer is None:
            from transformers import AutoTokenizer  # noqa: PLC0415

            fix = ("pass tokenizer=... (a PreTrainedTokenizer or a local tokenizer folder), or save the model with "
                   "causal_nb.save_pruned, which writes the tokenizer beside it")
            # transformers 5 builds an empty tokenizer for a folder without one: look for the files
            if not any((folder / f).exists() for f in _TOKENIZER_FILES):
                raise HarnessTaskError(f"{folder}: no tokenizer in the folder (none of {list(_TOKENIZER_FILES)}); {fix}")
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            except (OSError, ValueError, TypeError) as e:
                raise HarnessTaskError(f"{folder}: the tokenizer does not load offline ({type(e).__name__}: {e}); "
                                       f"{fix}") from e
        model = load_model(model, device=device or "cpu")
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer  # noqa: PLC0415

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
        except (OSError, ValueError) as e:
            raise HarnessTaskError(f"tokenizer {str(tokenizer)!r} not found offline; pass a local tokenizer folder "
                                   "or a PreTrainedTokenizer object") from e
    if isinstance(model, PreTrainedModel):
        if tokenizer is None:
            raise HarnessTaskError("a plain Hugging Face model needs tokenizer=... (HFLM would look the tokenizer up "
                                   "on the hub by the model's name, which fails offline)")
        return model.eval(), tokenizer
    if not hasattr(model, "cfg"):
        raise TypeError(f"lm_eval takes a TransformerBridge, a PreTrainedModel or a model folder, not "
                        f"{type(model).__name__}")
    tok = tokenizer if tokenizer is not None else _saved_tokenizer(model)
    if tok is None:
        raise HarnessTaskError("this model has no tokenizer; pass tokenizer=...")
    # read-only use: the harness runs forwards only, so the bridge's own tensors are shared
    return plain_hf(model, share=True), tok


def _saved_tokenizer(bridge):
    """The tokenizer as saved with the model: TransformerLens's copy prepends BOS to every
    string (``add_bos_token=True``), on top of the harness's own prefix token for rolling
    documents; lm-eval expects the tokenizer's own behaviour (``add_bos_token=`` overrides)."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    src = getattr(bridge, "causal_nb_source", {}).get("source")
    if src and Path(str(src)).is_dir():
        with contextlib.suppress(OSError, ValueError, TypeError):
            return AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    if bridge.tokenizer is None:
        return None
    import copy  # noqa: PLC0415

    tok = copy.deepcopy(bridge.tokenizer)
    tok.add_bos_token = False
    return tok


def _resolve_tasks(tasks: list[str], folders: list[Path], tmp: Path):
    from lm_eval.tasks import TaskManager  # noqa: PLC0415

    _localised(folders, tmp)
    tm = TaskManager(include_path=str(tmp), include_defaults=False)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:  # lm-eval's own tasks: indexing them costs seconds, so only when asked for
        tm = TaskManager(include_path=str(tmp), include_defaults=True)
        unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        local = sorted(set(TaskManager(include_path=str(tmp), include_defaults=False).all_tasks))
        near = {t: difflib.get_close_matches(t, tm.all_tasks, n=3) for t in unknown}
        raise HarnessTaskError(
            f"unknown task(s) {unknown} (nearest: {near}); the kit ships {shipped_tasks()} in {TASK_DIR}; "
            f"tasks of include_path={[str(f) for f in folders[1:]] or None}: "
            f"{[t for t in local if t not in shipped_tasks()]}; a folder of your own lm-eval YAML goes in include_path=")
    return tm


def _items(samples: dict) -> pd.DataFrame:
    """One row per (task, item): the harness's per-item log-likelihoods and metric values."""
    rows = []
    for task, docs in samples.items():
        for s in docs:
            resps = s["filtered_resps"]
            row = {"task": task, "doc_id": int(s["doc_id"])}
            if resps and isinstance(resps[0], (tuple, list)):  # multiple choice / loglikelihood: (ll, greedy)
                row["target"] = s.get("target")
                row["loglikelihoods"] = [float(r[0]) for r in resps]
            else:  # rolling: the document's total log-likelihood, and the words and bytes it is over
                row["loglikelihood"] = float(resps[0] if isinstance(resps, (list, tuple)) else resps)
            for m in s.get("metrics", []):
                v = s.get(m)
                if isinstance(v, (tuple, list)):  # perplexities: (log-likelihood, weight)
                    row[{"word_perplexity": "words", "byte_perplexity": "bytes"}.get(m, f"{m}_weight")] = v[1]
                elif v is not None:
                    row[m] = v
            rows.append(row)
    df = pd.DataFrame(rows)
    return df.drop(columns=[c for c in df.columns if c.endswith("_weight")])


def lm_eval(model, tasks, limit: int | float | None = None, include_path=None, batch_size: int = 8,
            num_fewshot: int | None = None, tokenizer=None, device: str | None = None, offline: bool = True,
            seed: int = 0, bootstrap_iters: int = 1000, add_bos_token: bool | None = None,
            progress: bool | None = None) -> pd.DataFrame:
    """Evaluate ``model`` on lm-evaluation-harness tasks; one row per (task, metric).

    Args:
        model: a ``TransformerBridge`` (pruned or not), a plain ``PreTrainedModel`` (with
            ``tokenizer=``), or a folder (``save_pruned`` output, a bundled name, any HF folder).
        tasks: task names: ``shipped_tasks()``, those of ``include_path``, or lm-eval's own.
        limit: items per task (an int), or a share of them (a float below 1); None = all.
        include_path: a folder (or list of folders) of lm-eval task YAML; ``dataset_path: json``
            tasks read ``data_files`` relative to their YAML file.
        batch_size: HFLM's batch size (a speed knob: the numbers do not depend on it).
        num_fewshot: few-shot examples (lm-eval's default, the task's, when None).
        tokenizer: overrides the model's (a tokenizer object or a local folder). A bridge's
            default is the tokenizer saved with it, as ``from_pretrained`` loads it.
        device: HFLM's device (default: the model's).
        offline: set ``HF_DATASETS_OFFLINE`` while evaluating (local tasks need no hub).
        seed: lm-eval's random, numpy, torch and few-shot seeds.
        bootstrap_iters: lm-eval's bootstrap for the stderr of non-mean metrics (perplexities).
        add_bos_token: HFLM's switch (None: the tokenizer's own default).
        progress: the harness's request bars (None follows ``progress_enabled()``).

    Returns:
        Columns ``task, metric, value, stderr, n``; ``attrs["items"]`` holds the per-item
        records (``pd.DataFrame(df.attrs["items"])``: ``task, doc_id, target``,
        ``loglikelihoods`` per choice or ``loglikelihood`` of a rolling document with its
        ``words`` and ``bytes``, and each metric's per-item value).
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks)
    if not tasks or not all(isinstance(t, str) for t in tasks):
        raise TypeError(f"tasks must be a non-empty list of task names, e.g. {shipped_tasks()[:2]}")
    extra = [] if include_path is None else [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path)
    folders = [TASK_DIR] + [Path(p) for p in extra]
    for f in folders[1:]:
        if not f.is_dir():
            raise HarnessTaskError(f"include_path {str(f)!r} is not a folder (it should hold lm-eval task YAML files)")
    import lm_eval as harness  # noqa: PLC0415 - heavy import
    from lm_eval.models.huggingface import HFLM  # noqa: PLC0415

    hf, tok = _hf_and_tokenizer(model, tokenizer, device)
    dev = device or str(next(hf.parameters()).device)
    bars = progress_enabled(progress)
    with tempfile.TemporaryDirectory() as tmp, _datasets_offline(offline), _quiet_harness(bars):
        tm = _resolve_tasks(tasks, folders, Path(tmp))
        lm = HFLM(pretrained=hf, tokenizer=tok, batch_size=batch_size, device=dev, add_bos_token=add_bos_token)
        if not bars:  # the evaluator calls these without disable_tqdm, which they take
            for name in ("loglikelihood", "loglikelihood_rolling", "generate_until", "_loglikelihood_tokens"):
                setattr(lm, name, _no_bars(getattr(lm, name)))
        out = harness.simple_evaluate(model=lm, tasks=tasks, limit=limit, num_fewshot=num_fewshot, task_manager=tm,
                                      log_samples=True, bootstrap_iters=bootstrap_iters, random_seed=seed,
                                      numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    rows = []
    for task, res in out["results"].items():
        n = out.get("n-samples", {}).get(task, {}).get("effective")
        for key, v in res.items():
            if "," not in key or "_stderr," in key or not isinstance(v, (int, float)):
                continue
            metric = key.split(",")[0]
            se = res.get(key.replace(",", "_stderr,", 1))
            rows.append({"task": task, "metric": metric, "value": float(v),
                         "stderr": float(se) if isinstance(se, (int, float)) else np.nan, "n": n})
    df = pd.DataFrame(rows, columns=["task", "metric", "value", "stderr", "n"])
    # records, not a DataFrame: pandas compares attrs when concatenating, and frames do not compare
    df.attrs["items"] = _items(out.get("samples", {})).to_dict("records")
    df.attrs["lm_eval_version"] = out.get("lm_eval_version")
    return df


def _no_bars(fn):
    """``fn`` with ``disable_tqdm=True`` forced (the rolling path passes False to its inner call)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        return fn(*args, **{**kwargs, "disable_tqdm": True})
    return call


_ENV_INFO: dict = {}


@contextlib.contextmanager
def _quiet_harness(bars: bool = True):
    """lm-eval logs each task's defaults at INFO/WARNING: keep them out of notebook stderr;
    without ``bars``, its request-building bars and ``datasets``' bars are off too. Its
    environment report (torch's ``collect_env``: subprocesses, over a second a call) is read
    once per process and reused: a pruning sweep evaluates many models in one process."""
    import datasets  # noqa: PLC0415
    import lm_eval.api.task as task_mod  # noqa: PLC0415
    import lm_eval.evaluator as ev  # noqa: PLC0415

    log = logging.getLogger("lm_eval")
    level, add_env_info, task_tqdm = log.level, ev.add_env_info, task_mod.tqdm
    ds_was_on = datasets.utils.logging.is_progress_bar_enabled()

    def env_info_once(storage):
        if not _ENV_INFO:
            add_env_info(_ENV_INFO)
        storage.update(_ENV_INFO)

    log.setLevel(logging.ERROR)
    ev.add_env_info = env_info_once
    if not bars:
        task_mod.tqdm = functools.partial(task_tqdm, disable=True)
        datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        log.setLevel(level)
        ev.add_env_info, task_mod.tqdm = add_env_info, task_tqdm
        if not bars and ds_was_on:
            datasets.utils.logging.enable_progress_bar()
