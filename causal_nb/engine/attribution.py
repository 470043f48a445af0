"""Attribution patching: first-order estimates of every unit's patching effect at once.

Attribution patching (Nanda 2023; Syed et al. 2023, "EAP") multiplies the activation change
(source - base) by the metric's gradient at the base run: all units from one forward and
backward pass plus a cached source run. EAP-IG (Hanna et al. 2024) averages the gradients
over ``steps`` points on the straight line from the base input to the source input
(interpolating the embeddings), which is more faithful for large changes. Both are
approximations: compare with exact patching per model (``stats`` reports the agreement),
and distrust them for zero-ablation and other large perturbations.
"""

from __future__ import annotations

import pandas as pd
import torch
from jaxtyping import Float

from ..data.prompts import TokenBatch
from .common import unit_table
from .metrics import ScoredBatch
from .replay import capture, edit_slice, scored_run
from .units import Unit

__all__ = ["attribute", "attribution_scores", "metric_gradients", "unit_sums"]


def metric_gradients(model, tokens, hooks, metric, scored: ScoredBatch | object, interp: tuple[torch.Tensor, torch.Tensor, float] | None,
               keep_acts: bool = False, task=None):
    """Per-prompt metric gradients w.r.t. activations at ``hooks`` (a forward + backward).

    ``task``: the forward and readout the metric reads (None: the LM's logits at the scored
    positions, as ``engine.tasks.LMTask``). The graph starts at ``blocks.0.hook_resid_pre``, or
    at the task's ``gradient_roots`` (an encoder-decoder: each stack's first residual stream).

    Returns (grads, metric values) or, with ``keep_acts``, (grads, detached activations, values).
    """
    names = sorted(hooks)
    acts: dict[str, torch.Tensor] = {}
    first = "blocks.0.hook_resid_pre"

    def start(act, hook):
        # The graph starts here: no parameter gradients are ever needed.
        if interp is not None:
            lo, hi, alpha = interp
            act = lo + alpha * (hi - lo)
        return act.detach().requires_grad_(True)

    def save(name):
        def fn(act, hook):
            acts[name] = act
            return act

        return fn

    roots = getattr(task, "gradient_roots", (first,)) if task is not None else (first,)

    def plain(act, hook):  # a root that is not interpolated (an encoder-decoder's decoder stream)
        return act.detach().requires_grad_(True)

    # EAP-IG interpolates the first root (the input stream clean and corrupted differ in); the
    # others start the graph as they are
    fwd = [(r, start if i == 0 else plain) for i, r in enumerate(roots)] + [(n, save(n)) for n in names]
    with torch.enable_grad(), model.hooks(fwd_hooks=fwd):
        logits = model(tokens, return_type="logits")[:, scored.positions] if task is None else \
            task.run(model, tokens, scored)
        vals = metric(logits, scored)
        if not names:
            return ({}, {}, vals.detach()) if keep_acts else ({}, vals.detach())
        grads = torch.autograd.grad(vals.sum(), [acts[n] for n in names], allow_unused=True)
    grads = {n: (torch.zeros_like(acts[n]) if g is None else g.detach()) for n, g in zip(names, grads)}
    if keep_acts:
        return grads, {n: acts[n].detach() for n in names}, vals.detach()
    return grads, vals.detach()


def attribution_scores(model, base_tokens, source_acts: dict[str, torch.Tensor], base_acts: dict[str, torch.Tensor],
                       units: list[Unit], metric, scored: ScoredBatch | object, steps: int = 0,
                       source_tokens=None, grads: dict | None = None, task=None
                       ) -> tuple[Float[torch.Tensor, "unit batch"], Float[torch.Tensor, " batch"] | None]:
    """First-order effect per unit and prompt: sum over the unit's slice of (source - base) * grad.

    Args:
        steps: 0 for plain attribution patching (gradient at the base run); k > 0 for EAP-IG,
            averaging gradients at k points between the base and the source input
            (``source_tokens``; so zero and mean ablations have no EAP-IG).

    Returns:
        ([unit, batch] estimated metric change, [batch] base metric, or None when ``grads``
        were given).
    """
    hooks = {e.hook for u in units for e in u.edits}
    if steps:
        if source_tokens is None:
            raise ValueError("EAP-IG needs a source input to interpolate towards (patching, or resample ablation)")
        lo, hi = _input_stream(model, base_tokens, task, scored), _input_stream(model, source_tokens, task, scored)
        total = None
        for j in range(1, steps + 1):
            g, _ = metric_gradients(model, base_tokens, hooks, metric, scored, (lo, hi, j / steps), task=task)
            total = g if total is None else {n: total[n] + g[n] for n in g}
        grads = {n: t / steps for n, t in total.items()}
        _, base_val = metric_gradients(model, base_tokens, set(), metric, scored, None, task=task)
    elif grads is None:
        grads, base_val = metric_gradients(model, base_tokens, hooks, metric, scored, None, task=task)
    else:
        base_val = None
    prods = {h: ((source_acts[h].to(base_acts[h].dtype).expand_as(base_acts[h]) - base_acts[h]) * grads[h]).double()
             for h in hooks}
    return unit_sums(prods, units), None if base_val is None else base_val.double().cpu()


def _input_stream(model, tokens, task, scored) -> torch.Tensor:
    """The activation EAP-IG interpolates: the first block's input residual stream (a task's first
    ``gradient_roots`` entry: an encoder-decoder's encoder stream)."""
    if task is None:
        return capture(model, tokens).resid_pre(0)
    root = getattr(task, "gradient_roots", ("blocks.0.hook_resid_pre",))[0]
    with torch.no_grad():
        return capture(model, tokens, [root], task=task, scored=scored).acts[root]


def unit_sums(prods: dict[str, torch.Tensor], units: list[Unit]) -> Float[torch.Tensor, "unit batch"]:
    """Sum of each unit's slice of per-hook tensors [batch, pos, ...], per prompt: [unit, batch].

    Units that cover all positions and index one slot of the first axis after pos (heads,
    neurons) are summed in one vectorised pass per hook; anything else slice by slice.
    """
    batch = next(iter(prods.values())).shape[0]
    out = torch.zeros(len(units), batch, dtype=torch.float64)
    per_index = {}
    for h, t in prods.items():
        if t.dim() >= 3:
            per_index[h] = t.sum(1).reshape(batch, t.shape[2], -1).sum(-1).cpu()  # [batch, index]
    whole = {h: t.reshape(batch, -1).sum(-1).cpu() for h, t in prods.items()}
    for i, u in enumerate(units):
        for e in u.edits:
            if e.positions is None and len(e.index) == 1 and e.hook in per_index:
                out[i] += per_index[e.hook][:, e.index[0]]
            elif e.positions is None and not e.index:
                out[i] += whole[e.hook]
            else:
                part = prods[e.hook][edit_slice(e)]
                out[i] += part.reshape(batch, -1).sum(-1).cpu()
    return out


def attribute(model, cb: TokenBatch, xb: TokenBatch, units, unit: str, metric, scored: ScoredBatch | object,
              method: str, direction: str, per_position: bool, metric_name: str, steps: int = 5,
              task=None) -> pd.DataFrame:
    """``patch(method="attribution"|"eap-ig")``: estimated patched metric per unit (``task``: a
    task's forward and readout; None: the LM)."""
    if method not in ("attribution", "eap-ig"):
        raise ValueError(f"unknown method {method!r}; valid: 'exact', 'attribution', 'eap-ig'")
    hooks = sorted({e.hook for u in units for e in u.edits})
    clean_cap, clean_val = scored_run(model, cb.tokens, hooks, scored, metric, reference=True, task=task)
    n_steps = steps if method == "eap-ig" else 0
    if direction == "denoise":
        # The gradient pass runs the corrupted input anyway: its activations and metric are the
        # base, so no separate corrupted capture is needed.
        grads, acts, base_val = metric_gradients(model, xb.tokens, set(hooks), metric, scored, None, keep_acts=True,
                                                 task=task)
        src_acts, base_acts, base_tokens, src_tokens = clean_cap.acts, acts, xb.tokens, cb.tokens
        corr_val = base_val.float().cpu()
    else:
        corr_cap, corr_val = scored_run(model, xb.tokens, hooks, scored, metric, task=task)
        grads = None
        src_acts, base_acts, base_tokens, src_tokens = corr_cap.acts, clean_cap.acts, cb.tokens, xb.tokens
    delta, _ = attribution_scores(model, base_tokens, src_acts, base_acts, units, metric, scored, n_steps,
                                  source_tokens=src_tokens, grads=None if n_steps else grads, task=task)
    attrs = {"method": method, "unit": unit, "metric": metric_name, "direction": direction,
             "clean": float(clean_val.nanmean()), "corrupted": float(corr_val.nanmean()),
             "steps": n_steps}
    base_val = (corr_val if direction == "denoise" else clean_val).double()
    if task is not None:
        attrs["task"] = repr(task)
    df = unit_table(units, base_val[None, :] + delta, unit, per_position, cb.ids, attrs)
    df["normalized"] = (df["value"] - attrs["corrupted"]) / (attrs["clean"] - attrs["corrupted"])
    return df
