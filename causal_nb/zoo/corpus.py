"""Offline code corpus for the bundled models: Python's standard library and C/C++ headers.

Both sources exist on any machine that has CPython and a C++ compiler (plus torch's bundled
headers), so the zoo can be rebuilt without a network. Files are split into train and
held-out *by file* (a stable hash of the relative path), so held-out loss and the prompt sets
never see a training file.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HELDOUT_PERCENT = 4  # share of files held out, by a stable hash of the path
MAX_FILE_BYTES = 400_000  # generated giants (e.g. unicode tables) teach little and skew the mix

_PY_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3", "turtledemo"}
_CPP_SKIP_PARTS = ("ATen/ops", "google/protobuf", "oneapi", "dnnl", "fbgemm", "kineto", "tensorpipe", "sleef")
_CPP_SUFFIXES = {".h", ".hpp", ".hh", ".tcc", ".cuh", ".inl", ".ipp", ""}


@dataclass(frozen=True)
class SourceFile:
    """One corpus file: its domain, a stable id (relative path) and absolute path."""

    domain: str
    rel: str
    path: Path

    @property
    def heldout(self) -> bool:
        return is_heldout(self.rel)


def is_heldout(rel: str) -> bool:
    """Stable train/held-out assignment of a file by the hash of its relative path."""
    h = int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16)
    return h % 100 < HELDOUT_PERCENT


def _read_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data or len(data) > MAX_FILE_BYTES or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def python_files() -> list[SourceFile]:
    """Python standard library sources, without test suites."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if _PY_SKIP_DIRS.intersection(rel.split("/")[:-1]) or rel.startswith("test_"):
            continue
        out.append(SourceFile("python", "python/" + rel, p))
    return out


def cpp_roots() -> list[Path]:
    """libstdc++ headers of the newest installed g++, then torch's bundled headers if present."""
    roots = [Path(p) for p in sorted(glob.glob("/usr/include/c++/*"), key=lambda s: s.split("/")[-1])[-1:]]
    try:
        import torch  # noqa: PLC0415 - optional: torch's headers enlarge the C++ corpus

        inc = Path(torch.__file__).parent / "include"
        if inc.is_dir():
            roots.append(inc)
    except ImportError:
        pass
    return roots


def cpp_files() -> list[SourceFile]:
    """C/C++ header sources (libstdc++ and torch's c10/ATen/torch/pybind11 headers)."""
    out = []
    for root in cpp_roots():
        tag = "libstdc++" if "/usr/include/c++" in str(root) else "torch"
        for p in sorted(root.rglob("*")):
            if not p.is_file() or p.suffix not in _CPP_SUFFIXES:
                continue
            rel = p.relative_to(root).as_posix()
            if any(part in rel for part in _CPP_SKIP_PARTS) or "/." in "/" + rel:
                continue
            out.append(SourceFile("cpp", f"cpp/{tag}/{rel}", p))
    return out


def corpus_files(domain: str) -> list[SourceFile]:
    """All readable corpus files of a domain (`"python"` or `"cpp"`)."""
    files = {"python": python_files, "cpp": cpp_files}[domain]()
    return [f for f in files if _read_text(f.path) is not None]


def read(file: SourceFile) -> str:
    text = _read_text(file.path)
    if text is None:
        raise ValueError(f"{file.path} is not a readable UTF-8 text file")
    return text


def corpus_stats(domain: str) -> dict:
    """Files and bytes per split, for model cards."""
    stats = {"train_files": 0, "heldout_files": 0, "train_bytes": 0, "heldout_bytes": 0}
    for f in corpus_files(domain):
        split = "heldout" if f.heldout else "train"
        stats[f"{split}_files"] += 1
        stats[f"{split}_bytes"] += len(read(f).encode())
    return stats


def encode_split(tokenizer, domain: str, heldout: bool, eos_id: int) -> np.ndarray:
    """Concatenate the split's files into one uint16 token stream, EOS between files."""
    texts = [read(f) for f in corpus_files(domain) if f.heldout == heldout]
    ids: list[int] = []
    for enc in tokenizer.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos_id)
    return np.asarray(ids, dtype=np.uint16)


def cache_dir() -> Path:
    """Where tokenised corpora are cached (not shipped): $CAUSAL_NB_CACHE or ~/.cache/causal_nb."""
    return Path(os.environ.get("CAUSAL_NB_CACHE", Path.home() / ".cache" / "causal_nb"))
