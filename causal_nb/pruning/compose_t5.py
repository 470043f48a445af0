"""Composable pruning on the Hugging Face T5 (``T5ForConditionalGeneration``): the family's thin specialisation.

The generic pipeline (``compose_modules``, ``compose_train``, ``compose_stages``) asks this module
only where a T5 differs from a decoder LM:

* Modules (``t5_prunable``): every attention (encoder self-attention, decoder self-attention and
  cross-attention, ``T5Attention``) and every FF linear (``wi`` or gated ``wi_0``/``wi_1``, ``wo``).
* Head-wise L1 (``t5_head_l1``): a head's L1 norm of its rows of the raw ``q``, ``k`` and ``v``
  weights (T5 has no GQA: one key/value head per query head).
* Slicing (``t5_sliced``) and composing (``t5_structure``): the kit's T5 slicing
  (``models.t5.slice_t5_heads``, ``apply_t5_structure``), which keeps the relative position bias
  whole and hands each sliced self-attention its kept heads' rows.
* Module-level inputs (``t5_module_data``): a captured self-attention's ``position_bias`` is the
  full bias the dense layer used (every head); a variant gets its kept heads' rows. A
  cross-attention's bias is zeros, which the sliced module builds itself.
* Data (``Pairs``, ``translation_pairs``): English-German pairs tokenised with the model's
  tokenizer; the task loss is the seq2seq cross-entropy (``labels``); ``bleu`` scores greedy
  generations (``use_cache=False``) with sacrebleu.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor, nn

from ..models.t5 import apply_t5_structure, slice_t5_heads
from .compose_scheme import ComposeError

__all__ = ["Pairs", "bleu", "check_t5_criterion", "is_t5", "seq2seq_loss", "t5_head_l1", "t5_kind_layer", "t5_module_data",
           "t5_prunable", "t5_sliced", "t5_structure", "translate", "translation_pairs"]

_ATT = re.compile(r"^(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\.(SelfAttention|EncDecAttention)$")


def is_t5(hf: nn.Module) -> bool:
    """Whether ``hf`` is a Hugging Face T5 encoder-decoder."""
    return getattr(getattr(hf, "config", None), "model_type", None) == "t5"


def check_t5_criterion(hf: nn.Module, criterion: str) -> None:
    """Refuse an attention criterion other than L1 on a T5 (the kit's causal head scores are not
    wired to its three attention kinds here)."""
    if is_t5(hf) and criterion != "l1":
        raise ComposeError(f"criterion {criterion!r} is not implemented for a T5's attention; use 'l1'")


def t5_prunable(hf: nn.Module) -> dict[str, list[str]]:
    """Names of the T5's attention modules (encoder self, decoder self, cross) and FF linears."""
    out: dict[str, list[str]] = {"attention": [], "linear": []}
    for stack in ("encoder", "decoder"):
        for i, blk in enumerate(getattr(hf, stack).block):
            out["attention"].append(f"{stack}.block.{i}.layer.0.SelfAttention")
            if stack == "decoder":
                out["attention"].append(f"{stack}.block.{i}.layer.1.EncDecAttention")
            ff = blk.layer[-1].DenseReluDense
            base = f"{stack}.block.{i}.layer.{len(blk.layer) - 1}.DenseReluDense"
            out["linear"] += [f"{base}.{n}" for n in ("wi", "wi_0", "wi_1", "wo") if hasattr(ff, n)]
    return out


def t5_kind_layer(hf: nn.Module, module: str) -> tuple[str, int]:
    """``(head kind, layer in its stack)`` of a T5 attention module's name (``models.t5.HEAD_KINDS``)."""
    m = _ATT.match(module)
    if not m or module not in t5_prunable(hf)["attention"]:
        raise ComposeError(f"{module!r} is not an attention module of this T5 (its attention modules: "
                           f"{t5_prunable(hf)['attention'][:3]} ...)")
    stack, layer, _, kind = m.groups()
    return ("cross_head" if kind == "EncDecAttention" else f"{stack[:3]}_head"), int(layer)


@torch.no_grad()
def t5_head_l1(hf: nn.Module, module: str) -> torch.Tensor:
    """Each head's L1 norm of its rows of the raw ``q``, ``k`` and ``v`` weights. Shape [head]."""
    t5_kind_layer(hf, module)
    att = hf.get_submodule(module)
    n, dk = att.n_heads, att.key_value_proj_dim
    return sum(getattr(att, p).weight.reshape(n, dk, -1).abs().sum((1, 2)) for p in ("q", "k", "v"))


def t5_sliced(hf: nn.Module, module: str, keep: list[int]) -> tuple[nn.Module, dict]:
    """A copy of the T5 attention ``module`` keeping heads ``keep`` (q/k/v rows, o columns)."""
    kind, layer = t5_kind_layer(hf, module)
    att = copy.deepcopy(hf.get_submodule(module))
    slice_t5_heads(att, list(keep))
    return att, {"kind": kind, "layer": layer, "q_heads": list(keep)}


def t5_structure(out: nn.Module, removed: dict[str, list[int]]) -> dict:
    """Slice the full-size T5 ``out`` in place to the heads removed per attention module (the kit's
    ``apply_t5_structure``: position biases fitted); returns the spec, also set as
    ``out.config.causal_nb_pruned`` so a saved copy reloads with ``load_model``."""
    spec = {"arch": "t5", "physical": True, "removed": {}}
    for module, idx in removed.items():
        if idx:
            kind, layer = t5_kind_layer(out, module)
            spec["removed"].setdefault(kind, {})[str(layer)] = sorted(int(i) for i in idx)
    apply_t5_structure(out, spec)
    out.config.causal_nb_pruned = spec
    return spec


def t5_module_data(module: str, keep: list[int] | None, data: list) -> list:
    """Captured ``(args, kwargs, output)`` entries of a dense T5 attention made fit for its variant
    keeping heads ``keep``: a self-attention's full position bias cut to the kept heads' rows, a
    cross-attention's (zeros) left for the module to build. Other modules' entries pass unchanged."""
    if keep is None or "position_bias" not in (data[0][1] if data else {}):
        return data
    cross = module.endswith("EncDecAttention")
    out = []
    for args, kw, y in data:
        kw = dict(kw)
        kw["position_bias"] = None if cross else kw["position_bias"][:, list(keep)]
        out.append((args, kw, y))
    return out


class Pairs:
    """Tokenised source/target pairs; indexing (an int array) gives a sub-batch, padded on use.

    Args:
        src, tgt: token id lists (each ending with EOS, as the tokenizer gives them).
        pad: the pad id (T5's 0).
    """

    def __init__(self, src: list[list[int]], tgt: list[list[int]], pad: int = 0):
        if len(src) != len(tgt):
            raise ValueError(f"{len(src)} sources but {len(tgt)} targets")
        self.src, self.tgt, self.pad = list(src), list(tgt), pad

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, idx) -> Pairs:
        idx = np.atleast_1d(np.arange(len(self))[idx])
        return Pairs([self.src[i] for i in idx], [self.tgt[i] for i in idx], self.pad)

    def inputs(self) -> dict[str, Int[Tensor, "batch pos"]]:
        """``input_ids``, ``attention_mask`` and ``labels`` (pad -> -100), padded to the longest row."""
        def pad(rows, fill):
            w = max(len(r) for r in rows)
            return torch.tensor([r + [fill] * (w - len(r)) for r in rows])

        src = pad(self.src, self.pad)
        return {"input_ids": src, "attention_mask": (src != self.pad).long(), "labels": pad(self.tgt, -100)}


def translation_pairs(tok, split: str = "train", n: int = 64, seed: int = 0) -> Pairs:
    """``n`` pairs of a translation split (``"train"``, or ``"heldout"``: the validation split),
    a seeded random subset for training, the first ``n`` for held-out evaluation."""
    from ..data.translation import load_translation_pairs  # noqa: PLC0415

    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    df = load_translation_pairs("train" if split == "train" else "val")
    if split == "train":
        df = df.iloc[np.sort(np.random.default_rng(seed).choice(len(df), min(n, len(df)), replace=False))]
    else:
        df = df.iloc[:n]
    return Pairs(tok(list(df.en)).input_ids, tok(list(df.de)).input_ids, tok.pad_token_id or 0)


def seq2seq_loss(model: nn.Module, x: Pairs, batch_size: int = 32) -> float:
    """Mean cross-entropy (nats) per target token over the pairs."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            b = x[np.arange(i, min(i + batch_size, len(x)))].inputs()
            k = int((b["labels"] != -100).sum())
            total += float(model(**b, use_cache=False).loss) * k
            count += k
    return total / max(count, 1)


@torch.no_grad()
def translate(model: nn.Module, tok, sources: list[str], max_new_tokens: int = 48, batch_size: int = 64) -> list[str]:
    """Greedy generations (no cache: the kit decodes uncached, as its T5 bridge must)."""
    was = model.training
    model.eval()
    out: list[str] = []
    for i in range(0, len(sources), batch_size):
        enc = tok(list(sources[i:i + batch_size]), padding=True, return_tensors="pt")
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=False)
        out += [s.strip() for s in tok.batch_decode(ids, skip_special_tokens=True)]
    model.train(was)
    return out


def bleu(model: nn.Module, tok, n: int = 200) -> float:
    """Corpus BLEU (sacrebleu 13a) of greedy translations of the first ``n`` validation pairs."""
    import sacrebleu  # noqa: PLC0415

    from ..data.translation import load_translation_pairs  # noqa: PLC0415

    df = load_translation_pairs("val", n=n)
    return float(sacrebleu.corpus_bleu(translate(model, tok, list(df.en)), [list(df.de)]).score)

