"""The replay engine of an encoder-decoder (T5): capture both stacks, replay from one block.

The decoder-LM engine (``engine.replay``) replays one stack of ``model.blocks``. A T5 bridge has
two (``model.encoder_blocks``, ``model.decoder_blocks``), and the decoder reads the encoder's
output through cross-attention, so an edit in encoder block ``l`` is replayed as: encoder
blocks ``l..`` from the cached input of block ``l``, the encoder's final norm, then every decoder
block with that new encoder output; an edit in decoder block ``l`` replays decoder blocks ``l..``
with the cached encoder output. Each block gets the exact arguments the clean forward gave it,
captured by a forward pre-hook: its attention mask and the relative position bias, which T5
computes in the first block of each stack and passes on to the later ones (as the BLOOM ALiBi
bias in ``engine.replay``). Edits are the bridge's hooks (``joint_hooks``), so they fire in the
replayed blocks as in a full forward. Units are evaluated one at a time (no stacking).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..core.env import progress_enabled
from ..models.families import UnsupportedModelError
from ..models.hf import hf_state
from .common import masked_means
from .replay import Capture, joint_hooks
from .units import STACK_UNIT_KINDS, Unit

__all__ = ["Seq2SeqCapture", "seq2seq_capture", "seq2seq_evaluate", "seq2seq_masked_means", "seq2seq_means", "seq2seq_readout",
           "seq2seq_replay", "seq2seq_weight_norms", "stack_sizes", "unit_count", "unit_prefix"]


@dataclass
class Seq2SeqCapture(Capture):
    """A ``Capture`` of both stacks: ``block_args`` are the encoder blocks', ``dec_args`` the
    decoder blocks' (args, kwargs), caches stripped; ``logits`` the decoder logits [batch, tgt, vocab]."""

    dec_args: dict[int, tuple[tuple, dict]] = field(default_factory=dict)


def stack_sizes(model) -> tuple[int, int]:
    """Encoder and decoder blocks of a T5 bridge."""
    return len(model.encoder_blocks), len(model.decoder_blocks)


def _strip(v):
    # a KV cache in the recorded arguments would be appended to on every replay
    return None if type(v).__name__.endswith("Cache") else v


def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def unit_prefix(kind: str, layer: int) -> str:
    """The Hugging Face name of the module that holds a unit kind's weights in ``layer``: the
    attention (q/k/v/o) for heads, ``DenseReluDense`` (wi/wo) for neurons, MLPs and blocks."""
    stack = STACK_UNIT_KINDS[kind][0]
    pre = f"{stack}.block.{layer}.layer"
    if kind == "cross_head":
        return f"{pre}.1.EncDecAttention"
    if kind.endswith("head"):
        return f"{pre}.0.SelfAttention"
    return f"{pre}.{2 if stack == 'decoder' else 1}.DenseReluDense"


def unit_count(model, kind: str, layer: int, state: dict | None = None) -> int:
    """Heads or neurons of a unit kind in one layer, read from the weights (a physically pruned
    T5 has its own count per layer and attention kind); 1 for MLPs and blocks."""
    axis = STACK_UNIT_KINDS[kind][2]
    if axis is None:
        return 1
    state = hf_state(model.original_model) if state is None else state
    prefix = unit_prefix(kind, layer)
    if axis == "head":
        return state[f"{prefix}.o.weight"].shape[1] // model.original_model.config.d_kv
    return state[f"{prefix}.wo.weight"].shape[1]


def _check_heads(model, name: str, act: Tensor) -> None:
    """The bridge splits ``hook_z`` by its config's head width; T5's ``d_kv`` may differ from it."""
    cfg = model.original_model.config
    if act.dim() != 4 or act.shape[-1] != cfg.d_kv:
        raise UnsupportedModelError(
            f"{name} has shape {tuple(act.shape)}, not [batch, pos, heads, {cfg.d_kv}]: the bridge split this "
            "T5's heads by another width (d_kv != d_model / num_heads?), so head units would be wrong")


def seq2seq_capture(task, model, tokens: Tensor, hooks: Sequence[str], grad: bool = False,
                    scored=None) -> Seq2SeqCapture:
    """Run the full forward once (``task.run``) caching ``hooks`` and every block's arguments."""
    if scored is None:
        raise ValueError("a seq2seq capture needs the task's scoring batch (it holds the decoder inputs)")
    acts: dict[str, Tensor] = {}
    enc_args: dict[int, tuple[tuple, dict]] = {}
    dec_args: dict[int, tuple[tuple, dict]] = {}

    def save(name):
        def fn(act, hook):  # noqa: ARG001 - the TransformerLens hook signature
            acts[name] = act if grad else act.detach()
            return act

        return fn

    handles = []
    for store, blocks in ((enc_args, model.encoder_blocks), (dec_args, model.decoder_blocks)):
        for layer, blk in enumerate(blocks):
            def pre(mod, args, kwargs, layer=layer, store=store):  # noqa: ARG001 - the pre-hook signature
                store[layer] = (tuple(_strip(a) for a in args), {k: _strip(v) for k, v in kwargs.items()})

            handles.append(blk.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.set_grad_enabled(grad), model.hooks(fwd_hooks=[(n, save(n)) for n in sorted(set(hooks))]):
            logits = task.run(model, tokens, scored)
    finally:
        for h in handles:
            h.remove()
    for name, act in acts.items():
        if name.endswith("hook_z"):
            _check_heads(model, name, act)
    return Seq2SeqCapture(tokens, acts, enc_args, logits if grad else logits.detach(), fast_paths=False,
                          dec_args=dec_args)


def _run_block(blk, x: Tensor, recorded: tuple[tuple, dict], enc_out: Tensor | None = None) -> Tensor:
    args, kwargs = recorded
    args, kwargs = (x, *args[1:]) if args else args, dict(kwargs)
    if not args:
        kwargs["hidden_states"] = x
    if enc_out is not None:  # T5Stack passes the encoder output 4th, positionally (or by name)
        if len(args) > 3:
            args = (*args[:3], enc_out, *args[4:])
        else:
            kwargs["encoder_hidden_states"] = enc_out
    out = blk(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def seq2seq_readout(model, resid: Tensor) -> Tensor:
    """Decoder logits from the last decoder block's output: final norm, T5's d_model^-0.5 scaling
    of tied-embedding checkpoints, the LM head (``T5ForConditionalGeneration.forward``)."""
    hf = model.original_model
    h = hf.decoder.dropout(hf.decoder.final_layer_norm(resid))
    if getattr(hf.config, "scale_decoder_outputs", getattr(hf.config, "tie_word_embeddings", True)):
        h = h * (hf.config.d_model ** -0.5)
    return hf.lm_head(h)


def seq2seq_replay(model, cap: Seq2SeqCapture, stack: str, start: int) -> Tensor:
    """Replay ``stack``'s blocks from ``start`` (an encoder start replays the whole decoder after
    it); hooks active on the model fire. Returns the decoder logits [batch, tgt, vocab]."""
    enc_out = None
    if stack == "encoder":
        x = _hidden(*cap.block_args[start])
        for layer in range(start, len(model.encoder_blocks)):
            x = _run_block(model.encoder_blocks[layer], x, cap.block_args[layer])
        enc = model.original_model.encoder
        enc_out, start = enc.dropout(enc.final_layer_norm(x)), 0
    x = _hidden(*cap.dec_args[start])
    for layer in range(start, len(model.decoder_blocks)):
        x = _run_block(model.decoder_blocks[layer], x, cap.dec_args[layer], enc_out)
    return seq2seq_readout(model, x)


@torch.no_grad()
def seq2seq_evaluate(model, base: Seq2SeqCapture, sources: dict[str, Tensor], units: Sequence[Unit],
                     metric: Callable, scored, progress: bool | None = None,
                     desc: str = "interventions") -> torch.Tensor:
    """Metric values [unit, pair] with each unit replaced by its source values, one at a time."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    out = None
    bar = tqdm(total=len(units), desc=desc, disable=not progress_enabled(progress), leave=False)
    for i, unit in enumerate(units):
        with model.hooks(fwd_hooks=joint_hooks([unit], sources)):
            logits = seq2seq_replay(model, base, STACK_UNIT_KINDS[unit.kind][0], unit.layer)
        vals = metric(logits, scored).double().cpu()
        if out is None:
            out = torch.empty(len(units), vals.numel(), dtype=torch.float64)
        out[i] = vals
        bar.update(1)
    bar.close()
    return torch.empty(0, base.tokens.shape[0], dtype=torch.float64) if out is None else out


@torch.no_grad()
def seq2seq_means(task, model, batch, hooks: Sequence[str]) -> dict[str, Tensor]:
    """Each hook's activation averaged over the pairs and the real positions of its stack (source
    tokens for encoder hooks, target tokens for decoder hooks), [1, 1, ...] float32."""
    cap = seq2seq_capture(task, model, batch.tokens, hooks, scored=task.scoring(model, batch))
    return seq2seq_masked_means(cap.acts, batch, hooks)


def seq2seq_masked_means(acts: dict[str, Tensor], batch, hooks: Sequence[str]) -> dict[str, Tensor]:
    """``seq2seq_means`` from activations at hand (a gradient pass's): encoder hooks over the
    real source tokens, decoder hooks over the real target tokens."""
    out = {}
    for h in hooks:
        mask = batch.mask if h.startswith("encoder_blocks.") else batch.target_mask
        out.update(masked_means({h: acts[h]}, mask, [h]))
    return out


def seq2seq_weight_norms(model, kind: str, p: int) -> np.ndarray:
    """L``p`` norm of each unit's weights in ``Seq2SeqTask.units`` order, from the Hugging Face
    tensors: a head's q/k/v rows plus its o columns; a neuron's wi (wi_0 and wi_1 when gated) row
    plus its wo column; an MLP or a block sums its units."""
    hf = model.original_model
    state = hf_state(hf)
    stack = STACK_UNIT_KINDS[kind][0]
    dk = hf.config.d_kv

    def norm(w: Tensor, dims) -> Tensor:
        return torch.linalg.vector_norm(w.detach().float(), ord=p, dim=dims)

    def heads(prefix: str) -> Tensor:
        qkv = sum(norm(state[f"{prefix}.{n}.weight"].view(-1, dk, state[f"{prefix}.{n}.weight"].shape[1]), (1, 2))
                  for n in ("q", "k", "v"))
        o = state[f"{prefix}.o.weight"]
        return qkv + norm(o.view(o.shape[0], -1, dk), (0, 2))

    def neurons(prefix: str) -> Tensor:
        ins = [n for n in ("wi", "wi_0", "wi_1") if f"{prefix}.{n}.weight" in state]
        return sum(norm(state[f"{prefix}.{n}.weight"], 1) for n in ins) + norm(state[f"{prefix}.wo.weight"], 0)

    rows = []
    for layer in range(stack_sizes(model)[0 if stack == "encoder" else 1]):
        ff = unit_prefix(f"{stack[:3]}_neuron", layer)
        if kind.endswith("head"):
            rows.append(heads(unit_prefix(kind, layer)))
        elif kind.endswith("neuron"):
            rows.append(neurons(ff))
        elif kind.endswith("mlp"):
            rows.append(neurons(ff).sum()[None])
        else:  # a block: its attention heads (self and cross in the decoder) and its neurons
            kinds = ["enc_head"] if stack == "encoder" else ["dec_head", "cross_head"]
            rows.append((sum(heads(unit_prefix(k, layer)).sum() for k in kinds) + neurons(ff).sum())[None])
    return torch.cat(rows).numpy()
