"""Reverse intervention: which tokens does domain B's activity promote inside domain A's runs?

For each layer, domain-B activity is put into domain-A runs and every vocabulary token's
log-probability (or logit) change is measured, averaged over A's prompts and positions. In
``mode="mean"`` the residual stream (or an attention/MLP output) is shifted by the difference
of the two domains' means at that layer (mean over prompts and positions); in
``mode="paired"`` prompt i of A gets prompt i of B's attention or MLP output, position by
position. Averaging the per-layer changes and ranking gives B's *characteristic token set*
relative to A, saved with the tokenizer's fingerprint so that it is never applied to another
tokenizer's ids.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ..core.checks import strict
from ..core.env import progress_enabled
from ..core.io import save_json
from ..data.prompts import as_prompt_set
from ..engine.common import prepare, scored_batch
from ..engine.replay import capture, run_from

__all__ = ["TokenSet", "TokenSetError", "reverse_intervention", "token_set_path", "tokenizer_fingerprint"]

SITES = {"resid": "blocks.{l}.hook_resid_pre", "attn": "blocks.{l}.hook_attn_out", "mlp": "blocks.{l}.hook_mlp_out"}


class TokenSetError(ValueError):
    """A token set that does not fit the model it is used with."""


def tokenizer_fingerprint(tokenizer_or_model) -> str:
    """A short hash of the tokenizer's vocabulary (token string -> id)."""
    tok = getattr(tokenizer_or_model, "tokenizer", tokenizer_or_model)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


@dataclass
class TokenSet:
    """A ranked set of tokens characteristic of domain B relative to domain A.

    Attributes:
        ids, tokens, scores: the top tokens, best first (score: mean change, nats or logits).
        per_layer_ranks: for each token, its rank (0 = top) at each layer.
        model, tokenizer: the model name and tokenizer fingerprint the ids belong to.
        domains: (A, B); prompt_hashes: sha256 of each prompt set; params: the settings.
    """

    ids: list[int]
    tokens: list[str]
    scores: list[float]
    per_layer_ranks: list[list[int]]
    model: str
    tokenizer: str
    domains: tuple[str, str]
    prompt_hashes: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def to_frame(self) -> pd.DataFrame:
        """One row per token: rank, id, token (repr-escaped), score, per-layer ranks."""
        df = pd.DataFrame({"rank": range(len(self.ids)), "id": self.ids, "token": [repr(t) for t in self.tokens],
                           "score": np.round(self.scores, 4)})
        ranks = np.asarray(self.per_layer_ranks).reshape(len(self.ids), -1)
        for layer in range(ranks.shape[1]):
            df[f"rank_L{layer}"] = ranks[:, layer]
        return df

    def save(self, path: str | Path) -> Path:
        """Write as JSON (atomically)."""
        d = asdict(self)
        d["domains"] = list(self.domains)
        return save_json(d, path)

    @classmethod
    def load(cls, path: str | Path, model=None) -> TokenSet:
        """Read a token set; with ``model``, refuse one built for another tokenizer."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no token set there; build one with reverse_intervention(...).save(path)")
        try:
            d = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenSetError(f"{path} is not a token set: not a JSON file ({e}); token sets are written by "
                                "reverse_intervention(...).save(path)") from None
        need = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [k for k in need if not isinstance(d, dict) or k not in d]
        if missing:
            raise TokenSetError(f"{path} is not a token set: it lacks {missing} (a token set has "
                                f"{[f.name for f in fields(cls)]}); token sets are written by "
                                "reverse_intervention(...).save(path)")
        ts = cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})
        ts.domains = tuple(ts.domains)
        if model is not None:
            fp = tokenizer_fingerprint(model)
            if fp != ts.tokenizer:
                raise TokenSetError(
                    f"{path} was built for model {ts.model!r} with tokenizer {ts.tokenizer}, but this model's tokenizer "
                    f"is {fp}: token ids would mean other tokens. Rebuild it with reverse_intervention(model, ...)."
                )
        return ts


def model_key(name: str) -> str:
    """A model's name as a relative folder: a local path gives its last component; a hub name
    ``org/name`` stays two folders deep."""
    name = str(name)
    if name.startswith(("/", ".", "~")) or Path(name).expanduser().exists():
        return Path(name).expanduser().resolve().name
    return name


@strict
def token_set_path(root: str | Path, model_name: str, a: str, b: str) -> Path:
    """``<root>/<model>/<A>__<B>.json`` (hub names ``org/name`` become two folders)."""
    return Path(root) / model_key(model_name) / f"{a}__{b}.json"


def _masked_mean(act: Tensor, mask: Tensor) -> Tensor:
    w = mask.to(act.dtype).view(*mask.shape, *([1] * (act.dim() - 2)))
    return (act * w).sum((0, 1), keepdim=True) / w.sum((0, 1), keepdim=True)


@strict
@torch.no_grad()
def layer_effects(model, a, b, site: str = "resid", mode: str = "mean", measure: str = "logprob",
                  layers=None, n_tokens: int | None = None, progress: bool | None = None) -> Float[Tensor, "layer vocab"]:
    """Mean change of each token's log-prob (or logit) in A's runs when B's activity is put in at each layer."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; valid: {sorted(SITES)}")
    if mode not in ("mean", "paired"):
        raise ValueError(f"mode must be 'mean' or 'paired', got {mode!r}")
    if measure not in ("prob", "logprob", "logit"):
        raise ValueError(f"measure must be 'prob', 'logprob' or 'logit', got {measure!r}")
    if mode == "paired" and site == "resid":
        raise ValueError("paired patching of the whole residual stream reproduces B's run exactly at every layer; "
                         "use site='attn' or 'mlp', or mode='mean'")
    ab, bb = prepare(model, a, n_tokens), prepare(model, b, n_tokens)
    if mode == "paired" and (len(ab) != len(bb) or not torch.equal(ab.mask, bb.mask)):
        raise ValueError("paired mode needs A and B prompt sets of equal size and token lengths")
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < model.cfg.n_layers]
    if bad or not layers:
        raise ValueError(f"layers= {bad or 'empty'}: the model has layers 0..{model.cfg.n_layers - 1}")
    hooks = [SITES[site].format(l=layer) for layer in layers]
    scored = scored_batch(ab)
    cap_a = capture(model, ab.tokens, hooks, scored.positions)
    cap_b = capture(model, bb.tokens, hooks)

    def norm(lg):
        lg = lg.float()
        if measure == "prob":
            return torch.softmax(lg, -1)
        return torch.log_softmax(lg, -1) if measure == "logprob" else lg

    base = norm(cap_a.logits)
    valid = scored.valid.to(base.dtype)[..., None]
    out = []
    for layer, hook in tqdm(list(zip(layers, hooks)), desc="reverse intervention",
                            disable=not progress_enabled(progress), leave=False):
        if mode == "mean":
            shift = _masked_mean(cap_b.acts[hook], bb.mask) - _masked_mean(cap_a.acts[hook], ab.mask)

            def fn(act, hook, shift=shift):
                return act + shift.to(act.dtype)
        else:
            def fn(act, hook, src=cap_b.acts[hook]):
                return src.to(act.dtype).clone()

        with model.hooks(fwd_hooks=[(hook, fn)]):
            patched = norm(run_from(model, cap_a, layer, 1, scored.positions))
        delta = ((patched - base) * valid).sum((0, 1)) / valid.sum()
        out.append(delta.cpu())
    return torch.stack(out)


@strict
def reverse_intervention(model, a, b, top_k: int = 50, site: str = "resid", mode: str = "mean",
                         measure: str = "logprob", layers=None, n_tokens: int | None = None,
                         model_name: str | None = None, progress: bool | None = None) -> TokenSet:
    """Rank the tokens that domain B's activity promotes in domain A's runs, averaged over layers.

    Args:
        a, b: PromptSets (or lists of strings) of domains A and B.
        top_k: tokens kept.
        site: ``"resid"`` (residual stream entering each block), ``"attn"`` or ``"mlp"`` output.
        mode: ``"mean"`` (shift by the domains' mean difference) or ``"paired"`` (prompt i of B
            into prompt i of A; attention/MLP sites only).
        measure: ``"logprob"`` (default; invariant to logit shifts) or ``"logit"``.

    Returns:
        A ``TokenSet`` (special tokens excluded), with per-layer ranks and provenance.
    """
    pa, pb = as_prompt_set(a), as_prompt_set(b)
    # ad-hoc lists of strings are all domain "custom": only named domains can clash by name
    if tuple(pa.texts) == tuple(pb.texts) or (pa.domain == pb.domain and pa.domain != "custom"):
        same = "the same prompts" if tuple(pa.texts) == tuple(pb.texts) else f"the same domain {pa.domain!r}"
        raise ValueError(f"a and b are {same}: reverse intervention compares two domains (B's activity put into "
                         "A's runs); pass prompt sets of two different domains, e.g. load_prompts('python'), "
                         "load_prompts('cpp')")
    eff = layer_effects(model, pa, pb, site, mode, measure, layers, n_tokens, progress)  # [layer, vocab]
    score = eff.mean(0)
    tok = model.tokenizer
    special = {i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) if i is not None}
    special |= set(getattr(tok, "all_special_ids", []))
    if special:
        score[list(special)] = -float("inf")
    top = torch.argsort(score, descending=True)[:top_k]
    layer_rank = torch.argsort(torch.argsort(eff, dim=1, descending=True), dim=1)  # rank of each token per layer
    name = model_name or getattr(model, "causal_nb_source", {}).get("name", "model")
    return TokenSet(
        ids=top.tolist(),
        tokens=[tok.decode([i]) for i in top.tolist()],
        scores=[round(float(score[i]), 6) for i in top],
        per_layer_ranks=layer_rank[:, top].T.tolist(),
        model=str(name),
        tokenizer=tokenizer_fingerprint(model),
        domains=(pa.domain, pb.domain),
        prompt_hashes={pa.domain: pa.sha256, pb.domain: pb.sha256},
        params={"top_k": top_k, "site": site, "mode": mode, "measure": measure, "n_tokens": n_tokens,
                "layers": layers, "n_prompts": [len(pa), len(pb)]},
    )
