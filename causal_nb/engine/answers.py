"""Scoring the last real token of each prompt against answer tokens that are not in the prompt.

``patch``/``ablate`` normally score positions whose next token is inside the prompt. Tasks
such as IOI ("..., John gave a drink to" -> " Mary") score the prediction after the prompt's
last token instead, against per-prompt answers (correct first, then wrong ones). Prompts of
different lengths are right-padded, so the last real token sits at a different position per
prompt: the scored positions are the distinct last positions of the batch, and ``valid``
marks, per prompt, the one that is its own last real token. The engine is unchanged (it
unembeds those few positions only and reuses the cached prefix as before).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.prompts import TokenBatch
from .metrics import ScoredBatch

__all__ = ["answer_batch", "last_positions"]


def last_positions(batch: TokenBatch) -> Tensor:
    """Position of each prompt's last real (unmasked) token, [batch]."""
    n = batch.mask.shape[1]
    idx = torch.arange(n, device=batch.mask.device).expand_as(batch.mask)
    last = torch.where(batch.mask, idx, torch.full_like(idx, -1)).max(-1).values
    if (last < 0).any():
        bad = (last < 0).nonzero()[:5, 0].tolist()
        raise ValueError(f"prompts {bad} have no real tokens (all padding); drop them")
    return last


def answer_batch(batch: TokenBatch, answers, vocab_size: int) -> ScoredBatch:
    """A ``ScoredBatch`` scoring each prompt's last real token against ``answers``.

    Args:
        batch: the tokenised (right-padded) prompts.
        answers: token ids per prompt, [batch] (one correct answer) or [batch, n_answers]
            (correct first, then wrong ones); a tensor, array or nested list of ints.
        vocab_size: the model's vocabulary size (ids must be below it).

    Raises:
        ValueError: answers of the wrong shape or with ids outside the vocabulary.
    """
    try:
        ans = torch.as_tensor(answers)
    except (TypeError, ValueError) as e:
        raise ValueError("answers= must be token ids, one row per prompt, e.g. [[correct, wrong], ...]") from e
    if ans.dtype.is_floating_point or ans.dtype == torch.bool:
        raise ValueError(f"answers= must be integer token ids, got dtype {ans.dtype}")
    ans = ans.long()
    if ans.dim() == 1:
        ans = ans[:, None]
    if ans.dim() != 2 or ans.shape[0] != len(batch) or ans.shape[1] == 0:
        raise ValueError(f"answers= has shape {tuple(ans.shape)}; expected one row per prompt ({len(batch)} prompts) "
                         "of token ids: [batch] or [batch, n_answers] (correct answer first)")
    if ans.min() < 0 or ans.max() >= vocab_size:
        bad = sorted({int(a) for a in ans.flatten() if not 0 <= a < vocab_size})[:5]
        raise ValueError(f"answers= token ids {bad} are outside the vocabulary (0..{vocab_size - 1})")
    dev = batch.tokens.device
    ans = ans.to(dev)
    last = last_positions(batch)
    pos = torch.unique(last)  # sorted; usually one position (prompts of equal length)
    valid = pos[None, :] == last[:, None]
    targets = ans[:, :1].expand(-1, len(pos)).contiguous()
    alt = ans[:, 1:2].expand(-1, len(pos)).contiguous() if ans.shape[1] > 1 else None
    return ScoredBatch(pos, targets, valid, alt_targets=alt, answers=ans)
