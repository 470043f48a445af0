"""The one intervention engine: evaluate many interventions exactly, reusing work.

For each intervention the engine (a) reuses one cached run of the base prompts, (b) starts
at the earliest intervened block from the cached residual stream instead of the embeddings,
replaying each block with the exact arguments the model gave it (causal mask, rotary
embeddings...), (c) unembeds only the scored positions, and (d) optionally stacks several
interventions along the batch dimension (pays on GPUs, not on CPUs). Results equal a plain
one-forward-per-intervention hook loop (tests check this against ``transformer_lens.patching``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .env import progress_enabled
from .metrics import ScoredBatch
from .units import Edit, Unit

__all__ = ["Capture", "apply_edits", "capture", "evaluate_units", "final_logits", "joint_hooks", "run_from", "scored_run"]


@dataclass
class Capture:
    """One cached run: activations at chosen hooks and each block's call arguments.

    Attributes:
        tokens: the input, [batch, pos].
        acts: hook name -> activation [batch, pos, ...] (detached).
        block_args: layer -> (args, kwargs) the block was called with (caches stripped).
        logits: the run's logits at the scored positions [batch, scored, vocab], if asked.
    """

    tokens: Int[Tensor, "batch pos"]
    acts: dict[str, Tensor]
    block_args: dict[int, tuple[tuple, dict]]
    logits: Float[Tensor, "batch scored vocab"] | None = None

    def resid_pre(self, layer: int) -> Float[Tensor, "batch pos d_model"]:
        return self.acts[f"blocks.{layer}.hook_resid_pre"]


def _strip_cache(v):
    # A KV cache object in the recorded args would be appended to on every replay.
    name = type(v).__name__
    return None if name.endswith("Cache") else v


def capture(model, tokens: Int[Tensor, "batch pos"], hooks: Sequence[str] = (), positions: Tensor | None = None,
            grad: bool = False) -> Capture:
    """Run the model once, caching ``hooks``, every block's ``resid_pre`` and call arguments.

    Args:
        positions: when given, also keep the logits at these positions.
        grad: keep the graph (for attribution); activations are then not detached.
    """
    names = set(hooks) | {f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)}
    if any(h.endswith("attn.hook_z") for h in hooks):
        # head patching can resume after the attention layer (see _head_fast_path)
        names |= {f"blocks.{layer}.hook_resid_mid" for layer in range(model.cfg.n_layers)}
        names |= {f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)}
    acts: dict[str, Tensor] = {}
    block_args: dict[int, tuple[tuple, dict]] = {}

    def save(name):
        def fn(act, hook):
            acts[name] = act if grad else act.detach()
            return act

        return fn

    handles = []
    for layer, blk in enumerate(model.blocks):
        def pre(mod, args, kwargs, layer=layer):
            a = tuple(_strip_cache(x) for x in args)
            kw = {k: _strip_cache(v) for k, v in kwargs.items()}
            if "use_cache" in kw:
                kw["use_cache"] = False
            block_args[layer] = (a, kw)

        handles.append(blk.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.set_grad_enabled(grad), model.hooks(fwd_hooks=[(n, save(n)) for n in sorted(names)]):
            logits = model(tokens, return_type="logits")
    finally:
        for h in handles:
            h.remove()
    kept = logits[:, positions] if positions is not None else None
    return Capture(tokens, acts, block_args, kept if grad or kept is None else kept.detach())


@torch.no_grad()
def scored_run(model, tokens, hooks: Sequence[str], scored: ScoredBatch, metric: Callable,
               reference: bool = False) -> tuple[Capture, Tensor]:
    """Capture an unmodified run and its per-prompt metric; with ``reference`` it also becomes
    the run that KL and top-1 agreement compare against."""
    cap = capture(model, tokens, hooks, scored.positions)
    if reference:
        scored.ref_logprobs = torch.log_softmax(cap.logits.float(), -1)
    return cap, metric(cap.logits, scored).float().cpu()


def _expand(v, batch: int, k: int):
    if k == 1:
        return v
    if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == batch and batch > 1:
        return v.repeat(k, *([1] * (v.dim() - 1)))
    if isinstance(v, tuple):
        return tuple(_expand(x, batch, k) for x in v)
    return v


def final_logits(model, resid: Float[Tensor, "batch pos d_model"], positions: Tensor) -> Float[Tensor, "batch scored vocab"]:
    """Final norm and unembedding at the scored positions only."""
    return model.unembed(model.ln_final(resid[:, positions]))


def run_from(model, cap: Capture, start: int, k: int, positions: Tensor,
             x: Tensor | None = None) -> Float[Tensor, "batchk scored vocab"]:
    """Replay blocks ``start..`` from the cached residual (or from ``x``, already stacked),
    the batch stacked ``k`` times; hooks active on the model (``model.hooks``) fire as in a
    full forward.
    """
    batch = cap.tokens.shape[0]
    if x is None:
        x = cap.resid_pre(start)
        x = x.repeat(k, 1, 1) if k > 1 else x
    for layer in range(start, model.cfg.n_layers):
        args, kwargs = cap.block_args[layer]
        out = model.blocks[layer](x, *_expand(args[1:], batch, k), **{n: _expand(v, batch, k) for n, v in kwargs.items()})
        x = out[0] if isinstance(out, tuple) else out
    return final_logits(model, x, positions)


def _mlp_half(model, layer: int, x):
    """The second half of a sequential pre-norm block: x + mlp(ln2(x))."""
    blk = model.blocks[layer]
    return x + blk.mlp(blk.ln2(x))


def _head_fast_path(model, base: Capture, layer: int) -> bool:
    """Whether head edits at ``layer`` can skip its attention computation.

    A head's output enters the residual stream only through ``z_h @ W_O[h]``, so patching it
    adds (z_src - z_base)[h] @ W_O[h] to the cached ``resid_mid``; the block's MLP half then
    runs from there. Valid for sequential pre-norm blocks (checked numerically on the base run:
    parallel-attention blocks fail the check and use the full replay).
    """
    key = ("fast", layer)
    if key not in base.acts:
        ok = False
        try:
            mid = base.acts.get(f"blocks.{layer}.hook_resid_mid")
            post = base.acts.get(f"blocks.{layer}.hook_resid_post")
            if mid is not None and post is not None and model.W_O[layer] is not None:
                with torch.no_grad():
                    ok = bool(torch.allclose(_mlp_half(model, layer, mid), post, atol=1e-4, rtol=1e-4))
        except Exception:  # noqa: BLE001 - any model where the check can't run takes the full replay
            ok = False
        base.acts[key] = ok
    return base.acts[key]


def _run_heads_fast(model, base: Capture, layer: int, group: Sequence[Unit], sources: dict[str, Tensor],
                    positions: Tensor) -> Tensor:
    hook = f"blocks.{layer}.attn.hook_z"
    z_base = base.acts[hook]
    z_src = sources[hook].to(z_base.dtype).expand_as(z_base)
    w_o = model.W_O[layer]  # [head d_head d_model]
    mids = []
    for unit in group:
        delta = torch.zeros_like(base.acts[f"blocks.{layer}.hook_resid_mid"])
        for e in unit.edits:
            (h,) = e.index
            pos = slice(None) if e.positions is None else list(e.positions)
            d = (z_src[:, pos, h] - z_base[:, pos, h]) @ w_o[h]
            delta[:, pos] += d.to(delta.dtype)
        mids.append(base.acts[f"blocks.{layer}.hook_resid_mid"] + delta)
    return run_from(model, base, layer + 1, len(group), positions, x=_mlp_half(model, layer, torch.cat(mids)))


def _edit_slice(e: Edit) -> tuple:
    pos = slice(None) if e.positions is None else list(e.positions)
    return (slice(None), pos, *e.index)


def apply_edits(act: Tensor, edits: Sequence[tuple[int, Edit]], source: Tensor, batch: int) -> Tensor:
    """Return ``act`` with each (copy k, edit) slice replaced by the source's values.

    ``act`` is [k*batch, pos, ...]; ``source`` is [batch, pos, ...] or broadcastable to it
    (means: [1, pos, ...] or [1, 1, ...]).
    """
    act = act.clone()
    src = source.to(act.dtype).expand(batch, *act.shape[1:])
    for k, e in edits:
        idx = _edit_slice(e)
        block = act[k * batch : (k + 1) * batch]
        block[idx] = src[idx]
    return act


def joint_hooks(units: Sequence[Unit], sources: dict[str, Tensor]) -> list:
    """Forward hooks that replace all ``units`` at once (a mask), for ``model.hooks``; any batch size."""
    return _hooks_for(units, sources, None)


def _hooks_for(group: Sequence[Unit], sources: dict[str, Tensor], batch: int | None):
    # batch given: unit k edits copy k of a batch stacked len(group) times;
    # None: every unit edits the one (unstacked) batch together
    by_hook: dict[str, list[tuple[int, Edit]]] = defaultdict(list)
    for k, unit in enumerate(group):
        for e in unit.edits:
            by_hook[e.hook].append((0 if batch is None else k, e))

    def make(name, edits):
        def fn(act, hook):
            return apply_edits(act, edits, sources[name], act.shape[0] if batch is None else batch)

        return fn

    return [(name, make(name, edits)) for name, edits in by_hook.items()]


@torch.no_grad()
def evaluate_units(model, base: Capture, sources: dict[str, Tensor], units: Sequence[Unit],
                   metric: Callable, scored: ScoredBatch, batch_size: int = 1,
                   progress: bool | None = None, desc: str = "interventions") -> Float[Tensor, "unit batch"]:
    """Metric per prompt for each unit replaced by its source values, one unit at a time.

    Args:
        base: the cached run being intervened on (corrupted prompts when denoising).
        sources: hook name -> replacement activations for every hook the units touch.
        units: the interventions; units of one layer are stacked ``batch_size`` at a time.
        metric: ``(logits [batch, scored, vocab], ScoredBatch) -> [batch]``.

    Returns:
        [unit, batch] metric values, in the order of ``units``.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    missing = {e.hook for u in units for e in u.edits} - set(sources)
    if missing:
        raise KeyError(f"no source activations for hooks {sorted(missing)}")
    batch = base.tokens.shape[0]
    out = torch.empty(len(units), batch, dtype=torch.float64)
    order = sorted(range(len(units)), key=lambda i: units[i].layer)
    bar = tqdm(total=len(units), desc=desc, disable=not progress_enabled(progress), leave=False)
    i = 0
    while i < len(order):
        layer = units[order[i]].layer
        group_idx = [j for j in order[i : i + batch_size] if units[j].layer == layer]
        group = [units[j] for j in group_idx]
        if all(e.hook == f"blocks.{layer}.attn.hook_z" and len(e.index) == 1 for u in group for e in u.edits) \
                and _head_fast_path(model, base, layer):
            logits = _run_heads_fast(model, base, layer, group, sources, scored.positions)
        else:
            with model.hooks(fwd_hooks=_hooks_for(group, sources, batch)):
                logits = run_from(model, base, layer, len(group), scored.positions)
        vals = metric(logits, scored.repeat(len(group)) if len(group) > 1 else scored)
        out[group_idx] = vals.double().cpu().view(len(group), batch)
        i += len(group_idx)
        bar.update(len(group_idx))
    bar.close()
    return out
