"""The plain Hugging Face model behind a bridge: copying it out, its architecture, slicing it.

What the upper layers need of the Hugging Face model itself: ``plain_hf`` (an editable copy of
a bridge's model), ``hf_state`` (its Hugging Face state dict), ``hf_arch`` and ``head_width``
(the decoder layers and one head's width), the slicing helpers structured pruning cuts with,
``apply_structure`` and ``load_pruned_hf`` (rebuilding a saved pruned model) and
``quiet_loading`` (silencing weight-loading output). Head widths come from each attention
module (``head_dim``), not ``hidden_size // n_heads``, which is wrong for Qwen3 and Gemma
checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .families import check_supported
from .hf_vision import (
    is_vision,
    saved_vit_key,
    set_vit_layers,
    slice_vit_heads,
    slice_vit_neurons,
    vision_model_class,
    vit_layers,
    vit_out_projections,
)

__all__ = ["add_bias", "apply_structure", "attention", "head_span", "head_width", "hf_arch", "hf_state",
           "keep_alibi_heads", "keep_cols", "keep_rows", "layer_list", "load_pruned_hf", "n_neurons", "out_projections", "plain_hf", "quiet_loading",
           "set_layer_list", "slice_heads", "slice_neurons"]


@contextlib.contextmanager
def quiet_loading(verbose: bool):
    """Silence weight-loading bars and notices (they go to stderr, which nbval compares)."""
    if verbose:
        yield
        return
    import transformers  # noqa: PLC0415

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(level)
        transformers.logging.enable_progress_bar()


def _hf(model):
    return model.original_model if hasattr(model, "original_model") else model


def _no_init():
    """Skip the random initialisation of a model whose every weight is loaded next (SmolLM2:
    seconds per copy); a no-op where this transformers version lacks the switch."""
    try:
        from transformers.initialization import no_init_weights  # noqa: PLC0415
    except ImportError:  # older transformers: the weights are initialised, then overwritten
        return contextlib.nullcontext()
    return no_init_weights()


def plain_hf(model, share: bool = False, attn_implementation: str | None = None):
    """A plain Hugging Face copy of a bridge's model (the bridge wraps the original modules in
    place, so its ``original_model`` cannot be sliced or saved as is).

    Args:
        share: hold the bridge's own tensors instead of copies (no memory cost; for read-only
            uses such as counting parameters or timing a forward, never for editing).
        attn_implementation: ``None`` keeps the bridge's (``"eager"``: its hooks read the
            pattern, and a bridge rebuilt from this copy needs it); ``"sdpa"`` for a copy that is
            timed or deployed, as ``from_pretrained`` gives it (eager costs a 50%-pruned ViT
            ~12% of its throughput at batch 64).
    """
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    wrapped = _hf(model)
    p = next(wrapped.parameters())
    auto = vision_model_class() if is_vision(wrapped) else AutoModelForCausalLM
    with _no_init():
        hf = auto.from_config(copy.deepcopy(wrapped.config), dtype=p.dtype)
    spec = getattr(wrapped.config, "causal_nb_pruned", None)
    if spec:
        apply_structure(hf, spec)
    # The bridge registers aliases (ln1, attn.q...) beside the original modules: read the
    # original modules' own tensors, under their Hugging Face names.
    state = hf_state(wrapped)
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=share)
    # the bridge gives bias-free layers a zero bias (lm_head's b_U): dropping a zero bias is exact
    unexpected = [u for u in unexpected if not (u.endswith(".bias") and not state[u].any())]
    tied = bool(getattr(hf.config, "tie_word_embeddings", False))
    missing = [m for m in missing if not (tied and m.startswith("lm_head."))]  # the embedding, when tied
    if missing or unexpected:
        raise RuntimeError(f"could not copy the bridge's weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
    hf.tie_weights()
    if attn_implementation is not None:
        hf.set_attn_implementation(attn_implementation)
    return hf.to(p.device).eval()


def hf_state(wrapped) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of a bridge-wrapped model: only its original modules' tensors.

    The bridge replaces each wrapped module by a component that holds it as
    ``_original_component`` next to bridge-only aliases (``ln1``, ``attn.q``...); walking
    through the original components alone gives exactly the Hugging Face parameter names.
    """
    out: dict[str, torch.Tensor] = {}

    def walk(mod: nn.Module, prefix: str) -> None:
        inner = mod._modules.get("_original_component")
        if inner is not None:
            walk(inner, prefix)
            return
        for n, t in mod._parameters.items():
            if t is not None:
                out[prefix + n] = t
        for n, t in mod._buffers.items():
            if t is not None and n not in mod._non_persistent_buffers_set:
                out[prefix + n] = t
        for n, c in mod._modules.items():
            if c is not None:
                walk(c, f"{prefix}{n}.")

    walk(wrapped, "")
    return out


def hf_arch(hf) -> tuple[str, nn.ModuleList]:
    """The layout (``"gpt2"``, ``"llama"``, ``"bloom"``, ``"opt"``, ``"gpt_neox"``) and decoder layers."""
    name = check_supported(hf, "pruning")
    if name in ("bloom", "opt", "gpt_neox", "vit"):
        return name, layer_list(name, hf)
    if hasattr(hf, "transformer") and hasattr(hf.transformer, "h"):
        return "gpt2", hf.transformer.h
    return "llama", hf.model.layers


def layer_list(arch: str, hf) -> nn.ModuleList:
    """The decoder layers of a Hugging Face model of layout ``arch``."""
    return {"gpt2": lambda: hf.transformer.h, "bloom": lambda: hf.transformer.h, "opt": lambda: hf.model.decoder.layers,
            "gpt_neox": lambda: hf.gpt_neox.layers, "vit": lambda: vit_layers(hf)}.get(arch, lambda: hf.model.layers)()


def set_layer_list(arch: str, hf, layers: nn.ModuleList) -> None:
    """Replace the decoder layers (dropping whole blocks)."""
    if arch in ("gpt2", "bloom"):
        hf.transformer.h = layers
    elif arch == "vit":
        set_vit_layers(hf, layers)
    else:
        owner = hf.model.decoder if arch == "opt" else hf.gpt_neox if arch == "gpt_neox" else hf.model
        owner.layers = layers


def attention(arch: str, layer: nn.Module) -> nn.Module:
    """A decoder layer's attention module."""
    return getattr(layer, {"gpt2": "attn", "bloom": "self_attention", "gpt_neox": "attention",
                           "vit": "attention"}.get(arch, "self_attn"))


def out_projections(arch: str, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The attention output projection (its input is the heads' concatenated ``z``) and the
    MLP output projection (its input is the neurons) of an nn.Linear layout (all but GPT-2)."""
    if arch == "vit":
        return vit_out_projections(layer)
    att = attention(arch, layer)
    if arch == "bloom" or arch == "gpt_neox":
        return att.dense, layer.mlp.dense_4h_to_h
    if arch == "opt":
        return att.out_proj, layer.fc2
    return att.o_proj, layer.mlp.down_proj


def n_neurons(arch: str, layer: nn.Module) -> int:
    """MLP neurons of a decoder layer."""
    if arch == "gpt2":
        return layer.mlp.c_fc.weight.shape[1]
    return out_projections(arch, layer)[1].in_features


def head_width(arch: str, layer: nn.Module) -> int:
    """One head's width, read from the attention module (Qwen3/Gemma set it apart from d_model)."""
    att = attention(arch, layer)
    return att.head_size if arch == "gpt_neox" else att.head_dim


def keep_rows(lin: nn.Module, idx: list[int], conv: bool = False) -> nn.Module:
    """Keep output features ``idx`` (Linear rows; Conv1D columns)."""
    if conv:
        new = type(lin)(len(idx), lin.weight.shape[0])
        new.weight.data = lin.weight.data[:, idx].clone()
        new.bias.data = lin.bias.data[idx].clone()
        return new
    new = nn.Linear(lin.in_features, len(idx), bias=lin.bias is not None, dtype=lin.weight.dtype,
                    device=lin.weight.device)
    new.weight.data = lin.weight.data[idx].clone()
    if lin.bias is not None:
        new.bias.data = lin.bias.data[idx].clone()
    return new


def keep_cols(lin: nn.Module, idx: list[int], conv: bool = False) -> nn.Module:
    """Keep input features ``idx`` (Linear columns; Conv1D rows)."""
    if conv:
        new = type(lin)(lin.weight.shape[1], len(idx))
        new.weight.data = lin.weight.data[idx].clone()
        new.bias.data = lin.bias.data.clone()
        return new
    new = nn.Linear(len(idx), lin.out_features, bias=lin.bias is not None, dtype=lin.weight.dtype,
                    device=lin.weight.device)
    new.weight.data = lin.weight.data[:, idx].clone()
    if lin.bias is not None:
        new.bias.data = lin.bias.data.clone()
    return new


def head_span(heads, dh):
    return [h * dh + i for h in heads for i in range(dh)]


def slice_heads(arch: str, layer: nn.Module, keep: list[int], cfg) -> dict:
    if arch == "vit":
        return slice_vit_heads(layer, keep)
    if arch == "gpt2":
        att = layer.attn
        dh, d = att.head_dim, att.embed_dim
        cols = head_span(keep, dh)
        att.c_attn = keep_rows(att.c_attn, cols + [d + c for c in cols] + [2 * d + c for c in cols], conv=True)
        att.c_proj = keep_cols(att.c_proj, cols, conv=True)
        att.split_size, att.num_heads = len(cols), len(keep)
        return {"q_heads": keep, "kv_heads": keep, "kv_groups": 1}
    if arch == "bloom":  # fused query_key_value, per head [q | k | v] rows; ALiBi sliced to the kept heads
        att = layer.self_attention
        dh = att.head_dim
        att.query_key_value = keep_rows(att.query_key_value, head_span(keep, 3 * dh))
        att.dense = keep_cols(att.dense, head_span(keep, dh))
        att.num_heads = len(keep)
        keep_alibi_heads(att, keep, cfg.n_head)
        return {"q_heads": keep, "kv_heads": keep, "kv_groups": 1}
    if arch == "gpt_neox":  # fused query_key_value, laid out per head as [q | k | v] rows
        att = layer.attention
        dh = att.head_size
        att.query_key_value = keep_rows(att.query_key_value, head_span(keep, 3 * dh))
        att.dense = keep_cols(att.dense, head_span(keep, dh))
        return {"q_heads": keep, "kv_heads": keep, "kv_groups": 1}
    if arch == "opt":  # separate q/k/v/out projections, no key/value sharing
        att, cols = layer.self_attn, head_span(keep, layer.self_attn.head_dim)
        att.q_proj, att.k_proj, att.v_proj = (keep_rows(p, cols) for p in (att.q_proj, att.k_proj, att.v_proj))
        att.out_proj = keep_cols(att.out_proj, cols)
        att.num_heads = len(keep)
        return {"q_heads": keep, "kv_heads": keep, "kv_groups": 1}
    att = layer.self_attn
    dh = att.head_dim
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    by_group: dict[int, list[int]] = {}
    for h in keep:
        by_group.setdefault(h // group, []).append(h)
    # repeat_kv needs equal, contiguous groups. Where the kept heads leave groups uneven, the
    # smaller groups are padded back with some of their removed heads, whose output columns are
    # zeroed (exactly removal): the key/value heads stay shared, so the model never grows.
    rep = max(len(v) for v in by_group.values())
    padded: list[int] = []
    for g, hs in by_group.items():
        spare = [h for h in range(g * group, (g + 1) * group) if h not in hs]
        padded += spare[: rep - len(hs)]
        by_group[g] = sorted(hs + spare[: rep - len(hs)])
    q_order = [h for g in sorted(by_group) for h in by_group[g]]
    kv = sorted(by_group)
    att.q_proj, att.o_proj = keep_rows(att.q_proj, head_span(q_order, dh)), keep_cols(att.o_proj, head_span(q_order, dh))
    att.k_proj, att.v_proj = keep_rows(att.k_proj, head_span(kv, dh)), keep_rows(att.v_proj, head_span(kv, dh))
    with torch.no_grad():
        att.o_proj.weight[:, head_span([q_order.index(h) for h in padded], dh)] = 0
    att.num_key_value_groups = rep
    return {"q_heads": q_order, "kv_heads": kv, "kv_groups": rep, "zeroed_heads": sorted(padded)}


def keep_alibi_heads(att: nn.Module, keep: list[int], n_heads: int) -> None:
    """Make a BLOOM attention module (or its bridge) with heads ``keep`` take their rows of the
    ALiBi bias, which the model builds for all ``n_heads`` heads ([batch * n_heads, 1, kv])."""
    att.causal_nb_alibi_heads = (list(keep), n_heads)

    def pre(mod, args, kwargs):
        alibi = kwargs.get("alibi")  # the model's, built for every head: it reaches each layer unsliced
        if alibi is None:
            return None
        rest = alibi.shape[1:]
        kwargs["alibi"] = alibi.view(-1, n_heads, *rest)[:, keep].reshape(-1, *rest)
        return args, kwargs

    att.register_forward_pre_hook(pre, with_kwargs=True)


def slice_neurons(arch: str, layer: nn.Module, keep: list[int]) -> None:
    if arch == "vit":
        slice_vit_neurons(layer, keep)
        return
    if arch == "gpt2":
        layer.mlp.c_fc = keep_rows(layer.mlp.c_fc, keep, conv=True)
        layer.mlp.c_proj = keep_cols(layer.mlp.c_proj, keep, conv=True)
        return
    if arch == "opt":
        layer.fc1, layer.fc2 = keep_rows(layer.fc1, keep), keep_cols(layer.fc2, keep)
        return
    if arch in ("gpt_neox", "bloom"):
        mlp = layer.mlp
        mlp.dense_h_to_4h, mlp.dense_4h_to_h = keep_rows(mlp.dense_h_to_4h, keep), keep_cols(mlp.dense_4h_to_h, keep)
        return
    mlp = layer.mlp
    mlp.gate_proj, mlp.up_proj = keep_rows(mlp.gate_proj, keep), keep_rows(mlp.up_proj, keep)
    mlp.down_proj = keep_cols(mlp.down_proj, keep)


def apply_structure(hf, spec: dict) -> None:
    """Slice a full-size Hugging Face model in place to a saved pruning spec (for loading)."""
    arch, layers = hf_arch(hf)
    for layer, s in zip(layers, spec["layers"]):
        if arch != "gpt2":
            o_proj, down_proj = out_projections(arch, layer)
            if s.get("o_bias") and o_proj.bias is None:
                add_bias(o_proj, torch.zeros(()))
            if s.get("down_bias") and down_proj.bias is None:
                add_bias(down_proj, torch.zeros(()))
        if s.get("q_heads") is not None:
            # The saved head order is group-contiguous, so slicing by it rebuilds the same layout.
            slice_heads(arch, layer, s["q_heads"], hf.config)
        if s.get("neurons") is not None:
            slice_neurons(arch, layer, s["neurons"])


def add_bias(lin: nn.Module, b: torch.Tensor) -> None:
    if lin.bias is None:  # Llama's projections have none: give this one a bias
        lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device))
    lin.bias.data += b.to(lin.bias.dtype)


#: Checkpoint name prefixes save_pretrained writes -> the module names (GPT-NeoX's output layer).
_SAVED_NAMES = {"gpt_neox": {"embed_out.": "lm_head."}}


def load_pruned_hf(folder: Path, dtype=torch.float32):
    """Rebuild a physically pruned Hugging Face model from ``save_pruned`` output."""
    from safetensors.torch import load_file  # noqa: PLC0415
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

    cfg = AutoConfig.from_pretrained(str(folder))
    spec = json.loads((folder / "config.json").read_text())["causal_nb_pruned"]
    with _no_init():
        hf = (vision_model_class() if is_vision(cfg) else AutoModelForCausalLM).from_config(cfg, dtype=dtype)
    apply_structure(hf, spec)
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    # save_pretrained writes some families' checkpoint names, which from_pretrained renames back
    for old, new in _SAVED_NAMES.get(getattr(cfg, "model_type", ""), {}).items():
        state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
    if is_vision(cfg):
        state = {saved_vit_key(k): v for k, v in state.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    tied = bool(getattr(hf.config, "tie_word_embeddings", False))
    missing = [m for m in missing if not (tied and m.startswith("lm_head."))]  # the embedding, when tied
    if missing or unexpected:
        raise ValueError(f"{folder}: weights do not fit the pruned structure (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    hf.tie_weights()
    return hf.to(dtype).eval()
