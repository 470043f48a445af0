"""Boot a TransformerBridge on a Hugging Face model whose layers have different head counts.

TransformerLens's GPT-2 bridge splits each layer's fused QKV projection (``c_attn``) and
reshapes the attention by the config's head count, shared by every layer, so it cannot boot
a GPT-2 whose heads were sliced per layer. ``boot_bridge`` boots it on full-width stand-ins
for the sliced attention modules and then refits each of those layers: the sliced module
goes back in, the layer's attention bridge gets its own config copy with that layer's head
count (as TransformerLens already does for Llama-style blocks, whose configs are cloned
per block), and its Q/K/V split and hook reshapes are rebuilt from it. Llama-style families
need none of this: their bridge reads head counts from the projection widths.
"""

from __future__ import annotations

import copy

from torch import nn

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
    with quiet():
        bridge = TransformerBridge.boot_transformers(source, hf_model=hf, tokenizer=tokenizer,
                                                     device=str(next(hf.parameters()).device),
                                                     dtype=next(hf.parameters()).dtype)
    for i, att in sliced.items():
        _refit_gpt2_attention(bridge, i, att)
    if layers is None and _llama_layers(hf) is not None:
        for i in range(len(_llama_layers(hf))):
            _fit_llama_attention(bridge, hf, i)
    fit_mlp_width(bridge)
    return bridge.eval()


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


def _refit_gpt2_attention(bridge, i: int, att: nn.Module) -> None:
    """Put the sliced GPT-2 attention ``att`` into layer ``i`` of ``bridge``."""
    ab = bridge.blocks[i].attn
    stand_in = ab.original_component
    # the stand-in's c_attn is wrapped by the bridge's qkv LinearBridge: rewrap the sliced one
    qkv = stand_in.c_attn
    qkv.set_original_component(att.c_attn)
    att.c_attn = qkv
    ab.config = _layer_config(ab, att.c_proj.weight.shape[0] // att.head_dim, None)
    # blocks share the template's bound split function, which reads the template's config
    split = getattr(ab.split_qkv_matrix, "__func__", None)
    if split is not None and split.__name__ == "_default_split_qkv_matrix":
        ab.split_qkv_matrix = split.__get__(ab)
    ab.set_original_component(att)  # re-splits Q/K/V from the sliced c_attn, rewires o to c_proj
    ab.qkv_conversion_rule = ab._create_qkv_conversion_rule()
    for lin in (ab.q, ab.k, ab.v):
        lin.hook_out.hook_conversion = ab.qkv_conversion_rule
    ab._hf_forward_wrapped = False
    ab.setup_hook_compatibility()
