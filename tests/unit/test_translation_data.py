"""The shipped Tatoeba English-German pairs and their builder (``zoo.build_translation``):

- the shipped splits share no English sentence (compared exactly and lower-cased without
  punctuation), their counts and sha256 match ``build_info.json`` and ``PROVENANCE.md``;
- ``load_translation_pairs`` reads them in file order, and names the fix for a missing file, an
  unknown split, a bad ``n`` and a malformed line;
- the builder, on a small SENTENCES table written here, normalises, filters, deduplicates, keeps
  variants of one English sentence in one split, and writes the same bytes twice.

The files are read here with ``gzip`` and ``json`` directly (not through the loader) as the
independent reference.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re

import pytest

import causal_nb as cnb
from causal_nb.data.translation import TRANSLATION_DIR, TranslationDataError
from causal_nb.zoo.build_translation import MAX_WORDS, build

SPLITS = ("train", "val", "test")


def raw(split, folder=TRANSLATION_DIR):
    with gzip.open(folder / f"tatoeba_en_de_{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def key(s):  # the test's own grouping: lower case, punctuation dropped
    return " ".join(re.sub(r"[^\w]+", " ", s.lower()).split())


@pytest.fixture(scope="module")
def shipped():
    return {s: raw(s) for s in SPLITS}


def test_shipped_splits_share_no_english_sentence(shipped):
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not {r["en"] for r in shipped[a]} & {r["en"] for r in shipped[b]}, (a, b)
                assert not {key(r["en"]) for r in shipped[a]} & {key(r["en"]) for r in shipped[b]}, (a, b)
    pairs = [(r["en"], r["de"]) for s in SPLITS for r in shipped[s]]
    assert len(pairs) == len(set(pairs))  # no pair twice
    assert all(r["en"].strip() == r["en"] and "  " not in r["en"] + r["de"] for s in SPLITS for r in shipped[s])


def test_counts_and_hashes_match_the_provenance(shipped):
    info = json.loads((TRANSLATION_DIR / "build_info.json").read_text())
    prov = (TRANSLATION_DIR / "PROVENANCE.md").read_text()
    assert "CC-BY 2.0 FR" in prov and "tatoeba.org" in prov and info["source_sha256"] in prov
    for s in SPLITS:
        got = info["splits"][s]
        assert got["pairs"] == len(shipped[s])
        assert got["english_sentences"] == len({key(r["en"]) for r in shipped[s]})
        data = (TRANSLATION_DIR / f"tatoeba_en_de_{s}.jsonl.gz").read_bytes()
        assert got["file_sha256"] == hashlib.sha256(data).hexdigest()
        assert f"| {s} | {len(shipped[s]):,} |" in prov
    assert sum(info["splits"][s]["pairs"] for s in SPLITS) == info["pairs"]
    assert info["rows_with_en_and_de"] - info["dropped_length"] - info["dropped_duplicate"] == info["pairs"]


def test_loader_reads_the_files_in_order(shipped):
    df = cnb.load_translation_pairs("test", n=5)
    assert list(df.columns) == ["en", "de", "ja_id"] and len(df) == 5
    assert list(zip(df.en, df.de)) == [(r["en"], r["de"]) for r in shipped["test"][:5]]
    assert df.attrs["licence"] == "CC-BY 2.0 FR"
    assert len(cnb.load_translation_pairs("val")) == len(shipped["val"])


def test_loader_errors_name_the_fix(tmp_path):
    with pytest.raises(TranslationDataError, match=r"does not exist; build .*python -m causal_nb.zoo.build_translation"):
        cnb.load_translation_pairs("train", folder=tmp_path)
    with pytest.raises(TranslationDataError, match="unknown split 'dev'.*train, val, test"):
        cnb.load_translation_pairs("dev")
    with pytest.raises(TranslationDataError, match="n=0"):
        cnb.load_translation_pairs("test", n=0)
    with gzip.open(tmp_path / "tatoeba_en_de_test.jsonl.gz", "wt") as f:
        f.write('{"en": "Hi.", "de": "Hallo."}\n{"en": "Hi."}\n')
    with pytest.raises(TranslationDataError, match=r"tatoeba_en_de_test.jsonl.gz:2: expected .*'de'"):
        cnb.load_translation_pairs("test", folder=tmp_path)
    with gzip.open(tmp_path / "tatoeba_en_de_val.jsonl.gz", "wt") as f:
        f.write("{not json\n")
    with pytest.raises(TranslationDataError, match=r"val.jsonl.gz:1: not valid JSON"):
        cnb.load_translation_pairs("val", folder=tmp_path)


def sentences_table(path):
    """A SENTENCES-format table (id, ja, en, nl, de, fr, es, sv, audio; '-' for missing)."""
    rows = [("1", "ja", "How old are you?", "-", "Wie alt bist du?"),
            ("2", "ja", "How old are you.", "-", "Wie alt sind Sie?"),  # same English key as row 1
            ("3", "ja", "How old are you?", "-", "Wie alt bist du?"),  # an exact duplicate of row 1
            ("4", "ja", "No German here.", "-", "-"),
            ("5", "ja", " ".join(["word"] * (MAX_WORDS + 1)), "-", "Zu lang."),
            ("6", "ja", "Caf\u0065\u0301  time\u00a0now.", "-", "Kaffeezeit\u202f!")]
    rows += [(str(10 + i), "ja", f"Sentence number {i}.", "-", f"Satz Nummer {i}.") for i in range(30)]
    path.write_text("".join("\t".join([*r, "-", "-", "-", "-"]) + "\n" for r in rows), encoding="utf-8")
    return path


def test_builder_normalises_filters_and_splits_by_english_sentence(tmp_path):
    src = sentences_table(tmp_path / "SENTENCES")
    info = build(src, tmp_path / "a", n_test=5, n_val=3, seed=1)
    assert (info["rows_with_en_and_de"], info["dropped_length"], info["dropped_duplicate"]) == (35, 1, 1)
    got = {s: raw(s, tmp_path / "a") for s in SPLITS}
    assert [info["splits"][s]["english_sentences"] for s in SPLITS] == [32 - 8, 3, 5]
    where = {r["de"]: s for s in SPLITS for r in got[s]}
    assert where["Wie alt bist du?"] == where["Wie alt sind Sie?"]  # one English sentence, one split
    allrecs = [r for s in SPLITS for r in got[s]]
    cafe = next(r for r in allrecs if r["de"].startswith("Kaffee"))
    assert cafe == {"en": "Caf\u00e9 time now.", "de": "Kaffeezeit !", "ja_id": "6"}  # NFC, spaces normalised
    again = build(src, tmp_path / "b", n_test=5, n_val=3, seed=1)
    for s in SPLITS:
        assert (tmp_path / "a" / f"tatoeba_en_de_{s}.jsonl.gz").read_bytes() == \
            (tmp_path / "b" / f"tatoeba_en_de_{s}.jsonl.gz").read_bytes()
    assert again == info
    build(src, tmp_path / "c", n_test=5, n_val=3, seed=2)  # the seed picks the held-out sentences
    assert {r["en"] for r in raw("test", tmp_path / "c")} != {r["en"] for r in got["test"]}
    with pytest.raises(ValueError, match="cannot hold out"):
        build(src, tmp_path / "d", n_test=30, n_val=10)
