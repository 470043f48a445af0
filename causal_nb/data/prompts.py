"""Prompt sets: one JSONL file per domain in ``causal_nb/data/prompt_files/``, loaded, validated and tokenised.

Each line is ``{"id": str, "text": str, "split": "train"|"test"}`` (extra keys are kept in
``PromptSet.meta``). Validation errors name the file and line. Tokenisation prepends BOS (as
TransformerLens does), truncates to a fixed length and right-pads with a mask, so clean and
corrupted sets of the same length align position by position.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Int
from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PromptSet", "PromptSetError", "TokenBatch", "available_domains", "load_prompts", "prompt_dir", "prompt_set_summary"]

SPLITS = ("train", "test")


class PromptSetError(ValueError):
    """A prompt file that cannot be used; the message names the file and line."""


def prompt_dir() -> Path:
    """``$CAUSAL_NB_PROMPTS`` or the prompt sets shipped in the package (``causal_nb/data/prompt_files/``)."""
    env = os.environ.get("CAUSAL_NB_PROMPTS")
    return Path(env) if env else Path(__file__).resolve().parent / "prompt_files"


def available_domains() -> list[str]:
    """Domains with a JSONL file in ``prompt_dir()``."""
    return sorted(p.stem for p in prompt_dir().glob("*.jsonl"))


@dataclass(frozen=True)
class TokenBatch:
    """Tokenised prompts. Assumes [batch, pos] with BOS at pos 0 and right padding.

    Attributes:
        tokens: token ids, padding filled with the pad id.
        mask: True at real tokens.
        ids: prompt ids, one per row.
    """

    tokens: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        return self.mask.sum(-1)

    def to(self, device) -> TokenBatch:
        return TokenBatch(self.tokens.to(device), self.mask.to(device), self.ids)


@dataclass(frozen=True)
class PromptSet:
    """An ordered set of prompts of one domain (or an ad-hoc list of strings)."""

    domain: str
    texts: tuple[str, ...]
    ids: tuple[str, ...]
    split: str = "all"
    source: str | None = None
    sha256: str | None = None
    meta: tuple[dict, ...] = field(default=(), repr=False)

    def __post_init__(self):
        if not self.texts:
            raise PromptSetError(f"prompt set {self.domain!r} (split {self.split!r}) is empty")
        if len(self.texts) != len(self.ids):
            raise PromptSetError("texts and ids differ in length")

    @classmethod
    def from_texts(cls, texts, domain: str = "custom", ids=None) -> PromptSet:
        """Wrap a list of strings (ids default to ``custom-0``, ``custom-1``...)."""
        texts = tuple(texts)
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise PromptSetError("every prompt must be a non-empty string")
        ids = tuple(ids) if ids is not None else tuple(f"{domain}-{i}" for i in range(len(texts)))
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
        return cls(domain, texts, ids, sha256=digest)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return PromptSet(self.domain, self.texts[i], self.ids[i], self.split, self.source, self.sha256,
                             self.meta[i] if self.meta else ())
        return self.texts[i]

    def head(self, n: int) -> PromptSet:
        """The first ``n`` prompts (the file order is the canonical order)."""
        return self[:n]

    def fitting(self, tokenizer_or_model, n_tokens: int, prepend_bos: bool = True) -> PromptSet:
        """The prompts at least ``n_tokens`` long (BOS included), in file order.

        Paired patching needs prompts whose tokens fill every position; the prompt sets hold
        real code chunks of varying length, so take the ones that fit before ``head(n)``.
        """
        tok = getattr(tokenizer_or_model, "tokenizer", tokenizer_or_model)
        keep = [i for i, t in enumerate(self.texts)
                if len(tok(t, add_special_tokens=False)["input_ids"]) + int(prepend_bos) >= n_tokens]
        if not keep:
            raise PromptSetError(f"no {self.domain} prompt has {n_tokens} tokens; lower n_tokens")
        return PromptSet(self.domain, tuple(self.texts[i] for i in keep), tuple(self.ids[i] for i in keep),
                         self.split, self.source, self.sha256, tuple(self.meta[i] for i in keep) if self.meta else ())

    def tokenize(self, tokenizer_or_model, n_tokens: int, prepend_bos: bool = True, pad: bool = True) -> TokenBatch:
        """Tokenise to exactly ``n_tokens`` positions per prompt (BOS included).

        Longer prompts are truncated. Shorter ones are right-padded with a False mask when
        ``pad``; with ``pad=False`` a prompt shorter than ``n_tokens`` is an error that names it
        (use this where positions must align exactly across prompts).
        """
        tok = getattr(tokenizer_or_model, "tokenizer", tokenizer_or_model)
        if n_tokens < 2:
            raise ValueError(f"n_tokens must be at least 2, got {n_tokens}")
        bos = _bos_id(tok) if prepend_bos else tok.bos_token_id
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (bos or 0)
        rows, masks = [], []
        for pid, text in zip(self.ids, self.texts):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            ids = ([bos] if prepend_bos else []) + ids
            ids = ids[:n_tokens]
            if len(ids) < n_tokens and not pad:
                raise PromptSetError(
                    f"prompt {pid!r} has {len(ids)} tokens, fewer than n_tokens={n_tokens}; "
                    "lower n_tokens or allow padding (pad=True)"
                )
            masks.append([True] * len(ids) + [False] * (n_tokens - len(ids)))
            rows.append(ids + [pad_id] * (n_tokens - len(ids)))
        return TokenBatch(torch.tensor(rows), torch.tensor(masks), self.ids)


def _bos_id(tok) -> int:
    """The token prepended as BOS: the tokenizer's BOS, else its EOS (TransformerLens's
    convention for tokenizers without one, e.g. OPT-style or Qwen's)."""
    for tid in (tok.bos_token_id, tok.eos_token_id):
        if tid is not None:
            return int(tid)
    raise PromptSetError(f"the tokenizer {type(tok).__name__} has neither a BOS nor an EOS token to prepend; "
                         "tokenize with prepend_bos=False, or set tokenizer.bos_token")


def _fail(path: Path, lineno: int, msg: str) -> None:
    raise PromptSetError(f"{path}:{lineno}: {msg}")


def parse_jsonl(path: Path) -> list[dict]:
    """Read and validate a prompt JSONL file. Errors carry ``file:line`` and the fix."""
    if not path.exists():
        raise PromptSetError(f"{path}: no such prompt file; domains in {prompt_dir()}: {available_domains()}")
    records, seen = [], {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                _fail(path, lineno, f"invalid JSON ({e.msg} at column {e.colno}); "
                      'each line must be one object like {"id": "x-001", "text": "...", "split": "train"}')
            if not isinstance(rec, dict):
                _fail(path, lineno, f"expected a JSON object, got {type(rec).__name__}")
            for key in ("id", "text"):
                if key not in rec:
                    _fail(path, lineno, f"missing field {key!r} (required: 'id', 'text'; optional: 'split')")
            if not isinstance(rec["text"], str) or not rec["text"].strip():
                _fail(path, lineno, "empty 'text'; every prompt needs some text")
            rec["id"] = str(rec["id"])
            if rec["id"] in seen:
                _fail(path, lineno, f"duplicate id {rec['id']!r} (first on line {seen[rec['id']]})")
            seen[rec["id"]] = lineno
            rec.setdefault("split", "train")
            if rec["split"] not in SPLITS:
                _fail(path, lineno, f"split must be one of {SPLITS}, got {rec['split']!r}")
            records.append(rec)
    if not records:
        raise PromptSetError(f"{path}: the file has no prompts")
    return records


def prompt_set_summary() -> pd.DataFrame:
    """One row per domain file: prompts per split and mean characters per prompt."""
    import pandas as pd  # noqa: PLC0415

    rows = []
    for d in available_domains():
        recs = parse_jsonl(prompt_dir() / f"{d}.jsonl")
        rows.append({"domain": d, "train": sum(r["split"] == "train" for r in recs),
                     "test": sum(r["split"] == "test" for r in recs),
                     "mean_chars": round(sum(len(r["text"]) for r in recs) / len(recs), 1)})
    return pd.DataFrame(rows)


def load_prompts(domain_or_path: str | os.PathLike, split: str = "train", n: int | None = None) -> PromptSet:
    """Load a domain's prompts (``"python"``, ``"cpp"``, ``"finance"``...) or a JSONL file.

    Args:
        domain_or_path: a domain name from ``available_domains()`` or a path to a ``.jsonl`` file.
        split: ``"train"``, ``"test"`` or ``"all"``.
        n: keep only the first ``n`` prompts of the split (file order).
    """
    if split not in (*SPLITS, "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    p = Path(domain_or_path)
    if p.suffix == ".jsonl" or p.exists():
        path, domain = p, p.stem
    else:
        path, domain = prompt_dir() / f"{domain_or_path}.jsonl", str(domain_or_path)
        if not path.exists():
            raise PromptSetError(f"unknown domain {domain!r}; available: {available_domains()} (or pass a .jsonl path)")
    records = parse_jsonl(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    recs = [r for r in records if split == "all" or r["split"] == split]
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        recs = recs[:n]
    if not recs:
        raise PromptSetError(f"{path}: no prompts in split {split!r}")
    extra = tuple({k: v for k, v in r.items() if k not in ("id", "text", "split")} for r in recs)
    return PromptSet(domain, tuple(r["text"] for r in recs), tuple(r["id"] for r in recs), split, str(path), digest, extra)


def as_prompt_set(prompts) -> PromptSet:
    """Accept a ``PromptSet`` or a list of strings."""
    if isinstance(prompts, PromptSet):
        return prompts
    if isinstance(prompts, str):
        raise PromptSetError("pass a list of prompts or a PromptSet, not a single string")
    return PromptSet.from_texts(prompts)
