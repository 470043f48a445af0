"""What patching, ablation, attribution and the analyses above share: tokenised inputs on the
model's device, scored positions, mean activations, ablation sources and the per-unit table.

Kept below ``patching`` and ``attribution`` so that neither imports the other's internals.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..core.checks import check_n_tokens, strict
from ..data.prompts import PromptSetError, TokenBatch, as_prompt_set
from ..models.families import refuse_encoder
from .metrics import ScoredBatch
from .replay import capture
from .units import unit_columns

__all__ = ["DEFAULT_N_TOKENS", "ablation_sources", "masked_means", "mean_activations", "prepare", "scored_batch",
           "unit_table"]

DEFAULT_N_TOKENS = 64


def _device(model):
    return next(model.parameters()).device


@strict
def prepare(model, prompts, n_tokens: int | None = None, pad: bool = True) -> TokenBatch:
    """Tokenise a PromptSet or list of strings for this model, on its device.

    A ``TokenBatch`` (already tokenised, e.g. synthetic corruptions) passes through unchanged.
    """
    check_n_tokens(n_tokens)
    refuse_encoder(model)  # every analysis tokenises here; an encoder has no next-token logits to read
    if isinstance(prompts, Tensor) or hasattr(prompts, "images") or \
            (isinstance(prompts, TokenBatch) and prompts.tokens.is_floating_point()):
        raise PromptSetError("these prompts are images (a float tensor / ImageSet), but the LM task reads text: pass "
                             "a list of strings or a PromptSet; images go to a vision transformer with "
                             "task=cnb.ImageClassificationTask(images, labels)")
    if isinstance(prompts, TokenBatch):
        if len(prompts) == 0:
            raise PromptSetError("the token batch is empty")
        return prompts.to(_device(model))
    ps = as_prompt_set(prompts)
    return ps.tokenize(model, n_tokens or DEFAULT_N_TOKENS, pad=pad).to(_device(model))


def scored_batch(batch: TokenBatch, positions=None) -> ScoredBatch:
    """Scored positions (default: every position with a real next token) and their targets."""
    n = batch.tokens.shape[1]
    pos = torch.arange(n - 1) if positions is None else torch.as_tensor(list(positions), dtype=torch.long)
    if pos.numel() == 0 or pos.min() < 0 or pos.max() >= n - 1:
        bad = [] if pos.numel() == 0 else [int(p) for p in pos if not 0 <= p < n - 1]
        raise ValueError(f"scored_positions= {bad or 'empty'}: scored positions must lie in 0..{n - 2} (position i "
                         f"predicts token i + 1 of the {n}-token prompts); use smaller positions or a larger n_tokens")
    pos = pos.to(batch.tokens.device)
    return ScoredBatch(pos, batch.tokens[:, pos + 1], batch.mask[:, pos + 1])


def unit_table(units, values: torch.Tensor, kind: str, per_position: bool, prompt_ids, attrs: dict) -> pd.DataFrame:
    vals = values.numpy().astype(np.float64)
    finite = np.isfinite(vals)
    if not finite.all():
        warnings.warn(f"{(~finite).sum()} non-finite metric values (NaN/inf) in {(~finite.all(1)).sum()} units; "
                      "they are left out of the means and counted in the 'n_nonfinite' column", stacklevel=3)
    with np.errstate(invalid="ignore"):
        mean = np.where(finite.any(1), np.nanmean(np.where(finite, vals, np.nan), axis=1), np.nan)
    cols = unit_columns(kind, per_position)
    df = pd.DataFrame([{c: u.coords().get(c) for c in cols} for u in units])
    df["value"] = mean
    if not finite.all():
        df["n_nonfinite"] = (~finite).sum(1)
    df.attrs.update(attrs)
    df.attrs["per_prompt"] = pd.DataFrame(vals, columns=list(prompt_ids))
    return df


@torch.no_grad()
def mean_activations(model, batch: TokenBatch, hooks, task=None) -> dict[str, Tensor]:
    """Each hook's activation averaged over prompts and real (unpadded) positions.

    ``task``: the forward to run (None: the LM's; ``SentencePairTask`` passes the attention mask).

    Returns:
        hook name -> tensor of shape [1, 1, ...] (the activation's trailing dims), float32,
        broadcastable against [batch, pos, ...].
    """
    return masked_means(capture(model, batch.tokens, hooks, task=task).acts, batch.mask, hooks)


def masked_means(acts: dict[str, Tensor], mask: Tensor, hooks) -> dict[str, Tensor]:
    """``mean_activations`` from activations already at hand ([batch, pos, ...] each)."""
    m = mask.to(torch.float32)
    out = {}
    for h in hooks:
        a = acts[h].float()
        w = m.view(*m.shape, *([1] * (a.dim() - 2)))
        out[h] = (a * w).sum((0, 1), keepdim=True) / w.sum((0, 1), keepdim=True)
    return out


def ablation_sources(model, kind: str, pb: TokenBatch, hooks, reference, n_tokens, seed: int, task=None):
    """Replacement activations per hook for a zero, mean or resample ablation of ``pb``.

    With a task that carries its inputs (``SentencePairTask``) the mean runs its forward and a
    ``reference`` goes through its ``reference_batch``; resample ablation is LM-only.
    """
    if kind == "zero":
        return {h: torch.zeros(1) for h in hooks}
    if task is not None and getattr(task, "carries_inputs", False):
        if kind == "resample" and hasattr(task, "resample_tokens"):  # images: another image's activations
            return capture(model, task.resample_tokens(model, pb, reference, seed), hooks, task=task).acts
        if kind != "mean":
            raise ValueError(f"{kind} ablation is not available with {task!r}: another sentence's activations "
                             "don't line up position by position (sentences differ in length); use kind='zero' or "
                             "'mean'")
        batch = pb if reference is None else task.reference_batch(model, reference)
        if hasattr(task, "mean_activations"):  # a task whose hooks differ in positions (engine.seq2seq)
            return task.mean_activations(model, batch, hooks)
        return mean_activations(model, batch, hooks, task=task)
    if kind == "mean":
        return mean_activations(model, pb if reference is None else prepare(model, reference, n_tokens), hooks)
    if kind == "resample":
        if reference is None:
            if len(pb) < 2:
                raise ValueError("resample ablation needs at least 2 prompts (or a reference set)")
            g = torch.Generator().manual_seed(seed)
            perm = torch.randperm(len(pb), generator=g)
            # A derangement: each prompt gets another prompt's activations.
            fixed = perm == torch.arange(len(pb))
            perm[fixed] = (perm[fixed] + 1) % len(pb)
            tokens = pb.tokens[perm.to(pb.tokens.device)]
        else:
            rb = prepare(model, reference, n_tokens)
            idx = torch.arange(len(pb)) % len(rb)
            tokens = rb.tokens[idx.to(rb.tokens.device)]
        return capture(model, tokens, hooks).acts
    raise ValueError(f"unknown ablation kind {kind!r}; valid: 'zero', 'mean', 'resample'")
