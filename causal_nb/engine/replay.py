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
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.env import progress_enabled
from .metrics import ScoredBatch
from .units import Edit, Unit

__all__ = ["Capture", "apply_edits", "capture", "copy_bytes", "edit_slice", "evaluate_units", "final_logits", "joint_hooks", "run_from",
           "scored_run", "stack_size"]


@dataclass
class Capture:
    """One cached run: activations at chosen hooks and each block's call arguments.

    Attributes:
        tokens: the input, [batch, pos] token ids (or a ViT's pixel values, [batch, channels, height, width]).
        acts: hook name -> activation [batch, pos, ...] (detached).
        block_args: layer -> (args, kwargs) the block was called with (caches stripped).
        logits: the run's logits at the scored positions [batch, scored, vocab], if asked.
        checks: results of the fast paths' identity checks on this run, by (path, layer).
        fast_paths: whether the task allows the fast paths at all (``Task.fast_paths``).
    """

    tokens: Int[Tensor, "batch pos"] | Float[Tensor, "batch channel height width"]  # token ids, or pixel values
    acts: dict[str, Tensor]
    block_args: dict[int, tuple[tuple, dict]]
    logits: Float[Tensor, "batch ..."] | None = None  # the readout: LM logits [batch, scored, vocab], a task's own
    checks: dict = field(default_factory=dict)
    fast_paths: bool = True

    def resid_pre(self, layer: int) -> Float[Tensor, "batch pos d_model"]:
        return self.acts[f"blocks.{layer}.hook_resid_pre"]


def _strip_cache(v):
    # A KV cache object in the recorded args would be appended to on every replay.
    name = type(v).__name__
    return None if name.endswith("Cache") else v


def capture(model, tokens: Int[Tensor, "batch pos"] | Float[Tensor, "batch channel height width"], hooks: Sequence[str] = (), positions: Tensor | None = None,
            grad: bool = False, task=None, scored=None) -> Capture:
    """Run the model once, caching ``hooks``, every block's ``resid_pre`` and call arguments.

    Args:
        positions: when given, also keep the logits at these positions (no ``task``).
        grad: keep the graph (for attribution); activations are then not detached.
        task: an ``engine.tasks`` task: its ``run`` does the forward (an encoder's attention
            mask) and, given ``scored``, its readout is kept in ``Capture.logits``. None: the
            LM forward, as ``LMTask``. A task with its own ``capture`` (an encoder-decoder's two
            stacks: ``engine.seq2seq``) does the whole capture.
    """
    if task is not None and hasattr(task, "capture"):
        return task.capture(model, tokens, hooks, grad=grad, scored=scored)
    names = set(hooks) | {f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)}
    if any(h.endswith(("attn.hook_z", "mlp.hook_post", "hook_mlp_out")) for h in hooks):
        # head and MLP edits can resume after the edited sublayer (see _head_fast_path, _mlp_fast_path)
        names |= {f"blocks.{layer}.hook_resid_mid" for layer in range(model.cfg.n_layers)}
        names |= {f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)}
    if any(h.endswith("mlp.hook_post") for h in hooks):
        names |= {f"blocks.{layer}.hook_mlp_out" for layer in range(model.cfg.n_layers)}
    # GPT-NeoX's parallel blocks have no resid_mid: its fast paths' checks then fail (full replay)
    names = {n for n in names if n in hooks or n in model.hook_dict}
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
            if task is None:
                logits = model(tokens, return_type="logits")
                kept = logits[:, positions] if positions is not None else None
            else:
                kept = task.run(model, tokens, scored)
    finally:
        for h in handles:
            h.remove()
    return Capture(tokens, acts, block_args, kept if grad or kept is None else kept.detach(),
                   fast_paths=getattr(task, "fast_paths", True))


@torch.no_grad()
def scored_run(model, tokens, hooks: Sequence[str], scored: ScoredBatch | object, metric: Callable,
               reference: bool = False, task=None) -> tuple[Capture, Tensor]:
    """Capture an unmodified run and its per-prompt metric; with ``reference`` it also becomes
    the run that KL and top-1 agreement (or the task's own reference metrics) compare against."""
    if task is None:
        cap = capture(model, tokens, hooks, scored.positions)
        if reference:
            scored.ref_logprobs = torch.log_softmax(cap.logits.float(), -1)
    else:
        cap = capture(model, tokens, hooks, task=task, scored=scored)
        if reference:
            task.set_reference(scored, cap.logits)
    return cap, metric(cap.logits, scored).float().cpu()


def _expand(v, batch: int, k: int, per_head: bool = False):
    if k == 1:
        return v
    if isinstance(v, Tensor) and v.dim() >= 1 and (v.shape[0] == batch and batch > 1 or per_head):
        # per_head: BLOOM's ALiBi bias is [batch * heads, 1, kv], batch-major, so the stacked
        # copies repeat along its first dimension just like a [batch, ...] argument
        return v.repeat(k, *([1] * (v.dim() - 1)))
    if isinstance(v, tuple):
        return tuple(_expand(x, batch, k) for x in v)
    return v


def final_logits(model, resid: Float[Tensor, "batch pos d_model"], positions: Tensor) -> Float[Tensor, "batch scored vocab"]:
    """Final norm and unembedding at the scored positions only, then the output soft-cap
    (``cap * tanh(logits / cap)``) where the model has one (Gemma 2 and 3): the bridge's own
    forward applies it after the unembedding, so the engine must too."""
    logits = model.unembed(model.ln_final(resid[:, positions]))
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return cap * torch.tanh(logits / cap) if cap is not None and cap > 0 else logits


def run_from(model, cap: Capture, start: int, k: int, positions: Tensor | None,
             x: Tensor | None = None, task=None, scored=None) -> Float[Tensor, "batchk ..."]:
    """Replay blocks ``start..`` from the cached residual (or from ``x``, already stacked),
    the batch stacked ``k`` times; hooks active on the model (``model.hooks``) fire as in a
    full forward. The readout is ``final_logits`` at ``positions``, or with ``task`` its
    ``readout`` (``scored`` already stacked ``k`` times).
    """
    batch = cap.tokens.shape[0]
    if x is None:
        x = cap.resid_pre(start)
        x = x.repeat(k, 1, 1) if k > 1 else x
    for layer in range(start, model.cfg.n_layers):
        args, kwargs = cap.block_args[layer]
        out = model.blocks[layer](x, *_expand(args[1:], batch, k),
                                  **{n: _expand(v, batch, k, n == "alibi") for n, v in kwargs.items()})
        x = out[0] if isinstance(out, tuple) else out
    return final_logits(model, x, positions) if task is None else task.readout(model, x, scored)


def _mlp_half(model, layer: int, x):
    """The second half of a sequential pre-norm block: x + mlp(ln2(x))."""
    blk = model.blocks[layer]
    return x + blk.mlp(blk.ln2(x))


def _close(a: Tensor, b: Tensor) -> bool:
    """Equal up to the rounding of the dtype (a fast path's identity check on the base run)."""
    if a.dtype in (torch.float32, torch.float64):
        return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-4))
    # half types keep ~3 significant digits: compare on the tensor's own scale
    return bool(torch.allclose(a.float(), b.float(), rtol=2e-2, atol=2e-2 * float(b.abs().max().clamp_min(1))))


def _checked(base: Capture, key: tuple, check: Callable[[], bool]) -> bool:
    """Run a fast path's identity check once per capture; a check that cannot run fails."""
    if key not in base.checks:
        try:
            with torch.no_grad():
                base.checks[key] = bool(check())
        except Exception:  # noqa: BLE001 - any model where the check can't run takes the full replay
            base.checks[key] = False
    return base.checks[key]


def _deltas(group: Sequence[Unit], like: Tensor, change: Callable) -> list[Tensor]:
    """Per unit, the sum of its edits' changes; ``change(edit, positions)`` gives one edit's."""
    out = []
    for unit in group:
        delta = torch.zeros_like(like)
        for e in unit.edits:
            pos = slice(None) if e.positions is None else list(e.positions)
            delta[:, pos] += change(e, pos).to(delta.dtype)
        out.append(delta)
    return out


def _head_fast_path(model, base: Capture, layer: int) -> bool:
    """Whether head edits at ``layer`` can skip its attention computation.

    A head's output enters the residual stream only through ``z_h @ W_O[h]``, so patching it
    adds (z_src - z_base)[h] @ W_O[h] to the cached ``resid_mid``; the block's MLP half then
    runs from there. Valid for sequential pre-norm blocks (checked numerically on the base run:
    parallel-attention blocks fail the check and use the full replay).
    """
    def check():
        mid = base.acts.get(f"blocks.{layer}.hook_resid_mid")
        post = base.acts.get(f"blocks.{layer}.hook_resid_post")
        return mid is not None and post is not None and model.blocks[layer].attn.W_O is not None \
            and _close(_mlp_half(model, layer, mid), post)

    return _checked(base, ("head", layer), check)


def _run_heads_fast(model, base: Capture, layer: int, group: Sequence[Unit], sources: dict[str, Tensor],
                    positions: Tensor | None, task=None, scored=None) -> Tensor:
    hook = f"blocks.{layer}.attn.hook_z"
    z_base = base.acts[hook]
    z_src = sources[hook].to(z_base.dtype).expand_as(z_base)
    w_o = model.blocks[layer].attn.W_O  # [head d_head d_model], this layer's heads (pruned models differ)
    mid = base.acts[f"blocks.{layer}.hook_resid_mid"]

    def change(e, pos):
        (h,) = e.index
        return (z_src[:, pos, h] - z_base[:, pos, h]) @ w_o[h]

    mids = [mid + d for d in _deltas(group, mid, change)]
    return run_from(model, base, layer + 1, len(group), positions, x=_mlp_half(model, layer, torch.cat(mids)),
                    task=task, scored=scored)


def _mlp_fast_path(model, base: Capture, layer: int, neurons: bool) -> bool:
    """Whether MLP-output and neuron edits at ``layer`` can skip the block.

    The MLP output enters the residual stream last in a sequential block (resid_post =
    resid_mid + mlp_out), and a neuron enters the MLP output only through ``post_i * W_out[i]``,
    so an edit's change is added to the cached MLP output and the next block runs from
    ``resid_mid + mlp_out``. Both identities are checked numerically on the base run (to the
    dtype's rounding); models where they fail take the full replay.
    """
    def check():
        mid = base.acts.get(f"blocks.{layer}.hook_resid_mid")
        post = base.acts.get(f"blocks.{layer}.hook_resid_post")
        out = base.acts.get(f"blocks.{layer}.hook_mlp_out")
        if mid is None or post is None or out is None or not _close(mid + out, post):
            return False
        if not neurons:
            return True
        # whatever bias the projection has (or not) is the same at every position
        rest = out - (base.acts[f"blocks.{layer}.mlp.hook_post"] @ model.blocks[layer].mlp.W_out).to(out.dtype)
        return _close(rest, rest[:1, :1].expand_as(rest))

    return _checked(base, ("mlp", layer, neurons), check)


def _run_mlp_fast(model, base: Capture, layer: int, group: Sequence[Unit], sources: dict[str, Tensor],
                  positions: Tensor | None, task=None, scored=None) -> Tensor:
    mid, out = base.acts[f"blocks.{layer}.hook_resid_mid"], base.acts[f"blocks.{layer}.hook_mlp_out"]

    def change(e, pos):
        a = base.acts[e.hook]
        src = sources[e.hook].to(a.dtype).expand_as(a)
        if e.index:  # a neuron: its change times its output weights
            (i,) = e.index
            return (src[:, pos, i] - a[:, pos, i])[..., None] * model.blocks[layer].mlp.W_out[i]
        return src[:, pos] - a[:, pos]

    # the edited MLP output first, then the residual add: the same rounding as a real forward
    xs = [mid + (out + d) for d in _deltas(group, out, change)]
    return run_from(model, base, layer + 1, len(group), positions, x=torch.cat(xs), task=task, scored=scored)


def edit_slice(e: Edit) -> tuple:
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
        idx = edit_slice(e)
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


def copy_bytes(model, batch: int, n_pos: int, n_scored: int) -> int:
    """Rough peak memory of one stacked intervention copy: one block's activations (residual,
    q/k/v, attention scores, MLP hidden, with the hooks' clones) plus its scored logits and
    the metric's float32 work on them."""
    cfg = model.cfg
    item = next(model.parameters()).element_size()
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    qkv = cfg.d_head * (cfg.n_heads + 2 * n_kv)
    per_token = 8 * cfg.d_model + qkv + 2 * cfg.n_heads * cfg.d_head + 3 * cfg.d_mlp + 2 * cfg.n_heads * n_pos
    block = 2 * batch * n_pos * per_token * item
    logits = batch * n_scored * cfg.d_vocab * (item + 3 * 4)
    return block + logits


def stack_size(model, batch: int, n_pos: int, n_scored: int, n_units_per_layer: int, requested: int | None = None,
               memory_budget_mb: float | None = None) -> int:
    """How many interventions to stack along the batch per pass.

    ``requested`` wins. Always at most the units of one layer (more would start copies at
    earlier layers) and at most 64, chunked so the copies fit ``memory_budget_mb`` by
    ``copy_bytes``, a conservative estimate (so a 1B-parameter model's layer is split into
    several passes on a 24 GB card instead of running out of memory).

    On a GPU the budget defaults to half the free memory: stacking amortises kernel launches.
    On a CPU the FLOPs are the same stacked or not, so only few rows per weight read are worth
    stacking: with ``batch * n_scored`` rows at the unembedding below ``CPU_ROWS`` the output
    matrix (SmolLM2: 113 MB) is read once per intervention and the run is memory-bound; stacking
    up to ``CPU_ROWS`` rows reads it once per stack (SmolLM2, 1536 neurons scored at one
    position of 4 prompts: 8x faster), within ``CPU_BUDGET_MB`` unless a budget is given.
    """
    if requested:
        return max(1, int(requested))
    dev = next(model.parameters()).device
    want = 64
    if dev.type != "cuda" and memory_budget_mb is None:  # an explicit budget stacks as on a GPU
        want = max(1, CPU_ROWS // max(1, batch * n_scored))
        if want == 1:
            return 1
        memory_budget_mb = CPU_BUDGET_MB
    if memory_budget_mb is None:
        free, _ = torch.cuda.mem_get_info(dev)
        memory_budget_mb = free / 2**21
    fit = int(memory_budget_mb * 2**20 // max(1, copy_bytes(model, batch, n_pos, n_scored)))
    return max(1, min(fit, want, n_units_per_layer, 64))


# CPU stacking: rows at the unembedding worth one read of its weights, and the copies' budget.
CPU_ROWS = 256
CPU_BUDGET_MB = 1024


def _mlp_group(group: Sequence[Unit], layer: int) -> bool:
    mlp, post = f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.mlp.hook_post"
    return all((e.hook == mlp and not e.index) or (e.hook == post and len(e.index) == 1)
               for u in group for e in u.edits)


@torch.no_grad()
def evaluate_units(model, base: Capture, sources: dict[str, Tensor], units: Sequence[Unit],
                   metric: Callable, scored: ScoredBatch | object, batch_size: int = 1,
                   progress: bool | None = None, desc: str = "interventions", task=None) -> Float[Tensor, "unit batch"]:
    """Metric per prompt for each unit replaced by its source values, one unit at a time.

    Args:
        base: the cached run being intervened on (corrupted prompts when denoising).
        sources: hook name -> replacement activations for every hook the units touch.
        units: the interventions; units of one layer are stacked ``batch_size`` at a time.
        metric: ``(logits [batch, scored, vocab], ScoredBatch) -> [batch]``, or the task's
            ``(readout, scored) -> [values]`` (a sentence-pair task: one value per pair).
        task: the task whose readout the metric reads (None: the LM's ``final_logits``).

    Returns:
        [unit, value] metric values, in the order of ``units`` (a value per prompt for the LM).
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    missing = {e.hook for u in units for e in u.edits} - set(sources)
    if missing:
        raise KeyError(f"no source activations for hooks {sorted(missing)}")
    if task is not None and hasattr(task, "evaluate_units"):  # a task with its own replay (engine.seq2seq)
        return task.evaluate_units(model, base, sources, units, metric, scored, batch_size, progress, desc)
    batch = base.tokens.shape[0]
    out = None  # [unit, values per copy]: known after the first metric call (pairs: batch / 2)
    order = sorted(range(len(units)), key=lambda i: units[i].layer)
    bar = tqdm(total=len(units), desc=desc, disable=not progress_enabled(progress), leave=False)
    positions = getattr(scored, "positions", None)
    i = 0
    while i < len(order):
        layer = units[order[i]].layer
        group_idx = [j for j in order[i : i + batch_size] if units[j].layer == layer]
        group = [units[j] for j in group_idx]
        stacked = scored.repeat(len(group)) if len(group) > 1 else scored
        if all(e.hook == f"blocks.{layer}.attn.hook_z" and len(e.index) == 1 for u in group for e in u.edits) \
                and base.fast_paths and _head_fast_path(model, base, layer):
            logits = _run_heads_fast(model, base, layer, group, sources, positions, task, stacked)
        elif _mlp_group(group, layer) and base.fast_paths \
                and _mlp_fast_path(model, base, layer, any(u.edits[0].index for u in group)):
            logits = _run_mlp_fast(model, base, layer, group, sources, positions, task, stacked)
        else:
            with model.hooks(fwd_hooks=_hooks_for(group, sources, batch)):
                logits = run_from(model, base, layer, len(group), positions, task=task, scored=stacked)
        vals = metric(logits, stacked)
        if out is None:
            out = torch.empty(len(units), vals.numel() // len(group), dtype=torch.float64)
        out[group_idx] = vals.double().cpu().view(len(group), -1)
        i += len(group_idx)
        bar.update(len(group_idx))
    bar.close()
    return torch.empty(0, batch, dtype=torch.float64) if out is None else out
