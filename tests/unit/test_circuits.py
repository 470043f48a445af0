"""Known-circuit tools on tiny random models, against independent plain computations.

- Final-position answer scoring (``answers=`` of patch/ablate) vs one full forward per head
  with TransformerLens hooks, logits read by hand at each prompt's last real token (padded
  prompts of different lengths).
- Induction scores vs attention recomputed by hand from ``hook_q``/``hook_k`` (GPT-2: no
  rotary); induction losses vs plain cross-entropy with heads zeroed/mean-replaced by hooks.
- The IOI builder on a hand-written whitespace tokenizer (positions known by construction)
  and its bad-input errors; the role rules on a hand-made table.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from causal_nb import induction as ind
from causal_nb import ioi
from causal_nb.data.prompts import TokenBatch
from causal_nb.engine.common import prepare
from causal_nb.engine.patching import ablate, patch

TEXTS = ["def add(a, b): return a + b + c", "x = 1", "class P: pass"]
N = 12
ATOL = 1e-5


@pytest.fixture(scope="module")
def padded(tiny_model):
    """Clean prompts of different lengths (right-padded), a corrupted copy with the same mask
    (tokens 1..2 taken from the next prompt), and two answer ids per prompt."""
    cb = prepare(tiny_model, TEXTS, N)
    assert len(set(cb.mask.sum(-1).tolist())) == len(TEXTS), "the prompts must differ in length"
    x = cb.tokens.clone()
    x[:, 1:3] = torch.roll(cb.tokens, 1, 0)[:, 1:3]
    xb = TokenBatch(x, cb.mask.clone(), cb.ids)
    g = torch.Generator().manual_seed(0)
    answers = torch.randint(0, tiny_model.cfg.d_vocab, (len(TEXTS), 2), generator=g)
    return cb, xb, answers


def last_real(mask):
    return torch.tensor([int(torch.nonzero(r)[-1]) for r in mask])


def plain_diff(logits, mask, answers):
    last = last_real(mask)
    b = torch.arange(len(last))
    lg = logits[b, last].double()
    return lg[b, answers[:, 0]] - lg[b, answers[:, 1]]


@torch.no_grad()
def head_loop(model, base_tokens, src_tokens, metric, positions=None):
    _, src = model.run_with_cache(src_tokens)
    out = []
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        for h in range(model.cfg.n_heads):
            def fn(act, hook, h=h, name=name):
                act = act.clone()
                pos = slice(None) if positions is None else positions
                act[:, pos, h] = src[name][:, pos, h]
                return act

            out.append(metric(model.run_with_hooks(base_tokens, fwd_hooks=[(name, fn)])))
    return torch.stack(out)


def test_answer_patch_noise_equals_hook_loop(tiny_model, padded):
    cb, xb, answers = padded
    df = patch(tiny_model, cb, xb, metric="answer_logit_diff", direction="noise", answers=answers)
    ref = head_loop(tiny_model, cb.tokens, xb.tokens, lambda lg: plain_diff(lg, cb.mask, answers))
    np.testing.assert_allclose(df.attrs["per_prompt"].to_numpy(), ref.numpy(), atol=ATOL)
    with torch.no_grad():
        clean = plain_diff(tiny_model(cb.tokens), cb.mask, answers)
    np.testing.assert_allclose(df.attrs["clean_per_prompt"], clean.numpy(), atol=ATOL)
    assert df["value"].std() > 1e-4, "patching must move the metric on some head"


def test_answer_patch_denoise_one_position(tiny_model, padded):
    cb, xb, answers = padded
    df = patch(tiny_model, cb, xb, metric="answer_logit_diff", direction="denoise", positions=[2], answers=answers)
    ref = head_loop(tiny_model, xb.tokens, cb.tokens, lambda lg: plain_diff(lg, cb.mask, answers), positions=[2])
    np.testing.assert_allclose(df.attrs["per_prompt"].to_numpy(), ref.numpy(), atol=ATOL)


def test_answer_ablate_logprob_equals_hook_loop(tiny_model, padded):
    cb, _, answers = padded
    correct = answers[:, 0]
    df = ablate(tiny_model, cb, kind="zero", metric="logprob", answers=correct)

    def lp(lg):
        last = last_real(cb.mask)
        b = torch.arange(len(last))
        return torch.log_softmax(lg[b, last].double(), -1)[b, correct]

    out = []
    with torch.no_grad():
        for layer in range(tiny_model.cfg.n_layers):
            for h in range(tiny_model.cfg.n_heads):
                def fn(act, hook, h=h):
                    act = act.clone()
                    act[:, :, h] = 0
                    return act

                out.append(lp(tiny_model.run_with_hooks(cb.tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", fn)])))
    ref = torch.stack(out)
    np.testing.assert_allclose(df.attrs["per_prompt"].to_numpy(), ref.numpy(), atol=ATOL)
    with torch.no_grad():
        np.testing.assert_allclose(df.attrs["baseline_per_prompt"], lp(tiny_model(cb.tokens)).numpy(), atol=ATOL)


def test_answer_bad_input(tiny_model, padded):
    cb, xb, answers = padded
    with pytest.raises(ValueError, match="answers="):
        patch(tiny_model, cb, xb, metric="answer_logit_diff", layers=[0])
    with pytest.raises(ValueError, match="answers="):
        ablate(tiny_model, cb, metric="answer_logit_diff", layers=[0])
    with pytest.raises(ValueError, match="scored_positions"):
        patch(tiny_model, cb, xb, metric="answer_logit_diff", answers=answers, scored_positions=[0], layers=[0])
    with pytest.raises(ValueError, match="one row per prompt"):
        patch(tiny_model, cb, xb, metric="answer_logit_diff", answers=answers[:2], layers=[0])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ablate(tiny_model, cb, metric="logprob", answers=answers + tiny_model.cfg.d_vocab, layers=[0])
    with pytest.raises(ValueError, match="integer token ids"):
        ablate(tiny_model, cb, metric="logprob", answers=answers.float(), layers=[0])
    with pytest.raises(ValueError, match="at least one wrong answer"):
        ablate(tiny_model, cb, metric="answer_logit_diff", answers=answers[:, 0], layers=[0])


def test_repeated_tokens(tiny_model):
    b = ind.repeated_tokens(tiny_model, seq_len=6, n_seqs=3, seed=1)
    assert b.tokens.shape == (3, 13) and bool(b.mask.all())
    assert torch.equal(b.tokens[:, 1:7], b.tokens[:, 7:])
    special = set(tiny_model.tokenizer.all_special_ids)
    assert not special & set(b.tokens[:, 1:].flatten().tolist())
    assert all(len(set(r)) == 6 for r in b.tokens[:, 1:7].tolist()), "no repeats inside a repeat"
    assert torch.equal(b.tokens, ind.repeated_tokens(tiny_model, seq_len=6, n_seqs=3, seed=1).tokens)
    with pytest.raises(ValueError, match="repeat"):
        ind.induction_scores(tiny_model, TokenBatch(b.tokens[:, :-2], b.mask[:, :-2], b.ids))


@pytest.mark.parametrize("arch", ["gpt2"])
def test_induction_scores_equal_hand_attention(tiny_dirs, arch):
    import causal_nb as cnb

    model = cnb.load_model(tiny_dirs[arch], device="cpu")
    s = 5
    b = ind.repeated_tokens(model, seq_len=s, n_seqs=3, seed=0)
    got = ind.induction_scores(model, b)
    _, cache = model.run_with_cache(b.tokens)
    n = b.tokens.shape[1]
    q_idx = torch.arange(s + 1, 2 * s + 1)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    rows = []
    for layer in range(model.cfg.n_layers):
        q, k = cache[f"blocks.{layer}.attn.hook_q"], cache[f"blocks.{layer}.attn.hook_k"]  # [b p h d]
        att = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
        att = torch.softmax(att.masked_fill(~causal, float("-inf")), -1)
        for h in range(model.cfg.n_heads):
            stripe = [att[:, h, i, i - s + 1].mean().item() for i in q_idx]
            rows.append((layer, h, float(np.mean(stripe)), att[:, h, q_idx, q_idx - 1].mean().item(),
                         att[:, h, q_idx, q_idx - s].mean().item()))
    ref = pd.DataFrame(rows, columns=["layer", "head", "score", "prev_token", "duplicate"])
    np.testing.assert_allclose(got[["score", "prev_token", "duplicate"]].to_numpy(),
                               ref[["score", "prev_token", "duplicate"]].to_numpy(), atol=1e-5)


def halves(logits, tokens, s):
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:], reduction="none")
    return ce[:, 1:s].mean(-1).double(), ce[:, s + 1 :].mean(-1).double()


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_induction_losses_equal_plain(tiny_model, kind):
    s = 5
    b = ind.repeated_tokens(tiny_model, seq_len=s, n_seqs=3, seed=2)
    heads = [(0, 1), (1, 3), (1, 0)]
    got = ind.induction_losses(tiny_model, b, heads, kind=kind)
    _, cache = tiny_model.run_with_cache(b.tokens)

    def make(h, layer):
        def fn(act, hook):
            act = act.clone()
            z = cache[f"blocks.{layer}.attn.hook_z"][:, :, h]
            act[:, :, h] = 0 if kind == "zero" else z.mean((0, 1))
            return act

        return fn

    with torch.no_grad():
        lg = tiny_model.run_with_hooks(b.tokens, fwd_hooks=[(f"blocks.{la}.attn.hook_z", make(h, la)) for la, h in heads])
    first, second = halves(lg, b.tokens, s)
    np.testing.assert_allclose(got["loss_first"], first.numpy(), atol=ATOL)
    np.testing.assert_allclose(got["loss_second"], second.numpy(), atol=ATOL)
    base = ind.induction_losses(tiny_model, b)
    with torch.no_grad():
        first0, second0 = halves(tiny_model(b.tokens), b.tokens, s)
    np.testing.assert_allclose(base["loss_second"], second0.numpy(), atol=ATOL)
    assert not np.allclose(base["loss_second"], got["loss_second"]), "the ablation must change the loss"


def test_induction_ablation_sets(tiny_model):
    b = ind.repeated_tokens(tiny_model, seq_len=5, n_seqs=2, seed=0)
    sc = ind.induction_scores(tiny_model, b)
    out = ind.induction_ablation(tiny_model, b, sc, k=2, n_random=3, seed=0)
    top = sc.sort_values("score", ascending=False).head(2)
    assert out.loc[1, "heads"] == " ".join(f"L{la}H{h}" for la, h in zip(top["layer"], top["head"]))
    assert out.loc[0, "increase"] == 0 and len(out) == 5
    top_names = set(out.loc[1, "heads"].split())
    assert all(not top_names & set(hs.split()) for hs in out["heads"].iloc[2:])
    with pytest.raises(ValueError, match="don't exist"):
        ind.induction_losses(tiny_model, b, [(99, 0)])


class WordTokenizer:
    """Whitespace tokenizer: a known word (with its leading space) is one id, an unknown word
    one id per character (so names in context can change length)."""

    def __init__(self, words):
        self.vocab = {"<bos>": 0}
        for w in words:
            self.vocab.setdefault(" " + w, len(self.vocab))
        self.bos_token_id = self.eos_token_id = self.pad_token_id = 0

    def _id(self, piece):
        return self.vocab.setdefault(piece, len(self.vocab))

    def __call__(self, text, add_special_tokens=False):
        ids = []
        for w in text.split(" "):
            if not w:
                continue
            if " " + w in self.vocab:
                ids.append(self.vocab[" " + w])
            else:
                ids += [self._id(ch) for ch in " " + w]
        return {"input_ids": ids}

    def convert_ids_to_tokens(self, ids):
        inv = {v: k for k, v in self.vocab.items()}
        return [inv[i] for i in ids]


TEMPLATES = ("When {A} and {B} went to the store , {S} gave a drink to",
             "Then , {A} and {B} had lunch . {S} said hi to")
WORDS = "When and went to the store , gave a drink Then had lunch . said hi".split()
NAMES = ["Ann", "Bob", "Cid", "Dan", "Eve"]


def test_ioi_prompts_positions():
    tok = WordTokenizer(WORDS + NAMES)
    p = ioi.ioi_prompts(tok, n=8, templates=TEMPLATES, names=NAMES, seed=3)
    assert len(p) == 8 and p.templates == [0, 1]
    inv = {v: k.strip() for k, v in tok.vocab.items()}
    for i, r in p.positions.iterrows():
        toks = p.clean.tokens[i]
        assert inv[int(toks[r["io"]])] == r["io_name"] and inv[int(toks[r["s1"]])] == r["s_name"]
        assert inv[int(toks[r["s2"]])] == r["s_name"] and inv[int(p.corrupted.tokens[i, r["s2"]])] == r["c_name"]
        assert r["end"] == int(p.clean.mask[i].sum()) - 1 and inv[int(toks[r["end"]])] == "to"
        assert len({r["io_name"], r["s_name"], r["c_name"]}) == 3
        assert (r["io"] < r["s1"]) == (r["order"] == "ABBA")
        assert p.answers[i].tolist() == [tok.vocab[" " + r["io_name"]], tok.vocab[" " + r["s_name"]]]
        other = torch.ones_like(toks, dtype=torch.bool)
        other[r["s2"]] = False
        assert torch.equal(p.clean.tokens[i][other], p.corrupted.tokens[i][other])
    assert set(p.positions["order"]) == {"ABBA", "BABA"}
    t1 = p.template(1)
    assert t1.positions["end"].nunique() == 1 and bool(t1.clean.mask.all())
    assert p.positions.equals(ioi.ioi_prompts(tok, n=8, templates=TEMPLATES, names=NAMES, seed=3).positions)


def test_ioi_prompts_bad_input():
    tok = WordTokenizer(WORDS + NAMES)
    with pytest.raises(ValueError, match=r"'Zed' is not a single token.*\[' ', 'Z', 'e', 'd'\]"):
        ioi.ioi_prompts(tok, n=2, templates=TEMPLATES, names=NAMES + ["Zed"])
    with pytest.raises(ValueError, match="at least 3 distinct names"):
        ioi.ioi_prompts(tok, n=2, templates=TEMPLATES, names=["Ann", "Bob", "Ann"])
    with pytest.raises(ValueError, match="needs the fields"):
        ioi.ioi_prompts(tok, n=2, templates=["When {A} met {B}"], names=NAMES)
    tok2 = WordTokenizer(WORDS + ["Al", "Bobby", "Cy"])
    with pytest.raises(ValueError, match=r"IOI prompt \d+: clean .* has \d+ tokens but corrupted"):
        # "{S}s" is not a word: spelled out per character, so it is as long as the name
        ioi.ioi_prompts(tok2, n=4, templates=["When {A} and {B} met , {S}s dog went to"], names=["Al", "Bobby", "Cy"])


def test_head_roles_rules():
    rows, att = [], []
    spec = {  # (layer, head): (END effect, S2 effect, end->io, end->s1, end->s2, s2->s1, s2->s1+1)
        (9, 0): (-2.0, 0.0, 0.6, 0.1, 0.1, 0.0, 0.0),
        (9, 1): (1.5, 0.0, 0.5, 0.1, 0.1, 0.0, 0.0),
        (7, 0): (-1.0, 0.1, 0.1, 0.1, 0.5, 0.0, 0.0),
        (3, 0): (0.0, -0.8, 0.0, 0.0, 0.0, 0.6, 0.1),
        (5, 0): (0.1, -0.7, 0.0, 0.0, 0.0, 0.1, 0.5),
        (8, 0): (-0.6, 0.0, 0.05, 0.02, 0.03, 0.0, 0.0),  # strong effect, attends no name: other
        (8, 1): (0.5, 0.0, 0.1, 0.1, 0.5, 0.0, 0.0),  # attends S2 but helps when noised: other
        (1, 0): (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    }
    for (la, h), (e_end, e_s2, *a) in spec.items():
        for site, e in (("END", e_end), ("S2", e_s2)):
            rows.append({"site": site, "layer": la, "head": h, "effect": e, "ci_low": e - 0.1, "ci_high": e + 0.1})
        att.append(dict(zip(["layer", "head", "end_to_io", "end_to_s1", "end_to_s2", "s2_to_s1", "s2_to_s1_next"],
                            [la, h, *a])))
    out = ioi.head_roles(pd.DataFrame(rows), pd.DataFrame(att), top=7)
    roles = {(r.layer, r.head): r.role for r in out.itertuples()}
    assert roles == {(9, 0): "name-mover-like", (9, 1): "negative-name-mover-like", (7, 0): "S-inhibition-like",
                     (3, 0): "duplicate-token-like", (5, 0): "induction-like", (8, 0): "other", (8, 1): "other"}
    assert list(out["effect"]) == [-2.0, 1.5, -1.0, -0.8, -0.7, -0.6, 0.5]


TINY_TEMPLATES = ("def {A} and {B} then {S} gave to", "class {A} or {B}: {S} returns it to")
TINY_NAMES = ["b", "d", "f", "x", "v"]  # single tokens (with a leading space) of the tiny BPE


def test_ioi_head_patching_equals_hook_loop(tiny_model):
    p = ioi.ioi_prompts(tiny_model, n=4, templates=TINY_TEMPLATES, names=TINY_NAMES, seed=0)
    got = ioi.ioi_head_patching(tiny_model, p)
    assert set(got["site"]) == {"all", "S2", "END"} and set(got["template"]) == {0, 1}
    n_h = tiny_model.cfg.n_heads
    for t in (0, 1):
        sub = p.template(t)
        pos = {"all": None, "S2": [int(sub.positions["s2"].iloc[0])], "END": [int(sub.positions["end"].iloc[0])]}
        for site, where in pos.items():
            ref = head_loop(tiny_model, sub.clean.tokens, sub.corrupted.tokens,
                            lambda lg, sub=sub: plain_diff(lg, sub.clean.mask, sub.answers), positions=where)
            g = got[(got.template == t) & (got.site == site)].sort_values(["layer", "head"])
            np.testing.assert_allclose(g["value"], ref.mean(1).numpy(), atol=ATOL)
            with torch.no_grad():
                clean = plain_diff(tiny_model(sub.clean.tokens), sub.clean.mask, sub.answers).mean()
            np.testing.assert_allclose(g["effect"], ref.mean(1).numpy() - float(clean), atol=ATOL)
    summ = ioi.patching_summary(got, n_boot=200)
    one = summ[(summ.site == "END") & (summ.layer == 1) & (summ["head"] == n_h - 1)].iloc[0]
    per_t = got[(got.site == "END") & (got.layer == 1) & (got["head"] == n_h - 1)]["effect"]
    assert one["effect"] == pytest.approx(per_t.mean()) and one["ci_low"] <= one["effect"] <= one["ci_high"]
    assert one["n_templates"] == 2


def test_ioi_attention_equals_hand(tiny_model):
    p = ioi.ioi_prompts(tiny_model, n=4, templates=TINY_TEMPLATES, names=TINY_NAMES, seed=1)
    got = ioi.head_attention(tiny_model, p)
    _, cache = tiny_model.run_with_cache(p.clean.tokens)
    r = p.positions
    for layer in range(tiny_model.cfg.n_layers):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"]
        g = got[got.layer == layer]
        for col, (q, k) in {"end_to_io": ("end", "io"), "end_to_s2": ("end", "s2"), "s2_to_s1": ("s2", "s1")}.items():
            ref = np.mean([pat[i, :, r[q][i], r[k][i]].numpy() for i in range(len(r))], axis=0)
            np.testing.assert_allclose(g[col], ref, atol=1e-6)
        ref = np.mean([pat[i, :, r["s2"][i], r["s1"][i] + 1].numpy() for i in range(len(r))], axis=0)
        np.testing.assert_allclose(g["s2_to_s1_next"], ref, atol=1e-6)


def test_patching_summary_ci_matches_one_head_bootstrap():
    """The vectorised all-heads bootstrap gives each head the interval of its own bootstrap."""
    from causal_nb import stats

    rng = np.random.default_rng(0)
    rows = [{"template": t, "site": s, "layer": la, "head": h, "effect": rng.normal(), "clean": 3.0, "corrupted": 0.0}
            for t in range(8) for s in ("S2", "END") for la in range(2) for h in range(3)]
    per_t = pd.DataFrame(rows)
    summ = ioi.patching_summary(per_t, n_boot=4000)
    for r in summ.itertuples():
        v = per_t[(per_t.site == r.site) & (per_t.layer == r.layer) & (per_t["head"] == r.head)]["effect"]
        mean, lo, hi = stats.bootstrap_ci(v.to_numpy(), n_boot=4000)
        assert r.effect == pytest.approx(mean) and r.n_templates == 8
        assert r.ci_low == pytest.approx(lo, abs=0.08) and r.ci_high == pytest.approx(hi, abs=0.08)
        assert r.effect_frac == pytest.approx(mean / 3.0)
