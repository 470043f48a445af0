"""Independent references for the unit and integration tests: TransformerLens hooks, one full forward per
intervention, metrics computed by hand with ``torch.log_softmax``.

Nothing here calls causal_nb's engine, metrics, patching or tokenisation code, so a test that
compares the kit with these helpers compares it with an independent computation.
"""

from __future__ import annotations

import torch


def plain_tokens(model, texts, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BOS + each text's tokens (TransformerLens's ``to_tokens``), cut to ``n`` and right-padded.

    Returns:
        (tokens [batch, pos], mask [batch, pos], True at real tokens).
    """
    rows = [model.to_tokens(t, prepend_bos=True)[0, :n] for t in texts]
    pos = max(len(r) for r in rows)
    pad = model.tokenizer.pad_token_id or 0
    tokens = torch.full((len(rows), pos), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), pos, dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, : len(r)], mask[i, : len(r)] = r, True
    dev = next(model.parameters()).device
    return tokens.to(dev), mask.to(dev)


def hand_logprob(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per prompt: mean over positions with a real next token of log p(next token), float64."""
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tokens[:, 1:, None])[..., 0]
    m = mask[:, 1:].to(lp.dtype)
    return ((lp * m).sum(1) / m.sum(1)).double()


def replace(index: tuple, source: torch.Tensor):
    """A forward hook setting ``act[:, :, *index]`` to ``source``'s values (any broadcastable shape)."""
    def fn(act, hook):
        act = act.clone()
        sl = (slice(None), slice(None), *index)
        act[sl] = source.to(act.dtype).expand_as(act)[sl]
        return act

    return fn


@torch.no_grad()
def hook_loop(model, tokens: torch.Tensor, interventions, metric) -> torch.Tensor:
    """One full forward per intervention.

    Args:
        interventions: a list; each item is a list of ``(hook name, index, source)`` replaced
            together in that forward.
        metric: ``logits -> [batch]``.

    Returns:
        [intervention, batch] float64.
    """
    out = []
    for edits in interventions:
        logits = model.run_with_hooks(tokens, fwd_hooks=[(h, replace(idx, src)) for h, idx, src in edits])
        out.append(metric(logits).double().cpu())
    return torch.stack(out)


def head_edits(model, source_cache, layers=None) -> list:
    """One intervention per head (layer-major): its ``hook_z`` slice from ``source_cache``."""
    layers = range(model.cfg.n_layers) if layers is None else layers
    return [[(f"blocks.{la}.attn.hook_z", (h,), source_cache[f"blocks.{la}.attn.hook_z"])]
            for la in layers for h in range(model.cfg.n_heads)]


def plain_bert_means(bert_model, enc) -> dict[tuple[int, str], torch.Tensor]:
    """A plain Hugging Face ``BertModel``'s inputs to each layer's attention output dense (the
    heads' concatenated z) and MLP output dense (the neurons), averaged over real tokens:
    ``(layer, "z" | "post") -> [width]``."""
    got, handles = {}, []
    real = enc["attention_mask"].bool()
    for i, layer in enumerate(bert_model.encoder.layer):
        for name, lin in (("z", layer.attention.output.dense), ("post", layer.output.dense)):
            def keep(mod, args, key=(i, name)):
                got[key] = args[0][real].double().mean(0)
            handles.append(lin.register_forward_pre_hook(keep))
    try:
        with torch.no_grad():
            bert_model(**enc)
    finally:
        for h in handles:
            h.remove()
    return got


def plain_bert_cosines(bert_model, enc, heads=None, neurons=None, blocks=(), means=None) -> tuple:
    """Pair cosines (rows 2i, 2i + 1) and L2-normalised mean-pooled embeddings of a plain
    ``BertModel`` with units removed by hand: the heads' slices of the attention output dense's
    input and the neurons' entries of the MLP output dense's input set to zero (or to
    ``means[(layer, "z" | "post")]``), and each block's two output denses returning zero (the
    sublayers add nothing before their add-and-norm)."""
    heads, neurons, means = heads or {}, neurons or {}, means or {}
    dh = bert_model.config.hidden_size // bert_model.config.num_attention_heads
    handles = []

    def pre(idx, fill):
        def fn(mod, args):
            x = args[0].clone()
            x[..., idx] = 0 if fill is None else fill[idx].to(x.dtype)
            return (x,)
        return fn

    for i, layer in enumerate(bert_model.encoder.layer):
        if i in blocks:
            for lin in (layer.attention.output.dense, layer.output.dense):
                handles.append(lin.register_forward_hook(lambda mod, args, out: torch.zeros_like(out)))
            continue
        cols = [h * dh + j for h in heads.get(i, []) for j in range(dh)]
        if cols:
            handles.append(layer.attention.output.dense.register_forward_pre_hook(pre(cols, means.get((i, "z")))))
        if neurons.get(i):
            handles.append(layer.output.dense.register_forward_pre_hook(pre(list(neurons[i]), means.get((i, "post")))))
    try:
        with torch.no_grad():
            h = bert_model(**enc).last_hidden_state
    finally:
        for hd in handles:
            hd.remove()
    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    return (v[0::2] * v[1::2]).sum(-1).double(), v


def bridge_pair_cosines(model, enc, hooks=()) -> tuple:
    """Pair cosines (rows 2i, 2i + 1) and L2-normalised embeddings of a bridge's full forward with
    ``hooks``: its last block's output mean-pooled by hand over the real tokens (no kit pooling)."""
    got = {}

    def keep(x, hook):
        got["h"] = x
        return x

    with torch.no_grad():
        model.run_with_hooks(enc["input_ids"], attention_mask=enc["attention_mask"],
                             fwd_hooks=[*hooks, (f"blocks.{model.cfg.n_layers - 1}.hook_out", keep)])
    m = enc["attention_mask"].unsqueeze(-1).float()
    v = torch.nn.functional.normalize((got["h"].float() * m).sum(1) / m.sum(1), dim=-1)
    return (v[0::2] * v[1::2]).sum(-1).double(), v
