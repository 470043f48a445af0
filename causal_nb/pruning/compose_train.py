"""Composable pruning, step 3: the training data, module-level and model-level fine-tuning.

* Data: windows of the kit's offline code corpus (``zoo.corpus``: Python stdlib and C/C++
  headers, split into train and held-out *by file*), half Python, half C++, each starting with
  BOS, tokenised with the model's own tokenizer. A seeded subset of files keeps it quick.
* Module level (``finetune_module``): a pruned module alone learns to reproduce the dense
  module's output (MSE) on inputs captured from the dense model with forward hooks
  (``capture``: positional and keyword inputs, so a Llama attention gets its rotary embeddings).
* Model level (``finetune_model``): the whole (composed or directly pruned) model, next-token
  loss on training windows, optionally plus ``kl`` times the KL divergence to the dense model.

Both keep pruned weights at zero (masks re-applied after every step) and are seeded. On a T5 the
data are translation pairs (``compose_t5.Pairs``) and the task loss is the seq2seq cross-entropy:
``_forward`` and ``_task_loss`` branch on the data's type, nothing else does.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor, nn

from ..models.hf import quiet_loading
from ..zoo import corpus
from ..zoo.quality import heldout_windows, mean_loss
from .compose_t5 import Pairs, seq2seq_loss

__all__ = ["capture", "code_windows", "finetune_model", "finetune_module", "heldout_loss"]

DOMAINS = ("python", "cpp")
_CACHE_KEYS = ("cache", "past_key_value", "past_key_values", "use_cache", "output_attentions")


@functools.lru_cache(maxsize=4)
def _files(domain: str, heldout: bool) -> tuple:
    files = corpus.python_files() if domain == "python" else corpus.cpp_files()
    return tuple(f for f in files if f.heldout == heldout)


def _stream(tokenizer, domain: str, heldout: bool, n_files: int, seed: int) -> np.ndarray:
    files = _files(domain, heldout)
    if not files:
        raise ValueError(f"no {'held-out' if heldout else 'train'} {domain} files in the corpus on this machine")
    ids: list[int] = []
    for i in np.random.default_rng(seed).permutation(len(files)):
        if n_files <= 0:
            break
        try:
            text = corpus.read(files[i])
        except ValueError:  # a binary or oversized file
            continue
        ids += tokenizer(text, verbose=False)["input_ids"] + [tokenizer.eos_token_id]  # whole files: long on purpose
        n_files -= 1
    return np.asarray(ids, dtype=np.int64)


def code_windows(tokenizer, split: str = "train", n: int = 64, seq: int = 128, seed: int = 0,
                 n_files: int = 24) -> Int[Tensor, "batch pos"]:
    """``n`` windows of ``seq`` tokens (BOS first), half Python, half C++, from ``n_files`` files
    of each domain's ``split`` (``"train"`` or ``"heldout"``): random windows for training,
    evenly spaced ones for held-out evaluation."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    rng = np.random.default_rng(seed)
    rows = []
    for j, d in enumerate(DOMAINS):
        s = _stream(tokenizer, d, split == "heldout", n_files, seed + j)
        if len(s) < seq:
            raise ValueError(f"the {d} {split} files give {len(s)} tokens, fewer than seq={seq}; raise n_files")
        k = n // 2 + (n % 2 if j == 0 else 0)
        if split == "heldout":
            rows.append(heldout_windows(s, seq, k, bos))
        else:
            starts = rng.integers(0, len(s) - seq + 1, k)
            rows.append(torch.as_tensor(np.stack([np.concatenate([[bos], s[a:a + seq - 1]]) for a in starts])))
    return torch.cat(rows)


def heldout_loss(model: nn.Module, windows: Int[Tensor, "batch pos"] | Pairs) -> float:
    """Mean next-token loss (nats) on held-out windows (translation pairs: per target token)."""
    was = model.training
    model.eval()
    with quiet_loading(False):  # transformers' one-time padding notice goes to stderr, which nbval compares
        loss = seq2seq_loss(model, windows) if isinstance(windows, Pairs) else mean_loss(model, windows)
    model.train(was)
    return loss


def _detach(x):
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(v) for v in x)
    return x


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _forward(model: nn.Module, x):
    """The model's output on a batch: LM windows, or translation pairs (with their labels)."""
    if isinstance(x, Pairs):
        return model(**x.inputs(), use_cache=False)
    return model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)


def _task_loss(out, x) -> Tensor:
    """The task loss of a batch's output: next-token loss, or the seq2seq loss over the labels."""
    return out.loss if isinstance(x, Pairs) else _lm_loss(out.logits.float(), x)


def _kl(logits: Tensor, ref: Tensor, x) -> Tensor:
    """Mean per-token KL(dense || model) (translation pairs: over the real target tokens)."""
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), ref, log_target=True, reduction="none").sum(-1)
    if isinstance(x, Pairs):
        keep = (x.inputs()["labels"] != -100).to(kl.dtype)
        return (kl * keep).sum() / keep.sum()
    return kl.mean()


@torch.no_grad()
def capture(hf: nn.Module, modules: list[str], windows: Int[Tensor, "batch pos"], batch_size: int = 16) -> dict:
    """Inputs and outputs of the named modules of the dense ``hf`` over ``windows`` (or translation
    pairs), by forward hooks.

    Returns:
        ``{module: [(args, kwargs, output), ...]}``, one entry per batch (cache arguments dropped).
        A module that takes a ``position_bias`` (T5) and returns the bias it used second gets that
        one recorded, so a layer that computes its own bias replays the same.
    """
    store: dict[str, list] = {m: [] for m in modules}
    handles = []
    for m in modules:
        def hook(mod, args, kwargs, out, m=m):
            kw = {k: _detach(v) for k, v in kwargs.items() if k not in _CACHE_KEYS}
            if "position_bias" in kw and isinstance(out, tuple) and len(out) > 1:
                kw["position_bias"] = out[1].detach()
            store[m].append((_detach(args), kw, _first(out).detach()))
        handles.append(hf.get_submodule(m).register_forward_hook(hook, with_kwargs=True))
    was = hf.training
    hf.eval()
    try:
        for i in range(0, len(windows), batch_size):
            _forward(hf, windows[np.arange(i, min(i + batch_size, len(windows)))])
    finally:
        for h in handles:
            h.remove()
        hf.train(was)
    return store


def _apply_masks(params: dict[str, nn.Parameter], masks: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m.to(params[name].dtype))


def _module_mse(module: nn.Module, data: list) -> float:
    with torch.no_grad():
        errs = [torch.nn.functional.mse_loss(_first(module(*a, **kw)), y).item() for a, kw, y in data]
    return float(np.mean(errs))


def finetune_module(module: nn.Module, masks: dict[str, Tensor], data: list, steps: int = 100, lr: float = 1e-3,
                    seed: int = 0) -> pd.DataFrame:
    """Train a pruned module to reproduce the dense module's outputs (MSE), in place.

    Args:
        masks: parameter name -> 0/1 mask of weights that stay zero.
        data: ``capture`` entries of that module (each a batch).

    Returns:
        Training stats: ``step``, ``mse`` (the batch's, before its update; step 0 and the last
        row are over all batches), ``seconds`` since the start.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = dict(module.named_parameters())
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    t0 = time.perf_counter()
    rows = [{"step": 0, "mse": _module_mse(module, data), "seconds": 0.0, "scope": "all"}]
    module.train()
    for step in range(1, steps + 1):
        args, kw, y = data[rng.integers(len(data))]
        loss = torch.nn.functional.mse_loss(_first(module(*args, **kw)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _apply_masks(params, masks)
        rows.append({"step": step, "mse": loss.item(), "seconds": time.perf_counter() - t0, "scope": "batch"})
    module.eval()
    rows.append({"step": steps, "mse": _module_mse(module, data), "seconds": time.perf_counter() - t0, "scope": "all"})
    return pd.DataFrame(rows)


def _lm_loss(logits: Tensor, x: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


def finetune_model(model: nn.Module, masks: dict[str, Tensor], train: Int[Tensor, "batch pos"] | Pairs, steps: int = 100,
                   batch_size: int = 8, lr: float = 5e-5, seed: int = 0, kl: float = 0.0, dense: nn.Module | None = None,
                   heldout: Int[Tensor, "_ pos"] | None = None, eval_every: int = 0,
                   target: float | None = None, metrics=None, metrics_every: int = 0) -> pd.DataFrame:
    """Fine-tune a whole model end to end on its task loss (plus ``kl`` x KL(dense || model)), in place.

    Args:
        masks: full parameter name -> 0/1 mask of weights that stay zero.
        train: training windows (next-token loss) or translation pairs (seq2seq loss); each step
            draws ``batch_size`` of them (seeded).
        dense: the dense model, for ``kl > 0``.
        heldout: windows for the validation loss, every ``eval_every`` steps (0: at the start
            and the end only).
        target: stop at the first evaluation (step 0 included) whose validation loss is at or
            below it (needs ``heldout``); ``None`` runs all ``steps``.
        metrics: ``model -> {name: value}``, computed at every evaluation beside the validation
            loss (e.g. a translation model's BLEU), in eval mode without gradients; each name
            becomes a column (NaN where not evaluated).
        metrics_every: compute ``metrics`` only at the evaluations whose step is a multiple of
            this (and at the last step); 0: at every evaluation. Its time is excluded from ``seconds``, like the evaluations'.

    Returns:
        ``step``, ``train_loss`` (the batch's LM loss), ``val_loss`` (NaN where not evaluated),
        the ``metrics`` columns, ``seconds`` (training time, evaluations excluded). Stopped at ``target``, the last row is
        the step that reached it.
    """
    if kl < 0 or (kl > 0 and dense is None):
        raise ValueError("kl must be >= 0, and kl > 0 needs the dense model (dense=...)")
    if target is not None and heldout is None:
        raise ValueError("target needs held-out windows (heldout=...) to evaluate against")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    if metrics is not None and not callable(metrics):
        raise TypeError(f"metrics must be a callable model -> {{name: value}}, got {type(metrics).__name__}")

    if metrics_every < 0 or (metrics_every and eval_every and metrics_every % eval_every):
        raise ValueError(f"metrics_every={metrics_every} must be 0 or a multiple of eval_every={eval_every} "
                         "(metrics are taken at evaluations)")

    def val(step: int) -> dict:
        out = {"val_loss": heldout_loss(model, heldout) if heldout is not None else float("nan")}
        if metrics is not None and (not metrics_every or step % metrics_every == 0 or step == steps):
            was = model.training
            model.eval()  # an evaluation: no dropout
            with torch.no_grad():
                extra = metrics(model)
            model.train(was)
            clash = set(extra) & {"step", "train_loss", "val_loss", "seconds"}
            if clash:
                raise ValueError(f"metrics returned {sorted(clash)}, names the curve already uses: rename them")
            out.update({k: float(v) for k, v in extra.items()})
        return out

    rows = [{"step": 0, "train_loss": float("nan"), **val(0), "seconds": 0.0}]

    def reached() -> bool:
        return target is not None and rows[-1]["val_loss"] <= target

    if reached():
        return pd.DataFrame(rows)
    spent = 0.0
    model.train()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        x = train[rng.integers(0, len(train), batch_size)]
        out = _forward(model, x)
        lm = _task_loss(out, x)
        loss = lm
        if kl > 0:
            with torch.no_grad():
                ref = torch.log_softmax(_forward(dense, x).logits.float(), -1)
            loss = lm + kl * _kl(out.logits.float(), ref, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _apply_masks(params, masks)
        spent += time.perf_counter() - t0
        last = step == steps or (eval_every and step % eval_every == 0)
        rows.append({"step": step, "train_loss": lm.item(), **(val(step) if last else {"val_loss": float("nan")}),
                     "seconds": spent})
        if reached():
            break
    model.eval()
    return pd.DataFrame(rows)
