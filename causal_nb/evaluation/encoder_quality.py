"""Evaluate a (pruned) sentence encoder on a pair task, and sweep methods x sparsities on it.

``evaluate(model, task=SentencePairTask(pairs), full_model=...)`` comes here. The pairs'
embeddings are read through the task (the same forward, padding mask and pooling as
``ablate``/``score``); each pair's cosine is the per-"prompt" value. Against the unpruned
model: ``cos_drift`` (|cosine - the full model's cosine|), ``cos_retained`` (1 - drift: 1 =
the full model's cosine, higher is better, which is what ``stats.h2_table`` compares) and
``emb_agreement`` (the cosine between a sentence's pruned and full embeddings, averaged over
the pair's two sentences). Against gold scores (a pairs table with ``score``): Spearman and,
for binary gold, ROC AUC (``encoders.similarity_stats``). Cost: the encoder's parameters (the
masked-LM head the bridge carries is never run for embeddings and is not counted), forward
FLOPs per token from the actual shapes, and the median latency of the bare encoder's forward
on random token batches (``encoder_latency_ms``; peak memory is not measured for encoders).

``encoder_sweep`` prunes one model per method x sparsity and evaluates each: the per-pair
lists in its rows feed ``stats.h2_table`` / ``h2_summary`` and ``findings.derive_h2``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..core.checks import strict
from ..engine.tasks import pair_cosine, separation_weights
from ..models.hf_encoders import encoder_base, encoder_layers, is_encoder, plain_encoder
from .encoders import similarity_stats
from .timing import median_ms

__all__ = ["EncoderRun", "encoder_flops_per_token", "encoder_full_run", "encoder_latency_ms", "encoder_params",
           "encoder_sweep", "evaluate_encoder", "task_embeddings"]


@dataclass(frozen=True)
class EncoderRun:
    """The unpruned encoder's embeddings of a task's sentences, computed once for many
    ``evaluate`` calls (``evaluate(pruned, task=task, full_model=run)``).

    Attributes:
        sentences: the 2N sentences, pairs interleaved (checked against each use).
        embeddings: [2N, d_model], float64 on the CPU.
    """

    sentences: tuple[str, ...]
    embeddings: Tensor

    def for_task(self, task) -> Tensor:
        if tuple(task.sentences()) != self.sentences:
            raise ValueError("full_model= was computed on other pairs than the ones evaluated: make it with "
                             "encoder_full_run(model, the same task)")
        return self.embeddings


@torch.no_grad()
def task_embeddings(model, task, batch_size: int = 64) -> Tensor:
    """The task's sentence embeddings [2N, d] (float64, CPU): its forward, pooling and norm.

    Sentences are embedded in batches of similar length (sorted by token count, each batch cut
    to its longest sentence): one padded batch of hundreds of sentences costs several times the
    tokens, since one long sentence pads them all. Padding is masked, so the embeddings are the
    one-batch ones up to float rounding (tests/unit/test_prune_encoders.py)."""
    from ..engine.tasks import PairBatch  # noqa: PLC0415
    from ..models.embeddings import pooling_config  # noqa: PLC0415

    tb = task.prepare(model)
    lengths = tb.mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    mode = pooling_config(model)["mode"]
    out = torch.empty(len(lengths), model.cfg.d_model, dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        n = int(lengths[idx].max())
        mask = tb.mask[idx, :n]
        out[idx.cpu()] = task.run(model, tb.tokens[idx, :n], PairBatch(mask, mode, task.normalize)).double().cpu()
    return out


def encoder_full_run(model, task) -> EncoderRun:
    """The unpruned encoder's embeddings of ``task``'s sentences (an ``EncoderRun``)."""
    if isinstance(model, EncoderRun):
        return model
    if not callable(model) or not hasattr(model, "parameters"):
        raise TypeError(f"full_model= is the unpruned encoder (or its encoder_full_run), got {type(model).__name__}")
    task.check_model(model, "evaluate")
    return EncoderRun(tuple(task.sentences()), task_embeddings(model, task))


def _plain(model):
    return plain_encoder(model, share=True) if hasattr(model, "original_model") else model


def encoder_params(model) -> int:
    """Parameters of the sentence encoder (embeddings and layers; the masked-LM head excluded)."""
    return sum(p.numel() for p in encoder_base(_plain(model)).parameters())


def encoder_flops_per_token(model, n_tokens: int = 128) -> float:
    """Forward FLOPs per token of the encoder (multiply-add = 2) at ``n_tokens`` tokens.

    Every linear weight of the encoder's layers counts 2 x its size (embedding lookups 0; the
    masked-LM head is not run for embeddings); bidirectional attention adds 2 x 2 x (query
    width) x ``n_tokens`` per layer (every query reads every key), for the scores and the
    weighted sum. Pruned layers count at their pruned widths.
    """
    base = encoder_base(_plain(model))
    flops = sum(2.0 * m.weight.numel() for m in base.encoder.modules() if isinstance(m, torch.nn.Linear))
    for layer in encoder_layers(base):
        flops += 2 * 2 * layer.attention.output.dense.in_features * n_tokens
    return flops


@torch.no_grad()
def encoder_latency_ms(model, batch_size: int, n_tokens: int = 128, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time (ms) of one forward of the bare encoder (``BertModel``: what a sentence
    embedding runs, without the bridge's hooks or the masked-LM head) on random tokens."""
    base = encoder_base(_plain(model))
    dev = next(base.parameters()).device
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(1, base.config.vocab_size, (batch_size, n_tokens), generator=gen).to(dev)
    mask = torch.ones_like(x)
    return median_ms(lambda: base(input_ids=x, attention_mask=mask), dev, repeats, warmup)


def evaluate_encoder(model, task, full_model=None, latency_batches=(1, 32), latency_tokens: int = 128,
                     repeats: int = 5, n_boot: int = 1000, seed: int = 0, progress: bool | None = None) -> dict:
    """``evaluate`` for an encoder on a pair task (see the module docstring).

    Args:
        task: ``SentencePairTask(pairs)``; with a ``score`` column Spearman (and ROC AUC for 0/1
            gold) are reported, with a ``kind`` column the AUC per negative kind too.
        full_model: the unpruned encoder or its ``encoder_full_run(model, task)``.
        latency_batches: sentence batch sizes timed, each a median of ``repeats`` forwards of
            the bare encoder on ``latency_tokens`` tokens (capped at its position limit).
        n_boot: bootstrap resamples for Spearman's interval (0: none).

    Returns:
        ``cosine`` (mean pair cosine), ``per_prompt_cosine``; with gold ``spearman``,
        ``spearman_ci``, ``roc_auc`` (binary gold), ``roc_auc_by_kind``, ``separation`` (mean
        cosine of gold-1 pairs minus gold-0 pairs; graded gold: the slope of cosine on gold) and
        ``per_prompt_separation`` (each pair's weighted cosine, ``engine.tasks.pair_separation``);
        with a full model ``cos_drift``, ``cos_retained``, ``emb_agreement`` and, with gold,
        ``separation_retained`` (pruned / full separation; NaN if the full model's is <= 0), with
        their ``per_prompt_`` lists; and
        ``params``, ``flops_per_token``, ``latency_ms`` / ``latency_ms_b<N>``.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    from ..core.env import progress_enabled  # noqa: PLC0415

    task.check_model(model, "evaluate")
    emb = task_embeddings(model, task)
    cos = pair_cosine(emb, None).numpy()
    out = {"cosine": float(cos.mean()), "n_pairs": len(cos)}
    weight = None
    if task.gold is not None:
        gold = np.asarray(task.gold, dtype=float)
        if np.isnan(gold).any():
            raise ValueError("some pairs have no gold score (NaN): drop them or build the task without the score column")
        if np.unique(gold).size > 1:
            out.update(similarity_stats(cos, gold, task.kinds, n_boot, seed))
            # each pair's share of the separation (mean = slope of cosine on gold), engine.tasks' metric
            weight = separation_weights(gold).numpy()
            out["separation"] = float((weight * cos).mean())
            out["per_prompt_separation"] = (weight * cos).tolist()
    if full_model is not None:
        ref = encoder_full_run(full_model, task).for_task(task)
        full_cos = pair_cosine(ref, None).numpy()
        drift = np.abs(cos - full_cos)
        agree = torch.nn.functional.cosine_similarity(emb, ref, dim=-1).view(-1, 2).mean(-1).numpy()
        out.update({"cos_drift": float(drift.mean()), "cos_retained": float(1 - drift.mean()),
                    "emb_agreement": float(agree.mean()), "per_prompt_cos_drift": drift.tolist(),
                    "per_prompt_cos_retained": (1 - drift).tolist(), "per_prompt_emb_agreement": agree.tolist()})
        if weight is not None:
            # the share of the full model's separation kept, per pair (mean = pruned / full separation);
            # NaN where the full model does not separate the pairs at all (a share of nothing)
            full_sep = float((weight * full_cos).mean())
            share = weight * cos / full_sep if full_sep > 0 else np.full(len(cos), np.nan)
            out["separation_retained"] = float(share.mean())
            out["per_prompt_separation_retained"] = share.tolist()
    hf = _plain(model)
    base = encoder_base(hf)
    tokens = min(latency_tokens, int(base.config.max_position_embeddings))
    out["params"] = encoder_params(hf)
    out["flops_per_token"] = encoder_flops_per_token(hf, tokens)
    bar = progress_enabled(progress) and len(latency_batches) > 0
    for i, b in enumerate(tqdm(latency_batches, desc="latency", disable=not bar, leave=False)):
        ms = encoder_latency_ms(base, b, tokens, repeats)
        out[f"latency_ms_b{b}"] = ms
        if i == 0:
            out["latency_ms"] = ms
    out["per_prompt_cosine"] = cos.tolist()
    return out


def _unit_of(tables: list[pd.DataFrame]) -> str:
    kinds = ["head" if "head" in t.columns else "neuron" if "neuron" in t.columns else t.attrs.get("unit", "block")
             for t in tables]
    return kinds[0] if len(set(kinds)) == 1 else "both"


@strict
def encoder_sweep(model, scores: dict, sparsities, pairs_eval, physical: bool = True, budget: str = "global",
                  fill: str = "zero", reference=None, latency: bool = False, name: str = "pairs",
                  model_name: str | None = None, n_boot: int = 0, progress: bool | None = None) -> pd.DataFrame:
    """Prune an encoder by each method's scores at each sparsity and evaluate it on held-out pairs.

    Args:
        model: the unpruned encoder bridge.
        scores: method -> a score table (``score(model, task=..., method=..., unit=...)``) or a
            list of tables (heads and neurons pruned together).
        sparsities: shares removed, each in [0, 1).
        pairs_eval: the held-out pairs (a DataFrame, or a ``SentencePairTask``), disjoint from the
            pairs the scores were computed on.
        fill: ``"zero"`` or ``"mean"``; ``"mean"`` needs ``reference`` (the scoring pairs: the
            held-out pairs' own means would leak them into the pruned model).
        latency: time each pruned model (``latency_ms`` at batch sizes 1 and 32).
        name: the prefix of the evaluation columns (``<name>_per_prompt_cos_retained``...), as
            ``sweep`` prefixes its domains.
        model_name: the ``model`` column (default: the name the model was loaded by).
        n_boot: bootstrap resamples for each Spearman interval (0: none).

    Returns:
        One row per method x sparsity: ``model, method, unit, sparsity, seed`` (0), ``params``,
        ``flops_per_token``, latencies, ``seconds`` and ``<name>_<key>`` for every ``evaluate``
        key (per-pair lists included), ready for ``stats.h2_table(rows, "ablation",
        quality=f"{name}_per_prompt_cos_retained")``.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    from ..core.env import progress_enabled  # noqa: PLC0415
    from ..engine.tasks import SentencePairTask  # noqa: PLC0415
    from ..pruning.structure import prune  # noqa: PLC0415

    if not is_encoder(model):
        raise ValueError("encoder_sweep prunes a sentence encoder (BERT); for a decoder LM use cnb.sweep(config)")
    if not isinstance(scores, dict) or not scores:
        raise TypeError("scores must be a dict method -> score table (or list of tables), e.g. "
                        "{'ablation': score(model, task=t, method='ablation'), 'magnitude': ...}")
    if fill == "mean" and reference is None:
        raise ValueError("fill='mean' in encoder_sweep needs reference= (the scoring pairs): the held-out pairs' "
                         "own means would leak them into the pruned models")
    task = pairs_eval if isinstance(pairs_eval, SentencePairTask) else SentencePairTask(pairs_eval)
    full = encoder_full_run(model, task)
    mname = model_name or getattr(model, "causal_nb_source", {}).get("name", "model")
    cells = [(m, float(s)) for m in scores for s in sparsities]
    rows = []
    for method, s in tqdm(cells, desc="encoder sweep", disable=not progress_enabled(progress)):
        t0 = time.time()
        tables = scores[method] if isinstance(scores[method], (list, tuple)) else [scores[method]]
        pruned = prune(model, list(tables), s, physical=physical, budget=budget, fill=fill, reference=reference,
                       task=task)
        ev = evaluate_encoder(pruned, task, full_model=full, latency_batches=(1, 32) if latency else (), n_boot=n_boot,
                              progress=False)
        row = {"model": mname, "method": method, "unit": _unit_of(list(tables)), "sparsity": s, "seed": 0}
        for k, v in ev.items():
            row[k if k in ("params", "flops_per_token") or k.startswith("latency") else f"{name}_{k}"] = v
        row["seconds"] = round(time.time() - t0, 2)
        rows.append(row)
    return pd.DataFrame(rows)
