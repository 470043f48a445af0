"""Load any model as a TransformerLens `TransformerBridge`: bundled zoo models, a local Hugging
Face folder, or a hub name.

Bundled models are ordinary Hugging Face folders inside the package, so all three go through
the same `TransformerBridge.boot_transformers` call. A hub name that is neither cached nor
reachable fails within seconds (instead of transformers' ~25 s of retries) with a message
naming the bundled models and how to point at a local folder.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..core.env import resolve_device
from ..zoo import MODELS_DIR, SPECS, T5_SPECS, VIT_SPECS, bundled_models, model_card, pretrained
from .bridge_fit import fit_mlp_width
from .families import check_loadable
from .hf import load_pruned_hf, quiet_loading
from .hf_encoders import ENCODER_ARCH, fit_encoder_heads, load_pruned_encoder
from .hf_vision import is_vision
from .t5 import load_pruned_t5

__all__ = ["ModelNotAvailableError", "list_models", "load_model", "resolve_device", "model_card"]

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64, "fp64": torch.float64}


class ModelNotAvailableError(RuntimeError):
    """A model name that is neither bundled, a local folder, cached, nor downloadable now."""


def list_models(cards: bool = False):
    """Model names that load offline: the bundled ones (default first), then the pretrained ones
    whose package is installed (``zoo.pretrained.PRETRAINED``); with ``cards=True`` a DataFrame.

    Args:
        cards: return one row per model (``source`` is ``"bundled"`` or ``"pretrained"``) with its
            shape; bundled rows add training tokens and held-out losses, pretrained rows the
            package, licence and how the weights were made.
    """
    names = bundled_models()
    if not cards:
        return names + pretrained.available_pretrained()
    import pandas as pd  # noqa: PLC0415

    rows = []
    for n in names:
        c = model_card(n)
        if n in VIT_SPECS:  # an image classifier: its card has test accuracy, not token losses
            rows.append({"model": n, "architecture": c["architecture"], **c["shape"], "test_top1": c["test_top1"],
                         "source": "bundled"})
            continue
        if n in T5_SPECS:  # a translation model: its card has test BLEU
            rows.append({"model": n, "architecture": c["architecture"], **c["shape"], "test_bleu": c["test_bleu"],
                         "source": "bundled"})
            continue
        rows.append({"model": n, "architecture": c["architecture"], **c["shape"],
                     "train_tokens": c["training"]["tokens"],
                     **{f"loss_{d}": v for d, v in c["heldout_loss"].items()},
                     **{f"unigram_{d}": v for d, v in c["unigram_loss"].items()},
                     "max_induction": c["induction"]["max_induction"], "source": "bundled"})
    for n in pretrained.available_pretrained():
        c = pretrained.pretrained_card(n)
        rows.append({"model": n, "architecture": c["architecture"], **c["shape"], "source": "pretrained",
                     "package": f"{c['package']} {c['package_version']}", "licence": c["licence"]})
    return pd.DataFrame(rows)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed repo id is simply "not cached"
        return False


def resolve_source(name_or_path: str | os.PathLike) -> tuple[str, str]:
    """Where a model comes from: ``("bundled"|"pretrained"|"local"|"hub", path_or_name)``.

    A pretrained name (``zoo.pretrained``) is converted to a cached HF folder on first use.

    Raises:
        ModelNotAvailableError: a hub name while the hub is unreachable and nothing is cached; a
            pretrained model whose package is missing or whose file is damaged; a near-miss of a
            known name (with the suggestion).
    """
    name = str(name_or_path)
    if name in SPECS or name in VIT_SPECS or name in T5_SPECS:
        folder = MODELS_DIR / name
        if not (folder / "config.json").exists():
            how = ("python -m causal_nb vit train --ship" if name in VIT_SPECS else
                   "python -m causal_nb t5 train --ship" if name in T5_SPECS else
                   f"python -m causal_nb.zoo.train --model {name}")
            raise ModelNotAvailableError(
                f"bundled model {name!r} has not been trained in this installation; "
                f"run `{how}` (bundled and present: {bundled_models()})"
            )
        return "bundled", str(folder)
    if name in pretrained.PRETRAINED:
        try:
            return "pretrained", str(pretrained.ensure_folder(name))
        except pretrained.PretrainedModelError as e:
            raise ModelNotAvailableError(str(e)) from None
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotAvailableError(f"{path} has no config.json: point at a folder written by `save_pretrained`")
        return "local", str(path)
    known = [*SPECS, *VIT_SPECS, *T5_SPECS, *pretrained.PRETRAINED]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
    if close and "/" not in name:  # a typo of a known name, not a hub id ("org/model")
        raise ModelNotAvailableError(f"unknown model {name!r}: did you mean {close[0]!r}? "
                                     f"(known offline: {', '.join(known)})")
    if _hub_cached(name):
        return "hub", name  # loaded offline, for this one load only (see _offline)
    if not _hub_reachable():
        raise ModelNotAvailableError(
            f"cannot load {name!r}: the Hugging Face hub is not reachable from this machine and the model is not "
            f"in the local cache. Use a model that loads offline ({', '.join(list_models()) or 'none installed'}), or download "
            f"the model elsewhere with `save_pretrained(folder)` and call load_model('/path/to/folder')."
        )
    return "hub", name


@contextlib.contextmanager
def _offline(on: bool):
    """Hub offline mode for one load (a cached model loads without network lookups), then
    restored, so a later uncached name is still fetched, or reported unreachable truthfully.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once at import, so its constant is set as well.
    """
    if not on:
        yield
        return
    from huggingface_hub import constants  # noqa: PLC0415

    env, const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = const
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "auto",
               dtype: torch.dtype | str = torch.float32, verbose: bool = False, **bridge_kwargs):
    """Load a model as a TransformerLens ``TransformerBridge`` in eval mode.

    Args:
        name_or_path: a bundled name (``list_models()``), a local Hugging Face folder, or any
            hub name of a supported family (``causal_nb.models.families.ANALYSIS_FAMILIES``: ``"gpt2"``,
            Llama, Mistral, Qwen2/3, Gemma 1/2, OPT, BLOOM, GPT-NeoX) or an encoder family
            (``ENCODER_FAMILIES``: BERT, for ``sentence_embeddings``) or an encoder-decoder
            (``SEQ2SEQ_FAMILIES``: T5, read with ``Seq2SeqTask``); other families raise
            ``UnsupportedModelError``.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:0"``...
        dtype: parameter dtype; bundled weights are stored in fp16 and upcast to this.
        verbose: show transformers' and TransformerLens's loading bars and notices.
        **bridge_kwargs: passed to ``TransformerBridge.boot_transformers``.

    Returns:
        The bridge, with ``model.cfg`` carrying ``n_layers``, ``n_heads``, ``d_model``... and
        ``model.causal_nb_source`` recording where it came from.
    """
    import inspect  # noqa: PLC0415

    from transformer_lens.model_bridge import TransformerBridge  # noqa: PLC0415 - heavy import

    from ..core.checks import unexpected_keyword  # noqa: PLC0415

    # the forwarded options are checked here, so a typo names load_model and its nearest option
    ours = ["name_or_path", "device", "dtype", "verbose"]
    passable = [n for n in inspect.signature(TransformerBridge.boot_transformers).parameters
                if n not in ("model_name", "device", "dtype")]
    for k in bridge_kwargs:
        if k not in passable:
            raise unexpected_keyword("load_model", k, ours + passable)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    kind, source = resolve_source(name_or_path)
    dev = resolve_device(device)
    with quiet_loading(verbose), _offline(kind == "hub" and _hub_cached(source)):
        if kind != "hub" and "causal_nb_pruned" in json.loads((Path(source) / "config.json").read_text()):
            # A physically pruned folder: rebuild its per-layer shapes before loading weights.
            from transformers import AutoTokenizer  # noqa: PLC0415

            from .bridge_fit import boot_bridge  # noqa: PLC0415

            spec = json.loads((Path(source) / "config.json").read_text())
            if spec.get("model_type") == "t5":  # a pruned T5: per-layer heads, the position bias rebuilt
                hf = load_pruned_t5(Path(source), dtype).to(dev)
                model = boot_bridge(hf, source, AutoTokenizer.from_pretrained(source), contextlib.nullcontext)
            elif spec["causal_nb_pruned"].get("arch") == ENCODER_ARCH:  # a pruned BERT: per-layer head counts
                hf = load_pruned_encoder(Path(source), dtype).to(dev)
                model = boot_bridge(hf, source, AutoTokenizer.from_pretrained(source), contextlib.nullcontext)
                fit_encoder_heads(model)
            else:
                hf = load_pruned_hf(Path(source), dtype).to(dev)
                tok = None if is_vision(hf) else AutoTokenizer.from_pretrained(source)  # a ViT has no tokenizer
                model = boot_bridge(hf, source, tok, contextlib.nullcontext)
        else:
            model = TransformerBridge.boot_transformers(source, device=str(dev), dtype=dtype, **bridge_kwargs)
    model.eval()
    check_loadable(model)
    fit_mlp_width(model)
    model.causal_nb_source = {"kind": kind, "source": source, "name": str(name_or_path)}
    return model
