"""Tasks: what the engine feeds a model and what it reads back from it.

The engine (``capture``, block replay, ``patch``/``ablate``, ``score``) runs a model on prepared
inputs, reads something from the residual stream after the last block and measures a metric on
that readout, one value per "prompt". A task says each of these:

- ``prepare(model, prompts, n_tokens)``: the inputs as a ``TokenBatch`` (tokens, mask), and
  ``run(model, tokens, scored)``: the model's forward on them with whatever it needs besides the
  tokens (an encoder's attention mask). ``capture`` records the block arguments that forward
  produced (the attention mask among them), so replayed blocks see exactly the same masks.
- ``scoring(batch, scored_positions)``: what a metric needs besides the readout (``ScoredBatch``
  for the LM, ``PairBatch`` for sentence pairs); ``set_reference`` stores the unmodified run's
  readout in it (KL and top-1 for the LM).
- ``readout(model, resid, scored)``: from the residual after the last block (the LM: final norm
  and unembedding at the scored positions; a sentence encoder: the pooled embedding).
- ``metric(metric)``: the metrics that apply to that readout, by name or a callable.

``LMTask`` is the decoder LM the kit was built for and the default of every call, with the very
same operations as before tasks existed (so LM numbers are bit-identical). ``SentencePairTask``
reads a sentence encoder (BERT) through its pooled sentence embeddings and scores each pair by
the cosine of its two sentences' embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..core.checks import checked_metric
from ..data.prompts import TokenBatch
from ..models.embeddings import pooling_config
from ..models.families import ENCODER_FAMILIES, UnsupportedModelError, family, refuse_encoder
from .common import prepare, scored_batch
from .metrics import METRICS, ScoredBatch, get_metric
from .replay import final_logits
from .units import Edit, Unit, enumerate_units

__all__ = ["LM_TASK", "PAIR_METRICS", "LMTask", "PairBatch", "SentencePairTask", "Task", "as_task", "pair_cosine",
           "pair_separation", "separation_weights"]


@runtime_checkable
class Task(Protocol):
    """What the engine asks of a task (``LMTask`` and ``SentencePairTask`` implement it).

    Attributes:
        name: a short name.
        carries_inputs: the task holds its own inputs (then calls take no ``prompts``).
        fast_paths: whether the replay may use its resume-after-a-sublayer shortcuts (each is
            still checked numerically per layer); False replays whole blocks.
        ablation_metric, patch_metric, gradient_metric: default metric names per use.
        higher_is_worse: metric names whose increase is damage (``score`` turns values into
            damage with it).
    """

    name: str
    carries_inputs: bool
    fast_paths: bool
    ablation_metric: str
    patch_metric: str
    gradient_metric: str
    higher_is_worse: frozenset

    def check_model(self, model, what: str = "analysis") -> None:
        """Raise a clear error when the model can't serve this task."""

    def prepare(self, model, prompts, n_tokens: int | None = None) -> TokenBatch:
        """The inputs as a TokenBatch on the model's device."""

    def scoring(self, model, batch: TokenBatch, scored_positions=None):
        """What the metric needs besides the readout; has ``repeat(k)`` for stacked copies."""

    def run(self, model, tokens, scored):
        """The full forward on ``tokens`` (hooks active on the model apply); its readout, or
        None when ``scored`` is None (a capture that only wants activations)."""

    def readout(self, model, resid, scored):
        """The readout from the residual stream after the last block."""

    def set_reference(self, scored, readout) -> None:
        """Keep the unmodified run's readout in ``scored`` (what KL-like metrics compare with)."""

    def metric(self, metric) -> Callable:
        """A metric name or callable -> ``(readout, scored) -> Tensor[values]``."""

    def units(self, model, kind: str, layers=None, positions=None, per_position: bool = False) -> list:
        """The units of a kind, as ``engine.units.enumerate_units`` gives them for this task."""

    def n_scored(self, batch: TokenBatch, scored) -> int:
        """Readout rows per input (``stack_size``'s work estimate)."""

    def ids(self, batch: TokenBatch) -> tuple:
        """One id per metric value (the ``per_prompt`` columns)."""

    def per_value(self, rows: Tensor) -> Tensor:
        """[unit, input rows] first-order terms -> [unit, metric values]."""


class LMTask:
    """The decoder LM: next-token logits at scored positions (the default task).

    ``prompts`` come from the call (``ablate(model, prompts, ...)``); metrics are ``METRICS``.
    """

    name = "lm"
    carries_inputs = False  # the prompts are an argument of the call
    fast_paths = True  # the replay's resume-after-a-sublayer shortcuts, each checked numerically
    ablation_metric, patch_metric, gradient_metric = "kl", "logprob", "loss"
    higher_is_worse = frozenset({"kl", "loss"})

    def __repr__(self) -> str:
        return "LMTask()"

    def check_model(self, model, what: str = "analysis") -> None:
        refuse_encoder(model, what)

    def prepare(self, model, prompts, n_tokens: int | None = None) -> TokenBatch:
        if prompts is None:
            raise TypeError("the LM task needs prompts: pass them as the second argument (a PromptSet, a list of "
                            "strings or a TokenBatch)")
        return prepare(model, prompts, n_tokens)

    def scoring(self, model, batch: TokenBatch, scored_positions=None) -> ScoredBatch:  # noqa: ARG002
        return scored_batch(batch, scored_positions)

    def run(self, model, tokens, scored: ScoredBatch | None):
        """The full forward (hooks active on the model apply); the logits at the scored positions."""
        logits = model(tokens, return_type="logits")
        return logits[:, scored.positions] if scored is not None else None

    def readout(self, model, resid, scored: ScoredBatch):
        return final_logits(model, resid, scored.positions)

    def set_reference(self, scored: ScoredBatch, readout: Tensor) -> None:
        scored.ref_logprobs = torch.log_softmax(readout.float(), -1)

    def metric(self, metric) -> Callable:
        return get_metric(metric)

    def units(self, model, kind: str, layers=None, positions=None, per_position: bool = False) -> list[Unit]:
        return enumerate_units(model, kind, layers, positions, per_position)

    def n_scored(self, batch: TokenBatch, scored: ScoredBatch) -> int:
        """Rows per prompt at the readout (for ``stack_size``)."""
        return len(scored.positions)

    def ids(self, batch: TokenBatch) -> tuple:
        return batch.ids

    def per_value(self, rows: Tensor) -> Tensor:
        """[unit, batch] per-input-row sums -> [unit, metric values] (the LM: one per prompt)."""
        return rows


LM_TASK = LMTask()


@dataclass
class PairBatch:
    """What a sentence-pair metric needs besides the embeddings.

    Sentences are interleaved: rows 2i and 2i + 1 of the batch are pair i's two sentences (so
    ``k`` stacked copies of the batch are ``k * n_pairs`` consecutive pairs).

    Attributes:
        mask: True at real tokens, [2 * n_pairs, pos]: the pooling's weights.
        mode: ``"mean"``, ``"cls"`` or ``"max"`` (the model folder's pooling).
        normalize: L2-normalise each embedding.
        ref: the unmodified run's embeddings [2 * n_pairs, d_model] (None until the engine sets it).
        weight: per-pair weights of the ``"separation"`` metric, [n_pairs] (None when the pairs
            carry no gold score).
    """

    mask: Bool[Tensor, "batch pos"]
    mode: str = "mean"
    normalize: bool = True
    ref: Float[Tensor, "batch d_model"] | None = None
    weight: Float[Tensor, " pairs"] | None = None

    def repeat(self, k: int) -> PairBatch:
        """The batch stacked k times (k interventions in one pass)."""
        return PairBatch(self.mask.repeat(k, 1), self.mode, self.normalize,
                         None if self.ref is None else self.ref.repeat(k, 1),
                         None if self.weight is None else self.weight.repeat(k))


def pair_cosine(emb: Float[Tensor, "batch d_model"], batch: PairBatch) -> Float[Tensor, " pairs"]:
    """Cosine similarity of each pair's two sentence embeddings (higher = more similar)."""
    e = emb.double().view(-1, 2, emb.shape[-1])
    return torch.nn.functional.cosine_similarity(e[:, 0], e[:, 1], dim=-1)


pair_cosine.__name__ = "cosine"


def separation_weights(gold) -> Float[Tensor, " pairs"]:
    """Per-pair weights ``w_i = N (s_i - mean s) / sum_j (s_j - mean s)^2`` of gold scores ``s``:
    the mean over pairs of ``w_i * cos_i`` is the least-squares slope of cosine on gold, which
    for binary gold is mean cosine of the positives minus mean cosine of the negatives."""
    try:
        s = torch.tensor([float(g) for g in gold], dtype=torch.float64)
    except (TypeError, ValueError):
        raise ValueError("gold scores must be numbers (the pairs table's 'score' column)") from None
    if not torch.isfinite(s).all():
        raise ValueError("a gold score is missing or not finite; every pair needs one for metric='separation'")
    c = s - s.mean()
    if float((c * c).sum()) == 0.0:
        raise ValueError("every pair has the same gold score: metric='separation' needs both paraphrases and "
                         "non-paraphrases (or graded scores); add pairs of the other kind")
    return len(s) * c / (c * c).sum()


def pair_separation(emb: Float[Tensor, "batch d_model"], batch: PairBatch) -> Float[Tensor, " pairs"]:
    """Each pair's share of the separation between similar and dissimilar pairs: its cosine
    times ``separation_weights`` of the gold scores. The mean over pairs is the slope of cosine
    on gold (binary gold: mean paraphrase cosine minus mean non-paraphrase cosine), a measure of
    the whole set that, unlike Spearman, is a mean of per-pair values (so ``score``'s damage,
    the attribution methods and paired tests apply). Higher = better separated."""
    if batch.weight is None:
        raise ValueError("metric='separation' needs gold scores that vary: pass SentencePairTask a pairs DataFrame "
                         "with a 'score' column (a number for every pair) holding both paraphrases and non-paraphrases (cnb.load_sentence_pairs), "
                         "or use metric='cosine'")
    return pair_cosine(emb, batch) * batch.weight.to(emb.device)


pair_separation.__name__ = "separation"

#: The metrics of ``SentencePairTask``: ``(embeddings [2N, d], PairBatch) -> [N]``.
PAIR_METRICS: dict[str, Callable] = {"cosine": pair_cosine, "separation": pair_separation}


def _pairs_of(pairs) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    if isinstance(pairs, pd.DataFrame):
        missing = [c for c in ("sentence1", "sentence2") if c not in pairs.columns]
        if missing:
            raise ValueError(f"pairs has no column(s) {missing}; it needs 'sentence1' and 'sentence2' (has "
                             f"{list(pairs.columns)}); load one with cnb.load_sentence_pairs")
        rows = list(zip(pairs["sentence1"], pairs["sentence2"]))
        ids = tuple(str(i) for i in pairs.index)
    else:
        if isinstance(pairs, (str, tuple)) and len(pairs) == 2 and all(isinstance(s, str) for s in pairs):
            raise TypeError("pairs must be a list of (sentence1, sentence2) pairs, not one pair (wrap it: [pair])")
        rows = [tuple(p) for p in pairs]
        bad = [i for i, p in enumerate(rows) if len(p) != 2]
        if bad:
            raise ValueError(f"pairs[{bad[0]}] has {len(rows[bad[0]])} items; each pair is (sentence1, sentence2)")
        ids = tuple(f"pair{i}" for i in range(len(rows)))
    if not rows:
        raise ValueError("pairs is empty: give at least one (sentence1, sentence2) pair")
    for i, (a, b) in enumerate(rows):
        if not isinstance(a, str) or not isinstance(b, str) or not a.strip() or not b.strip():
            raise ValueError(f"pair {ids[i]} is not two non-empty strings: {(a, b)!r}")
    return tuple(rows), ids


def _column(pairs, name: str) -> tuple | None:
    return tuple(pairs[name].tolist()) if isinstance(pairs, pd.DataFrame) and name in pairs.columns else None


class SentencePairTask:
    """Sentence pairs read through a sentence encoder's pooled embeddings.

    Inputs: the 2N sentences of N pairs as one right-padded batch with its attention mask (BERT
    attends both ways, so padding is masked in attention; the blocks' captured arguments carry
    that mask into every replay). Readout: the last block's output (BERT's
    ``last_hidden_state``; the masked-LM head and its norm come after it and are never run)
    pooled over the real tokens as the model folder says (mean for all-MiniLM-L6-v2) and
    L2-normalised: ``cnb.sentence_embeddings``. Metric: ``"cosine"``, each pair's cosine
    similarity, the per-"prompt" value (one per pair; ``df.attrs["per_prompt"]`` has a column
    per pair). ``score`` turns it into damage = clean cosine minus the intervened cosine, per
    pair, averaged over pairs: the drop in paraphrase similarity a unit causes. (Spearman
    against gold scores is a statistic of the whole set, not a per-pair value that can be
    averaged; ``cnb.similarity_eval`` computes it on a model.) ``"separation"`` (pairs with gold
    scores of both kinds): each pair's cosine weighted by its centred gold score, whose mean is
    the slope of cosine on gold (binary gold: mean paraphrase cosine minus mean non-paraphrase
    cosine); its damage is how much a unit's removal blurs paraphrases and non-paraphrases
    together, the per-pair measure closest to Spearman.

    Units: ``"head"`` (``attn.hook_z``), ``"neuron"`` (``mlp.hook_post``), ``"mlp"`` (the MLP's
    output before BERT's residual add and LayerNorm), ``"attn"`` (every head of a layer at once:
    all of ``attn.hook_z``; the output projection's bias stays; ``ablate`` only), ``"block"`` (the attention's output
    projection and the MLP output, both before their add-and-norm: in a post-LN block zeroing
    both leaves ``LN2(LN1(x))``, the closest thing to skipping it; the engine's pre-LN block
    unit would edit ``attn.hook_out``, which in BERT is after the first LayerNorm and carries
    the whole residual stream).

    Args:
        pairs: a DataFrame with ``sentence1``/``sentence2`` (``cnb.load_sentence_pairs``) or a
            list of (sentence1, sentence2).
        normalize: L2-normalise the embeddings (cosine is unchanged by it).
        max_length: truncate sentences to this many tokens (default: the folder's
            ``max_seq_length``, else the tokenizer's limit), as ``sentence_embeddings`` does.
        metric: the metric every method of ``ablate``/``score`` reads by default, the gradient
            methods (attribution, Taylor, Fisher) included: ``"cosine"`` or ``"separation"``
            (needs a ``score`` column with both kinds of pair; checked here).

    Attributes:
        gold, kinds: a pairs table's ``score`` and ``kind`` columns as tuples (None without
            them); ``evaluate(model, task=...)`` reports Spearman / ROC AUC against ``gold``.
    """

    name = "sentence-pairs"
    carries_inputs = True
    # BERT is post-LN: a head's change reaches the residual through LN1, and resid_mid (the
    # bridge's ln2.hook_in) is not the stream the MLP reads, so neither fast path's identity
    # holds (their numerical checks fail too, tests/unit/test_tasks.py); replay whole blocks.
    fast_paths = False
    ablation_metric = patch_metric = gradient_metric = "cosine"
    higher_is_worse = frozenset()
    units_kinds = ("head", "neuron", "mlp", "attn", "block")

    def __init__(self, pairs, normalize: bool = True, max_length: int | None = None, metric: str = "cosine"):
        self.pairs, self.pair_ids = _pairs_of(pairs)
        # the gold score and negative kind per pair, where a pairs table has them (evaluate reads them;
        # metric="separation" weighs each pair's cosine by the gold)
        self.gold = _column(pairs, "score")
        self.kinds = _column(pairs, "kind")
        self.normalize = bool(normalize)
        self.max_length = max_length
        if metric not in PAIR_METRICS:
            raise ValueError(f"unknown metric {metric!r} for SentencePairTask; valid: {sorted(PAIR_METRICS)}")
        if metric == "separation":
            if self.gold is None:
                raise ValueError("metric='separation' needs gold scores: pass a pairs DataFrame with a 'score' column "
                                 "(cnb.load_sentence_pairs), or use metric='cosine'")
            separation_weights(self.gold)  # missing or constant gold: a clear error now, not mid-run
        # the instance's default for every use (the gradient methods read gradient_metric)
        self.ablation_metric = self.patch_metric = self.gradient_metric = metric

    def __repr__(self) -> str:
        extra = "" if self.ablation_metric == "cosine" else f", metric={self.ablation_metric!r}"
        return f"SentencePairTask({len(self.pairs)} pairs{extra})"

    def __len__(self) -> int:
        return len(self.pairs)

    def check_model(self, model, what: str = "analysis") -> None:
        name = family(model)
        if name not in ENCODER_FAMILIES:
            raise UnsupportedModelError(
                f"SentencePairTask reads a sentence encoder's pooled embeddings; model family {name!r} is not an "
                f"encoder (encoders: {', '.join(ENCODER_FAMILIES)}). A decoder LM takes the default LM task: drop "
                "task= and pass prompts")

    def sentences(self) -> list[str]:
        return [s for pair in self.pairs for s in pair]

    def tokenize(self, model, texts) -> TokenBatch:
        """Tokenise sentences as ``sentence_embeddings`` does (padded, truncated, masked)."""
        tok = model.tokenizer
        if tok.pad_token_id is None:
            raise ValueError("the encoder's tokenizer has no pad token: sentences of different lengths can't be batched")
        limit = self.max_length or pooling_config(model)["max_length"] or \
            min(getattr(tok, "model_max_length", 512), model.cfg.n_ctx)
        enc = tok(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        tokens, mask = enc["input_ids"], enc["attention_mask"].bool()
        # run() rebuilds the mask from the tokens (the engine passes tokens only): they must agree
        if not torch.equal(mask, tokens != tok.pad_token_id):
            raise ValueError("a sentence contains the pad token itself; the attention mask can't be rebuilt from the "
                             "tokens: remove it from the sentences")
        return TokenBatch(tokens, mask, tuple(f"s{i}" for i in range(len(tokens)))).to(next(model.parameters()).device)

    def prepare(self, model, prompts=None, n_tokens: int | None = None) -> TokenBatch:
        if prompts is not None:
            raise ValueError(f"{self!r} carries its inputs (the pairs); drop the prompts argument")
        if n_tokens is not None:
            raise ValueError("n_tokens= is not used with SentencePairTask: each sentence keeps its own length (padded "
                             "and masked); truncate with SentencePairTask(pairs, max_length=...)")
        self.check_model(model)
        return self.tokenize(model, self.sentences())

    def reference_batch(self, model, reference) -> TokenBatch:
        """The sentences a mean ablation averages over: pairs, a task or a list of sentences."""
        if isinstance(reference, SentencePairTask):
            return reference.tokenize(model, reference.sentences())
        if isinstance(reference, pd.DataFrame):
            return self.tokenize(model, SentencePairTask(reference).sentences())
        texts = [reference] if isinstance(reference, str) else list(reference)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("reference= for SentencePairTask: a pairs DataFrame, a SentencePairTask or a list of "
                            "sentences")
        return self.tokenize(model, texts)

    def scoring(self, model, batch: TokenBatch, scored_positions=None) -> PairBatch:
        if scored_positions is not None:
            raise ValueError("scored_positions= is not used with SentencePairTask: the readout pools every real token")
        weight = None
        gold = None if self.gold is None else torch.tensor([float(g) for g in self.gold], dtype=torch.float64)
        if gold is not None and bool(torch.isfinite(gold).all()) and gold.unique().numel() > 1:
            weight = separation_weights(gold).to(batch.mask.device)  # else metric="separation" explains
        return PairBatch(batch.mask, pooling_config(model)["mode"], self.normalize, weight=weight)

    def run(self, model, tokens, scored: PairBatch | None):
        """The encoder's forward with the attention mask, up to the last block; its pooled output."""
        last = f"blocks.{model.cfg.n_layers - 1}.hook_out"
        got: dict[str, Tensor] = {}

        class Stop(Exception):
            pass

        def keep(x, hook):  # noqa: ARG001 - the TransformerLens hook signature
            got["h"] = x
            raise Stop  # the masked-LM head is never read

        mask = (tokens != model.tokenizer.pad_token_id).long()
        try:
            with model.hooks(fwd_hooks=[(last, keep)]):
                model(tokens, attention_mask=mask)
        except Stop:
            pass
        return None if scored is None else self.readout(model, got["h"], scored)

    def readout(self, model, resid, scored: PairBatch):  # noqa: ARG002 - the task interface
        """Pool the last block's output over the real tokens (``sentence_embeddings``' pooling)."""
        h = resid.float()
        mask = scored.mask.unsqueeze(-1).to(h.dtype)
        if scored.mode == "mean":
            v = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        elif scored.mode == "cls":
            v = h[:, 0]
        else:
            v = h.masked_fill(mask == 0, -1e9).max(1).values
        return torch.nn.functional.normalize(v, dim=-1) if scored.normalize else v

    def set_reference(self, scored: PairBatch, readout: Tensor) -> None:
        scored.ref = readout

    def units(self, model, kind: str, layers=None, positions=None, per_position: bool = False) -> list[Unit]:
        """Encoder units; ``"block"`` edits the two sublayer outputs before their add-and-norm."""
        if kind not in self.units_kinds:
            raise ValueError(f"unit {kind!r} is not available with SentencePairTask; valid: {list(self.units_kinds)}")
        if positions is not None or per_position:
            raise ValueError("positions= / per_position= are not used with SentencePairTask: sentences differ in "
                             "length, so a position is not the same token slot across the batch")
        units = enumerate_units(model, kind, layers)
        if kind == "attn":  # every head of the layer at once: z before the output projection
            return [Unit(u.kind, u.layer, (Edit(f"blocks.{u.layer}.attn.hook_z"),), label=u.label) for u in units]
        if kind != "block":
            return units
        attn_dense = "blocks.{l}.attn.o.hook_out"  # BERT's attention output projection, before LN1
        return [Unit(u.kind, u.layer, (Edit(attn_dense.format(l=u.layer)),) + tuple(
                     e for e in u.edits if e.hook.endswith("hook_mlp_out")), label=u.label) for u in units]

    def metric(self, metric) -> Callable:
        if callable(metric):
            if metric in PAIR_METRICS.values():
                return metric
            return checked_metric(metric, n_values=lambda emb: emb.shape[0] // 2, per="pair", hint="")
        if metric not in PAIR_METRICS:
            lm = " (an LM metric: SentencePairTask reads embeddings, not logits)" if metric in METRICS else ""
            raise ValueError(f"unknown metric {metric!r} for SentencePairTask{lm}; valid: {sorted(PAIR_METRICS)} or "
                             "a callable (embeddings [2N, d], PairBatch) -> [N pairs]")
        return PAIR_METRICS[metric]

    def n_scored(self, batch: TokenBatch, scored: PairBatch) -> int:  # noqa: ARG002 - the task interface
        # the readout pools every position; no unembedding is worth stacking for on a CPU
        return batch.tokens.shape[1]

    def ids(self, batch: TokenBatch) -> tuple:  # noqa: ARG002 - the task interface
        return self.pair_ids

    def per_value(self, rows: Tensor) -> Tensor:
        """[unit, 2N sentences] -> [unit, N pairs]: a pair's cosine depends on its two sentences
        only, so a first-order term of the pair is the sum of its two sentences' terms."""
        return rows.view(rows.shape[0], -1, 2).sum(-1)


def as_task(task) -> Task:
    """``None`` -> the LM task; a task (anything with ``Task``'s interface) passes through;
    anything else is a clear error."""
    if task is None:
        return LM_TASK
    if isinstance(task, Task):
        return task
    raise TypeError(f"task= must be a task (cnb.SentencePairTask(pairs), or None for the LM task; see "
                    f"causal_nb.engine.tasks.Task), got {type(task).__name__}")
