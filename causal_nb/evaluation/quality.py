"""Evaluate a model on prompt sets: next-token loss per prompt and per domain.

Losses are mean next-token cross-entropy in nats over real (unpadded) tokens; position 0
(BOS) is never a target. Assumes token batches are [batch, pos] with right padding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ..core.checks import check_n_tokens, strict
from ..data.prompts import PromptSet, TokenBatch, as_prompt_set
from .timing import median_ms

__all__ = ["FullModelRun", "domain_losses", "evaluate", "flops_per_token", "full_model_run", "latency_ms", "peak_memory_mb", "prompt_losses", "token_losses",
           "token_set_mass", "unigram_counts", "unigram_loss"]


@torch.no_grad()
def token_losses(model, batch: TokenBatch, batch_size: int = 16) -> Float[Tensor, "batch pos_minus_1"]:
    """Cross-entropy of each next token; NaN where the target is padding."""
    out = []
    for i in range(0, len(batch), batch_size):
        toks = batch.tokens[i : i + batch_size].to(model.cfg.device)
        mask = batch.mask[i : i + batch_size].to(model.cfg.device)
        logits = model(toks, return_type="logits").float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, toks[:, 1:, None])[..., 0]
        out.append(torch.where(mask[:, 1:], -logp, torch.nan).cpu())
    return torch.cat(out)


@strict
def prompt_losses(model, prompts, n_tokens: int = 64, batch_size: int = 16) -> pd.DataFrame:
    """Mean loss per prompt: columns ``id``, ``domain``, ``tokens``, ``loss``.

    ``batch_size``: prompts per forward (memory only; the losses do not depend on it).
    """
    check_n_tokens(n_tokens)
    ps: PromptSet = as_prompt_set(prompts)
    batch = ps.tokenize(model, n_tokens)
    losses = token_losses(model, batch, batch_size)
    return pd.DataFrame({"id": list(ps.ids), "domain": ps.domain, "tokens": (batch.lengths - 1).numpy(),
                         "loss": np.nanmean(losses.numpy(), axis=1)})


@strict
def domain_losses(model, prompt_sets: dict[str, PromptSet], n_tokens: int = 64) -> pd.DataFrame:
    """Mean loss per domain (token-weighted), one row per domain, rounded for display.

    Where the model folder ships train-corpus unigram counts (``unigram.json``, bundled
    models), the ``unigram`` column is the same prompts' loss under that unigram model and
    ``margin`` = unigram - loss; otherwise both are NaN.
    """
    check_n_tokens(n_tokens)
    counts = unigram_counts(model)
    rows = []
    for name, ps in prompt_sets.items():
        batch = ps.tokenize(model, n_tokens)
        losses = token_losses(model, batch).numpy()
        per_prompt = np.nanmean(losses, axis=1)
        n = (batch.lengths - 1).numpy()
        uni = unigram_loss(counts[name], batch) if counts and name in counts else float("nan")
        loss = float((per_prompt * n).sum() / n.sum())
        rows.append({"domain": name, "prompts": len(ps), "tokens": int(n.sum()), "loss": loss,
                     "unigram": uni, "margin": uni - loss})
    return pd.DataFrame(rows).round(4)


@strict
def token_set_mass(model, prompt_sets: dict[str, PromptSet], token_set, n_tokens: int = 64) -> pd.DataFrame:
    """Mean log of the probability mass the model puts on a token set, per domain.

    A characteristic token set of domain B should get more mass on B's prompts than on A's.
    """
    from ..engine.common import prepare, scored_batch  # noqa: PLC0415
    from ..engine.metrics import logprob_mass  # noqa: PLC0415

    metric = logprob_mass(token_set.ids)
    rows = []
    for name, ps in prompt_sets.items():
        batch = prepare(model, ps, n_tokens)
        scored = scored_batch(batch)
        with torch.no_grad():
            logits = model(batch.tokens, return_type="logits")[:, scored.positions]
        rows.append({"domain": name, "log_mass": float(metric(logits, scored).mean())})
    return pd.DataFrame(rows).round(4)


def unigram_counts(model) -> dict[str, np.ndarray] | None:
    """Train-corpus unigram counts per domain shipped with a model folder, or None."""
    src = getattr(model, "causal_nb_source", {})
    path = Path(src.get("source", "")) / "unigram.json"
    if src.get("kind") not in ("bundled", "local") or not path.exists():
        return None
    return {d: np.asarray(c) for d, c in json.loads(path.read_text()).items()}


def unigram_loss(counts: np.ndarray, batch: TokenBatch) -> float:
    """Cross-entropy (nats) of a batch's real target tokens under add-one unigram ``counts``."""
    p = (counts.astype(np.float64) + 1.0) / (counts.sum() + len(counts))
    targets = batch.tokens[:, 1:][batch.mask[:, 1:]].numpy()
    return float(-np.log(p[targets]).mean())


def _as_hf(model):
    """The plain Hugging Face model: a bridge's is rebuilt around its own tensors (read-only
    uses: counting, timing), a plain one is used as is."""
    from ..models.hf import plain_hf  # noqa: PLC0415

    return plain_hf(model, share=True) if hasattr(model, "original_model") else model


def _params(model) -> int:
    hf = _as_hf(model)
    return sum(p.numel() for n, p in hf.named_parameters() if "lm_head" not in n or not hf.config.tie_word_embeddings)


def latency_ms(model, batch_size: int, n_tokens: int = 128, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time (ms) of one forward of the plain Hugging Face model at this batch size.

    The model is measured outside TransformerLens (no hooks), as it would be deployed; a
    bridge or a plain Hugging Face model may be passed.
    """
    hf = _as_hf(model)
    dev = next(hf.parameters()).device
    x = torch.randint(1, hf.config.vocab_size, (batch_size, n_tokens), generator=torch.Generator().manual_seed(0)).to(dev)
    return median_ms(lambda: hf(input_ids=x), dev, repeats, warmup)


def flops_per_token(model, n_tokens: int = 128) -> float:
    """Forward FLOPs per token (multiply-add = 2) at context ``n_tokens``, from the actual shapes.

    Every linear layer's weight counts 2 x its size (embedding lookups count 0, the output
    layer counts); causal attention adds 2 x 2 x (query width) x the mean context length
    (n_tokens + 1) / 2 per layer, for the scores and the weighted sum. Pruned layers count at
    their pruned widths, so the figure falls with physical pruning and not with masking.
    """
    from torch import nn  # noqa: PLC0415

    hf = _as_hf(model)
    flops = 0.0
    for mod in hf.modules():
        w = getattr(mod, "weight", None)
        if w is None or isinstance(mod, nn.Embedding) or w.dim() != 2:
            continue
        if isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D":
            flops += 2.0 * w.numel()
    from ..models.hf import hf_arch, out_projections  # noqa: PLC0415

    arch, layers = hf_arch(hf)
    ctx = (n_tokens + 1) / 2
    for layer in layers:
        if arch == "gpt2":
            q_width = layer.attn.c_attn.weight.shape[1] // 3
        else:  # the output projection reads the concatenated heads: the query width
            q_width = out_projections(arch, layer)[0].in_features
        flops += 2 * 2 * q_width * ctx
    return flops


def _rss_mb(key: str) -> float:
    import re  # noqa: PLC0415

    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read())[1]) / 1024


def peak_memory_mb(model, batch_size: int, n_tokens: int = 128, repeats: int = 3) -> float:
    """Peak memory (MB) one forward adds on top of what is already held: weights excluded.

    On CUDA, ``torch.cuda.max_memory_allocated`` growth; on Linux CPUs, the growth of the
    process's peak resident set (VmHWM, reset through ``/proc/self/clear_refs``), median of
    ``repeats``. NaN where neither is available.
    """
    hf = _as_hf(model)
    dev = next(hf.parameters()).device
    x = torch.randint(1, hf.config.vocab_size, (batch_size, n_tokens), generator=torch.Generator().manual_seed(0)).to(dev)
    out = []
    with torch.no_grad():
        hf(input_ids=x)  # warm-up: lazy allocations are not the model's cost
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(dev)
                before = torch.cuda.memory_allocated(dev)
                hf(input_ids=x)
                torch.cuda.synchronize()
                out.append((torch.cuda.max_memory_allocated(dev) - before) / 2**20)
                continue
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                before = _rss_mb("VmRSS")
            except OSError:
                return float("nan")
            hf(input_ids=x)
            out.append(_rss_mb("VmHWM") - before)
    return float(np.median(out))


@dataclass(frozen=True)
class FullModelRun:
    """The unpruned model's log-probs on one token batch, computed once and compared with many
    pruned models (``evaluate(pruned, prompts, full_model=run)``; a sweep does this per domain).

    Attributes:
        tokens: the batch it was computed on, [batch, pos] (checked against each use).
        logprobs: log-softmax at every position but the last, [batch, pos - 1, vocab], float32.
    """

    tokens: Tensor
    logprobs: Float[Tensor, "batch scored vocab"]

    def logprobs_for(self, batch: TokenBatch) -> Tensor:
        if tuple(batch.tokens.shape) != tuple(self.tokens.shape) or \
                not torch.equal(batch.tokens.cpu(), self.tokens.cpu()):
            raise ValueError("full_model= was computed on other prompts (or another n_tokens) than the ones evaluated: "
                             "make it with full_model_run(model, the same prompts, the same n_tokens)")
        return self.logprobs


@strict
@torch.no_grad()
def full_model_run(model, prompts, n_tokens: int = 64) -> FullModelRun:
    """The unpruned ``model``'s log-probs on ``prompts``, for several ``evaluate`` calls."""
    from ..engine.common import prepare, scored_batch  # noqa: PLC0415

    if isinstance(model, FullModelRun):
        return model
    if not callable(model) or not hasattr(model, "parameters"):
        raise TypeError(f"full_model= is the unpruned model (or its full_model_run), got {type(model).__name__}")
    pb = prepare(model, prompts, n_tokens)
    ref = model(pb.tokens, return_type="logits")[:, scored_batch(pb).positions]
    return FullModelRun(pb.tokens.cpu(), torch.log_softmax(ref.float(), -1))


@strict
@torch.no_grad()
def evaluate(model, prompts=None, full_model=None, n_tokens: int = 64, latency_batches=(1, 32), latency_tokens: int = 128,
             repeats: int = 5, memory: bool = True, progress: bool | None = None, reference=None, task=None) -> dict:
    """Quality and cost of a (pruned) model on held-out prompts.

    Args:
        prompts: PromptSet or list of strings.
        full_model: the unpruned model, for ``kl`` and ``top1_agreement`` (KL(full_model ||
            model) and the share of positions with the same top-1 token); NaN without one. Its
            ``full_model_run`` on the same prompts saves a forward when many models are compared.
        reference: refused. It was this function's name for ``full_model``; everywhere else in
            the kit ``reference=`` is the prompts a mean ablation averages over.
        progress: a bar over the timed batch sizes (default: ``causal_nb.progress_enabled()``).
        latency_batches: batch sizes timed (median of ``repeats`` forwards of ``latency_tokens``);
            ``()`` skips timing.
        task: None, the decoder LM on ``prompts``; ``SentencePairTask(pairs)`` (no ``prompts``)
            for a sentence encoder: ``encoder_quality.evaluate_encoder`` (mean pair cosine,
            Spearman / ROC AUC against the pairs' gold, drift from ``full_model``'s cosines, the
            encoder's parameters, FLOPs and latency, no peak memory; per-pair lists as
            ``per_prompt_*``); ``ImageClassificationTask(images, labels)`` for a ViT:
            ``vision_quality.evaluate_images`` (accuracy, loss, confidence, KL and top-1
            agreement with ``full_model``, parameters; no latency yet);
            ``Seq2SeqTask(sources, targets)`` for a T5: ``seq2seq_quality.evaluate_seq2seq``
            (target log-prob, loss, perplexity, token accuracy, KL and top-1 agreement with
            ``full_model``, BLEU of greedy generations, parameters; no latency yet).

    Returns:
        ``loss``, ``kl``, ``top1_agreement``, ``params``, ``flops_per_token`` (at
        ``latency_tokens`` context), ``latency_ms`` (at the first batch size) and
        ``latency_ms_b<N>`` for each, ``peak_memory_mb`` (a forward at the last batch size,
        see ``peak_memory_mb``; with ``memory`` and timing on), plus ``per_prompt_loss`` (and, with a
        full_model, ``per_prompt_kl`` and ``per_prompt_top1``) as lists.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    from ..core.env import progress_enabled  # noqa: PLC0415
    from ..engine.common import prepare, scored_batch  # noqa: PLC0415
    from ..engine.metrics import get_metric  # noqa: PLC0415
    from ..engine.tasks import LMTask, as_task  # noqa: PLC0415

    if reference is not None:
        raise TypeError("evaluate(reference=...) is now evaluate(full_model=...): the unpruned model the KL and "
                        "top-1 agreement compare with (reference= means prompts for mean ablation in causal_nb)")
    task = as_task(task)
    task.check_model(model, "evaluate")
    if task.name == "seq2seq":  # Seq2SeqTask: a T5 on its (source, target) pairs
        from .seq2seq_quality import evaluate_seq2seq  # noqa: PLC0415

        if prompts is not None:
            raise ValueError(f"{task!r} carries its inputs (the pairs); drop the prompts argument")
        return evaluate_seq2seq(model, task, full_model=full_model)
    if task.name == "image-classification":  # ImageClassificationTask: a ViT on its images
        from .vision_quality import evaluate_images  # noqa: PLC0415

        if prompts is not None:
            raise ValueError(f"{task!r} carries its inputs (the images); drop the prompts argument")
        return evaluate_images(model, task, full_model=full_model)
    if not isinstance(task, LMTask):
        from .encoder_quality import evaluate_encoder  # noqa: PLC0415

        if prompts is not None:
            raise ValueError(f"{task!r} carries its inputs (the pairs); drop the prompts argument")
        return evaluate_encoder(model, task, full_model=full_model, latency_batches=latency_batches,
                                latency_tokens=latency_tokens, repeats=repeats, progress=progress)
    if prompts is None:
        raise TypeError("evaluate needs prompts (a PromptSet or list of strings) for the LM task, or "
                        "task=cnb.SentencePairTask(pairs) for a sentence encoder")
    pb = prepare(model, prompts, n_tokens)
    scored = scored_batch(pb)
    logits = model(pb.tokens, return_type="logits")[:, scored.positions]
    out = {"loss": float("nan"), "kl": float("nan"), "top1_agreement": float("nan")}
    per = get_metric("loss")(logits, scored)
    out["loss"] = float(per.mean())
    if full_model is not None:
        if not isinstance(full_model, FullModelRun):
            full_model = full_model_run(full_model, pb)
        scored.ref_logprobs = full_model.logprobs_for(pb).to(logits.device)
        kl = get_metric("kl")(logits, scored)
        top1 = get_metric("top1")(logits, scored)
        out["kl"], out["top1_agreement"] = float(kl.mean()), float(top1.mean())
        out["per_prompt_kl"] = kl.double().cpu().tolist()
        out["per_prompt_top1"] = top1.double().cpu().tolist()
    hf = _as_hf(model)  # one copy for the parameter count and every timing
    out["params"] = _params(hf)
    out["flops_per_token"] = flops_per_token(hf, latency_tokens)
    bar = progress_enabled(progress) and len(latency_batches) > 0
    for i, b in enumerate(tqdm(latency_batches, desc="latency", disable=not bar, leave=False)):
        ms = latency_ms(hf, b, latency_tokens, repeats)
        out[f"latency_ms_b{b}"] = ms
        if i == 0:
            out["latency_ms"] = ms
    if memory and latency_batches:
        out["peak_memory_mb"] = peak_memory_mb(hf, latency_batches[-1], latency_tokens)
    out["per_prompt_loss"] = per.double().cpu().tolist()
    return out
