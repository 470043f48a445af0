"""Checks that a bundled model is a real language model: held-out loss against the unigram
baseline, domain classification from in-context loss, and per-head previous-token and
induction scores on repeated random token sequences (Olsson et al., 2022).

All functions take a Hugging Face causal LM and token arrays, so they run at training time
(before TransformerLens is involved) and in the integration tests.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor


def heldout_windows(tokens: np.ndarray, seq: int, n: int, bos_id: int) -> Int[Tensor, "batch pos"]:
    """`n` evenly spaced windows of `seq - 1` tokens from a stream, each prefixed with BOS."""
    starts = np.linspace(0, len(tokens) - seq, n).astype(np.int64)
    rows = [np.concatenate([[bos_id], tokens[s : s + seq - 1]]) for s in starts]
    return torch.as_tensor(np.stack(rows).astype(np.int64))


@torch.no_grad()
def mean_loss(model, windows: Int[Tensor, "batch pos"], batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats) over all predicted positions of the windows."""
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        x = windows[i : i + batch_size]
        logits = model(input_ids=x).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += x[:, 1:].numel()
    return total / count


def unigram_loss(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats) of the eval stream under the train stream's add-one unigram model."""
    counts = np.bincount(train_tokens.astype(np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[eval_tokens.astype(np.int64)].mean())


@torch.no_grad()
def per_window_loss(model, windows: Int[Tensor, "batch pos"], start: int) -> Float[Tensor, " batch"]:
    """Mean loss of each window's tokens from position `start` on (earlier tokens are context)."""
    logits = model(input_ids=windows).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, windows[:, 1:, None])[..., 0]
    return -logp[:, start - 1 :].mean(-1)


@torch.no_grad()
def domain_classification(
    model, chunks: dict[str, np.ndarray], prefixes: dict[str, np.ndarray], bos_id: int, chunk_len: int = 64, n: int = 64
) -> float:
    """Accuracy of telling a held-out chunk's domain by which domain's context makes it likelier.

    Each held-out chunk is scored twice, after a train-split prefix of each domain; the
    predicted domain is the one whose prefix gives the lower loss on the chunk.
    """
    domains = sorted(chunks)
    correct, total = 0, 0
    for true in domains:
        stream = chunks[true]
        starts = np.linspace(0, len(stream) - chunk_len, n).astype(np.int64)
        body = np.stack([stream[s : s + chunk_len] for s in starts])
        losses = []
        for d in domains:
            pre = np.broadcast_to(prefixes[d], (n, len(prefixes[d])))
            x = np.concatenate([np.full((n, 1), bos_id), pre, body], axis=1).astype(np.int64)
            losses.append(per_window_loss(model, torch.as_tensor(x), start=1 + len(prefixes[d])))
        pred = torch.stack(losses).argmin(0)
        correct += int((pred == domains.index(true)).sum())
        total += n
    return correct / total


@torch.no_grad()
def induction_report(model, vocab_size: int, bos_id: int, seq_len: int = 50, batch: int = 32, seed: int = 0) -> dict:
    """Per-head previous-token and induction attention, and the repeated-sequence loss gap.

    Input: BOS + r + r for a random token sequence r of `seq_len`. The previous-token score is
    a head's mean attention from position i to i-1; the induction score is its mean attention
    from a second-copy token to the token after that token's first occurrence. The gap is
    loss(first copy) - loss(second copy) in nats. Requires `output_attentions` support
    (eager attention).
    """
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(1, vocab_size, (batch, seq_len), generator=g)
    x = torch.cat([torch.full((batch, 1), bos_id), r, r], dim=1)
    out = model(input_ids=x, output_attentions=True)
    logp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, x[:, 1:, None])[..., 0]
    first = -logp[:, 1:seq_len].mean().item()  # predicting r[1:] inside the first copy
    second = -logp[:, seq_len + 1 :].mean().item()  # predicting r[1:] inside the second copy
    prev, ind = [], []
    q = torch.arange(seq_len + 1, 2 * seq_len + 1)  # positions of the second copy
    for att in out.attentions:  # [batch head query key]
        att = att.float()
        idx = torch.arange(2, 2 * seq_len + 1)
        prev.append(att[:, :, idx, idx - 1].mean((0, 2)))
        ind.append(att[:, :, q, q - seq_len + 1].mean((0, 2)))
    prev_t, ind_t = torch.stack(prev), torch.stack(ind)  # [layer head]
    return {
        "loss_first_copy": round(first, 4),
        "loss_second_copy": round(second, 4),
        "gap": round(first - second, 4),
        "prev_token_scores": prev_t.round(decimals=3).tolist(),
        "induction_scores": ind_t.round(decimals=3).tolist(),
        "max_prev_token": round(prev_t.max().item(), 3),
        "max_induction": round(ind_t.max().item(), 3),
        "uniform_baseline_loss": round(math.log(vocab_size - 1), 4),
    }
