"""Per-prompt views: what chosen heads do to one prompt, where they look, what the model writes.

``head_effect`` runs one prompt with a set of attention heads replaced (zero, the mean over a
reference set, or "patch": the mean of another domain's prompts, as in reverse intervention)
and reports, per position, the change in log-prob of the actual next token, and the
vocabulary tokens whose log-prob rises or falls most on average over positions. It is the
computation behind the live head picker (``causal_nb.widgets``); the functions here know
nothing about widgets so they can be tested and used from scripts.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.checks import strict
from ..data.prompts import TokenBatch
from ..engine.common import mean_activations, prepare
from ..engine.replay import joint_hooks
from ..engine.units import enumerate_units, layer_shape

__all__ = ["HEAD_KINDS", "Effect", "attention_patterns", "continuation", "domain_outputs", "head_effect", "head_means",
           "head_hooks", "head_sets", "heads_per_layer", "parse_heads", "prompt_logprobs", "token_html", "token_strings"]

HEAD_KINDS = ("zero", "mean", "patch")
Heads = Sequence[tuple[int, int]]


def token_strings(model, ids: Sequence[int]) -> list[str]:
    """Each token id decoded on its own (byte-level pieces shown as the text they stand for)."""
    tok = model.tokenizer
    return [tok.decode([int(i)]) for i in ids]


def parse_heads(text: str) -> list[tuple[int, int]]:
    """``"L1H3 L2H0"`` (spaces or commas) -> ``[(1, 3), (2, 0)]``; a notebook parameter's form."""
    import re  # noqa: PLC0415

    out = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        m = re.fullmatch(r"[Ll](\d+)[Hh](\d+)", part)
        if m is None:
            raise ValueError(f"cannot read head {part!r} in {text!r}: write heads as L<layer>H<head>, e.g. 'L1H3 L2H0'")
        out.append((int(m[1]), int(m[2])))
    return out


def _z_hooks(model) -> list[str]:
    return [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]


def heads_per_layer(model) -> list[int]:
    """Each layer's query-head count (fewer than ``cfg.n_heads`` where a physically pruned
    model lost heads; its heads are then numbered 0..count-1, as the engine numbers them)."""
    return [layer_shape(model, layer)["n_heads"] for layer in range(model.cfg.n_layers)]


@strict
def head_means(model, prompts, n_tokens: int = 64) -> Float[Tensor, "layer head d_head"]:
    """Every head's output (``hook_z``) averaged over the prompts' real positions.

    A physically pruned layer with fewer heads is zero-padded to ``cfg.n_heads`` rows (never
    read: ``head_sets`` refuses a head the layer does not have)."""
    acts = mean_activations(model, prepare(model, prompts, n_tokens), _z_hooks(model))
    rows = [acts[h][0, 0] for h in _z_hooks(model)]
    out = rows[0].new_zeros(len(rows), model.cfg.n_heads, rows[0].shape[-1])
    for layer, r in enumerate(rows):
        out[layer, : r.shape[0]] = r
    return out


def head_sets(model, heads: Heads) -> dict[int, list[int]]:
    """Group (layer, head) pairs by layer, checking they exist in the model."""
    counts = heads_per_layer(model)
    n_l = len(counts)
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        if not 0 <= layer < n_l:
            raise ValueError(f"head L{layer}H{head} does not exist: the model has layers 0..{n_l - 1}")
        if not 0 <= head < counts[layer]:
            raise ValueError(f"head L{layer}H{head} does not exist: layer {layer} has heads 0..{counts[layer] - 1}"
                             + (" (physically pruned: its kept heads are renumbered from 0)"
                                if counts[layer] < model.cfg.n_heads else ""))
        out.setdefault(int(layer), []).append(int(head))
    return out


@strict
def head_hooks(model, heads: Heads, kind: str = "zero", means: Tensor | None = None,
               source_means: Tensor | None = None) -> list:
    """Forward hooks (for ``model.hooks``) replacing ``heads``' outputs: zero, ``means`` or ``source_means``."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"unknown intervention {kind!r}; valid: {list(HEAD_KINDS)}")
    values = {"zero": None, "mean": means, "patch": source_means}[kind]
    if kind != "zero" and values is None:
        need = "means (head_means of a reference set)" if kind == "mean" else "source_means (head_means of domain B)"
        raise ValueError(f"kind={kind!r} needs {need}")
    wanted = {(layer, h) for layer, hs in head_sets(model, heads).items() for h in hs}
    units = [u for u in enumerate_units(model, "head") if (u.layer, u.head) in wanted]
    counts = heads_per_layer(model)  # a pruned layer's means are padded: take its own heads' rows
    sources = {f"blocks.{layer}.attn.hook_z": torch.zeros(1) if values is None else
               values[layer][: counts[layer]][None, None] for layer, _ in wanted}
    return joint_hooks(units, sources)


@dataclass
class Effect:
    """What replacing ``heads`` does to one prompt.

    Attributes:
        tokens: the prompt's token strings (BOS first), length ``pos``.
        base: log-prob of each actual next token, unmodified, [pos - 1] (position i predicts i + 1).
        new: the same with the heads replaced.
        promoted / demoted: vocabulary tokens with the largest mean rise / fall in log-prob
            over positions (columns ``token``, ``id``, ``change``).
    """

    tokens: list[str]
    base: np.ndarray
    new: np.ndarray
    promoted: pd.DataFrame
    demoted: pd.DataFrame
    heads: tuple[tuple[int, int], ...] = ()
    kind: str = "zero"
    seconds: float = field(default=0.0, compare=False)

    @property
    def delta(self) -> np.ndarray:
        """Change in the next token's log-prob per position (negative: the heads helped)."""
        return self.new - self.base

    @property
    def metric_change(self) -> float:
        """Mean change in next-token log-prob over the prompt (nats)."""
        return float(self.delta.mean()) if len(self.delta) else 0.0

    def top_tokens(self, decimals: int = 4) -> pd.DataFrame:
        """Promoted and demoted tokens side by side (rank i of each in row i)."""
        return pd.concat([self.promoted, self.demoted], axis=1, keys=["promoted", "demoted"]).round(decimals)

    def frame(self, decimals: int = 4) -> pd.DataFrame:
        """One row per predicting position: the token there, the next token, log-probs, change."""
        return pd.DataFrame({"pos": np.arange(len(self.base)), "token": self.tokens[:-1], "next": self.tokens[1:],
                             "base": self.base, "new": self.new, "delta": self.delta}).round(decimals)


def _single(model, prompt, n_tokens: int) -> tuple[Int[Tensor, "1 pos"], int]:
    if isinstance(prompt, TokenBatch):
        if len(prompt) != 1:
            raise ValueError(f"head_effect looks at one prompt; got a batch of {len(prompt)} (index it first)")
        n = int(prompt.mask[0].sum())
        return prompt.tokens[:, :n].to(next(model.parameters()).device), n
    if isinstance(prompt, torch.Tensor):
        t = prompt.view(1, -1).to(next(model.parameters()).device)
        return t, t.shape[1]
    b = prepare(model, [prompt], n_tokens)
    n = int(b.mask[0].sum())
    return b.tokens[:, :n], n


@strict
@torch.no_grad()
def prompt_logprobs(model, prompt, n_tokens: int = 64) -> Float[Tensor, "1 pos vocab"]:
    """The unmodified run's log-softmax on one prompt (padding dropped), for ``head_effect``."""
    tokens, _ = _single(model, prompt, n_tokens)
    return torch.log_softmax(model(tokens, return_type="logits").float(), -1)


@strict
@torch.no_grad()
def head_effect(model, prompt, heads: Heads, kind: str = "zero", means: Tensor | None = None,
                source_means: Tensor | None = None, top_k: int = 10, n_tokens: int = 64,
                base_logprobs: Tensor | None = None) -> Effect:
    """Replace ``heads`` on one prompt and measure the change in its next-token log-probs.

    Args:
        prompt: text, a 1-prompt ``TokenBatch`` (padding dropped) or a 1-D token tensor.
        heads: (layer, head) pairs; empty means no intervention (delta 0).
        kind: ``"zero"``, ``"mean"`` (``means``: ``head_means`` of a reference set, same domain)
            or ``"patch"`` (``source_means``: ``head_means`` of the other domain's prompts).
        base_logprobs: the unmodified run's log-softmax [1, pos, vocab], to skip recomputing it
            (the widgets cache it per prompt).
    """
    t0 = time.perf_counter()
    tokens, n = _single(model, prompt, n_tokens)
    if base_logprobs is None:
        base_logprobs = prompt_logprobs(model, tokens[0], n_tokens)
    heads = tuple((int(a), int(b)) for a, b in heads)
    if heads:
        with model.hooks(fwd_hooks=head_hooks(model, heads, kind, means, source_means)):
            new_lp = torch.log_softmax(model(tokens, return_type="logits").float(), -1)
    else:
        new_lp = base_logprobs
    nxt = tokens[0, 1:]
    pos = torch.arange(n - 1, device=tokens.device)
    base = base_logprobs[0, pos, nxt].double().cpu().numpy()
    new = new_lp[0, pos, nxt].double().cpu().numpy()
    change = (new_lp[0, : n - 1] - base_logprobs[0, : n - 1]).mean(0).double().cpu()
    k = min(top_k, change.numel())
    # Ties broken by token id so the lists are reproducible.
    order_up = np.lexsort((np.arange(change.numel()), -change.numpy()))[:k]
    order_dn = np.lexsort((np.arange(change.numel()), change.numpy()))[:k]
    strs = token_strings(model, tokens[0].tolist())

    def table(idx):
        return pd.DataFrame({"token": token_strings(model, idx.tolist()), "id": idx.astype(int),
                             "change": change.numpy()[idx]})

    return Effect(strs, base, new, table(order_up), table(order_dn), heads, kind, time.perf_counter() - t0)


@strict
@torch.no_grad()
def attention_patterns(model, prompt, heads: Heads, n_tokens: int = 64) -> Float[Tensor, "head query key"]:
    """Attention patterns of the chosen heads on one prompt, in the order given."""
    tokens, _ = _single(model, prompt, n_tokens)
    by_layer = head_sets(model, heads)
    got: dict[int, Tensor] = {}

    def save(pattern, hook):
        got[int(hook.name.split(".")[1])] = pattern.detach()
        return pattern

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", save) for layer in by_layer]):
        model(tokens, return_type="logits")
    # hook_pattern is [batch, head, query, key]
    return torch.stack([got[int(layer)][0, int(head)].float().cpu() for layer, head in heads])


@strict
@torch.no_grad()
def continuation(model, prompt, n_new: int = 16, n_tokens: int = 64) -> tuple[str, list[str]]:
    """Greedy continuation of one prompt: the text written, and its tokens one by one."""
    tokens, _ = _single(model, prompt, n_tokens)
    new: list[int] = []
    for _ in range(n_new):
        logits = model(tokens, return_type="logits")[0, -1].float()
        # argmax with ties to the lowest id: reproducible
        nxt = int(torch.argmax(logits))
        new.append(nxt)
        tokens = torch.cat([tokens, torch.tensor([[nxt]], device=tokens.device)], 1)
    return model.tokenizer.decode(new), token_strings(model, new)


@strict
def token_html(tokens: Sequence[str], values: Sequence[float], scale: float | None = None, title: str = "") -> str:
    """Tokens as inline HTML coloured by value: red where negative, blue where positive.

    ``values[i]`` colours ``tokens[i]``; ``scale`` is the value of full colour (default: the
    largest magnitude). Hovering a token shows its value.
    """
    vals = np.asarray(values, dtype=float)
    if len(vals) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {len(vals)} values")
    s = scale or (float(np.abs(vals).max()) if len(vals) else 1.0) or 1.0
    spans = []
    for t, v in zip(tokens, vals):
        a = min(abs(v) / s, 1.0)
        rgb = "214,39,40" if v < 0 else "31,119,180"
        text = html.escape(t).replace("\n", "&#8629;<br>").replace(" ", "&nbsp;")
        spans.append(f'<span title="{v:+.3f}" style="background:rgba({rgb},{a:.2f});font-family:monospace">'
                     f"{text}</span>")
    head = f"<div><b>{html.escape(title)}</b></div>" if title else ""
    return f'<div style="line-height:1.6">{head}{"".join(spans)}</div>'


@strict
@torch.no_grad()
def domain_outputs(model, prompt_sets: dict, n_prompts: int = 2, n_new: int = 16, n_tokens: int = 48,
                   tail_chars: int = 60) -> pd.DataFrame:
    """What the model writes after the first ``n_prompts`` prompts of each domain (greedy).

    Returns one row per prompt: domain, id, the prompt's last ``tail_chars`` characters, the
    continuation, and the prompt's mean next-token loss.
    """
    from ..evaluation.quality import token_losses  # noqa: PLC0415

    rows = []
    for domain, ps in prompt_sets.items():
        sub = ps.head(n_prompts)
        batch = prepare(model, sub, n_tokens)
        losses = token_losses(model, batch)
        for i, pid in enumerate(batch.ids):
            n = int(batch.mask[i].sum())
            text = model.tokenizer.decode(batch.tokens[i, 1:n].tolist())
            cont, _ = continuation(model, batch.tokens[i, :n], n_new)
            valid = batch.mask[i, 1:n]
            rows.append({"domain": domain, "id": pid, "prompt_end": text[-tail_chars:], "continuation": cont,
                         "loss": round(float(losses[i, : n - 1][valid].mean()), 4)})
    return pd.DataFrame(rows)
