"""Units of a model that interventions act on, and where each lives in TransformerLens's hooks.

A unit is a slice of one or more hook activations: an attention head is ``hook_z[:, :, h]``
(its output before ``W_O``), a GQA key/value head is ``hook_k[:, :, g]`` (shared by the
query heads of group g), a neuron is ``mlp.hook_post[:, :, i]``. Activations are assumed
[batch, pos, ...]; ``Edit.index`` indexes the dims after pos. ``Unit.layer`` is the block
whose input is the last point not affected by the unit, where exact patching can resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["STACK_UNIT_KINDS", "UNIT_KINDS", "Edit", "Unit", "enumerate_units", "layer_shape", "unit_columns",
           "units_in_range"]


@dataclass(frozen=True)
class Edit:
    """Replace ``act[:, positions][(..., *index)]`` at ``hook`` with the source's values."""

    hook: str
    index: tuple = ()
    positions: tuple[int, ...] | None = None  # None: every position


@dataclass(frozen=True)
class Unit:
    """One intervenable unit: its kind, coordinates and the edits that realise it."""

    kind: str
    layer: int
    edits: tuple[Edit, ...]
    head: int | None = None
    neuron: int | None = None
    pos: int | None = None
    label: str = field(default="", compare=False)

    def coords(self) -> dict:
        """Tidy-table coordinates: layer, and head/neuron/pos where the kind has them."""
        out = {"layer": self.layer}
        for k in ("head", "neuron", "pos"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out


# kind -> (hook template, index axis name or None, description)
UNIT_KINDS: dict[str, tuple[tuple[str, ...], str | None, str]] = {
    "head": (("blocks.{l}.attn.hook_z",), "head", "attention head output (z, before W_O), one per query head"),
    "q": (("blocks.{l}.attn.hook_q",), "head", "query of one head"),
    "k": (("blocks.{l}.attn.hook_k",), "kv_head", "key of one key/value head (GQA: shared by its group)"),
    "v": (("blocks.{l}.attn.hook_v",), "kv_head", "value of one key/value head (GQA: shared by its group)"),
    "attn": (("blocks.{l}.hook_attn_out",), None, "whole attention layer output"),
    "mlp": (("blocks.{l}.hook_mlp_out",), None, "whole MLP output"),
    "neuron": (("blocks.{l}.mlp.hook_post",), "neuron", "one MLP neuron (post-activation)"),
    "block": (("blocks.{l}.hook_attn_out", "blocks.{l}.hook_mlp_out"), None, "a whole block (attention and MLP outputs)"),
    "resid": (("blocks.{l}.hook_resid_pre",), None, "residual stream entering a block"),
}


#: The units of an encoder-decoder (T5, read with ``engine.seq2seq.Seq2SeqTask``), one kind per
#: stack and sublayer: kind -> (stack, hook templates, index axis or None, description). Layers
#: count within their stack (``enc_head`` layer 0 is the first encoder block, ``dec_head`` layer 0
#: the first decoder block); the hooks are the T5 bridge's.
STACK_UNIT_KINDS: dict[str, tuple[str, tuple[str, ...], str | None, str]] = {
    "enc_head": ("encoder", ("encoder_blocks.{l}.attn.hook_z",), "head", "encoder self-attention head (z, before o)"),
    "dec_head": ("decoder", ("decoder_blocks.{l}.self_attn.hook_z",), "head",
                 "decoder self-attention head (z, before o)"),
    "cross_head": ("decoder", ("decoder_blocks.{l}.cross_attn.hook_z",), "head",
                   "decoder cross-attention head (z, before o)"),
    "enc_neuron": ("encoder", ("encoder_blocks.{l}.mlp.hook_post",), "neuron", "encoder MLP neuron (input of wo)"),
    "dec_neuron": ("decoder", ("decoder_blocks.{l}.mlp.hook_post",), "neuron", "decoder MLP neuron (input of wo)"),
    "enc_mlp": ("encoder", ("encoder_blocks.{l}.mlp.hook_out",), None, "encoder MLP output (before its residual add)"),
    "dec_mlp": ("decoder", ("decoder_blocks.{l}.mlp.hook_out",), None, "decoder MLP output (before its residual add)"),
    "enc_block": ("encoder", ("encoder_blocks.{l}.attn.hook_out", "encoder_blocks.{l}.mlp.hook_out"), None,
                  "a whole encoder block (its sublayers' outputs before their residual adds)"),
    "dec_block": ("decoder", ("decoder_blocks.{l}.self_attn.hook_out", "decoder_blocks.{l}.cross_attn.hook_out",
                              "decoder_blocks.{l}.mlp.hook_out"), None,
                  "a whole decoder block (its three sublayers' outputs before their residual adds)"),
}


def layer_shape(model, layer: int) -> dict[str, int]:
    """Query heads, key/value heads and MLP neurons of one layer.

    ``model.cfg`` holds the dense counts; a physically pruned model (``prune(...,
    physical=True)``, or a ``save_pruned`` folder loaded back) has fewer in some layers, read
    from its pruning spec. Indices on a pruned model run over its kept units (0..count-1).
    """
    cfg = model.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    out = {"n_heads": cfg.n_heads, "n_kv_heads": n_kv, "d_mlp": cfg.d_mlp}
    hf_cfg = getattr(getattr(model, "original_model", None), "config", None)
    spec = getattr(model, "causal_nb_pruned", None) or getattr(hf_cfg, "causal_nb_pruned", None)
    if not spec or not spec.get("physical"):
        return out
    entry = spec["layers"][layer]
    for key, field_ in (("n_heads", "q_heads"), ("n_kv_heads", "kv_heads"), ("d_mlp", "neurons")):
        if entry.get(field_) is not None:
            out[key] = len(entry[field_])
    return out


def _count(model, axis: str | None, layer: int) -> int:
    key = {"head": "n_heads", "kv_head": "n_kv_heads", "neuron": "d_mlp"}.get(axis)
    return layer_shape(model, layer)[key] if key else 1


def unit_columns(kind: str, per_position: bool = False) -> list[str]:
    """The coordinate columns of a unit kind's tidy table."""
    axis = UNIT_KINDS[kind][1] if kind in UNIT_KINDS else STACK_UNIT_KINDS[kind][2]
    cols = ["layer"]
    if axis in ("head", "kv_head"):
        cols.append("head")
    elif axis == "neuron":
        cols.append("neuron")
    return cols + (["pos"] if per_position else [])


def enumerate_units(model, kind: str, layers=None, positions=None, per_position: bool = False) -> list[Unit]:
    """All units of a kind, layer-major.

    Args:
        kind: one of ``UNIT_KINDS``.
        layers: restrict to these layers (default all); an out-of-range layer is an error.
        positions: the positions whose activations are edited (default all).
        per_position: one unit per (unit, position) in ``positions`` (TransformerLens's
            ``*_by_pos`` patching), instead of one unit over all of them.

    Raises:
        ValueError: unknown kind, or a layer the model doesn't have.
    """
    if kind in STACK_UNIT_KINDS:
        raise ValueError(f"unit {kind!r} ({STACK_UNIT_KINDS[kind][3]}) is a unit of an encoder-decoder model (T5, "
                         "with task=cnb.Seq2SeqTask(sources, targets)); this model (or task) has no encoder-decoder "
                         f"stacks: its units are {sorted(UNIT_KINDS)}")
    if kind not in UNIT_KINDS:
        raise ValueError(f"unknown unit {kind!r}; valid units: {sorted(UNIT_KINDS)}")
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} do not exist: the model has layers 0..{n_layers - 1}")
    if per_position and positions is None:
        raise ValueError("per_position=True needs the positions to enumerate (positions=[...])")
    hooks, axis, _ = UNIT_KINDS[kind]
    pos_groups = [(p,) for p in positions] if per_position else [tuple(positions) if positions is not None else None]
    units = []
    for layer in layers:
        for i in range(_count(model, axis, layer)):
            for pg in pos_groups:
                index = (i,) if axis else ()
                edits = tuple(Edit(h.format(l=layer), index, pg) for h in hooks)
                coords = {"head": i} if axis in ("head", "kv_head") else {}
                if axis == "neuron":
                    coords = {"neuron": i}
                if per_position:
                    coords["pos"] = pg[0]
                units.append(Unit(kind, layer, edits, label=f"{kind} L{layer}" + "".join(
                    f" {k[0]}{v}" for k, v in coords.items()), **coords))
    return units


def units_in_range(units: list, unit_range) -> list:
    """The units ``start .. stop - 1`` of ``units`` (table order, layer-major) for ``unit_range=(start, stop)``;
    all of them for None. One slice of a table split over workers: the slices' tables,
    concatenated in order, are the whole table.

    Raises:
        ValueError: not a pair of integers with ``0 <= start < stop <= len(units)``.
    """
    if unit_range is None:
        return units
    try:
        start, stop = (int(x) for x in unit_range)
    except (TypeError, ValueError):
        raise ValueError(f"unit_range must be a pair (start, stop) of unit indices, got {unit_range!r}") from None
    if not 0 <= start < stop <= len(units):
        raise ValueError(f"unit_range=({start}, {stop}) is outside the {len(units)} units of this call (in table order, "
                         f"after layers=): use 0 <= start < stop <= {len(units)}")
    return units[start:stop]
