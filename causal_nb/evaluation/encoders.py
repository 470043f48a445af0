"""Encoder evaluations on frozen sentence embeddings: similarity (Spearman) and linear probes.

``similarity_eval`` scores each pair by the cosine of its two embeddings and compares with the
gold score (Spearman, with a percentile bootstrap interval over pairs; ROC AUC too when the gold
is binary, overall and per negative ``kind``). ``probe_eval`` fits a scikit-learn logistic
regression on the training sentences' embeddings and reports test accuracy and macro F1 (with
the majority-class accuracy beside it, the floor a probe must beat).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..models.embeddings import sentence_embeddings
from .stats import bootstrap_ci

__all__ = ["pair_cosines", "probe_eval", "similarity_eval", "similarity_stats"]


def _need(df, cols: tuple[str, ...], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a DataFrame (load one with cnb.load_sentence_pairs / load_sentence_labels)")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what} has no column(s) {missing}; it needs {list(cols)} (has {list(df.columns)})")
    if len(df) < 2:
        raise ValueError(f"{what} has {len(df)} rows; at least 2 are needed")


def pair_cosines(model, pairs: pd.DataFrame, batch_size: int = 32) -> np.ndarray:
    """Cosine similarity of each pair's two sentence embeddings (each distinct sentence embedded once)."""
    _need(pairs, ("sentence1", "sentence2"), "pairs")
    texts = sorted(set(pairs["sentence1"]) | set(pairs["sentence2"]))
    index = {t: i for i, t in enumerate(texts)}
    emb = sentence_embeddings(model, texts, batch_size=batch_size, normalize=True).double().numpy()
    a = emb[[index[t] for t in pairs["sentence1"]]]
    b = emb[[index[t] for t in pairs["sentence2"]]]
    return (a * b).sum(1)


def similarity_eval(model, pairs: pd.DataFrame, batch_size: int = 32, n_boot: int = 1000, seed: int = 0) -> dict:
    """Spearman correlation between embedding cosines and the gold ``score``, with a bootstrap CI.

    Args:
        pairs: a pairs table (``sentence1``, ``sentence2``, ``score``), e.g.
            ``load_sentence_pairs("tatoeba-paraphrase")`` or ``load_jsts(path)``.
        n_boot: bootstrap resamples of the pairs for the interval.

    Returns:
        ``{"spearman", "spearman_ci" (low, high), "n_pairs", "cosine"}`` (the per-pair cosines)
        and, when the gold is binary, ``"roc_auc"`` and ``"roc_auc_by_kind"`` (positives vs each
        ``kind`` of negative, if the table has a ``kind`` column).
    """
    _need(pairs, ("sentence1", "sentence2", "score"), "pairs")
    cos = pair_cosines(model, pairs, batch_size)
    kinds = pairs["kind"].to_numpy() if "kind" in pairs.columns else None
    return {**similarity_stats(cos, pairs["score"].to_numpy(dtype=float), kinds, n_boot, seed), "cosine": cos}


def similarity_stats(cos, gold, kinds=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """``similarity_eval``'s statistics from per-pair cosines already at hand.

    Args:
        cos: one cosine per pair; gold: the pairs' gold scores; kinds: each pair's negative
            kind (or None).
        n_boot: bootstrap resamples for the Spearman interval (0: no interval, NaN bounds).

    Returns:
        ``{"spearman", "spearman_ci", "n_pairs"}``, and ``"roc_auc"`` / ``"roc_auc_by_kind"``
        when the gold is binary.
    """
    from scipy.stats import spearmanr  # noqa: PLC0415
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415

    cos, gold = np.asarray(cos, dtype=float), np.asarray(gold, dtype=float)
    if cos.shape != gold.shape:
        raise ValueError(f"{len(cos)} cosines but {len(gold)} gold scores: one of each per pair")
    if np.unique(gold).size < 2:
        raise ValueError("every pair has the same gold score: a correlation needs at least two values")

    def rho(idx):
        i = idx.astype(int)
        return spearmanr(cos[i], gold[i]).statistic

    if n_boot:
        est, lo, hi = bootstrap_ci(np.arange(len(gold)), stat=rho, n_boot=n_boot, seed=seed)
    else:
        est, lo, hi = float(spearmanr(cos, gold).statistic), float("nan"), float("nan")
    out = {"spearman": est, "spearman_ci": (lo, hi), "n_pairs": len(gold)}
    if set(np.unique(gold)) == {0.0, 1.0}:
        out["roc_auc"] = float(roc_auc_score(gold, cos))
        if kinds is not None:
            kinds = np.asarray(kinds, dtype=object)
            pos = gold == 1
            out["roc_auc_by_kind"] = {
                k: float(roc_auc_score(gold[pos | m], cos[pos | m]))
                for k in sorted(set(kinds[~pos].tolist())) if (m := (kinds == k) & ~pos).any()}
    return out


def probe_eval(model, train: pd.DataFrame, test: pd.DataFrame, batch_size: int = 32, seed: int = 0,
               C: float = 1.0, max_iter: int = 2000) -> dict:
    """A logistic-regression probe on frozen, normalised sentence embeddings.

    Args:
        train, test: labelled tables (``sentence``, ``label``), e.g.
            ``load_sentence_labels("tatoeba-questions", "train")``.
        C: inverse L2 strength of scikit-learn's ``LogisticRegression``.

    Returns:
        ``{"accuracy", "macro_f1", "majority_accuracy", "n_train", "n_test"}``.
    """
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.metrics import accuracy_score, f1_score  # noqa: PLC0415

    _need(train, ("sentence", "label"), "train")
    _need(test, ("sentence", "label"), "test")
    y_tr, y_te = train["label"].to_numpy(), test["label"].to_numpy()
    if np.unique(y_tr).size < 2:
        raise ValueError("train has a single label: a probe needs at least two classes")
    unseen = sorted(set(y_te.tolist()) - set(y_tr.tolist()))
    if unseen:
        raise ValueError(f"test labels {unseen} never occur in train")
    x_tr = sentence_embeddings(model, list(train["sentence"]), batch_size=batch_size).numpy()
    x_te = sentence_embeddings(model, list(test["sentence"]), batch_size=batch_size).numpy()
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed).fit(x_tr, y_tr)
    pred = clf.predict(x_te)
    majority = np.bincount(y_tr).argmax()
    return {"accuracy": float(accuracy_score(y_te, pred)), "macro_f1": float(f1_score(y_te, pred, average="macro")),
            "majority_accuracy": float(np.mean(y_te == majority)), "n_train": len(y_tr), "n_test": len(y_te)}
