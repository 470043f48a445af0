"""Build the code prompt sets ``causal_nb/data/prompt_files/python.jsonl`` and ``.../cpp.jsonl``.

Prompts are real code: chunks of whole lines from the corpus's *held-out* files (never seen
in training), skipping licence headers and comment-heavy chunks, taken round-robin across
files for variety. The train/test split of the prompts is by file, so test prompts come from
files that no train prompt comes from. ``python -m causal_nb.zoo.build_prompts`` rewrites both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from ..data.prompts import prompt_dir
from . import corpus

_COMMENT = ("#", "//", "/*", "*", "*/", '"""', "'''")


def _chunks(text: str, min_chars: int, max_chars: int, skip_lines: int = 30, stride: int = 8):
    lines = text.splitlines()
    i = skip_lines
    while i < len(lines):
        buf, j = [], i
        while j < len(lines) and len("\n".join(buf)) < min_chars:
            buf.append(lines[j])
            j += 1
        chunk = "\n".join(buf)
        body = [ln.strip() for ln in buf]
        comments = sum(1 for ln in body if not ln or ln.startswith(_COMMENT))
        ok = (min_chars <= len(chunk) <= max_chars and comments <= 0.4 * len(body)
              and "copyright" not in chunk.lower() and buf[0].strip())
        if ok:
            yield i + 1, chunk
            i = j + stride
        else:
            i += 1


def build(domain: str, n_train: int = 160, n_test: int = 80, min_chars: int = 300, max_chars: int = 700) -> list[dict]:
    """Prompts of a code domain from held-out files; test prompts from a disjoint set of files."""
    files = [f for f in corpus.corpus_files(domain) if f.heldout]
    pools: dict[str, list] = {"train": [], "test": []}
    for f in files:
        split = "test" if int(hashlib.sha1(f.rel.encode()).hexdigest()[:6], 16) % 3 == 0 else "train"
        cands = [(f.rel, ln, c) for ln, c in _chunks(corpus.read(f), min_chars, max_chars)]
        if cands:
            pools[split].append(cands)
    out = []
    for split, want in (("train", n_train), ("test", n_test)):
        taken, r = [], 0
        while len(taken) < want and any(r < len(c) for c in pools[split]):
            taken += [c[r] for c in pools[split] if r < len(c)][: want - len(taken)]
            r += 1
        if len(taken) < want:
            raise RuntimeError(f"only {len(taken)} {split} chunks for {domain}; lower the count or the chunk size")
        out += [{"id": f"{domain}-{len(out) + k + 1:03d}", "text": text, "split": split,
                 "source": f"{rel}:{ln}"} for k, (rel, ln, text) in enumerate(taken)]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: prompt_dir(), i.e. causal_nb/data/prompt_files/)")
    a = p.parse_args(argv)
    out = a.out or prompt_dir()
    out.mkdir(parents=True, exist_ok=True)
    for domain in ("python", "cpp"):
        recs = build(domain)
        with (out / f"{domain}.jsonl").open("w") as fh:
            for r in recs:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{domain}: {len(recs)} prompts from {len({r['source'].split(':')[0] for r in recs})} files")


if __name__ == "__main__":
    main()
