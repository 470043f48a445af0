"""Duplication pruning of attention heads, end to end: head outputs on a task's prompts, prompt
groups, head clusters, removals per sparsity (``pruning.duplication``), then the masked and the
physically pruned models evaluated on held-out prompts (the kit's loss) and, when tasks are
given, with lm-evaluation-harness (``harness.lm_eval``).

Everything is written as JSON, parquet and CSV (no pickles) into ``out``:
``pruning_log.json`` (settings, prompt groups, and per sparsity the clusters, kept and removed
heads per layer, merge distances), ``head_importance.parquet``/``.json`` (a ``score`` table:
each head's distance to its nearest other head, higher = less duplicated, which ``prune``
takes like any other score table), ``head_distances.parquet`` (the square matrix),
``results.csv`` (one row per sparsity and variant: held-out loss with a bootstrap interval over
prompts), ``prompt_losses.parquet`` (per prompt, for paired tests) and, with tasks,
``lm_eval.csv`` (task, metric, value, stderr, n per sparsity and variant) and
``lm_eval_items.parquet`` (the harness's per-item records, for ``harness_ci`` and
``harness_paired_test``).

``layer_impact`` reads a pruning log back: each layer's removals alone, and the held-out loss
change they cause (the per-layer impact figure, ``plotting.layer_impact_bars``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.prompts import available_domains, load_prompts
from ..models.families import PHYSICAL_FAMILIES, family
from ..pruning.duplication import (
    DISTANCE_METRICS,
    PRUNE_METHODS,
    DuplicationError,
    check_choice,
    group_prompts,
    head_distances,
    head_output_table,
    select_duplicates,
)
from ..pruning.structure import prune_units
from .harness import lm_eval
from .quality import prompt_losses
from .stats import bootstrap_ci

__all__ = ["cluster_table", "duplication_prune", "layer_impact", "resolve_prompts"]


def resolve_prompts(prompts, eval_prompts, n_prompts: int | None):
    """The prompts clustered and the held-out prompts evaluated: a domain name gives its train
    and test splits; other prompts need ``eval_prompts`` (selecting and evaluating on the same
    prompts would flatter every criterion)."""
    if isinstance(prompts, str) and not Path(prompts).exists() and prompts not in available_domains():
        raise DuplicationError(f"unknown prompt domain {prompts!r}; domains: {available_domains()} (or a JSONL file, or "
                               "a list of strings)")
    if isinstance(prompts, str):
        train = load_prompts(prompts, split="train", n=n_prompts)
        test = eval_prompts if eval_prompts is not None else load_prompts(prompts, split="test")
        return train, test
    if eval_prompts is None:
        raise DuplicationError("eval_prompts=... is needed with a prompt list: the held-out loss must not be read on "
                               "the prompts that chose the heads (a domain name uses its test split)")
    return (list(prompts)[:n_prompts] if n_prompts else prompts), eval_prompts


def duplication_prune(model, prompts, metric: str = "cosine", group_metric: str = "cosine", method: str = "balanced",
                      sparsities=(0.1, 0.25, 0.5), out=None, n_groups: int = 2, n_prompts: int | None = 32,
                      n_tokens: int = 32, eval_prompts=None, eval_tokens: int = 64, tasks=None, limit=None,
                      include_path=None, physical: bool = True, seed: int = 0,
                      progress: bool | None = None) -> pd.DataFrame:
    """Prune heads by duplication at each sparsity and evaluate the pruned models.

    Args:
        model: a decoder ``TransformerBridge``.
        prompts: a prompt domain (its train split is clustered, its test split evaluated), a
            JSONL prompt file, or a list of strings / ``PromptSet`` (then ``eval_prompts``).
        metric: head distance, ``"euclidean"``, ``"cosine"`` or ``"random"`` (the control).
        group_metric: how prompts are grouped (the same choices; ``"random"``: a seeded split).
        method: ``"balanced"`` (the same number of heads from every layer) or ``"imbalanced"``.
        sparsities: shares of all heads to remove, each in [0, 1).
        out: folder for the log, importance, distances and results (None: nothing written).
        n_groups: prompt groups the head distances are averaged over.
        n_prompts, n_tokens: prompts clustered and tokens per prompt.
        eval_prompts, eval_tokens: held-out prompts for the loss, and their tokens.
        tasks, limit, include_path: lm-evaluation-harness tasks (``cnb.shipped_tasks()`` or
            ``include_path``'s) run on each pruned model, ``limit`` items each.
        physical: evaluate the physically pruned model too (families in ``PHYSICAL_FAMILIES``).
        seed: the random metric's vectors and the random prompt split.
        progress: the harness's bars (None follows ``progress_enabled()``).

    Returns:
        One row per (sparsity, variant): ``sparsity, variant, heads_removed, loss, loss_ci_low,
        loss_ci_high``; ``attrs["log"]`` is the pruning log, ``attrs["lm_eval"]`` the harness rows
        (records of ``task, metric, value, stderr, n, sparsity, variant``; None without tasks)
        and ``attrs["lm_eval_items"]`` the harness's per-item records with ``sparsity`` and
        ``variant`` (None without tasks).
    """
    check_choice(metric, DISTANCE_METRICS, "metric")
    check_choice(group_metric, DISTANCE_METRICS, "group metric")
    check_choice(method, PRUNE_METHODS, "prune method")
    sparsities = [float(s) for s in ([sparsities] if np.isscalar(sparsities) else sparsities)]
    train, test = resolve_prompts(prompts, eval_prompts, n_prompts)
    x, prompt_of, labels = head_output_table(model, train, n_tokens)
    groups = group_prompts(x, prompt_of, n_groups, group_metric, seed)
    dist, norms = head_distances(x, prompt_of, groups, metric, seed)
    # choose every sparsity before the slow evaluations, so a bad one fails at once
    choices = {s: select_duplicates(dist, norms, labels, s, method) for s in sparsities}
    variants = ["masked"] + (["physical"] if physical and family(model) in PHYSICAL_FAMILIES else [])
    nearest = np.where(np.eye(len(dist), dtype=bool), np.inf, dist).min(1)
    importance = pd.DataFrame({"layer": [la for la, _ in labels], "head": [h for _, h in labels], "score": nearest,
                               "norm": norms})
    importance.attrs.update({"method": f"duplication_{metric}", "unit": "head"})
    log = {"metric": metric, "group_metric": group_metric, "method": method, "n_groups": n_groups, "seed": seed,
           "n_prompts": len(groups), "n_tokens": n_tokens, "eval_tokens": eval_tokens, "variants": variants,
           "prompt_groups": groups.tolist(), "model": getattr(model, "causal_nb_source", {}).get("name"),
           "sparsities": {}}
    rows, per_prompt, harness_rows, harness_items = [], [], [], []

    def record(s, variant, m, n_removed):
        pl = prompt_losses(m, test, eval_tokens)
        mean, lo, hi = bootstrap_ci(pl.loss.to_numpy(), seed=seed)
        rows.append({"sparsity": s, "variant": variant, "heads_removed": n_removed, "loss": mean, "loss_ci_low": lo,
                     "loss_ci_high": hi})
        per_prompt.append(pl.assign(sparsity=s, variant=variant))
        if tasks:
            h = lm_eval(m, tasks, limit=limit, include_path=include_path, progress=progress)
            harness_items.append(pd.DataFrame(h.attrs["items"]).assign(sparsity=s, variant=variant))
            h.attrs = {}  # the per-item records stay out of the concatenated table
            harness_rows.append(h.assign(sparsity=s, variant=variant))

    record(0.0, "full", model, 0)
    for s, c in choices.items():
        log["sparsities"][str(s)] = {**c, "removed": {str(k): v for k, v in c["removed"].items()},
                                     "kept": {str(k): v for k, v in c["kept"].items()}}
        n_removed = sum(len(v) for v in c["removed"].values())
        for variant in variants:
            pruned = prune_units(model, heads=c["removed"], physical=variant == "physical")
            record(s, variant, pruned, n_removed)
            del pruned
    results = pd.DataFrame(rows)
    results.attrs["log"] = log
    harness = pd.concat(harness_rows, ignore_index=True) if harness_rows else None
    results.attrs["lm_eval"] = None if harness is None else harness.to_dict("records")
    items = pd.concat(harness_items, ignore_index=True) if harness_items else None
    results.attrs["lm_eval_items"] = None if items is None else items.to_dict("records")
    if out is not None:
        _write(Path(out), results, pd.concat(per_prompt, ignore_index=True), importance, dist, labels, log, harness,
               items)
    return results


def _write(out: Path, results, per_prompt, importance, dist, labels, log, harness, items) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "pruning_log.json").write_text(json.dumps(log, indent=1) + "\n")
    importance.to_parquet(out / "head_importance.parquet", index=False)
    (out / "head_importance.json").write_text(json.dumps({"attrs": importance.attrs,
                                                          "rows": importance.to_dict("records")}, indent=1) + "\n")
    names = [f"L{la}H{h}" for la, h in labels]
    pd.DataFrame(dist, index=names, columns=names).to_parquet(out / "head_distances.parquet")
    results.to_csv(out / "results.csv", index=False)
    per_prompt.to_parquet(out / "prompt_losses.parquet", index=False)
    if harness is not None:
        harness.to_csv(out / "lm_eval.csv", index=False)
        items.to_parquet(out / "lm_eval_items.parquet", index=False)


def layer_impact(model, logs, prompts, n_tokens: int = 64, sparsities=None, seed: int = 0) -> pd.DataFrame:
    """Per layer: the heads a pruning removed there, and the held-out loss change when only
    those are removed (the other layers intact), with a bootstrap interval over prompts.

    Args:
        model: the unpruned bridge the logs were made on.
        logs: a pruning log (``duplication_prune(...).attrs["log"]`` or ``pruning_log.json``
            read back), or a dict label -> log (e.g. ``{"balanced": ..., "imbalanced": ...}``).
        prompts: the held-out prompts (a domain's test split, a ``PromptSet`` or strings).
        n_tokens: tokens per prompt.
        sparsities: the logged sparsities to read (default all).
        seed: the bootstrap's.

    Returns:
        One row per (label, sparsity, layer): ``heads_removed``, ``loss`` (the model with that
        layer's removals only), ``delta`` (``loss`` minus the full model's, per prompt, then
        averaged) with ``ci_low, ci_high``; ``attrs["full_loss"]`` is the full model's mean.
    """
    if isinstance(logs, dict) and "sparsities" in logs:
        logs = {logs.get("method", "pruned"): logs}
    if not isinstance(logs, dict) or not all(isinstance(v, dict) and "sparsities" in v for v in logs.values()):
        raise TypeError("layer_impact takes a pruning log (duplication_prune(...).attrs['log'], or pruning_log.json "
                        "loaded) or a dict label -> log")
    full = prompt_losses(model, prompts, n_tokens).loss.to_numpy()
    rows = []
    for label, log in logs.items():
        keys = list(log["sparsities"])
        if sparsities is not None:
            want = {float(s) for s in np.atleast_1d(sparsities)}
            keys = [k for k in keys if float(k) in want]
            if not keys:
                raise DuplicationError(f"{label}: none of sparsities {sorted(want)} in the log (it has "
                                       f"{sorted(float(k) for k in log['sparsities'])})")
        for key in keys:
            for layer, heads in sorted(log["sparsities"][key]["removed"].items(), key=lambda kv: int(kv[0])):
                row = {"label": label, "sparsity": float(key), "layer": int(layer), "heads_removed": len(heads)}
                if heads:
                    loss = prompt_losses(prune_units(model, heads={int(layer): list(heads)}, physical=False), prompts,
                                         n_tokens).loss.to_numpy()
                    mean, lo, hi = bootstrap_ci(loss - full, seed=seed)
                    row.update(loss=float(loss.mean()), delta=mean, ci_low=lo, ci_high=hi)
                else:
                    row.update(loss=float(full.mean()), delta=0.0, ci_low=0.0, ci_high=0.0)
                rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["full_loss"] = float(full.mean())
    return df


def cluster_table(log: dict, sparsity: float) -> pd.DataFrame:
    """The head clusters a pruning log records at ``sparsity``: one row per cluster of two or
    more heads (``cluster, size, kept, removed, layers``; heads as ``LxHy``), largest first."""
    key = next((k for k in log.get("sparsities", {}) if np.isclose(float(k), sparsity)), None)
    if key is None:
        raise DuplicationError(f"sparsity {sparsity} is not in the log (it has "
                               f"{sorted(float(k) for k in log.get('sparsities', {}))})")
    rows = []
    for c in log["sparsities"][key]["clusters"]:
        if len(c) < 2:
            continue
        names = [f"L{la}H{h}" for la, h in c]
        rows.append({"size": len(c), "kept": names[0], "removed": " ".join(names[1:]),
                     "layers": " ".join(str(la) for la in sorted({la for la, _ in c}))})
    df = pd.DataFrame(rows, columns=["size", "kept", "removed", "layers"])
    df = df.sort_values(["size", "kept"], ascending=[False, True], kind="stable").reset_index(drop=True)
    df.insert(0, "cluster", range(len(df)))
    return df
