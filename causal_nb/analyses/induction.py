"""Induction heads (Olsson et al. 2022) on repeated random token sequences.

A batch is BOS followed by ``seq_len`` random tokens repeated once: positions 1..seq_len hold
the first repeat, seq_len+1..2*seq_len the second. An induction head at a query position i of
the second repeat attends to the token *after* the earlier occurrence of token i, i.e. to key
position i - seq_len + 1, and copies it, so the second repeat is predictable and its loss
drops. The score is TransformerLens/ARENA's: mean attention on that stripe (restricted here to
queries of the second repeat; ARENA's diagonal also holds two first-repeat queries).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..data.prompts import TokenBatch
from ..engine.common import mean_activations
from ..engine.replay import joint_hooks
from ..engine.units import Edit, Unit

__all__ = ["head_pattern_stats", "head_units", "induction_ablation", "induction_losses", "induction_scores", "repeated_tokens"]


def repeated_tokens(model, seq_len: int = 20, n_seqs: int = 8, seed: int = 0) -> TokenBatch:
    """``n_seqs`` rows of BOS + ``seq_len`` random tokens + the same tokens again.

    Tokens are drawn without replacement within a row from the vocabulary minus the
    tokenizer's special tokens (so a token repeats only through the repetition).
    """
    if seq_len < 2 or n_seqs < 1:
        raise ValueError(f"seq_len must be >= 2 and n_seqs >= 1, got seq_len={seq_len}, n_seqs={n_seqs}")
    tok = model.tokenizer
    special = set(getattr(tok, "all_special_ids", []) or [])
    pool = np.array([i for i in range(model.cfg.d_vocab) if i not in special])
    if len(pool) < seq_len:
        raise ValueError(f"seq_len={seq_len} exceeds the {len(pool)} non-special tokens of the vocabulary")
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    rng = np.random.default_rng(seed)
    rows = [rng.choice(pool, seq_len, replace=False) for _ in range(n_seqs)]
    tokens = torch.tensor(np.stack([np.concatenate([[bos], r, r]) for r in rows]), dtype=torch.long)
    dev = next(model.parameters()).device
    return TokenBatch(tokens.to(dev), torch.ones_like(tokens, dtype=torch.bool).to(dev),
                      tuple(f"rep{i}" for i in range(n_seqs)))


def _seq_len(batch: TokenBatch) -> int:
    n = batch.tokens.shape[1]
    if n % 2 == 0 or n < 5:
        raise ValueError(f"a repeated-token batch has 1 + 2 * seq_len positions, got {n}; build it with "
                         "repeated_tokens()")
    s = (n - 1) // 2
    if not torch.equal(batch.tokens[:, 1 : s + 1], batch.tokens[:, s + 1 :]):
        raise ValueError("the batch's second half does not repeat its first half; build it with repeated_tokens()")
    return s


@torch.no_grad()
def head_pattern_stats(model, tokens: Tensor, stats: Callable[[Tensor], dict[str, Tensor]]) -> pd.DataFrame:
    """One row per layer and head of statistics of the attention patterns on ``tokens``.

    Args:
        stats: each layer's ``attn.hook_pattern`` ([batch, head, query, key], as float32) ->
            column name -> one value per head ([head]).
    """
    rows: list[dict] = []

    def save(layer):
        def fn(pat, hook):
            vals = {k: v.tolist() for k, v in stats(pat.float()).items()}
            rows.extend({"layer": layer, "head": h, **{k: v[h] for k, v in vals.items()}} for h in range(pat.shape[1]))
            return pat

        return fn

    model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{la}.attn.hook_pattern", save(la))
                                            for la in range(model.cfg.n_layers)])
    return pd.DataFrame(rows).sort_values(["layer", "head"]).reset_index(drop=True)


def induction_scores(model, batch: TokenBatch) -> pd.DataFrame:
    """Per head: mean attention from query i of the second repeat to key i - seq_len + 1.

    Returns:
        DataFrame ``layer``, ``head``, ``score`` (in [0, 1]); also ``prev_token`` (attention
        to key i - 1) and ``duplicate`` (to key i - seq_len, the earlier copy of the token).
    """
    s = _seq_len(batch)
    q = torch.arange(s + 1, 2 * s + 1, device=batch.tokens.device)

    def stats(p):  # p[:, :, q, k] is [batch, head, query]
        return {"score": p[:, :, q, q - s + 1].mean((0, 2)), "prev_token": p[:, :, q, q - 1].mean((0, 2)),
                "duplicate": p[:, :, q, q - s].mean((0, 2))}

    return head_pattern_stats(model, batch.tokens, stats)


def head_units(heads) -> list[Unit]:
    """Head units (whole-sequence ``hook_z`` slices) for ``(layer, head)`` pairs."""
    return [Unit("head", int(la), (Edit(f"blocks.{int(la)}.attn.hook_z", (int(h),)),), head=int(h))
            for la, h in heads]


@torch.no_grad()
def induction_losses(model, batch: TokenBatch, heads=(), kind: str = "zero") -> pd.DataFrame:
    """Next-token loss per prompt on the first and second repeat, with ``heads`` ablated jointly.

    Both halves leave out their first token (not predictable from inside the repeat): the
    first repeat's loss predicts tokens 2..seq_len, the second's seq_len+2..2*seq_len.

    Args:
        heads: ``(layer, head)`` pairs replaced together (empty: the unmodified model).
        kind: ``"zero"`` or ``"mean"`` (each head's output averaged over the batch's prompts
            and positions).

    Returns:
        One row per prompt: ``loss_first``, ``loss_second``, ``gap`` = first - second.
    """
    if kind not in ("zero", "mean"):
        raise ValueError(f"kind must be 'zero' or 'mean', got {kind!r}")
    s = _seq_len(batch)
    units = head_units(heads)
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    bad = [(u.layer, u.head) for u in units if not (0 <= u.layer < n_l and 0 <= u.head < n_h)]
    if bad:
        raise ValueError(f"heads {bad} don't exist: layers 0..{n_l - 1}, heads 0..{n_h - 1}")
    hooks = sorted({e.hook for u in units for e in u.edits})
    if kind == "zero":
        sources = {h: torch.zeros(1) for h in hooks}
    else:
        sources = mean_activations(model, batch, hooks)
    with model.hooks(fwd_hooks=joint_hooks(units, sources)):
        logits = model(batch.tokens, return_type="logits")
    return _halves(logits, batch.tokens, s)


def _halves(logits: Tensor, tokens: Tensor, s: int) -> pd.DataFrame:
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tokens[:, 1:, None])[..., 0]  # predicts pos + 1
    first = -lp[:, 1:s].mean(-1)  # tokens 2..s
    second = -lp[:, s + 1 : 2 * s].mean(-1)  # tokens s+2..2s
    df = pd.DataFrame({"loss_first": first.double().cpu().numpy(), "loss_second": second.double().cpu().numpy()})
    df["gap"] = df["loss_first"] - df["loss_second"]
    return df


def induction_ablation(model, batch: TokenBatch, scores: pd.DataFrame, k: int = 5, kind: str = "zero",
                       n_random: int = 5, seed: int = 0) -> pd.DataFrame:
    """Second-repeat loss with the top-``k`` induction heads ablated vs ``k`` random heads.

    Random sets are drawn from the heads outside the top k (``n_random`` draws, seeded).

    Returns:
        One row per head set: ``set`` ("none", "top-k", "random i"), ``heads``, the mean
        ``loss_first``/``loss_second`` over prompts and ``increase`` (second-repeat loss
        minus the unmodified model's).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ranked = scores.sort_values("score", ascending=False)
    top = list(zip(ranked["layer"].head(k), ranked["head"].head(k)))
    rest = list(zip(ranked["layer"].iloc[k:], ranked["head"].iloc[k:]))
    rng = np.random.default_rng(seed)
    sets = [("none", []), (f"top-{k}", top)]
    sets += [(f"random {i}", [rest[j] for j in rng.choice(len(rest), k, replace=False)]) for i in range(n_random)]
    rows = []
    for name, heads in sets:
        d = induction_losses(model, batch, heads, kind)
        rows.append({"set": name, "heads": " ".join(f"L{la}H{h}" for la, h in heads),
                     "loss_first": d["loss_first"].mean(), "loss_second": d["loss_second"].mean()})
    out = pd.DataFrame(rows)
    out["increase"] = out["loss_second"] - out.loc[0, "loss_second"]
    out.attrs["kind"] = kind
    return out
