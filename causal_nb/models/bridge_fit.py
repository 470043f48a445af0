"""Boot a TransformerBridge on a Hugging Face model whose layers have different head counts.

TransformerLens's GPT-2 and GPT-NeoX bridges split each layer's fused QKV projection
(``c_attn``, ``query_key_value``) and reshape the attention by the config's head count,
shared by every layer, so they cannot boot a model whose heads were sliced per layer. ``boot_bridge`` boots it on full-width stand-ins
for the sliced attention modules and then refits each of those layers: the sliced module
goes back in, the layer's attention bridge gets its own config copy with that layer's head
count (as TransformerLens already does for Llama-style blocks, whose configs are cloned
per block), and its Q/K/V split and hook reshapes are rebuilt from it. Llama-style families
need none of this: their bridge reads head counts from the projection widths.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

from torch import nn

from .hf import keep_alibi_heads
from .hf_vision import is_vision, vit_layers

__all__ = ["boot_bridge", "fit_mlp_width", "layer_heads"]


def _gpt2_layers(hf) -> nn.ModuleList | None:
    t = getattr(hf, "transformer", None)
    return t.h if t is not None and hasattr(t, "h") and hasattr(t.h[0], "attn") and \
        hasattr(t.h[0].attn, "c_attn") else None


def _orig(m: nn.Module) -> nn.Module:
    """The Hugging Face module under a bridge component (or ``m`` itself)."""
    return m._modules.get("_original_component") or m


def layer_heads(hf, i: int) -> int:
    """Query heads of layer ``i`` of a (possibly bridge-wrapped) GPT-2 or Llama-style model."""
    layers = _gpt2_layers(hf)
    if layers is not None:
        att = _orig(_orig(layers[i]).attn)
        return _orig(att.c_proj).weight.shape[0] // att.head_dim
    att = _orig(_orig(_llama_layers(hf)[i]).self_attn)
    return _orig(att.q_proj).weight.shape[0] // att.head_dim


def boot_bridge(hf, source, tokenizer, quiet):
    """``TransformerBridge.boot_transformers`` on ``hf``, whatever its per-layer head counts.

    Args:
        hf: a plain Hugging Face causal LM (possibly sliced per layer).
        source: the model's name or folder, as ``boot_transformers`` takes it.
        tokenizer: its tokenizer.
        quiet: a context manager factory that silences loading output.
    """
    import torch  # noqa: PLC0415
    from transformer_lens.model_bridge import TransformerBridge  # noqa: PLC0415

    layers = _gpt2_layers(hf)
    n_full = hf.config.num_attention_heads if layers is None else hf.config.n_head
    sliced = {}
    if layers is not None:
        from transformers.models.gpt2.modeling_gpt2 import GPT2Attention  # noqa: PLC0415

        p = next(hf.parameters())
        for i, layer in enumerate(layers):
            if layer_heads(hf, i) != n_full:
                sliced[i] = layer.attn
                with torch.device(p.device):
                    layer.attn = GPT2Attention(hf.config, layer_idx=i).to(p.dtype)
    fused = _fused_layers(hf)
    if fused is not None:
        layers_, name, make = fused
        p = next(hf.parameters())
        for i, layer in enumerate(layers_):
            if getattr(layer, name).dense.in_features != hf.config.hidden_size:
                sliced[i] = getattr(layer, name)
                with torch.device(p.device):
                    setattr(layer, name, make(hf.config, i).to(p.dtype))
    with quiet():
        bridge = TransformerBridge.boot_transformers(source, hf_model=hf, tokenizer=tokenizer,
                                                     device=str(next(hf.parameters()).device),
                                                     dtype=next(hf.parameters()).dtype)
    for i, att in sliced.items():
        _refit_joint_qkv_attention(bridge, i, att, "c_attn" if layers is not None else "query_key_value")
    if layers is None and _llama_layers(hf) is not None:
        for i in range(len(_llama_layers(hf))):
            _fit_llama_attention(bridge, hf, i)
    elif is_vision(hf):
        for i, layer in enumerate(vit_layers(hf)):
            _fit_vit_attention(bridge, _orig(_orig(layer).attention), i)
    fit_mlp_width(bridge)
    return bridge.eval()


def _fused_layers(hf):
    """(layers, attention attribute, stand-in factory) for GPT-NeoX and BLOOM, else None."""
    if hasattr(hf, "gpt_neox"):
        from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXAttention  # noqa: PLC0415

        return hf.gpt_neox.layers, "attention", lambda cfg, i: GPTNeoXAttention(cfg, layer_idx=i)
    if getattr(hf.config, "model_type", None) == "bloom":
        from transformers.models.bloom.modeling_bloom import BloomAttention  # noqa: PLC0415

        return hf.transformer.h, "self_attention", lambda cfg, i: BloomAttention(cfg, layer_idx=i)
    return None


def fit_mlp_width(bridge) -> None:
    """Set ``bridge.cfg.d_mlp`` to the dense MLP width of the config: TransformerLens's OPT
    adapter assumes 4 x d_model, which an OPT config's ``ffn_dim`` need not be."""
    ffn = getattr(bridge.original_model.config, "ffn_dim", None)
    if ffn is not None and ffn != bridge.cfg.d_mlp:
        bridge.cfg.d_mlp = int(ffn)


def _llama_layers(hf) -> nn.ModuleList | None:
    """The decoder layers of a Llama-style model (``model.layers``) or OPT (``model.decoder.layers``)."""
    inner = getattr(hf, "model", None)
    if inner is not None and hasattr(inner, "decoder"):
        inner = inner.decoder
    return getattr(inner, "layers", None)


def _layer_config(ab, n_heads: int, n_kv: int | None):
    """A copy of the attention bridge's config with this layer's head counts (the bridge's
    per-head views, e.g. ``blocks[i].attn.W_O``, read them from there)."""
    cfg = copy.copy(ab.config)
    object.__setattr__(cfg, "n_heads", n_heads)
    if getattr(cfg, "n_key_value_heads", None):
        object.__setattr__(cfg, "n_key_value_heads", n_kv or n_heads)
    return cfg


def _fit_llama_attention(bridge, hf, i: int) -> None:
    att = _orig(_orig(_llama_layers(hf)[i]).self_attn)
    n, kv = layer_heads(hf, i), _orig(att.k_proj).weight.shape[0] // att.head_dim
    ab = bridge.blocks[i].attn
    if (n, kv) != (ab.config.n_heads, getattr(ab.config, "n_key_value_heads", None) or ab.config.n_heads):
        ab.config = _layer_config(ab, n, kv)


def _fit_vit_attention(bridge, att: nn.Module, i: int) -> None:
    """A sliced ViT layer's attention bridge gets a config with its own head count (its hooks'
    per-head views read it)."""
    n = _orig(att.q_proj).weight.shape[0] // att.head_dim
    ab = bridge.blocks[i].attn
    if n != ab.config.n_heads:
        ab.config = _layer_config(ab, n, None)


def _refit_joint_qkv_attention(bridge, i: int, att: nn.Module, fused: str) -> None:
    """Put the sliced GPT-2 or GPT-NeoX attention ``att`` (fused QKV projection ``fused``) into
    layer ``i`` of ``bridge``."""
    ab = bridge.blocks[i].attn
    stand_in = ab.original_component
    # the stand-in's fused QKV is wrapped by the bridge's qkv LinearBridge: rewrap the sliced one
    qkv = getattr(stand_in, fused)
    qkv.set_original_component(getattr(att, fused))
    setattr(att, fused, qkv)
    if fused == "c_attn":
        n_heads = att.c_proj.weight.shape[0] // att.head_dim
    else:
        n_heads = att.dense.in_features // (getattr(att, "head_size", None) or att.head_dim)
        # TransformerLens rewires the output projection only for GPT-2's c_proj: rewrap dense too
        o = stand_in.dense
        o.set_original_component(att.dense)
        att.dense = o
    ab.config = _layer_config(ab, n_heads, None)
    # blocks share the template's bound split function, which reads the template's config (GPT-2)
    # or the architecture adapter's (GPT-NeoX: its split reads only ``self.cfg``)
    split = getattr(ab.split_qkv_matrix, "__func__", None)
    if split is not None and split.__name__ == "_default_split_qkv_matrix":
        ab.split_qkv_matrix = split.__get__(ab)
    elif split is not None:
        ab.split_qkv_matrix = split.__get__(SimpleNamespace(cfg=ab.config))
    ab.set_original_component(att)  # re-splits Q/K/V from the sliced c_attn, rewires o to c_proj
    ab.qkv_conversion_rule = ab._create_qkv_conversion_rule()
    for lin in (ab.q, ab.k, ab.v):
        lin.hook_out.hook_conversion = ab.qkv_conversion_rule
    ab._hf_forward_wrapped = False
    ab.setup_hook_compatibility()
    if hasattr(att, "causal_nb_alibi_heads"):  # BLOOM: the bridge's attention takes the ALiBi rows of its heads
        keep_alibi_heads(ab, *att.causal_nb_alibi_heads)
