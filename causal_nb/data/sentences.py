"""Sentence tasks for encoders: similarity pairs and labelled sentences, as pandas tables.

Two kinds of table, checked on load (a bad line is named by file and line number):

- pairs: ``sentence1``, ``sentence2``, ``score`` (float gold similarity), plus any extra
  columns of the file (``kind``...). ``attrs["score_range"]`` is the gold scale.
- labelled sentences: ``sentence``, ``label`` (int, 0..n-1); ``attrs["labels"]`` names them.

Sources: the sets shipped in ``sentence_files/`` (built offline from Tatoeba by
``python -m causal_nb.zoo.build_pairs``; see ``sentence_files/PROVENANCE.md``), and loaders for
the JGLUE formats: JSTS (``sentence1``, ``sentence2``, ``label`` float 0-5), JCoLA
(``sentence``, ``label`` 0/1) and MARC-ja (``sentence``, ``label`` positive/negative). Those read
a local JSONL file; with no file they go through ``datasets`` to the hub (``JGLUE_HUB``), which
works only where the hub is reachable.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

__all__ = ["BUNDLED_SENTENCE_SETS", "JGLUE_HUB", "SENTENCE_DIR", "SentenceDataError", "balanced_pairs", "load_jcola",
           "load_jsts",
           "load_marc_ja", "load_sentence_labels", "load_sentence_pairs"]

SENTENCE_DIR = Path(__file__).parent / "sentence_files"

#: Shipped sets: name -> (kind, file stem); files are ``<stem>_<split>.jsonl``.
BUNDLED_SENTENCE_SETS: dict[str, tuple[str, str]] = {
    "tatoeba-paraphrase": ("pairs", "tatoeba_paraphrase"),
    "tatoeba-questions": ("labels", "tatoeba_questions"),
}

#: Where JGLUE lives on the hub (``datasets.load_dataset(repo, config)``); untested here (no hub).
JGLUE_HUB = {"jsts": ("sbintuitions/JGLUE", "JSTS"), "jcola": ("sbintuitions/JGLUE", "JCoLA"),
             "marc_ja": ("sbintuitions/JGLUE", "MARC-ja")}


class SentenceDataError(ValueError):
    """A sentence file or record that does not fit its format (the message names file and line)."""


def _records(path: Path):
    """(line number, dict) for every non-blank line of a JSONL file."""
    if not path.exists():
        raise SentenceDataError(f"{path} does not exist")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SentenceDataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise SentenceDataError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
            yield n, rec


def _text(rec: dict, key: str, where: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str) or not v.strip():
        raise SentenceDataError(f"{where}: {key!r} is missing or not a non-empty string (got {v!r})")
    return v


def _pairs(records, where_of, score_key: str, lo: float, hi: float, keep_extra: bool) -> pd.DataFrame:
    rows = []
    for n, rec in records:
        where = where_of(n)
        s1, s2 = _text(rec, "sentence1", where), _text(rec, "sentence2", where)
        v = rec.get(score_key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SentenceDataError(f"{where}: the pair has no numeric {score_key!r} (got {v!r}); "
                                    f"every pair needs a gold score in [{lo:g}, {hi:g}]")
        if not lo <= v <= hi:
            raise SentenceDataError(f"{where}: {score_key!r} {v!r} is outside [{lo:g}, {hi:g}]")
        extra = {k: x for k, x in rec.items() if k not in ("sentence1", "sentence2", score_key)} if keep_extra else {}
        rows.append({"sentence1": s1, "sentence2": s2, "score": float(v), **extra})
    if not rows:
        raise SentenceDataError(f"{where_of(0).rsplit(':', 1)[0]}: no pairs")
    df = pd.DataFrame(rows)
    df.attrs["score_range"] = (lo, hi)
    return df


def _labels(records, where_of, names: list[str], keep_extra: bool) -> pd.DataFrame:
    rows = []
    for n, rec in records:
        where = where_of(n)
        s = _text(rec, "sentence", where)
        v = rec.get("label")
        if isinstance(v, str) and v in names:
            v = names.index(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(names):
            raise SentenceDataError(f"{where}: label {v!r} is not one of {names} (or 0..{len(names) - 1})")
        extra = {k: x for k, x in rec.items() if k not in ("sentence", "label")} if keep_extra else {}
        rows.append({"sentence": s, "label": v, **extra})
    if not rows:
        raise SentenceDataError(f"{where_of(0).rsplit(':', 1)[0]}: no sentences")
    df = pd.DataFrame(rows)
    df.attrs["labels"] = list(names)
    return df


def _local(path) -> tuple:
    p = Path(path)
    return _records(p), (lambda n: f"{p}:{n}")


def _hub(task: str, split: str) -> tuple:
    repo, config = JGLUE_HUB[task]
    try:
        import datasets  # noqa: PLC0415

        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as e:  # noqa: BLE001 - no hub, no package, or an unknown split: one clear message
        raise SentenceDataError(
            f"could not load {repo} {config} split {split!r} through `datasets` ({type(e).__name__}: {e}). "
            f"Offline, pass the JSONL file: load_{task}('/path/to/{config.lower()}-{split}.jsonl')") from None
    return enumerate(ds, 1), (lambda n: f"{repo}/{config}[{split}] row {n}")


def load_jsts(path=None, split: str = "validation") -> pd.DataFrame:
    """JGLUE JSTS pairs (``sentence1``, ``sentence2``, ``label`` 0-5) as a pairs table (``score``).

    Args:
        path: a local JSONL file in JGLUE's format; None loads ``split`` from the hub.
    """
    recs, where = _local(path) if path is not None else _hub("jsts", split)
    return _pairs(recs, where, "label", 0.0, 5.0, keep_extra=True)


def load_jcola(path=None, split: str = "validation") -> pd.DataFrame:
    """JGLUE JCoLA (``sentence``, ``label`` 0 unacceptable / 1 acceptable)."""
    recs, where = _local(path) if path is not None else _hub("jcola", split)
    return _labels(recs, where, ["unacceptable", "acceptable"], keep_extra=True)


def load_marc_ja(path=None, split: str = "validation") -> pd.DataFrame:
    """JGLUE MARC-ja (``sentence``, ``label`` "positive"/"negative" or 0/1 as on the hub: 0 positive)."""
    recs, where = _local(path) if path is not None else _hub("marc_ja", split)
    return _labels(recs, where, ["positive", "negative"], keep_extra=True)


def _bundled(name: str, kind: str, split: str) -> Path:
    if name not in BUNDLED_SENTENCE_SETS or BUNDLED_SENTENCE_SETS[name][0] != kind:
        known = [n for n, (k, _) in BUNDLED_SENTENCE_SETS.items() if k == kind]
        raise SentenceDataError(f"no shipped {kind} set named {name!r}; shipped: {known} (or pass a JSONL path)")
    if split not in ("train", "test"):
        raise SentenceDataError(f"split must be 'train' or 'test', got {split!r}")
    return SENTENCE_DIR / f"{BUNDLED_SENTENCE_SETS[name][1]}_{split}.jsonl"


def load_sentence_pairs(name_or_path: str = "tatoeba-paraphrase", split: str = "test") -> pd.DataFrame:
    """A shipped pairs set (``"tatoeba-paraphrase"``: gold 1 paraphrase / 0 not) or a JSONL file of
    ``sentence1``, ``sentence2``, ``score`` in [0, 1]."""
    p = Path(name_or_path) if str(name_or_path).endswith(".jsonl") else _bundled(str(name_or_path), "pairs", split)
    return _pairs(*_local(p), "score", 0.0, 1.0, keep_extra=True)


def load_sentence_labels(name_or_path: str = "tatoeba-questions", split: str = "test",
                         labels: list[str] | None = None) -> pd.DataFrame:
    """A shipped labelled set (``"tatoeba-questions"``: 0 statement / 1 question, end punctuation
    removed) or a JSONL file of ``sentence``, ``label`` (``labels`` names them; default 0/1)."""
    if str(name_or_path).endswith(".jsonl"):
        p, names = Path(name_or_path), labels or ["0", "1"]
    else:
        p, names = _bundled(str(name_or_path), "labels", split), labels or ["statement", "question"]
    return _labels(*_local(p), names, keep_extra=True)


def balanced_pairs(pairs: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` pairs, half with gold 1 (paraphrases) and half with gold 0, the first of each in
    file order (deterministic; the file order of the shipped sets is already shuffled), kept in
    file order. Binary gold only; too few of either kind is an error naming the counts."""
    if not isinstance(pairs, pd.DataFrame) or "score" not in pairs.columns:
        raise TypeError("balanced_pairs takes a pairs DataFrame with a 'score' column (cnb.load_sentence_pairs)")
    if not set(pairs["score"].unique()) <= {0.0, 1.0}:
        raise ValueError("balanced_pairs needs binary gold (0/1 scores); graded sets (JSTS) are sampled as they are")
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (one pair of each kind at least), got {n!r}")
    pos, neg = pairs[pairs.score == 1], pairs[pairs.score == 0]
    want_pos, want_neg = n // 2, n - n // 2
    if len(pos) < want_pos or len(neg) < want_neg:
        raise ValueError(f"asked for {want_pos} paraphrases and {want_neg} non-paraphrases; the set has {len(pos)} and "
                         f"{len(neg)}: lower n")
    return pd.concat([pos.iloc[:want_pos], neg.iloc[:want_neg]]).sort_index()
