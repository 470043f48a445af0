"""Metrics: small callables ``(logits, batch) -> Tensor[batch]``, one value per prompt.

The engine unembeds only the scored positions, so ``logits`` is [batch, scored, vocab] and
``batch`` (a ``ScoredBatch``) says which positions those are, what the next tokens are, which
targets are real (not padding) and what the unmodified model predicted there (for KL and
agreement). Higher is better for ``logprob``, ``logit_diff``, ``top1`` and ``mass``; ``kl``
and ``loss`` grow with damage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..core.checks import checked_metric

__all__ = ["METRICS", "ScoredBatch", "answer_token_diff", "get_metric", "logit_diff", "logprob_mass", "masked_mean"]


@dataclass
class ScoredBatch:
    """What a metric needs besides logits. All [batch, scored] unless noted.

    Attributes:
        positions: the scored positions (predicting the token at position + 1), [scored].
        targets: next tokens of the clean prompts at the scored positions.
        valid: True where the target is a real token.
        ref_logprobs: log-softmax of the unmodified clean run at the scored positions,
            [batch, scored, vocab] (None until the engine fills it).
        alt_targets: next tokens of the corrupted prompts (for ``logit_diff``), or None.
        answers: per-prompt answer token ids [batch, n_answers] (correct first, then wrong
            ones) when the last real position of each prompt is scored (``patch``/``ablate``
            with ``answers=``), else None. Then ``targets`` is the correct answer.
    """

    positions: Int[Tensor, " scored"]
    targets: Int[Tensor, "batch scored"]
    valid: Bool[Tensor, "batch scored"]
    ref_logprobs: Float[Tensor, "batch scored vocab"] | None = None
    alt_targets: Int[Tensor, "batch scored"] | None = None
    answers: Int[Tensor, "batch n_answers"] | None = None
    _ref_probs: dict = field(default_factory=dict, repr=False, compare=False)

    def ref_probs(self) -> Tensor:
        """exp(ref_logprobs), computed once per reference (the KL metric's weights)."""
        hit = self._ref_probs.get("p")
        if hit is None or hit[0] is not self.ref_logprobs:
            self._ref_probs["p"] = (self.ref_logprobs, self.ref_logprobs.exp())
        return self._ref_probs["p"][1]

    def repeat(self, k: int) -> ScoredBatch:
        """The batch stacked k times along batch (for k interventions in one pass)."""
        def rep(t):
            return None if t is None else t.repeat(k, *([1] * (t.dim() - 1)))

        return ScoredBatch(self.positions, rep(self.targets), rep(self.valid), rep(self.ref_logprobs),
                           rep(self.alt_targets), rep(self.answers))


def _up(x: Tensor) -> Tensor:
    """At least float32 (half-precision logits are upcast; float64 stays float64)."""
    return x if x.dtype == torch.float64 else x.float()


def masked_mean(x: Float[Tensor, "batch scored"], valid: Bool[Tensor, "batch scored"]) -> Float[Tensor, " batch"]:
    """Mean over valid scored positions; NaN for a prompt without any (reported, not hidden)."""
    x = torch.where(valid, x, torch.zeros_like(x))
    return x.sum(-1) / valid.sum(-1)


def logprob(logits, batch: ScoredBatch):
    """Mean log-probability of the clean next tokens."""
    lg = _up(logits)
    # logit - logsumexp: the same number as log_softmax, without materialising [.., vocab] log-probs
    lp = lg.gather(-1, batch.targets[..., None])[..., 0] - torch.logsumexp(lg, -1)
    return masked_mean(lp, batch.valid)


def loss(logits, batch: ScoredBatch):
    """Mean next-token cross-entropy of the clean next tokens (= -logprob)."""
    return -logprob(logits, batch)


def kl(logits, batch: ScoredBatch):
    """Mean KL(unmodified clean model || this run) over the scored positions, in nats."""
    if batch.ref_logprobs is None:
        raise ValueError("the kl metric needs the unmodified model's log-probs (ScoredBatch.ref_logprobs)")
    per_pos = (batch.ref_probs() * (batch.ref_logprobs - torch.log_softmax(_up(logits), -1))).sum(-1)
    return masked_mean(per_pos, batch.valid)


def top1(logits, batch: ScoredBatch):
    """Share of scored positions where the top-1 token equals the unmodified model's."""
    if batch.ref_logprobs is None:
        raise ValueError("the top1 metric needs the unmodified model's log-probs (ScoredBatch.ref_logprobs)")
    agree = (logits.argmax(-1) == batch.ref_logprobs.argmax(-1)).float()
    return masked_mean(agree, batch.valid)


def answer_logit_diff(logits, batch: ScoredBatch):
    """Logit of the clean next token minus the corrupted prompt's next token, where they differ."""
    if batch.alt_targets is None:
        raise ValueError("logit_diff without token sets needs corrupted prompts (alt_targets)")
    lg = _up(logits)
    diff = lg.gather(-1, batch.targets[..., None])[..., 0] - lg.gather(-1, batch.alt_targets[..., None])[..., 0]
    return masked_mean(diff, batch.valid & (batch.targets != batch.alt_targets))


def answer_token_diff(logits, batch: ScoredBatch):
    """Logit of the correct answer minus the mean logit of the wrong answers, at the last real
    position of each prompt (``answers=`` of ``patch``/``ablate``; e.g. IO minus S in IOI)."""
    if batch.answers is None:
        raise ValueError("the answer_logit_diff metric needs answer tokens: pass answers=[[correct, wrong], ...] "
                         "(one row per prompt) to patch/ablate, which then score each prompt's last real token")
    if batch.answers.shape[1] < 2:
        raise ValueError(f"answer_logit_diff needs a correct and at least one wrong answer per prompt; answers= has "
                         f"{batch.answers.shape[1]} column(s)")
    lg = _up(logits)
    ans = batch.answers[:, None, :].expand(-1, lg.shape[1], -1)
    picked = lg.gather(-1, ans)  # [batch, scored, n_answers]
    return masked_mean(picked[..., 0] - picked[..., 1:].mean(-1), batch.valid)


def logit_diff(tokens_a: Sequence[int], tokens_b: Sequence[int]) -> Callable:
    """Mean logit over token set A minus mean logit over token set B (e.g. Python vs C++ tokens)."""
    a, b = torch.as_tensor(list(tokens_a)), torch.as_tensor(list(tokens_b))

    def metric(logits, batch: ScoredBatch):
        lg = _up(logits)
        return masked_mean(lg[..., a.to(lg.device)].mean(-1) - lg[..., b.to(lg.device)].mean(-1), batch.valid)

    metric.__name__ = "logit_diff_sets"
    return metric


def logprob_mass(tokens: Sequence[int]) -> Callable:
    """Log of the total probability the model puts on a token set, averaged over positions."""
    t = torch.as_tensor(list(tokens))

    def metric(logits, batch: ScoredBatch):
        lp = torch.log_softmax(_up(logits), -1)
        return masked_mean(torch.logsumexp(lp[..., t.to(lp.device)], -1), batch.valid)

    metric.__name__ = "logprob_mass"
    return metric


METRICS: dict[str, Callable] = {"logprob": logprob, "loss": loss, "kl": kl, "top1": top1,
                                "logit_diff": answer_logit_diff, "answer_logit_diff": answer_token_diff}


def get_metric(metric) -> Callable:
    """A metric name from ``METRICS`` or a callable ``(logits, batch) -> Tensor[batch]``."""
    if callable(metric):
        # the kit's own metrics are right by construction; a user's is checked on every call
        return metric if metric in METRICS.values() else checked_metric(metric)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {sorted(METRICS)} or a callable (logits, batch) -> [batch]")
    return METRICS[metric]
