"""Compare vision transformers (a baseline and its pruned copies) on classification, confidence
and speed, with the Pareto-optimal ones (accuracy vs latency) marked: issue 13's evaluator.

``evaluate_vit_models(models, images, labels)`` runs every model on the same images and returns
one row per model (``VitEvaluation.table``) and the per-class accuracies. The classification
numbers come from scikit-learn (``accuracy_score``, ``top_k_accuracy_score``,
``precision_recall_fscore_support`` with macro averaging, per-class recall = per-class accuracy),
the prediction entropy from ``scipy.stats.entropy``, the FLOPs from torch's own
``FlopCounterMode`` on one image; latency is the median wall time of a forward of one batch of
the plain Hugging Face model (what a deployment runs, and what physical pruning makes smaller),
after warm-up runs. ``pareto_front`` marks the models that no other model beats on both top-1
(higher) and latency (lower). ``plot_vit_evaluation`` draws the six-panel figure,
``write_vit_evaluation`` writes ``evaluation_metrics.json`` and the figure (HTML and PNG), and
``vit_report`` is the console report with a deployment recommendation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .timing import median_ms

__all__ = ["VitEvaluation", "classification_metrics", "evaluate_vit_models", "pareto_front", "plot_vit_evaluation",
           "recommend_model", "vit_report", "write_vit_evaluation"]


@dataclass
class VitEvaluation:
    """What ``evaluate_vit_models`` measured.

    Attributes:
        table: one row per model: ``model``, ``top1``, ``top5``, ``precision_macro``,
            ``recall_macro``, ``f1_macro``, ``mean_confidence``, ``confidence_correct``,
            ``confidence_incorrect``, ``confidence_gap``, ``mean_entropy``, ``ms_per_batch``,
            ``throughput`` (images/s), ``params``, ``gflops`` (per image), ``accuracy_per_ms``,
            ``pareto`` (on top-1 vs latency).
        per_class: per-class accuracy, one row per model, one column per class.
        batch_size: the timed batch's size.
        n_images: images evaluated.
    """

    table: pd.DataFrame
    per_class: pd.DataFrame
    batch_size: int
    n_images: int


def classification_metrics(labels, probs, class_names=None) -> tuple[dict, dict]:
    """Classification and confidence numbers of one model's class probabilities.

    Args:
        labels: true classes [n].
        probs: class probabilities [n, classes] (rows sum to 1).
        class_names: names of the classes (default their indices).

    Returns:
        (metrics, per-class accuracy by class name).
    """
    from scipy.stats import entropy  # noqa: PLC0415
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, top_k_accuracy_score  # noqa: PLC0415

    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    classes = list(range(n_classes))
    names = [str(c) for c in (class_names if class_names is not None else classes)]
    pred = probs.argmax(-1)
    correct = pred == labels
    conf = probs.max(-1)
    p, r, f, _ = precision_recall_fscore_support(labels, pred, labels=classes, average="macro", zero_division=0)
    _, per_r, _, support = precision_recall_fscore_support(labels, pred, labels=classes, average=None, zero_division=0)
    nan = float("nan")
    c_right = float(conf[correct].mean()) if correct.any() else nan
    c_wrong = float(conf[~correct].mean()) if (~correct).any() else nan
    out = {"top1": float(accuracy_score(labels, pred)),
           "top5": float(top_k_accuracy_score(labels, probs, k=min(5, n_classes), labels=classes)),
           "precision_macro": float(p), "recall_macro": float(r), "f1_macro": float(f),
           "mean_confidence": float(conf.mean()), "confidence_correct": c_right, "confidence_incorrect": c_wrong,
           "confidence_gap": c_right - c_wrong, "mean_entropy": float(entropy(probs, axis=1).mean())}
    per_class = {n: (float(v) if s else nan) for n, v, s in zip(names, per_r, support)}
    return out, per_class


def pareto_front(accuracy, latency) -> np.ndarray:
    """Which models are Pareto-optimal: no other model has top-1 >= and latency <= with one strict.

    Args:
        accuracy: higher is better [n_models].
        latency: lower is better [n_models].

    Returns:
        bool [n_models].
    """
    acc, lat = np.asarray(accuracy, float), np.asarray(latency, float)
    dominated = ((acc[None, :] >= acc[:, None]) & (lat[None, :] <= lat[:, None])
                 & ((acc[None, :] > acc[:, None]) | (lat[None, :] < lat[:, None])))
    return ~dominated.any(1)


def _gflops(hf, x1: torch.Tensor) -> float:
    """GFLOPs of one image's forward, by torch's ``FlopCounterMode`` (a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        hf(pixel_values=x1)
    return counter.get_total_flops() / 1e9


def _load(entry):
    """(name, bridge) of a model path, bundled name or bridge."""
    if isinstance(entry, (str, Path)):
        from ..models.loading import load_model  # noqa: PLC0415

        return Path(str(entry)).name, load_model(entry, device="cpu")
    src = getattr(entry, "causal_nb_source", {}).get("name", "model")
    return Path(str(src)).name, entry


def evaluate_vit_models(models, images, labels=None, names=None, batch_size: int = 256, repeats: int = 5,
                        warmup: int = 2, class_names=None, progress: bool = False) -> VitEvaluation:
    """Evaluate ViT classifiers on the same labelled images.

    Args:
        models: model folders, bundled names (``"vit-fashion-mnist"``) or loaded bridges.
        images: pixel values [n, channels, height, width] or a ``cnb.load_fashion_mnist`` ``ImageSet``
            (then ``labels`` and ``class_names`` default to its own).
        labels: true classes [n] (checked against each model's class count).
        names: one name per model (default the folder's name).
        batch_size: images per forward; the latency is of one batch of this size.
        repeats, warmup: timed and untimed forwards of the latency batch.
        class_names: the classes' names (default the ImageSet's, else the model's ``id2label``).
        progress: a tqdm bar over the models.

    Raises:
        ValueError: no models, names of another length, images or labels that do not fit a model
            (wrong size or channel count, labels outside its classes: the message names the fix).
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    from ..engine.vision import ImageClassificationTask, class_logits  # noqa: PLC0415
    from ..models.hf import plain_hf  # noqa: PLC0415

    models = list(models) if isinstance(models, (list, tuple)) else [models]
    if not models:
        raise ValueError("evaluate_vit_models needs at least one model (folders, bundled names or bridges)")
    if names is not None and len(names) != len(models):
        raise ValueError(f"{len(names)} names for {len(models)} models: give one name per model")
    if labels is None and hasattr(images, "labels"):
        labels = images.labels
        class_names = class_names if class_names is not None else getattr(images, "classes", None)
    task = ImageClassificationTask(images, labels)
    x, y = task.images, task.labels.numpy()
    rows, per_class = [], []
    for i, entry in enumerate(tqdm(models, desc="models", disable=not progress)):
        name, model = _load(entry)
        name = names[i] if names is not None else name
        task.check_model(model, "evaluate_vit_models")
        probs = torch.softmax(class_logits(model, x, batch_size).double(), -1).numpy()
        hf = plain_hf(model, share=True).eval()  # one copy around the bridge's tensors, eager at first
        hf_names = getattr(hf.config, "id2label", None)
        cls_names = class_names if class_names is not None else (
            [hf_names[k] for k in sorted(hf_names)] if hf_names and len(hf_names) == probs.shape[1] else None)
        metrics, pc = classification_metrics(y, probs, cls_names)
        dev = next(hf.parameters())
        xb = x[:batch_size].to(device=dev.device, dtype=dev.dtype)
        gflops = _gflops(hf, xb[:1])  # counted eager: torch's FLOP counter does not see the products inside sdpa
        hf.set_attn_implementation("sdpa")  # timed as deployed, as `from_pretrained` gives it
        ms = median_ms(lambda hf=hf, xb=xb: hf(pixel_values=xb), xb.device, repeats, warmup)
        row = {"model": name, **metrics, "ms_per_batch": ms, "throughput": len(xb) / ms * 1e3,
               "params": int(sum(p.numel() for p in hf.parameters())), "gflops": gflops,
               "accuracy_per_ms": metrics["top1"] / ms}
        rows.append(row)
        per_class.append({"model": name, **pc})
    table = pd.DataFrame(rows)
    table["pareto"] = pareto_front(table.top1, table.ms_per_batch)
    return VitEvaluation(table, pd.DataFrame(per_class), int(min(batch_size, len(x))), len(x))


def recommend_model(table: pd.DataFrame, tolerance: float = 0.01) -> dict:
    """The deployment pick: the fastest Pareto-optimal model within ``tolerance`` of the best top-1.

    Returns:
        ``model``, ``top1``, ``ms_per_batch``, ``speedup`` (vs the most accurate model's
        latency), ``top1_drop`` and ``reason``.
    """
    best = table.loc[table.top1.idxmax()]
    ok = table[table.pareto & (table.top1 >= best.top1 - tolerance)]
    pick = ok.loc[ok.ms_per_batch.idxmin()]
    return {"model": pick.model, "top1": float(pick.top1), "ms_per_batch": float(pick.ms_per_batch),
            "speedup": float(best.ms_per_batch / pick.ms_per_batch), "top1_drop": float(best.top1 - pick.top1),
            "reason": (f"fastest Pareto-optimal model within {tolerance * 100:g} top-1 point(s) of the most accurate "
                       f"({best.model}, {best.top1:.4f})")}


def vit_report(ev: VitEvaluation, tolerance: float = 0.01) -> str:
    """The console report: the table, the Pareto front and the deployment recommendation."""
    cols = ["model", "top1", "top5", "f1_macro", "mean_confidence", "confidence_gap", "ms_per_batch", "throughput",
            "params", "gflops", "pareto"]
    t = ev.table[cols].copy()
    rec = recommend_model(ev.table, tolerance)
    front = ", ".join(ev.table.model[ev.table.pareto])
    return "\n".join([
        f"ViT evaluation: {len(ev.table)} model(s) on {ev.n_images} images (latency: batch {ev.batch_size}, median)",
        t.to_string(index=False, float_format=lambda v: f"{v:.4g}"),
        f"Pareto-optimal (top-1 vs latency): {front}",
        f"Recommendation: deploy {rec['model']} (top-1 {rec['top1']:.4f}, {rec['top1_drop'] * 100:.2f} points below "
        f"the best, {rec['speedup']:.2f}x its speed): {rec['reason']}"])


def plot_vit_evaluation(ev: VitEvaluation):
    """The six-panel figure: classification, speed, complexity, Pareto front, confidence, efficiency.

    Returns:
        (plotly figure, the table it draws).
    """
    import plotly.graph_objects as go  # noqa: PLC0415
    from plotly.subplots import make_subplots  # noqa: PLC0415

    df = ev.table
    fig = make_subplots(rows=2, cols=3, subplot_titles=(
        "Classification", f"Speed (batch {ev.batch_size})", "Complexity", "Pareto front (top-1 vs latency)",
        "Confidence", "Efficiency score (top-1 per ms)"))
    m = df.model
    for col, name in (("top1", "top-1"), ("top5", "top-5"), ("f1_macro", "macro F1")):
        fig.add_bar(x=m, y=df[col], name=name, row=1, col=1)
    fig.add_bar(x=m, y=df.ms_per_batch, name="ms per batch", row=1, col=2)
    fig.add_bar(x=m, y=df.params / 1e6, name="parameters (M)", row=1, col=3)
    fig.add_bar(x=m, y=df.gflops * 1e3, name="MFLOPs per image", row=1, col=3)
    front = df[df.pareto].sort_values("ms_per_batch")
    fig.add_trace(go.Scatter(x=df.ms_per_batch, y=df.top1, mode="markers+text", text=m, textposition="top center",
                             name="models", marker={"color": np.where(df.pareto, "crimson", "grey"), "size": 10}),
                  row=2, col=1)
    fig.add_trace(go.Scatter(x=front.ms_per_batch, y=front.top1, mode="lines", name="Pareto front",
                             line={"color": "crimson", "dash": "dash"}), row=2, col=1)
    for col, name in (("confidence_correct", "confidence, correct"), ("confidence_incorrect", "confidence, wrong"),
                      ("mean_entropy", "mean entropy (nats)")):
        fig.add_bar(x=m, y=df[col], name=name, row=2, col=2)
    fig.add_bar(x=m, y=df.accuracy_per_ms, name="top-1 per ms", row=2, col=3)
    fig.update_xaxes(title_text="ms per batch", row=2, col=1)
    fig.update_yaxes(title_text="top-1", row=2, col=1)
    fig.update_layout(height=750, width=1400, barmode="group", title="ViT models: accuracy, confidence and speed")
    return fig, df


def write_vit_evaluation(ev: VitEvaluation, out, png: bool = True, tolerance: float = 0.01) -> dict:
    """Write ``evaluation_metrics.json``, ``evaluation.html`` and ``evaluation.png`` into ``out``.

    Returns:
        The paths written (``json``, ``html``, ``png``) and ``png_error`` when the PNG could not
        be exported (kaleido needs a Chrome/Chromium; the HTML is written regardless).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rec = recommend_model(ev.table, tolerance)
    payload = {"n_images": ev.n_images, "batch_size": ev.batch_size,
               "models": json.loads(ev.table.to_json(orient="records")),
               "per_class_accuracy": json.loads(ev.per_class.to_json(orient="records")),
               "pareto": list(ev.table.model[ev.table.pareto]), "recommendation": rec}
    paths = {"json": out / "evaluation_metrics.json", "html": out / "evaluation.html"}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    fig, _ = plot_vit_evaluation(ev)
    fig.write_html(str(paths["html"]), include_plotlyjs="cdn")
    if png:
        try:
            fig.write_image(str(out / "evaluation.png"))
            paths["png"] = out / "evaluation.png"
        except Exception as e:  # noqa: BLE001 - kaleido's failures (no browser, ...) have many types
            why = " ".join(str(e).split())
            paths["png_error"] = (f"PNG export failed ({type(e).__name__}: {why}); kaleido needs Chrome or Chromium "
                                  "(`plotly_get_chrome`, or install chromium); the HTML figure was written")
    return paths
