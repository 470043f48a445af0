"""Sentence embeddings of an encoder bridge, pooled as sentence-transformers pools them.

The encoder runs through the ``TransformerBridge`` (its last block's ``hook_out``, BERT's
``last_hidden_state``), so hooks added to the bridge later apply to the embeddings too. The
pooling follows the model folder's sentence-transformers files: ``modules.json`` (is there a
Normalize module), ``1_Pooling/config.json`` (mean, CLS or max over the attention mask) and
``sentence_bert_config.json`` (``max_seq_length``: longer texts are truncated). A folder without
them (a plain BERT) gets mean pooling and the tokenizer's own maximum length.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from .families import ENCODER_FAMILIES, UnsupportedModelError, family

__all__ = ["pooling_config", "sentence_embeddings"]

_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


class _Stop(Exception):
    """Raised by the capture hook once the last block has run: the (unused) MLM head is skipped."""


def _folder(model) -> Path | None:
    src = getattr(model, "causal_nb_source", None) or {}
    path = Path(str(src.get("source", "")))
    return path if src.get("kind") != "hub" and (path / "config.json").exists() else None


def pooling_config(model) -> dict:
    """How the model's sentence embeddings are pooled: ``{"mode", "normalize", "max_length"}``.

    Read from the sentence-transformers files of the folder the model was loaded from; without
    them: mean pooling, no fixed normalisation, no extra length limit.

    Raises:
        ValueError: a pooling mode other than mean, CLS or max (sqrt-length mean is not handled).
    """
    cfg = {"mode": "mean", "normalize": None, "max_length": None}
    folder = _folder(model)
    if folder is None:
        return cfg
    pool = folder / "1_Pooling" / "config.json"
    if pool.exists():
        p = json.loads(pool.read_text())
        on = [k for k, v in p.items() if k.startswith("pooling_mode_") and v]
        if len(on) != 1 or on[0] not in _MODES:
            raise ValueError(f"{pool}: pooling {on} is not handled (one of {sorted(_MODES)} must be true)")
        cfg["mode"] = _MODES[on[0]]
    mods = folder / "modules.json"
    if mods.exists():
        cfg["normalize"] = any(m.get("type", "").endswith(".Normalize") for m in json.loads(mods.read_text()))
    sb = folder / "sentence_bert_config.json"
    if sb.exists():
        cfg["max_length"] = json.loads(sb.read_text()).get("max_seq_length")
    return cfg


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string (wrap it: [text])")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one sentence")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts[{bad[0]}] is a {type(texts[bad[0]]).__name__}, not a string "
                        f"({len(bad)} non-string entries)")
    return texts


def sentence_embeddings(model, texts, batch_size: int = 32, normalize: bool = True,
                        max_length: int | None = None) -> Tensor:
    """One vector per text: the encoder's last hidden states pooled over the attention mask.

    Args:
        model: an encoder bridge (``load_model("all-minilm-l6-v2")`` or a local BERT folder).
        texts: the sentences (a list of strings).
        batch_size: texts per forward; a speed/memory knob that does not change the results
            beyond float rounding.
        normalize: L2-normalise each vector (what sentence-transformers' Normalize module does;
            the cosine similarity is then a dot product).
        max_length: truncate to this many tokens (default: the folder's ``max_seq_length``, else
            the tokenizer's limit).

    Returns:
        ``Tensor[len(texts), d_model]``, float32 on the CPU.

    Raises:
        UnsupportedModelError: a decoder model (its last hidden states are not a tested
            sentence embedding here).
    """
    name = family(model)
    if name not in ENCODER_FAMILIES:
        raise UnsupportedModelError(f"sentence_embeddings pools an encoder's last hidden states; model family "
                                    f"{name!r} is not an encoder (encoders: {', '.join(ENCODER_FAMILIES)})")
    texts = _check_texts(texts)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    cfg = pooling_config(model)
    tok = model.tokenizer
    limit = max_length or cfg["max_length"] or min(getattr(tok, "model_max_length", 512), model.cfg.n_ctx)
    hook = f"blocks.{model.cfg.n_layers - 1}.hook_out"
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tok(texts[start:start + batch_size], padding=True, truncation=True, max_length=limit,
                  return_tensors="pt").to(device)
        got: dict[str, Tensor] = {}

        def keep(x, hook, got=got):  # noqa: ARG001 - the TransformerLens hook signature
            got["h"] = x
            raise _Stop  # the head over the 30k vocabulary would double the cost, for logits never read

        with torch.no_grad():
            try:
                model.run_with_hooks(enc["input_ids"], attention_mask=enc["attention_mask"], fwd_hooks=[(hook, keep)])
            except _Stop:
                pass
        h = got["h"].float()
        mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        if cfg["mode"] == "mean":
            v = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # sentence-transformers' clamp
        elif cfg["mode"] == "cls":
            v = h[:, 0]
        else:
            v = h.masked_fill(mask == 0, -1e9).max(1).values
        out.append(v.cpu())
    emb = torch.cat(out)
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb
