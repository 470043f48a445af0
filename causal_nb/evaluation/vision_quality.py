"""``evaluate`` for a vision transformer on ``ImageClassificationTask``: accuracy and confidence
against the labels, agreement with the unpruned model, and size.

The base of issue 13's evaluator (top-5, macro precision/recall/F1, per-class accuracy, latency
and the Pareto front come there): the numbers here come from scikit-learn where it has them
(``accuracy_score``, ``log_loss``) on the class probabilities of ``engine.vision.class_logits``.
"""

from __future__ import annotations

import torch

__all__ = ["evaluate_images"]


def evaluate_images(model, task, full_model=None, batch_size: int = 256) -> dict:
    """Quality of a (pruned) ViT on the task's images.

    Args:
        task: ``ImageClassificationTask(images, labels)``.
        full_model: the unpruned ViT, for ``kl`` (KL(full_model || model), mean over images) and
            ``top1_agreement`` (share of images with the same top class); NaN without one.
        batch_size: images per forward.

    Returns:
        ``accuracy``, ``loss`` (cross-entropy of the labels, nats), ``mean_confidence`` (mean top
        class probability), ``kl``, ``top1_agreement``, ``params`` (of the Hugging Face model),
        ``n_images``, and per-image lists ``per_prompt_correct``, ``per_prompt_loss`` (and, with a
        full model, ``per_prompt_kl``, ``per_prompt_top1``).
    """
    from sklearn.metrics import accuracy_score, log_loss  # noqa: PLC0415

    from ..engine.vision import class_logits  # noqa: PLC0415
    from ..models.hf import plain_hf  # noqa: PLC0415

    task.check_model(model, "evaluate")
    labels = task.labels.numpy()
    lp = torch.log_softmax(class_logits(model, task.images, batch_size).double(), -1)
    probs = lp.exp().numpy()
    pred = probs.argmax(-1)
    per_loss = -lp[torch.arange(len(labels)), torch.as_tensor(labels)].numpy()
    n_classes = probs.shape[1]
    out = {"accuracy": float(accuracy_score(labels, pred)),
           "loss": float(log_loss(labels, probs, labels=list(range(n_classes)))),
           "mean_confidence": float(probs.max(-1).mean()), "n_images": len(labels),
           "per_prompt_correct": (pred == labels).astype(float).tolist(), "per_prompt_loss": per_loss.tolist()}
    if full_model is not None:
        task.check_model(full_model, "evaluate")
        ref = torch.log_softmax(class_logits(full_model, task.images, batch_size).double(), -1)
        kl = (ref.exp() * (ref - lp)).sum(-1).numpy()
        top1 = (ref.argmax(-1).numpy() == pred).astype(float)
        out.update(kl=float(kl.mean()), top1_agreement=float(top1.mean()), per_prompt_kl=kl.tolist(),
                   per_prompt_top1=top1.tolist())
    else:
        out.update(kl=float("nan"), top1_agreement=float("nan"))
    out["params"] = int(sum(p.numel() for p in plain_hf(model, share=True).parameters()))
    return {k: out[k] for k in sorted(out, key=lambda k: k.startswith("per_prompt"))}
