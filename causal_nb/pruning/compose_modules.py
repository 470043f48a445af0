"""Composable pruning, step 2: prune one module at a time, save each variant once, compose configurations.

Works on the plain Hugging Face decoder (any layout ``models.hf.hf_arch`` knows) and on the Hugging
Face T5 (``compose_t5``: its three attention kinds and FF linears; the few places that differ
branch on ``is_t5``). Two module kinds:

* ``linear``: an MLP linear layer (``nn.Linear`` or GPT-2's ``Conv1D``), pruned L1-unstructured with
  ``torch.nn.utils.prune.l1_unstructured`` and made permanent (``prune.remove``); its 0/1 weight
  mask is saved with it, so fine-tuning keeps the pruned weights at zero.
* ``attention``: a layer's attention module, pruned head-wise: the heads with the lowest L1 norm of
  their Q/K/V weight rows (a key/value head shared by a group of query heads under GQA counts
  ``1/group`` towards each of them), or the lowest ``score`` (``criterion="causal"``), are removed
  physically with the kit's head slicing (``models.hf.slice_heads``: GQA groups kept even, padded
  heads' output columns zeroed and masked).

A variant is one ``safetensors`` file: the module's tensors, its masks (``mask.<param>``) and
metadata (module, criterion, rate, kept heads, the base model's weight digest), so it rebuilds on
the dense model it came from and only on that one.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..models.hf import attention, hf_arch, quiet_loading, slice_heads
from .compose_scheme import ComposeError
from .compose_t5 import check_t5_criterion, is_t5, t5_head_l1, t5_prunable, t5_sliced, t5_structure

__all__ = ["compose_model", "head_l1_scores", "l1_unstructured", "load_dense", "load_variant", "make_variant",
           "prunable_modules", "save_variant", "weights_fingerprint"]


def load_dense(model: str):
    """The dense base model as a plain float32 Hugging Face causal LM or T5 (eval mode) and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, T5ForConditionalGeneration  # noqa: PLC0415

    from ..models.loading import resolve_source  # noqa: PLC0415

    _, where = resolve_source(model)
    t5 = getattr(AutoConfig.from_pretrained(where), "model_type", None) == "t5"
    with quiet_loading(False):  # no loading bars on stderr (nbval compares it)
        cls = T5ForConditionalGeneration if t5 else AutoModelForCausalLM
        hf = cls.from_pretrained(where, dtype=torch.float32).eval()
    if getattr(hf.config, "causal_nb_pruned", None):
        raise ComposeError(f"{model} is already pruned; compose a family from the dense model")
    if not t5:
        hf_arch(hf)  # refuses layouts the kit cannot prune, by name
    return hf, AutoTokenizer.from_pretrained(where)


def weights_fingerprint(hf: nn.Module) -> str:
    """Digest of a model's weights (names, shapes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(hf.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def prunable_modules(hf: nn.Module) -> dict[str, list[str]]:
    """Names of each decoder layer's attention module and of its other (MLP) linear layers (a T5:
    ``compose_t5.t5_prunable``)."""
    if is_t5(hf):
        return t5_prunable(hf)
    arch, layers = hf_arch(hf)
    names = {id(m): n for n, m in hf.named_modules()}
    out: dict[str, list[str]] = {"attention": [], "linear": []}
    for layer in layers:
        att = attention(arch, layer)
        inside = {id(m) for m in att.modules()}
        out["attention"].append(names[id(att)])
        out["linear"] += [names[id(m)] for m in layer.modules() if _is_linear(m) and id(m) not in inside]
    return out


def l1_unstructured(module: nn.Module, rate: float) -> torch.Tensor:
    """Prune ``module.weight`` L1-unstructured in place (permanently); returns the 0/1 mask."""
    from torch.nn.utils import prune  # noqa: PLC0415

    prune.l1_unstructured(module, "weight", amount=float(rate))
    mask = module.weight_mask.detach().clone()
    prune.remove(module, "weight")
    return mask


def _qkv_rows(arch: str, att: nn.Module, n_heads: int):
    """Per head, the Q weights and the K and V weights of its key/value head, as [rows, d_model]."""
    if arch == "gpt2":
        w = att.c_attn.weight.T  # Conv1D computes x @ W: the output features are W's columns
        d = w.shape[0] // 3
        q, k, v = w[:d], w[d:2 * d], w[2 * d:]
    elif all(hasattr(att, p) for p in ("q_proj", "k_proj", "v_proj")):
        q, k, v = att.q_proj.weight, att.k_proj.weight, att.v_proj.weight
    else:
        raise ComposeError(f"head-wise L1 pruning of a {arch} attention (fused query_key_value) is not implemented; "
                           "use criterion 'causal' for its attention modules")
    dh = q.shape[0] // n_heads
    n_kv = k.shape[0] // dh
    return q.reshape(n_heads, dh, -1), k.reshape(n_kv, dh, -1), v.reshape(n_kv, dh, -1)


@torch.no_grad()
def head_l1_scores(hf: nn.Module, layer: int) -> torch.Tensor:
    """Each query head's L1 norm of its Q rows plus its key/value head's K and V rows over the
    group size (the query heads sharing them under GQA). Shape [head]."""
    arch, layers = hf_arch(hf)
    n_heads = hf.config.num_attention_heads
    q, k, v = _qkv_rows(arch, attention(arch, layers[layer]), n_heads)
    group = n_heads // k.shape[0]
    kv = (k.abs().sum((1, 2)) + v.abs().sum((1, 2))) / group
    return q.abs().sum((1, 2)) + kv.repeat_interleave(group)


def heads_to_remove(scores: torch.Tensor, rate: float) -> list[int]:
    """The ``round(rate * n)`` lowest-scoring heads (ties by index), at least one head kept."""
    n = len(scores)
    k = min(round(rate * n), n - 1)
    order = sorted(range(n), key=lambda h: (float(scores[h]), h))
    return sorted(order[:k])


def _layer_of(hf: nn.Module, module: str) -> int:
    arch, layers = hf_arch(hf)
    for i, layer in enumerate(layers):
        if attention(arch, layer) is hf.get_submodule(module):
            return i
    raise ComposeError(f"{module!r} is not an attention module of this model")


def _get(hf: nn.Module, module: str) -> nn.Module:
    try:
        return hf.get_submodule(module)
    except AttributeError:
        mods = prunable_modules(hf)
        raise ComposeError(f"the model has no module {module!r} (prunable: {mods['attention'][:2]} ..., "
                           f"{mods['linear'][:3]} ...)") from None


def _n_heads(hf: nn.Module) -> int:
    return hf.config.num_heads if is_t5(hf) else hf.config.num_attention_heads


def _sliced_attention(hf: nn.Module, module: str, keep: list[int]) -> tuple[nn.Module, dict]:
    if is_t5(hf):
        return t5_sliced(hf, module, keep)
    layer = _layer_of(hf, module)
    arch, layers = hf_arch(hf)
    block = copy.deepcopy(layers[layer])
    info = slice_heads(arch, block, keep, hf.config)
    return attention(arch, block), info


def make_variant(hf: nn.Module, variant: dict, head_scores=None) -> tuple[nn.Module, dict[str, torch.Tensor], dict]:
    """A pruned copy of one module of the dense ``hf``.

    Args:
        variant: a scheme entry (``module``, ``kind``, ``criterion``, ``rate``).
        head_scores: for ``criterion="causal"``: a ``score`` table of heads (layer, head, score).

    Returns:
        ``(module, masks, meta)``: masks map parameter names to 0/1 tensors to keep zero.
    """
    src = _get(hf, variant["module"])
    rate, meta = float(variant["rate"]), {"keep": None}
    if variant["kind"] == "linear":
        if not _is_linear(src):
            raise ComposeError(f"{variant['module']} is not a linear layer")
        mod = copy.deepcopy(src)
        return mod, {"weight": l1_unstructured(mod, rate)}, meta
    if variant["criterion"] == "causal":
        check_t5_criterion(hf, "causal")
        layer = _layer_of(hf, variant["module"])
        if head_scores is None:
            raise ComposeError("criterion 'causal' needs head scores (score(model, ..., unit='head'))")
        t = head_scores[head_scores.layer == layer].sort_values("head")
        scores = torch.tensor(t.score.to_numpy(dtype=float))
    elif is_t5(hf):
        scores = t5_head_l1(hf, variant["module"])
    else:
        scores = head_l1_scores(hf, _layer_of(hf, variant["module"]))
    removed = heads_to_remove(scores, rate)
    keep = [h for h in range(_n_heads(hf)) if h not in removed]
    mod, info = _sliced_attention(hf, variant["module"], keep)
    masks = {}
    if info.get("zeroed_heads"):  # GQA padding: those heads' output columns stay zero
        o = mod.o_proj.weight
        dh = o.shape[1] // len(info["q_heads"])
        m = torch.ones_like(o)
        for h in info["zeroed_heads"]:
            j = info["q_heads"].index(h)
            m[:, j * dh:(j + 1) * dh] = 0
        masks["o_proj.weight"] = m
    meta.update({"keep": keep, "removed": removed, "structure": info})
    return mod, masks, meta


def save_variant(path, module: nn.Module, masks: dict, meta: dict, variant: dict, base: str, finetuned: bool) -> Path:
    """One variant file: the module's tensors, ``mask.<param>`` masks and the metadata to rebuild it."""
    from safetensors.torch import save_file  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    tensors.update({f"mask.{k}": v.contiguous() for k, v in masks.items()})
    md = {"variant": json.dumps({k: variant[k] for k in ("key", "module", "kind", "criterion", "rate")}),
          "meta": json.dumps(meta), "base_fingerprint": base, "finetuned": str(int(finetuned))}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=md)
    tmp.replace(path)  # atomic: a killed run leaves no half-written variant behind
    return path


def load_variant(path, hf: nn.Module, base: str) -> tuple[nn.Module, dict[str, torch.Tensor], dict]:
    """A saved variant rebuilt on the dense ``hf`` (whose weight digest must be ``base``)."""
    from safetensors import safe_open  # noqa: PLC0415

    with safe_open(str(path), "pt") as f:
        md = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    if md.get("base_fingerprint") != base:
        raise ComposeError(f"{path} was pruned from another base model (weights {md.get('base_fingerprint')}, this "
                           f"scheme's {base}); prune and fine-tune the variants again for this model")
    variant, meta = json.loads(md["variant"]), json.loads(md["meta"])
    src = _get(hf, variant["module"])
    if variant["kind"] == "linear":
        mod = copy.deepcopy(src)
    else:
        mod, _ = _sliced_attention(hf, variant["module"], meta["keep"])
    masks = {k[5:]: v for k, v in tensors.items() if k.startswith("mask.")}
    mod.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("mask.")})
    meta["variant"], meta["finetuned"] = variant, md["finetuned"] == "1"
    return mod, masks, meta


def compose_model(hf: nn.Module, scheme: dict, k: int, folder) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Configuration ``k`` (1-based) of the scheme: a copy of the dense ``hf`` whose modules are
    replaced by the variant files in ``folder``.

    Returns:
        ``(model, masks)``: masks by full parameter name (for keeping pruned weights at zero).
        ``model.config.causal_nb_pruned`` describes the sliced heads, so a saved copy loads with
        ``load_model``.
    """
    n = len(scheme["configurations"])
    if not 1 <= int(k) <= n:
        raise ComposeError(f"configuration {k} does not exist: the scheme has configurations 1..{n}")
    out = copy.deepcopy(hf)
    if is_t5(out):
        return _compose_t5(out, scheme, k, folder)
    arch, layers = hf_arch(out)
    spec_layers = [{"removed_heads": [], "removed_neurons": [], "fill": "zero", "q_heads": None, "kv_heads": None,
                    "kv_groups": None, "neurons": None} for _ in layers]
    masks: dict[str, torch.Tensor] = {}
    for module, key in scheme["configurations"][str(int(k))].items():
        mod, mk, meta = load_variant(_variant_path(folder, key), hf, scheme["base_fingerprint"])
        parent, _, attr = module.rpartition(".")
        setattr(out.get_submodule(parent), attr, mod)
        masks.update({f"{module}.{p}": m for p, m in mk.items()})
        if meta["keep"] is not None:
            i = _layer_of(out, module)
            s = meta["structure"]
            spec_layers[i].update(removed_heads=meta["removed"], q_heads=s["q_heads"], kv_heads=s["kv_heads"],
                                  kv_groups=s["kv_groups"])
    out.config.causal_nb_pruned = {"arch": arch, "physical": True, "removed_blocks": [], "layers": spec_layers}
    return out, masks


def _variant_path(folder, key: str) -> Path:
    path = Path(folder) / f"{key}.safetensors"
    if not path.exists():
        raise ComposeError(f"variant {key} is missing from {folder}: run the `compose prune` (and "
                           "`compose finetune-modules`) stage first")
    return path


def _compose_t5(out: nn.Module, scheme: dict, k: int, folder) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """``compose_model`` on a T5 copy: the kit's T5 slicing first (heads and position biases, one
    spec for the whole model), then every module's weights from its variant file."""
    loaded = {m: load_variant(_variant_path(folder, key), out, scheme["base_fingerprint"])
              for m, key in scheme["configurations"][str(int(k))].items()}
    t5_structure(out, {m: meta["removed"] for m, (_, _, meta) in loaded.items() if meta["keep"] is not None})
    masks: dict[str, torch.Tensor] = {}
    for module, (mod, mk, _) in loaded.items():
        out.get_submodule(module).load_state_dict(mod.state_dict())
        masks.update({f"{module}.{p}": m for p, m in mk.items()})
    return out, masks
