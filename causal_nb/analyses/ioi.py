"""Indirect object identification (Wang et al. 2022): prompts, logit difference, head patching.

"When Mary and John went to the store, John gave a drink to" -> " Mary". The indirect object
(IO, Mary) appears once, the subject (S, John) twice (S1, S2); END is the last token. The
corruption replaces S2 by a third name C ("ABC"), which removes the duplicated-name cue the
circuit uses while keeping every position and length. Each template is filled with both name
orders (ABBA: IO first; BABA: S first) so "the first name" is not the answer.

Head patching here is *noising*: each head's output in the corrupted (ABC) run is written into
the clean (ABB) run, at all positions, at S2 only or at END only, and the metric is the logit
difference IO - S at END. This is the direction of Wang et al.'s path patching (ABC into ABB):
a head the circuit needs lowers the logit difference when noised (negative effect). The engine
patches a head's output into everything downstream; patching it only into the queries/keys/
values of chosen later heads (path patching proper) is not available, so the position of the
patch (S2 vs END) is the path-level evidence given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..data.prompts import TokenBatch, as_prompt_set
from ..engine.answers import answer_batch, last_positions
from ..engine.metrics import answer_token_diff
from ..engine.patching import patch
from ..engine.replay import scored_run
from .induction import head_pattern_stats

__all__ = ["IOI_NAMES", "IOI_TEMPLATES", "IOIPrompts", "head_attention", "head_roles", "ioi_head_patching",
           "ioi_logit_diff", "ioi_prompts", "patching_summary"]

# Wang et al. 2022's ABBA templates (places and objects fixed so every prompt of a template has
# the same token length; {A} and {B} are the first two names, {S} the repeated subject).
IOI_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the store, {S} gave a drink to",
    "Then, {A} and {B} went to the park. {S} gave a ball to",
    "When {A} and {B} got a snack at the cafe, {S} decided to give it to",
    "While {A} and {B} were working at the school, {S} gave a book to",
    "After {A} and {B} went to the hospital, {S} gave a flower to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "Friends {A} and {B} found a ring at the house. {S} gave it to",
    "The restaurant {A} and {B} went to had a cake. {S} gave it to",
)

IOI_NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Alice", "Bob", "Sarah", "Michael", "Anna", "David", "Emma", "Lisa",
    "Kevin", "Paul", "Daniel", "Laura", "Peter", "Rachel", "Mark", "Jessica",
)


@dataclass
class IOIPrompts:
    """Clean (ABB) and corrupted (ABC) IOI prompts, paired by index.

    Attributes:
        clean, corrupted: token batches (BOS first, right-padded to the longest template).
        answers: [n, 2] token ids (IO, S): the metric is logit(IO) - logit(S) at END.
        positions: one row per prompt: ``template``, ``order`` (ABBA/BABA), ``io``, ``s1``,
            ``s2``, ``end`` token positions, the names and both texts.
    """

    clean: TokenBatch
    corrupted: TokenBatch
    answers: torch.Tensor
    positions: pd.DataFrame

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def templates(self) -> list[int]:
        return sorted(self.positions["template"].unique().tolist())

    def subset(self, rows) -> IOIPrompts:
        """The prompts at ``rows`` (indices), cut to their longest real length."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        n = int(self.clean.mask[idx].sum(-1).max())

        def cut(tb):
            return TokenBatch(tb.tokens[idx, :n], tb.mask[idx, :n], tuple(tb.ids[i] for i in idx.tolist()))

        return IOIPrompts(cut(self.clean), cut(self.corrupted), self.answers[idx],
                          self.positions.iloc[idx.tolist()].reset_index(drop=True))

    def template(self, t: int) -> IOIPrompts:
        """The prompts of template ``t`` (equal length: positions align across them)."""
        rows = np.flatnonzero(self.positions["template"].to_numpy() == t)
        if len(rows) == 0:
            raise ValueError(f"no prompts of template {t}; templates present: {self.templates}")
        return self.subset(rows)


def _single_token(tok, name: str) -> int:
    ids = tok(" " + name, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tok.convert_ids_to_tokens(ids)
        raise ValueError(f"IOI name {name!r} is not a single token for this tokenizer: ' {name}' -> {pieces}; "
                         "use names that tokenise to one token with a leading space")
    return ids[0]


def ioi_prompts(model, n: int = 16, templates=None, names=None, seed: int = 0) -> IOIPrompts:
    """Build ``n`` clean/corrupted IOI prompt pairs, spread evenly over the templates.

    Args:
        model: a bridge from ``load_model`` (or a tokenizer).
        n: number of prompt pairs (template ``i % n_templates`` for prompt i; the name order
            alternates ABBA/BABA within each template and between neighbouring templates).
        templates: format strings with ``{A}``, ``{B}`` and ``{S}`` (default ``IOI_TEMPLATES``).
        names: candidate names, each a single token with a leading space (default ``IOI_NAMES``).
        seed: draws the names.

    Raises:
        ValueError: a name that is not one token, fewer than 3 distinct names, a template
            without its fields, or a clean/corrupted pair of different token lengths.
    """
    tok = getattr(model, "tokenizer", model)
    templates = tuple(IOI_TEMPLATES if templates is None else templates)
    names = tuple(dict.fromkeys(IOI_NAMES if names is None else names))
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not templates:
        raise ValueError("templates= is empty")
    for t in templates:
        if not all(f"{{{f}}}" in t for f in "ABS"):
            raise ValueError(f"IOI template {t!r} needs the fields {{A}}, {{B}} and {{S}}")
    if len(names) < 3:
        raise ValueError(f"IOI prompts need at least 3 distinct names (IO, S and the corrupting C), got {len(names)}")
    ids = {nm: _single_token(tok, nm) for nm in names}
    rng = np.random.default_rng(seed)
    rows, clean_texts, corr_texts = [], [], []
    for i in range(n):
        t = i % len(templates)
        io, s, c = (names[j] for j in rng.choice(len(names), 3, replace=False))
        # alternate the order within each template and between neighbouring templates
        order = "ABBA" if (i + i // len(templates)) % 2 == 0 else "BABA"
        a, b = (io, s) if order == "ABBA" else (s, io)
        clean_texts.append(templates[t].format(A=a, B=b, S=s))
        corr_texts.append(templates[t].format(A=a, B=b, S=c))
        rows.append({"template": t, "order": order, "io_name": io, "s_name": s, "c_name": c})
    ps_c, ps_x = as_prompt_set(clean_texts), as_prompt_set(corr_texts)
    lens_c = [len(tok(x, add_special_tokens=False)["input_ids"]) for x in clean_texts]
    lens_x = [len(tok(x, add_special_tokens=False)["input_ids"]) for x in corr_texts]
    for i, (lc, lx) in enumerate(zip(lens_c, lens_x)):
        if lc != lx:
            raise ValueError(f"IOI prompt {i}: clean {clean_texts[i]!r} has {lc} tokens but corrupted "
                             f"{corr_texts[i]!r} has {lx}, so positions don't align; pick names and templates whose "
                             "names stay single tokens in context")
    n_tok = max(lens_c) + 1  # + BOS
    clean, corr = ps_c.tokenize(tok, n_tok), ps_x.tokenize(tok, n_tok)
    end = last_positions(clean)
    for i, r in enumerate(rows):
        toks = clean.tokens[i].tolist()
        found = {k: [p for p, x in enumerate(toks[: int(end[i]) + 1]) if x == ids[r[k]]] for k in ("io_name", "s_name")}
        if len(found["io_name"]) != 1 or len(found["s_name"]) != 2:
            raise ValueError(f"IOI prompt {i} {clean_texts[i]!r}: expected the IO name once and the S name twice as "
                             f"tokens, found {len(found['io_name'])} and {len(found['s_name'])} (a name merged with "
                             "its neighbour, or a template that names someone else); change the template")
        r.update(io=found["io_name"][0], s1=found["s_name"][0], s2=found["s_name"][1], end=int(end[i]),
                 clean=clean_texts[i], corrupted=corr_texts[i])
        if corr.tokens[i, r["s2"]] != ids[r["c_name"]]:
            raise ValueError(f"IOI prompt {i}: the corrupted prompt {corr_texts[i]!r} doesn't hold C at S2")
    answers = torch.tensor([[ids[r["io_name"]], ids[r["s_name"]]] for r in rows])
    ids_ = tuple(f"ioi{i}_t{r['template']}" for i, r in enumerate(rows))
    return IOIPrompts(TokenBatch(clean.tokens, clean.mask, ids_), TokenBatch(corr.tokens, corr.mask, ids_), answers,
                      pd.DataFrame(rows))


@torch.no_grad()
def ioi_logit_diff(model, ioi: IOIPrompts, corrupted: bool = False) -> pd.DataFrame:
    """Per prompt: logit(IO) - logit(S) at END of the full model (clean or corrupted prompts)."""
    dev = next(model.parameters()).device
    tb = (ioi.corrupted if corrupted else ioi.clean).to(dev)
    scored = answer_batch(tb, ioi.answers, model.cfg.d_vocab)
    _, vals = scored_run(model, tb.tokens, [], scored, answer_token_diff)
    out = ioi.positions[["template", "order", "io_name", "s_name"]].copy()
    out["logit_diff"] = vals.double().numpy()
    return out


SITES = ("all", "S2", "END")


def ioi_head_patching(model, ioi: IOIPrompts, sites=SITES, method: str = "exact", layers=None,
                      progress: bool | None = None, batch_size: int | None = None) -> pd.DataFrame:
    """Noise each head (corrupted ABC output into the clean ABB run), per template and site.

    Args:
        sites: where the head's output is patched: ``"all"`` positions, ``"S2"`` or ``"END"``.
        method: ``patch``'s method (``"exact"``; ``"attribution"`` is a first-order estimate,
            one forward and backward per template instead of one replay per head).
        layers: only these layers' heads (default all).

    Returns:
        One row per template, site, layer and head: ``value`` (mean patched logit diff over
        the template's prompts), ``clean``/``corrupted`` baselines and ``effect`` = value -
        clean (negative: the head carries the clean behaviour there).
    """
    bad = [s for s in sites if s not in SITES]
    if bad or not sites:
        raise ValueError(f"sites= {bad or 'empty'}: valid sites are {SITES}")
    frames = []
    for t in ioi.templates:
        sub = ioi.template(t)
        pos = {"S2": int(sub.positions["s2"].iloc[0]), "END": int(sub.positions["end"].iloc[0])}
        at = [s for s in sites if s != "all"]
        runs = []
        if "all" in sites:
            runs.append(("all", None, False))
        if at:
            runs.append(("pos", [pos[s] for s in at], True))
        for kind, positions, per_pos in runs:
            kw = {"batch_size": batch_size} if method == "exact" else {}
            df = patch(model, sub.clean, sub.corrupted, unit="head", metric="answer_logit_diff", method=method,
                       direction="noise", positions=positions, per_position=per_pos, answers=sub.answers,
                       layers=layers, progress=progress, **kw)
            df["site"] = "all" if kind == "all" else df["pos"].map({v: k for k, v in pos.items()})
            df = df.drop(columns=[c for c in ("pos",) if c in df.columns])
            df["template"], df["clean"], df["corrupted"] = t, df.attrs["clean"], df.attrs["corrupted"]
            df.attrs = {}  # per-prompt tables differ per template; concat compares attrs
            frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out["effect"] = out["value"] - out["clean"]
    out.attrs.update(method=method, direction="noise", metric="answer_logit_diff")
    return out[["template", "site", "layer", "head", "value", "clean", "corrupted", "effect"]]


def patching_summary(per_template: pd.DataFrame, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean effect per site and head over templates, with a percentile bootstrap CI over templates.

    All heads are resampled in one vectorised ``scipy.stats.bootstrap`` call (the same template
    draws for every head; each head's interval is the usual percentile interval of its mean).
    ``effect_frac`` divides by the mean clean - corrupted gap (-1: the head alone brings the
    logit difference down to the corrupted run's).
    """
    from scipy import stats as st  # noqa: PLC0415

    gap = (per_template.groupby("template")["clean"].first() - per_template.groupby("template")["corrupted"].first())
    wide = per_template.pivot_table(index=["site", "layer", "head"], columns="template", values="effect")
    mat = wide.to_numpy()
    out = wide.index.to_frame(index=False)
    out["effect"] = np.nanmean(mat, axis=1)
    if mat.shape[1] >= 2 and np.isfinite(mat).all():
        res = st.bootstrap((mat,), np.mean, axis=-1, vectorized=True, n_resamples=n_boot, confidence_level=level,
                           method="percentile", random_state=np.random.default_rng(seed))
        out["ci_low"], out["ci_high"] = res.confidence_interval.low, res.confidence_interval.high
    else:  # one template (or missing values): no interval
        out["ci_low"] = out["ci_high"] = np.nan
    out["effect_frac"] = out["effect"] / float(gap.mean())
    out["n_templates"] = np.isfinite(mat).sum(1)
    return out


def head_attention(model, ioi: IOIPrompts) -> pd.DataFrame:
    """Mean attention per head (clean prompts): END -> IO, S1, S2; S2 -> S1 and S1 + 1.

    Read from TransformerLens's ``attn.hook_pattern`` ([batch, head, query, key]).
    """
    dev = next(model.parameters()).device
    tokens = ioi.clean.tokens.to(dev)
    p = ioi.positions
    b = torch.arange(len(p), device=dev)
    q_end, q_s2 = (torch.tensor(p[c].tolist(), device=dev) for c in ("end", "s2"))
    keys = {k: torch.tensor(p[k].tolist(), device=dev) for k in ("io", "s1", "s2")}
    pairs = {"end_to_io": (q_end, keys["io"]), "end_to_s1": (q_end, keys["s1"]), "end_to_s2": (q_end, keys["s2"]),
             "s2_to_s1": (q_s2, keys["s1"]), "s2_to_s1_next": (q_s2, keys["s1"] + 1)}

    def stats(pat):  # pat[b, :, q, k] is [prompt, head]
        return {k: pat[b, :, q, kk].mean(0) for k, (q, kk) in pairs.items()}

    return head_pattern_stats(model, tokens, stats)


def head_roles(summary: pd.DataFrame, attention: pd.DataFrame, top: int = 10,
               min_attention: float = 0.1) -> pd.DataFrame:
    """The ``top`` heads by |effect| at S2 or END, with a role read from the data.

    Rules (a head's site is the one of S2/END where its |effect| is larger; the attention
    named must be at least ``min_attention``):

    - END, negative effect, attends END -> IO more than to S1 and S2: ``name-mover-like``;
    - END, positive effect, attends END -> IO most: ``negative-name-mover-like``;
    - END, negative effect, attends END -> S2 at least as much as to S1 and more than to IO:
      ``S-inhibition-like``;
    - S2, attends S2 -> S1 most: ``duplicate-token-like``; S2 -> S1 + 1: ``induction-like``;
    - otherwise ``other``.
    """
    wide = summary[summary["site"].isin(["S2", "END"])].pivot_table(
        index=["layer", "head"], columns="site", values=["effect", "ci_low", "ci_high"])
    if ("effect", "END") not in wide.columns or ("effect", "S2") not in wide.columns:
        raise ValueError("head_roles needs a patching summary with both S2 and END sites")
    df = pd.DataFrame({"layer": wide.index.get_level_values(0), "head": wide.index.get_level_values(1)})
    for c in ("effect", "ci_low", "ci_high"):
        for s in ("END", "S2"):
            df[f"{c}_{s.lower()}"] = wide[(c, s)].to_numpy()
    df = df.merge(attention, on=["layer", "head"])
    df["site"] = np.where(df["effect_end"].abs() >= df["effect_s2"].abs(), "END", "S2")
    df["strength"] = np.maximum(df["effect_end"].abs(), df["effect_s2"].abs())
    df = df.sort_values("strength", ascending=False).head(top).reset_index(drop=True)

    def role(r) -> str:
        if r["site"] == "END":
            to_s = max(r["end_to_s1"], r["end_to_s2"])
            if max(r["end_to_io"], to_s) < min_attention:
                return "other"  # its attention is elsewhere (BOS, punctuation): no name-based role
            if r["end_to_io"] > to_s:
                return "name-mover-like" if r["effect_end"] < 0 else "negative-name-mover-like"
            return "S-inhibition-like" if r["effect_end"] < 0 and r["end_to_s2"] >= r["end_to_s1"] else "other"
        if r["s2_to_s1"] > r["s2_to_s1_next"] and r["s2_to_s1"] >= min_attention:
            return "duplicate-token-like"
        return "induction-like" if r["s2_to_s1_next"] >= min_attention else "other"

    df["role"] = df.apply(role, axis=1)
    df["depth"] = df["layer"] / max(1, int(attention["layer"].max()))  # 0 = first layer, 1 = last
    s = df["site"] == "END"
    df["effect"] = np.where(s, df["effect_end"], df["effect_s2"])
    df["ci_low"] = np.where(s, df["ci_low_end"], df["ci_low_s2"])
    df["ci_high"] = np.where(s, df["ci_high_end"], df["ci_high_s2"])
    return df[["layer", "head", "depth", "site", "effect", "ci_low", "ci_high", "effect_end", "effect_s2",
               "end_to_io", "end_to_s1", "end_to_s2", "s2_to_s1", "s2_to_s1_next", "role"]]

