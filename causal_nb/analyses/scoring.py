"""Unit importance by many methods through one interface: ``score(model, prompts, method, unit)``.

Causal methods intervene (ablation, patching); attribution methods estimate those
interventions to first order (attribution patching, EAP-IG); gradient methods score a
unit by the loss's sensitivity to scaling it (Taylor |a.g|, Fisher E[(a.g)^2], Michel et al.
2019's head-mask gradient); correlational methods look at weights or activations only;
``random`` is the floor. Every method returns the same table: one row per unit, ``score``
(higher = more important) and per-prompt values where the method has them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.checks import reject_unused, strict
from ..engine.attribution import metric_gradients, unit_sums
from ..engine.common import prepare, scored_batch
from ..engine.metrics import get_metric
from ..engine.patching import ablate, patch
from ..engine.replay import capture
from ..engine.tasks import LMTask, as_task
from ..engine.units import unit_columns, units_in_range

__all__ = ["METHODS", "OPTION_USERS", "SCORE_UNITS", "load_scores", "save_scores", "score", "score_methods", "scores_path",
           "uses"]

METHODS = ("ablation", "patching", "attribution", "attribution-abs", "eap-ig", "acdc", "taylor", "fisher", "magnitude",
           "activation", "duplication", "random")
SCORE_UNITS = ("head", "neuron", "mlp", "block")
# Method-specific options of ``score`` and the methods that read them; any other method refuses
# them (n_tokens, seed and progress are run settings every method takes: a loop over METHODS
# passes them to all, and a method without prompts or randomness is unchanged by them).
OPTION_USERS = {
    "metric": ("ablation", "patching"),
    "kind": ("ablation", "attribution", "attribution-abs", "acdc"),
    "corrupted": ("patching", "eap-ig"),
    "steps": ("eap-ig",),
    "p": ("magnitude",),
    "threshold": ("acdc",),
    "batch_size": ("ablation", "patching"),
    "memory_budget_mb": ("ablation", "patching"),
    "unit_range": ("ablation", "patching"),
    "executor": ("ablation", "patching"),
}
_GRADIENT = ("attribution", "attribution-abs", "eap-ig", "taylor", "fisher")
_WHY = {**{("metric", m): "it scores the loss" for m in _GRADIENT},
        ("metric", "acdc"): "it scores the KL divergence, or a sentence-pair task's own metric",
        ("kind", "eap-ig"): "it interpolates towards corrupted=",
        ("kind", "patching"): "it patches in corrupted= activations",
        **{("corrupted", m): "it needs no second prompt set" for m in METHODS if m not in ("patching", "eap-ig")},
        **{("executor", m): "it scores every unit in one pass, which each worker would only repeat"
           for m in METHODS if m not in ("ablation", "patching", "acdc")},
        ("executor", "acdc"): "its walk tests each unit together with the units it removed before, across all layers"}
_HIGHER_IS_WORSE = {"kl", "loss"}
#: The methods that take a task other than the LM (``task=SentencePairTask(...)``); the others
#: read next-token logits or paired corrupted prompts (patching, EAP-IG, duplication's head
#: outputs, activation's block outputs).
TASK_METHODS = ("ablation", "attribution", "attribution-abs", "acdc", "taylor", "fisher", "magnitude", "random")


def _table(units, unit: str, scores: np.ndarray, per_prompt: np.ndarray | None, prompt_ids, attrs: dict) -> pd.DataFrame:
    cols = unit_columns(unit)
    df = pd.DataFrame([{c: u.coords().get(c) for c in cols} for u in units])
    df["score"] = scores
    df.attrs.update(attrs)
    if per_prompt is not None:
        df.attrs["per_prompt"] = pd.DataFrame(per_prompt, columns=list(prompt_ids))
    return df


def _damage(values: np.ndarray, baseline: np.ndarray, metric, worse=_HIGHER_IS_WORSE) -> np.ndarray:
    """Turn metric values into damage (higher = more important), per prompt (or pair)."""
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", "")
    return values - baseline if name in worse else baseline - values


def _weight_norms(model, unit: str, p: int) -> np.ndarray:
    """Norm of each unit's weights, layer-major in ``enumerate_units`` order."""

    def norm(w, dims):
        return torch.linalg.vector_norm(w.detach().float(), ord=p, dim=dims)

    def gated(mlp):
        try:
            return mlp.W_gate
        except Exception:  # noqa: BLE001 - models without a gated MLP raise here
            return None

    heads, neurons = [], []
    for blk in model.blocks:  # per layer: a physically pruned model's layers differ in shape
        att, mlp = blk.attn, blk.mlp
        # K/V weights are shared by a group of query heads under GQA: each head carries its share.
        group = att.W_Q.shape[0] // att.W_K.shape[0]
        kv = (norm(att.W_K, (1, 2)) + norm(att.W_V, (1, 2))).repeat_interleave(group) / group
        heads.append(norm(att.W_Q, (1, 2)) + norm(att.W_O, (1, 2)) + kv)  # [head]
        g = gated(mlp)
        neurons.append(norm(mlp.W_in, 0) + norm(mlp.W_out, 1) + (norm(g, 0) if g is not None else 0))  # [d_mlp]
    if unit == "head":
        return torch.cat(heads).numpy()
    if unit == "neuron":
        return torch.cat(neurons).numpy()
    mlps = torch.stack([n.sum() for n in neurons])
    return mlps.numpy() if unit == "mlp" else (torch.stack([h.sum() for h in heads]) + mlps).numpy()


def _unit_outputs(model, cap, unit: str):
    """Per unit and prompt: mean over real positions of the unit's output norm [unit, batch]."""
    cfg = model.cfg
    rows = []
    for layer in range(cfg.n_layers):
        if unit == "head":
            z = cap.acts[f"blocks.{layer}.attn.hook_z"]  # [batch pos head d_head]
            out = torch.einsum("bphd,hdm->bphm", z.float(), model.blocks[layer].attn.W_O.detach().float())
            rows.append(out.norm(dim=-1).permute(2, 0, 1))  # [head batch pos]
        elif unit == "neuron":
            rows.append(cap.acts[f"blocks.{layer}.mlp.hook_post"].float().abs().permute(2, 0, 1))
        elif unit == "mlp":
            rows.append(cap.acts[f"blocks.{layer}.hook_mlp_out"].float().norm(dim=-1)[None])
        else:
            a = cap.acts[f"blocks.{layer}.hook_attn_out"] + cap.acts[f"blocks.{layer}.hook_mlp_out"]
            rows.append(a.float().norm(dim=-1)[None])
    return torch.cat(rows)  # [unit batch pos]


def uses(method: str, option: str) -> bool:
    """Whether ``score(..., method)`` reads a method-specific option (see ``OPTION_USERS``)."""
    return option not in OPTION_USERS or method in OPTION_USERS[option]


@strict
def score(model, prompts=None, method: str | None = None, unit: str = "head", metric=None, kind: str | None = None,
          corrupted=None, n_tokens: int | None = None, steps: int | None = None, p: int | None = None, seed: int = 0,
          progress: bool | None = None, threshold: float | None = None, batch_size: int | None = None,
          memory_budget_mb: float | None = None, layers=None, task=None, executor=None,
          unit_range=None) -> pd.DataFrame:
    """Importance of every unit of a kind by one method; higher = more important.

    Args:
        prompts: PromptSet, list of strings or TokenBatch (the data the scores are about).
        method: one of ``METHODS``:
            ``"ablation"`` (metric damage when the unit is ``kind``-ablated; default metric KL),
            ``"patching"`` (damage when the unit takes ``corrupted``'s activations),
            ``"attribution"``/``"eap-ig"`` (first-order/integrated-gradient estimate of the
            ablation's loss increase; EAP-IG needs ``kind="resample"`` or ``corrupted``),
            ``"attribution-abs"`` (the mean over prompts of |that estimate|: a unit whose
            removal is estimated to help a prompt as much as another's it hurts still counts),
            ``"acdc"`` (KL increase when an ACDC walk, late to early, tested the unit with the
            units it had removed so far; ``threshold=``, default 0.01),
            ``"taylor"`` (mean |a.dL/da| over prompts), ``"fisher"`` (mean (a.dL/da)^2, the
            head-mask gradient of Michel et al.), ``"magnitude"`` (L``p`` norm of the unit's
            weights; GQA key/value weights shared out over their query heads),
            ``"activation"`` (mean norm of the unit's output), ``"duplication"`` (heads only:
            1 - the largest cosine similarity of its output to another head's), ``"random"``.
        unit: ``"head"``, ``"neuron"``, ``"mlp"`` or ``"block"``.
        metric: ablation and patching only (default ``"kl"`` for ablation, ``"logprob"`` for
            patching); the gradient methods score the loss, ACDC the KL.
        kind: ablation kind for ``ablation``/``attribution``/``attribution-abs``/``acdc``:
            ``"zero"``, ``"mean"`` (default), ``"resample"`` (not ACDC).
        corrupted: the paired prompts of ``patching`` and ``eap-ig``.
        steps: EAP-IG's interpolation points (default 5). p: ``magnitude``'s norm (default 2).
        threshold: ``acdc``'s tau (default 0.01).
        n_tokens, seed, progress: run settings every method takes (``seed`` draws ``random``
            and resample ablations).
        batch_size, memory_budget_mb: ablation and patching, as in ``patch``.
        layers: score only the units of these layers (default all), e.g. exact neuron ablation
            of a real model on a layer sample; recorded in ``attrs["layers"]``. Such a table
            covers part of the model, so ``prune`` refuses it. Not ACDC (its walk tests each
            unit with the units it removed before, across all layers).
        task: None, the decoder LM; ``cnb.SentencePairTask(pairs)`` (then no ``prompts``): a
            sentence encoder scored on the pairs' cosine, for the methods in ``TASK_METHODS``.
            ``ablation`` damage is the clean cosine minus the ablated one, per pair (default
            metric ``"cosine"``); ``attribution`` its first-order estimate; ``taylor``/``fisher``
            take the cosine's gradient. ``cnb.ImageClassificationTask(images, labels)``: a ViT
            scored on its images (ablation default metric ``"kl"``; the gradient methods take the
            label's cross-entropy, ``"loss"``). ``cnb.Seq2SeqTask(sources, targets)``: a T5's
            units per stack (``"enc_head"``, ``"cross_head"``, ``"dec_neuron"``...) by ablation,
            attribution(-abs), Taylor, Fisher (the gradient of each pair's mean target-token
            log-prob), patching (``corrupted=`` sources, as ``patch`` takes them), magnitude or
            random.
        executor: ablation and patching: split the units over workers (``"ray"``,
            ``core.executors.RayExecutor``, ``SubmititExecutor``...; see ``engine.split``) in
            contiguous ranges of about equal cost, one per job the executor runs at once, each
            worker loading the model once; the merged table (``per_prompt`` included) equals this
            process's. The other methods score every unit in one pass, and ACDC's walk crosses
            layers: they refuse it.
        unit_range: ablation and patching: ``(start, stop)``, only those units of the table (in
            its order, after ``layers``), one run each: one slice of a table split over workers
            (the slices' tables concatenated in order are the whole table; a distributed sweep
            splits its exact tables so, ``evaluation.sweep``). Such a table covers part of the
            model, as with ``layers``.

    Returns:
        DataFrame ``layer``, ``head``/``neuron``, ``score``; ``attrs["per_prompt"]`` (unit x
        prompt) where the method is per-prompt, and the settings in ``attrs``.

    Raises:
        ValueError: unknown method or unit (the message lists the valid ones); an option the
            method doesn't use (the message lists the methods that do).
    """
    if method is None:
        raise TypeError(f"score needs method=, one of {list(METHODS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {list(METHODS)}")
    task = as_task(task)
    lm = isinstance(task, LMTask)
    # a task may narrow the methods and name its own units (Seq2SeqTask: "enc_head", "cross_head"...)
    task_methods = getattr(task, "score_methods", TASK_METHODS)
    if not lm and method not in task_methods:
        raise ValueError(f"method={method!r} is not available with {task!r} (it reads next-token logits or paired "
                         f"corrupted prompts); methods with this task: {list(task_methods)}")
    score_units = getattr(task, "score_units", SCORE_UNITS)
    if unit not in score_units:
        raise ValueError(f"unknown unit {unit!r}; valid units: {list(score_units)}")
    reject_unused(method, {"metric": metric, "kind": kind, "corrupted": corrupted, "steps": steps, "p": p,
                           "threshold": threshold, "batch_size": batch_size, "memory_budget_mb": memory_budget_mb,
                           "unit_range": unit_range, "executor": executor},
                  OPTION_USERS, _WHY)
    kind = kind or "mean"
    steps = 5 if steps is None else steps
    p = 2 if p is None else p
    attrs = {"method": method, "unit": unit} if lm else {"method": method, "unit": unit, "task": repr(task)}
    if layers is not None:
        if method == "acdc":
            raise ValueError("method='acdc' scores every layer: its walk tests each unit together with the units it "
                             "removed before, so a layer subset would change the scores; drop layers=")
        attrs["layers"] = sorted({int(x) for x in layers})
    if unit_range is not None:
        attrs["unit_range"] = tuple(int(x) for x in unit_range)
    if executor is not None:
        if unit_range is not None:
            raise ValueError("executor= splits the units over workers itself: drop unit_range=")
        from ..engine.split import split_units  # noqa: PLC0415

        # the defaults filled in above go only to the methods that read them (the others refuse them)
        opts = {k: v for k, v in {"kind": kind, "steps": steps, "p": p}.items() if uses(method, k)}
        task.check_model(model, "score")
        return split_units(score, model, {
            "prompts": prompts, "method": method, "unit": unit, "metric": metric, "corrupted": corrupted,
            "n_tokens": n_tokens, "seed": seed, "threshold": threshold, "batch_size": batch_size,
            "memory_budget_mb": memory_budget_mb, "task": None if lm else task, **opts},
            task.units(model, unit, layers), layers, executor)
    task.check_model(model, "score")  # here too: "magnitude" and "random" never reach prepare's check
    every = task.units(model, unit)
    units = units_in_range(task.units(model, unit, layers), unit_range)
    # the whole-model methods below compute every unit; `pick` keeps the requested layers' rows
    pick = np.array([u.layer in set(attrs["layers"]) if "layers" in attrs else True for u in every])
    if method == "random":
        rng = np.random.default_rng(seed)
        return _table(units, unit, rng.random(len(every))[pick], None, (), {**attrs, "seed": seed})
    if method == "magnitude":
        norms = task.weight_norms(model, unit, p) if hasattr(task, "weight_norms") else _weight_norms(model, unit, p)
        return _table(units, unit, norms[pick], None, (), {**attrs, "p": p})
    pb = task.prepare(model, prompts, n_tokens)
    if method == "duplication":
        if unit != "head":
            raise ValueError("method='duplication' scores attention heads only (unit='head')")
        from .duplication import head_similarity, uniqueness  # noqa: PLC0415

        sim = head_similarity(model, pb, kind="cosine")
        return _table(units, unit, uniqueness(sim)[pick], None, (), {**attrs, "similarity": "cosine"})
    if method == "ablation":
        metric = metric or task.ablation_metric
        df = ablate(model, pb if lm else None, unit=unit, kind=kind, metric=metric,
                    seed=seed if kind == "resample" else None, n_tokens=n_tokens, progress=progress,
                    batch_size=batch_size, memory_budget_mb=memory_budget_mb, layers=layers, task=None if lm else task,
                    unit_range=unit_range)
        per = df.attrs["per_prompt"].to_numpy()
        dmg = _damage(per, np.asarray(df.attrs["baseline_per_prompt"]), metric, task.higher_is_worse)
        return _table(units, unit, dmg.mean(1), dmg, task.ids(pb), {**attrs, "kind": kind, "metric": str(metric)})
    if method == "acdc":
        from .acdc import acdc_scores  # noqa: PLC0415

        df = acdc_scores(model, pb if lm else None, unit, kind=kind,
                         threshold=0.01 if threshold is None else threshold, n_tokens=n_tokens, progress=progress,
                         task=None if lm else task)
        df.attrs["kind"] = kind
        return df
    if method == "patching":
        if corrupted is None:
            raise ValueError("method='patching' needs corrupted prompts (corrupted=...), paired with prompts")
        metric = metric or task.patch_metric
        opts = {"unit": unit, "metric": metric, "direction": "noise", "progress": progress, "batch_size": batch_size,
                "memory_budget_mb": memory_budget_mb, "layers": layers, "unit_range": unit_range}
        # a task that carries its clean inputs (Seq2SeqTask) pairs corrupted= with them itself
        df = patch(model, pb, corrupted, n_tokens=n_tokens, **opts) if lm else \
            patch(model, corrupted=corrupted, task=task, **opts)
        per = df.attrs["per_prompt"].to_numpy()
        dmg = _damage(per, np.asarray(df.attrs["clean_per_prompt"]), metric, task.higher_is_worse)
        return _table(units, unit, dmg.mean(1), dmg, task.ids(pb), {**attrs, "metric": str(metric)})
    # activation norms are read for every layer (then picked); the gradient methods hook only `units`
    hooks = sorted({e.hook for u in (every if method == "activation" else units) for e in u.edits})
    if lm:
        scored, loss = scored_batch(pb), get_metric("loss")
    else:  # the task's own metric; its gradient's sign is flipped below where higher is better
        scored, loss = task.scoring(model, pb), task.metric(task.gradient_metric)
    gtask = None if lm else task
    # the estimate of a metric change becomes a damage (loss increase, or cosine drop)
    sign = 1.0 if task.gradient_metric in task.higher_is_worse else -1.0
    if method == "activation":
        with torch.no_grad():
            cap = capture(model, pb.tokens, hooks)
        norms = _unit_outputs(model, cap, unit)  # [unit batch pos]
        m = pb.mask.float()[None]
        per = ((norms * m).sum(-1) / m.sum(-1)).double().cpu().numpy()[pick]
        return _table(units, unit, per.mean(1), per, pb.ids, attrs)
    if method in ("taylor", "fisher"):
        # the gradient pass's own activations: no separate forward
        grads, acts, _ = metric_gradients(model, pb.tokens, set(hooks), loss, scored, None, keep_acts=True,
                                          task=gtask)
        per = task.per_value(unit_sums({h: (acts[h] * grads[h]).double() for h in hooks}, units)).numpy()
        # a.g is dL/dm for a mask m scaling the unit's output, at m = 1
        per = np.abs(per) if method == "taylor" else per**2
        return _table(units, unit, per.mean(1), per, task.ids(pb),
                      attrs if lm else {**attrs, "metric": str(loss.__name__)})
    # attribution / eap-ig: first-order estimate of the ablation's loss increase
    from ..engine.attribution import attribution_scores  # noqa: PLC0415
    from ..engine.common import ablation_sources, masked_means  # noqa: PLC0415

    if method != "eap-ig":
        # one forward + backward gives the activations, their mean and the gradients
        grads, acts, _ = metric_gradients(model, pb.tokens, set(hooks), loss, scored, None, keep_acts=True,
                                          task=gtask)
        with torch.no_grad():
            if kind != "mean":
                sources = ablation_sources(model, kind, pb, hooks, None, n_tokens, seed, task=gtask)
            elif hasattr(task, "means_of"):  # hooks under different masks (an encoder-decoder's two stacks)
                sources = task.means_of(acts, pb, hooks)
            else:
                sources = masked_means(acts, pb.mask, hooks)
        est, _ = attribution_scores(model, pb.tokens, sources, acts, units, loss, scored, 0, grads=grads)
        # estimated loss increase per prompt (cosine drop per pair)
        per = est.numpy() if lm else sign * task.per_value(est).numpy()
        if method == "attribution-abs":
            per = np.abs(per)
        return _table(units, unit, per.mean(1), per, task.ids(pb),
                      {**attrs, "kind": kind, "metric": "loss" if lm else str(loss.__name__)})
    # eap-ig: integrated gradients on the way from the prompts to a source input
    if corrupted is None:
        if kind == "resample":
            raise ValueError("method='eap-ig' with resample ablation: pass the resampled prompts as corrupted=...")
        raise ValueError("method='eap-ig' needs a source input: pass corrupted=... (zero/mean ablations have none)")
    src_tokens = prepare(model, corrupted, n_tokens).tokens
    with torch.no_grad():
        cap = capture(model, pb.tokens, hooks)
        sources = capture(model, src_tokens, hooks).acts
    est, _ = attribution_scores(model, pb.tokens, sources, cap.acts, units, loss, scored, steps, source_tokens=src_tokens)
    per = est.numpy()  # estimated loss increase per prompt
    return _table(units, unit, per.mean(1), per, pb.ids, {**attrs, "kind": kind, "metric": "loss"})


def scores_path(root, model_name: str, domain: str, method: str, unit: str) -> Path:
    """``<root>/<model>/<domain>/<method>_<unit>.json``."""
    from .reverse import model_key  # noqa: PLC0415

    return Path(root) / model_key(model_name) / domain / f"{method}_{unit}.json"


@strict
def save_scores(df: pd.DataFrame, root, model, domain: str, prompts=None) -> Path:
    """Write a score table with provenance (model, tokenizer fingerprint, prompt hash, settings)."""
    from ..core.io import save_json  # noqa: PLC0415
    from .reverse import tokenizer_fingerprint  # noqa: PLC0415

    name = getattr(model, "causal_nb_source", {}).get("name", "model")
    attrs = {k: v for k, v in df.attrs.items() if k != "per_prompt"}
    per = df.attrs.get("per_prompt")
    # Rounded to 9 decimals: far below any effect studied, and a rerun on another CPU (whose
    # last float bits differ) then rewrites the committed files identically.
    payload = {"model": name, "tokenizer": tokenizer_fingerprint(model), "domain": domain,
               "prompt_sha256": getattr(prompts, "sha256", None), "settings": attrs,
               "scores": df.round(9).to_dict(orient="records"),
               "per_prompt": per.round(9).to_dict(orient="list") if per is not None else None}
    return save_json(payload, scores_path(root, name, domain, attrs.get("method", "unknown"), attrs.get("unit", "unit")))


@strict
def load_scores(path, model=None) -> pd.DataFrame:
    """Read a saved score table; with ``model``, refuse scores computed for another tokenizer."""
    from ..core.io import load_json  # noqa: PLC0415
    from .reverse import tokenizer_fingerprint  # noqa: PLC0415

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no saved scores; run notebooks/02_causal_scoring first "
                                "(or causal_nb.save_scores)")
    try:
        d = load_json(path)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not a score file: not JSON ({e}); score files are written by "
                         "causal_nb.save_scores") from None
    missing = [k for k in ("model", "tokenizer", "settings", "scores") if not isinstance(d, dict) or k not in d]
    if missing:
        raise ValueError(f"{path} is not a score file: it lacks {missing} (save_scores writes model, tokenizer, "
                         "domain, settings, scores, per_prompt)")
    if model is not None and d["tokenizer"] != tokenizer_fingerprint(model):
        raise ValueError(f"{path} holds scores for {d['model']!r} (tokenizer {d['tokenizer']}), not for this model")
    df = pd.DataFrame(d["scores"])
    df.attrs.update(d["settings"])
    if d.get("per_prompt"):
        df.attrs["per_prompt"] = pd.DataFrame(d["per_prompt"])
    return df


def score_methods(model, prompts=None, methods=("ablation", "magnitude", "random"), unit: str = "head",
                  options: dict | None = None, save_to=None, domain: str | None = None, **common) -> dict[str, pd.DataFrame]:
    """Score one unit kind by several methods with shared settings (and save each table).

    Args:
        methods: names from ``METHODS``, scored in this order.
        options: per-method keyword arguments, e.g. ``{"acdc": {"threshold": 0.1},
            "ablation": {"layers": [1, 15, 28]}}``; a key that is not in ``methods`` is an error.
        save_to, domain: write each table with ``save_scores(df, save_to, model, domain, prompts)``.
        **common: ``score`` keywords for every method that reads them: run settings
            (``n_tokens``, ``seed``, ``progress``, ``task``) go to all; a method-specific option
            (``corrupted``, ``kind``, ``metric``...: ``OPTION_USERS``) only to the methods that use
            it, so ``corrupted=`` reaches ``patching`` and ``eap-ig`` and no other.

    Returns:
        ``{method: score table}`` in the order of ``methods``.
    """
    import inspect  # noqa: PLC0415

    options = dict(options or {})
    known = set(inspect.signature(score).parameters) - {"model", "prompts", "method", "unit"}
    bad = sorted(set(common) - known)
    if bad:
        raise TypeError(f"score_methods: unknown keyword(s) {bad}; score takes {sorted(known)}")
    stray = sorted(set(options) - set(methods))
    if stray:
        raise ValueError(f"options for {stray}, which are not in methods {list(methods)}: add them or drop the options")
    if (save_to is None) != (domain is None):
        raise ValueError("save_to= and domain= go together: scores are saved under <save_to>/<model>/<domain>/")
    out = {}
    for method in methods:
        kw = {k: v for k, v in common.items() if uses(method, k)}
        out[method] = df = score(model, prompts, method, unit=unit, **{**kw, **options.get(method, {})})
        if save_to is not None:
            save_scores(df, save_to, model, domain, prompts)
    return out
