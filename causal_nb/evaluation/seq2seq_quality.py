"""``evaluate`` for an encoder-decoder (T5) on ``Seq2SeqTask``: target likelihood, token accuracy,
agreement with the unpruned model, BLEU of greedy generations, and size.

Teacher-forced numbers come from the task's own forward (the sources with their mask, the
targets shifted right behind the decoder start token: what ``ablate``/``score`` read), over the
real target tokens of each pair (``</s>`` included, padding left out). BLEU is sacrebleu's
(default 13a tokenisation) on greedy generations of the Hugging Face model inside the bridge
(``generate`` with ``do_sample=False, num_beams=1``, special tokens stripped), against the
task's target texts. Every per-pair value is a ``per_prompt_*`` list in the order of the pairs,
so ``stats.paired_tests`` / ``h2_table`` compare two pruned models pair by pair.
"""

from __future__ import annotations

import math

import torch

__all__ = ["evaluate_seq2seq", "greedy_generations"]


@torch.no_grad()
def _teacher_forced(model, task, batch, scored) -> torch.Tensor:
    """Log-softmax of the decoder logits [pairs, tgt, vocab], float64 on the CPU."""
    return torch.log_softmax(task.run(model, batch.tokens, scored).double(), -1).cpu()


@torch.no_grad()
def greedy_generations(model, task, max_new_tokens: int | None = None, batch_size: int = 32) -> list[str]:
    """Greedy decoding of each source (``generate``, no sampling, one beam), decoded without
    special tokens. ``max_new_tokens`` default: twice the longest target's token count, at least 16."""
    batch = task.prepare(model)
    if max_new_tokens is None:
        max_new_tokens = max(16, 2 * int(batch.target_mask.sum(1).max()))
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: generate at least one token")
    hf, tok = model.original_model, model.tokenizer
    out: list[str] = []
    for i in range(0, len(batch.tokens), int(batch_size)):
        ids = hf.generate(input_ids=batch.tokens[i:i + batch_size], attention_mask=batch.mask[i:i + batch_size].long(),
                          max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
                          # no KV cache: inside the bridge, T5's cached decoding drifts from the plain
                          # model's after the first tokens (tests/integration/test_t5_bundled.py)
                          use_cache=False,
                          # the bridge sets output_attentions on the config (for its hooks); the
                          # generation keeps none of them
                          return_dict_in_generate=True, output_attentions=False, output_hidden_states=False)
        out += [tok.decode(row, skip_special_tokens=True) for row in ids.sequences.tolist()]
    return [s.strip() for s in out]


def evaluate_seq2seq(model, task, full_model=None, max_new_tokens: int | None = None, batch_size: int = 32,
                     bleu: bool = True) -> dict:
    """Quality of a (pruned) T5 on the task's (source, target) pairs.

    Args:
        task: ``Seq2SeqTask(sources, targets)``.
        full_model: the unpruned T5 bridge, for ``kl`` (KL(full_model || model) per target
            token, mean over a pair's real tokens, then over pairs) and ``top1_agreement`` (share
            of a pair's target positions where both models' top token agree); NaN without one.
        max_new_tokens, batch_size: greedy generation's length limit (``greedy_generations``)
            and sources per ``generate`` call.
        bleu: generate and score BLEU (False skips the generation).

    Returns:
        ``target_logprob`` (mean over pairs of the mean target-token log-prob), ``loss`` (its
        negative), ``perplexity`` (exp of the negative log-prob per target token over all
        pairs' tokens), ``accuracy`` (mean over pairs of the share of target tokens that are the
        argmax of the teacher-forced logits), ``kl``, ``top1_agreement``, ``bleu`` (corpus BLEU,
        0..100) and ``generations``, ``params`` (of the Hugging Face model; tied embeddings once),
        ``n_pairs``, ``n_target_tokens``, and per-pair lists ``per_prompt_logprob``,
        ``per_prompt_loss``, ``per_prompt_accuracy``, ``per_prompt_bleu`` (sentence BLEU) and,
        with a full model, ``per_prompt_kl``, ``per_prompt_top1``.
    """
    task.check_model(model, "evaluate")
    batch = task.prepare(model)
    scored = task.scoring(model, batch)
    lp = _teacher_forced(model, task, batch, scored)
    targets, valid = batch.targets.cpu(), batch.target_mask.cpu()
    m = valid.double()
    n = m.sum(1)

    def per_pair(x: torch.Tensor) -> torch.Tensor:
        return (x * m).sum(1) / n

    tok_lp = lp.gather(-1, targets[..., None])[..., 0]
    per_lp = per_pair(tok_lp)
    per_acc = per_pair((lp.argmax(-1) == targets).double())
    total_nll = float(-(tok_lp * m).sum())
    out = {"target_logprob": float(per_lp.mean()), "loss": float(-per_lp.mean()),
           "perplexity": math.exp(total_nll / float(n.sum())), "accuracy": float(per_acc.mean()),
           "n_pairs": len(task), "n_target_tokens": int(n.sum()),
           "per_prompt_logprob": per_lp.tolist(), "per_prompt_loss": (-per_lp).tolist(),
           "per_prompt_accuracy": per_acc.tolist()}
    if full_model is not None:
        task.check_model(full_model, "evaluate")
        fb = task.prepare(full_model)
        if not (torch.equal(fb.tokens.cpu(), batch.tokens.cpu()) and torch.equal(fb.targets.cpu(), targets)):
            raise ValueError("full_model= tokenises the pairs differently from model: compare models that share a "
                             "tokenizer (the unpruned model a pruned one came from)")
        ref = _teacher_forced(full_model, task, fb, task.scoring(full_model, fb))
        kl = per_pair((ref.exp() * (ref - lp)).sum(-1))
        top1 = per_pair((ref.argmax(-1) == lp.argmax(-1)).double())
        out.update(kl=float(kl.mean()), top1_agreement=float(top1.mean()), per_prompt_kl=kl.tolist(),
                   per_prompt_top1=top1.tolist())
    else:
        out.update(kl=float("nan"), top1_agreement=float("nan"))
    if bleu:
        import sacrebleu  # noqa: PLC0415

        hyps = greedy_generations(model, task, max_new_tokens, batch_size)
        refs = list(task.targets)
        out["bleu"] = float(sacrebleu.corpus_bleu(hyps, [refs]).score)
        out["per_prompt_bleu"] = [float(sacrebleu.sentence_bleu(h, [r]).score) for h, r in zip(hyps, refs)]
        out["generations"] = hyps
    else:
        out["bleu"] = float("nan")
    # parameters() yields each tensor once (the tied embedding / LM head); the bridge's zero
    # lm_head bias lives outside the wrapped model
    out["params"] = int(sum(p.numel() for p in model.original_model.parameters()))
    last = ("generations",)
    return {k: out[k] for k in sorted(out, key=lambda k: (k.startswith("per_prompt") or k in last))}
