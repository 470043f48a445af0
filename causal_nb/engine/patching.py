"""Activation patching and ablation: thin specialisations of the one engine.

``patch`` replaces units' activations in the corrupted run with the clean run's
("denoise": how much of the clean behaviour does this unit restore?) or the reverse
("noise": how much does corrupting this unit break it?). ``ablate`` replaces them with zero,
the mean over a reference set, or another prompt's values (resample). Both return a tidy
DataFrame with one row per unit; per-prompt values and baselines sit in ``df.attrs``.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..core.checks import check_positions, reject_unused, strict
from ..data.prompts import PromptSetError, TokenBatch
from .answers import answer_batch
from .attribution import attribute
from .common import ablation_sources, prepare, scored_batch, unit_table
from .metrics import ScoredBatch, get_metric
from .replay import evaluate_units, scored_run, stack_size
from .tasks import LMTask, as_task
from .units import enumerate_units, units_in_range

__all__ = ["ABLATION_KINDS", "ablate", "patch"]


def _answer_scoring(model, tb: TokenBatch, answers, scored_positions) -> ScoredBatch:
    if scored_positions is not None:
        raise ValueError("answers= scores each prompt's last real token; scored_positions= can't be used with it "
                         "(drop one of the two)")
    return answer_batch(tb, answers, model.cfg.d_vocab)


def _check_pair(clean: TokenBatch, corrupted: TokenBatch) -> None:
    if len(clean) != len(corrupted):
        raise PromptSetError(f"clean and corrupted prompt sets differ in size ({len(clean)} vs {len(corrupted)}); "
                             "patching pairs prompt i of one with prompt i of the other")
    if not torch.equal(clean.mask, corrupted.mask):
        bad = (clean.mask != corrupted.mask).any(-1).nonzero()[:5, 0].tolist()
        raise PromptSetError(f"clean and corrupted prompts {bad} have different token lengths, so positions don't "
                             "align; use prompts of equal token length (PromptSet.fitting(model, n_tokens) keeps those "
                             "that fill n_tokens) or a smaller n_tokens")


def _stack(model, tb: TokenBatch, scored: ScoredBatch | object, units, batch_size, memory_budget_mb, task=None) -> int:
    per_layer = max(sum(u.layer == layer for u in units) for layer in {u.layer for u in units})
    n_scored = len(scored.positions) if task is None else task.n_scored(tb, scored)
    return stack_size(model, len(tb), tb.mask.shape[1], n_scored, per_layer, batch_size, memory_budget_mb)


@strict
def patch(model, clean=None, corrupted=None, unit: str = "head", metric="logprob", method: str = "exact",
          direction: str = "denoise", positions=None, per_position: bool = False, layers=None,
          scored_positions=None, n_tokens: int | None = None, batch_size: int | None = None,
          memory_budget_mb: float | None = None, progress: bool | None = None, steps: int | None = None,
          answers=None, task=None, unit_range=None) -> pd.DataFrame:
    """Patch each unit between clean and corrupted runs and measure the metric.

    Args:
        clean, corrupted: PromptSets, lists of strings or TokenBatches, paired by index, of
            equal token lengths.
        unit: ``"head"``, ``"q"``, ``"k"``, ``"v"``, ``"attn"``, ``"mlp"``, ``"neuron"``,
            ``"block"``, ``"resid"``.
        metric: a name (``"logprob"``, ``"loss"``, ``"kl"``, ``"top1"``, ``"logit_diff"``) or a
            callable ``(logits, ScoredBatch) -> Tensor[batch]``.
        method: ``"exact"``, ``"attribution"`` (first-order) or ``"eap-ig"``.
        direction: ``"denoise"`` (clean into corrupted) or ``"noise"`` (corrupted into clean).
        positions: positions whose activations are patched (default all).
        per_position: one unit per position in ``positions``.
        scored_positions: positions whose next-token predictions the metric reads (default all).
        n_tokens: tokens per prompt, BOS included (default 64).
        batch_size: interventions stacked per forward (default: 1 on CPU; on a GPU the units of
            one layer, chunked to ``memory_budget_mb``; see ``engine.replay.stack_size``).
        memory_budget_mb: memory the stacked copies may use (default half the free GPU memory).
        progress: a progress bar (default: ``causal_nb.progress_enabled()``).
        steps: EAP-IG's interpolation points (``method="eap-ig"`` only; default 5).
        answers: token ids per prompt, [batch] or [batch, n_answers] (correct first, then
            wrong ones): score each prompt's last real token against them (e.g.
            ``metric="answer_logit_diff"``; ``"logprob"`` is then the correct answer's
            log-prob), instead of next tokens inside the prompt. Not with ``scored_positions``.
        task: the task (``engine.tasks``); None or ``LMTask()``: the decoder LM. Patching
            needs paired clean/corrupted inputs: ``cnb.ImageClassificationTask(images, labels)``
            carries the clean images (then ``clean=None``, ``corrupted=`` images of the same
            shape; exact, attribution or EAP-IG patching; metric default ``"label_logprob"``);
            ``cnb.Seq2SeqTask(sources, targets)`` carries the clean pairs (``corrupted=`` a list
            of sources, each of its clean source's token length, or a ``Seq2SeqTask`` with the
            same targets; units per stack, ``"enc_head"``, ``"cross_head"``...; metric default
            ``"target_logprob"``); ``SentencePairTask`` is refused (use ``ablate``).
        unit_range: ``(start, stop)``: only those units of the table (in its order, after
            ``layers``), exact patching only: one slice of a table split over workers (the
            slices' tables concatenated in order are the whole table).

    Raises:
        ValueError: an option the method doesn't use (``steps`` without EAP-IG, ``batch_size``
            or ``memory_budget_mb`` without exact patching), positions outside the prompts.

    Returns:
        DataFrame with ``layer``, ``head``/``neuron``/``pos`` where applicable, ``value`` (mean
        metric over prompts) and ``normalized`` (0 = corrupted run, 1 = clean run).
        ``df.attrs`` holds ``per_prompt`` (unit x prompt values), ``clean``/``corrupted``
        baselines (means; ``clean_per_prompt``/``corrupted_per_prompt`` per prompt) and the
        settings.
    """
    task = as_task(task)
    if hasattr(task, "corrupted_batch"):  # a task that carries its clean inputs (images) and pairs corrupted ones
        return _patch_carried(model, task, clean, corrupted, unit, metric, method, direction, positions, per_position,
                              layers, scored_positions, n_tokens, batch_size, memory_budget_mb, progress, steps, answers,
                              unit_range)
    if not isinstance(task, LMTask):
        raise ValueError(f"patch with {task!r}: patching needs paired clean/corrupted inputs, which only the LM "
                         "task has so far; use ablate(model, task=..., kind='zero'|'mean') or "
                         "score(model, task=..., method='ablation')")
    if clean is None or corrupted is None:
        raise TypeError("patch needs clean and corrupted prompts: patch(model, clean, corrupted, ...)")
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    if method not in ("exact", "attribution", "eap-ig"):
        raise ValueError(f"unknown method {method!r}; valid: 'exact', 'attribution', 'eap-ig'")
    reject_unused(method, {"steps": steps, "batch_size": batch_size, "memory_budget_mb": memory_budget_mb,
                           "unit_range": unit_range},
                  {"steps": ("eap-ig",), "batch_size": ("exact",), "memory_budget_mb": ("exact",),
                   "unit_range": ("exact",)},
                  {("batch_size", "attribution"): "it runs one forward and backward for all units",
                   ("unit_range", "attribution"): "it scores every unit in one backward pass",
                   ("unit_range", "eap-ig"): "it scores every unit in a few backward passes",
                   ("batch_size", "eap-ig"): "it runs one forward and backward per step for all units",
                   ("memory_budget_mb", "attribution"): "it stacks no interventions",
                   ("memory_budget_mb", "eap-ig"): "it stacks no interventions",
                   ("steps", "attribution"): "it takes the gradient at the base run only",
                   ("steps", "exact"): "it patches exactly"})
    metric_fn = get_metric(metric)
    cb, xb = prepare(model, clean, n_tokens), prepare(model, corrupted, n_tokens)
    _check_pair(cb, xb)
    positions = check_positions(positions, cb.tokens.shape[1])
    units = units_in_range(enumerate_units(model, unit, layers, positions, per_position), unit_range)
    hooks = sorted({e.hook for u in units for e in u.edits})
    if answers is None:
        scored = scored_batch(cb, scored_positions)
        scored.alt_targets = xb.tokens[:, scored.positions + 1]
    else:
        scored = _answer_scoring(model, cb, answers, scored_positions)
    if method != "exact":
        return attribute(model, cb, xb, units, unit, metric_fn, scored, method, direction, per_position,
                         metric_name=str(getattr(metric, "__name__", metric)), steps=5 if steps is None else steps)
    clean_cap, clean_val = scored_run(model, cb.tokens, hooks, scored, metric_fn, reference=True)
    corr_cap, corr_val = scored_run(model, xb.tokens, hooks, scored, metric_fn)
    base, src = (corr_cap, clean_cap) if direction == "denoise" else (clean_cap, corr_cap)
    k = _stack(model, cb, scored, units, batch_size, memory_budget_mb)
    values = evaluate_units(model, base, src.acts, units, metric_fn, scored, k, progress, desc=f"patch {unit}")
    attrs = {"method": "exact", "unit": unit, "metric": str(getattr(metric, "__name__", metric)),
             "direction": direction, "clean": float(clean_val.nanmean()), "corrupted": float(corr_val.nanmean()),
             # each prompt's own baselines: a per-prompt effect is measured against its own prompt
             "clean_per_prompt": tuple(clean_val.double().tolist()),
             "corrupted_per_prompt": tuple(corr_val.double().tolist())}
    df = unit_table(units, values, unit, per_position, cb.ids, attrs)
    df["normalized"] = (df["value"] - attrs["corrupted"]) / (attrs["clean"] - attrs["corrupted"])
    return df


def _patch_carried(model, task, clean, corrupted, unit, metric, method, direction, positions, per_position, layers,
                   scored_positions, n_tokens, batch_size, memory_budget_mb, progress, steps, answers,
                   unit_range=None) -> pd.DataFrame:
    """``patch`` with a task that carries the clean inputs (``ImageClassificationTask``,
    ``Seq2SeqTask``): the corrupted inputs (``task.corrupted_batch``) are paired with them by
    index; exact, attribution or EAP-IG patching through the one engine."""
    task.check_model(model, "patch")
    if clean is not None:
        raise ValueError(f"{task!r} carries the clean inputs: pass clean=None and the corrupted inputs as corrupted=")
    if corrupted is None:
        raise TypeError(f"patch with {task!r} needs corrupted= inputs (images; for Seq2SeqTask, sources), paired with "
                        "the task's by index")
    if method not in ("exact", "attribution", "eap-ig"):
        raise ValueError(f"unknown method {method!r}; valid: 'exact', 'attribution', 'eap-ig'")
    if method != "exact" and (batch_size is not None or memory_budget_mb is not None):
        raise ValueError(f"batch_size= / memory_budget_mb= are not used by method={method!r} (forwards and "
                         "backwards for all units at once); drop them")
    if steps is not None and method != "eap-ig":
        raise ValueError(f"steps= is not used by method={method!r} (only EAP-IG interpolates); drop it")
    if unit_range is not None and method != "exact":
        raise ValueError(f"unit_range= is not used by method={method!r} (it scores every unit in one pass); drop it")
    unused = {"n_tokens": n_tokens, "answers": answers}
    given = [k for k, v in unused.items() if v is not None]
    if given:
        raise ValueError(f"{given[0]}= is not used by patch with {task!r} (it reads the task's own readout: class "
                         "logits of images, or a decoder's target tokens)")
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    metric = task.patch_metric if metric in (None, "logprob") else metric  # "logprob": patch's default, the LM's
    metric_fn = task.metric(metric)
    cb, xb = task.prepare(model), task.corrupted_batch(model, corrupted)
    positions = task.check_positions(positions, cb)
    units = units_in_range(task.units(model, unit, layers, positions, per_position), unit_range)
    hooks = sorted({e.hook for u in units for e in u.edits})
    scored = task.scoring(model, cb, scored_positions)
    if method != "exact":
        return attribute(model, cb, xb, units, unit, metric_fn, scored, method, direction, per_position,
                         metric_name=str(getattr(metric, "__name__", metric)), steps=5 if steps is None else steps,
                         task=task)
    clean_cap, clean_val = scored_run(model, cb.tokens, hooks, scored, metric_fn, reference=True, task=task)
    corr_cap, corr_val = scored_run(model, xb.tokens, hooks, scored, metric_fn, task=task)
    base, src = (corr_cap, clean_cap) if direction == "denoise" else (clean_cap, corr_cap)
    k = _stack(model, cb, scored, units, batch_size, memory_budget_mb, task)
    values = evaluate_units(model, base, src.acts, units, metric_fn, scored, k, progress, desc=f"patch {unit}",
                            task=task)
    attrs = {"method": "exact", "unit": unit, "metric": str(getattr(metric, "__name__", metric)),
             "direction": direction, "task": repr(task), "clean": float(clean_val.nanmean()),
             "corrupted": float(corr_val.nanmean()), "clean_per_prompt": tuple(clean_val.double().tolist()),
             "corrupted_per_prompt": tuple(corr_val.double().tolist())}
    df = unit_table(units, values, unit, per_position, task.ids(cb), attrs)
    df["normalized"] = (df["value"] - attrs["corrupted"]) / (attrs["clean"] - attrs["corrupted"])
    return df


ABLATION_KINDS = ("zero", "mean", "resample")


@strict
def ablate(model, prompts=None, unit: str = "head", kind: str = "zero", metric=None, reference=None, positions=None,
           per_position: bool = False, layers=None, scored_positions=None, n_tokens: int | None = None,
           batch_size: int | None = None, memory_budget_mb: float | None = None, seed: int | None = None,
           progress: bool | None = None, answers=None, task=None, executor=None, unit_range=None) -> pd.DataFrame:
    """Ablate each unit (zero, mean over ``reference``, or resample) and measure the metric.

    Args:
        prompts: PromptSet or list of strings (the LM task; a task that carries its inputs,
            as ``SentencePairTask(pairs)``, takes none).
        kind: ``"zero"``, ``"mean"`` (mean over reference prompts and positions; default
            reference: ``prompts``) or ``"resample"`` (another prompt's activations: a seeded
            derangement of ``prompts``, or ``reference`` prompts in turn).
        metric: as in ``patch``; ``"kl"`` (the LM default) is the KL divergence to the unablated
            model. With ``SentencePairTask``: ``"cosine"`` (the default), each pair's cosine.
        reference: prompts for ``kind="mean"`` or ``"resample"`` (not used by ``"zero"``); with
            ``SentencePairTask``, pairs or sentences for ``"mean"`` (no resample).
        seed: the derangement's seed for ``kind="resample"`` without ``reference`` (default 0).
        batch_size, memory_budget_mb: interventions stacked per forward, as in ``patch``.
        progress: a progress bar (default: ``causal_nb.progress_enabled()``).
        answers: score each prompt's last real token against these token ids, as in ``patch``.
        task: what the inputs are and what the metric reads (``engine.tasks``): None, the decoder
            LM; ``cnb.SentencePairTask(pairs)``, a sentence encoder's pooled embeddings, one
            value per pair (``per_prompt`` columns are the pairs);
            ``cnb.ImageClassificationTask(images, labels)``, a ViT's class logits on the CLS token,
            one value per image (metrics ``"kl"``, the default, ``"label_logprob"``,
            ``"accuracy"``, ``"top1"``; ``reference=`` images for mean and resample ablation).
        executor: split the units over workers (``"ray"``, ``core.executors.RayExecutor``,
            ``SubmititExecutor``...; see ``engine.split``) in contiguous ranges of about equal cost;
            the merged table equals this process's.
        unit_range: ``(start, stop)``: only those units of the table (in its order, after
            ``layers``): one slice of a table split over workers, as in ``patch``.

    Returns:
        The same table as ``patch`` (without ``normalized``); ``df.attrs["baseline"]`` is the
        metric of the unablated model (``baseline_per_prompt``: per prompt).
    """
    task = as_task(task)
    task.check_model(model, "ablate")
    if metric is None:
        metric = task.ablation_metric
    if not isinstance(task, LMTask) and answers is not None:
        raise ValueError(f"answers= reads next-token logits; {task!r} reads sentence embeddings: drop answers=")
    if kind not in ABLATION_KINDS:
        raise ValueError(f"unknown ablation kind {kind!r}; valid: {', '.join(map(repr, ABLATION_KINDS))}")
    reject_unused(kind, {"reference": reference, "seed": seed}, {"reference": ("mean", "resample"), "seed": ("resample",)},
                  {("reference", "zero"): "zero ablation reads no prompts",
                   ("seed", "zero"): "zero ablation is not random", ("seed", "mean"): "mean ablation is not random"},
                  what="kind")
    if seed is not None and reference is not None:
        raise ValueError("seed= is not used with reference=: resample ablation then takes the reference prompts in "
                         "turn (the seed draws the derangement of prompts without a reference)")
    metric_fn = task.metric(metric)
    if executor is not None:
        if unit_range is not None:
            raise ValueError("executor= splits the units over workers itself: drop unit_range=")
        from .split import split_units  # noqa: PLC0415

        return split_units(ablate, model, {
            "prompts": prompts, "unit": unit, "kind": kind, "metric": metric, "reference": reference,
            "positions": positions, "per_position": per_position, "scored_positions": scored_positions,
            "n_tokens": n_tokens, "batch_size": batch_size, "memory_budget_mb": memory_budget_mb, "seed": seed,
            "answers": answers, "task": None if isinstance(task, LMTask) else task},
            task.units(model, unit, layers, positions, per_position), layers, executor)
    pb = task.prepare(model, prompts, n_tokens)
    positions = task.check_positions(positions, pb) if hasattr(task, "check_positions") else \
        check_positions(positions, pb.mask.shape[1])  # a ViT names its own: CLS and patches
    units = units_in_range(task.units(model, unit, layers, positions, per_position), unit_range)
    hooks = sorted({e.hook for u in units for e in u.edits})
    scored = task.scoring(model, pb, scored_positions) if answers is None else \
        _answer_scoring(model, pb, answers, scored_positions)
    base, baseline = scored_run(model, pb.tokens, hooks, scored, metric_fn, reference=True, task=task)
    with torch.no_grad():
        sources = ablation_sources(model, kind, pb, hooks, reference, n_tokens, 0 if seed is None else seed, task=task)
    k = _stack(model, pb, scored, units, batch_size, memory_budget_mb, task)
    values = evaluate_units(model, base, sources, units, metric_fn, scored, k, progress, desc=f"{kind}-ablate {unit}",
                            task=task)
    attrs = {"method": f"{kind}-ablation", "unit": unit, "metric": str(getattr(metric, "__name__", metric)),
             "baseline": float(baseline.nanmean()), "baseline_per_prompt": tuple(baseline.double().tolist())}
    if not isinstance(task, LMTask):
        attrs["task"] = repr(task)
    return unit_table(units, values, unit, per_position, task.ids(pb), attrs)
