"""The seq2seq task: an encoder-decoder (T5) read through its teacher-forced target predictions.

``Seq2SeqTask(sources, targets)`` holds N (source, target) pairs. Inputs: the sources as one
right-padded batch with its attention mask (the encoder's), the targets tokenised the same way
(T5's tokenizer ends each with ``</s>``) and shifted right behind the decoder start token
(teacher forcing, as ``T5ForConditionalGeneration`` does with ``labels``). Readout: the decoder
logits at every target position [N, target tokens, vocab]; padded positions are left out of
every metric. Metrics, one value per pair (the ``per_prompt`` columns are the pairs):

- ``"target_logprob"`` (the default): mean log-probability of the target tokens; ``score``'s
  damage is its drop (clean minus intervened);
- ``"kl"``: mean KL(clean run || intervened run) over the target positions (damage: its rise);
- ``"top1"``: share of target positions whose top-1 token equals the clean run's.

Units know their stack (``engine.units.STACK_UNIT_KINDS``): ``"enc_head"`` (encoder
self-attention), ``"dec_head"`` (decoder self-attention), ``"cross_head"`` (decoder
cross-attention), ``"enc_neuron"``/``"dec_neuron"`` (MLP neurons: the input of ``wo``),
``"enc_mlp"``/``"dec_mlp"`` and ``"enc_block"``/``"dec_block"`` (every sublayer output of the
block before its residual add: zeroing them all passes the block's input through). ``layer`` is
the block's index in its stack. The LM kinds (``"head"``...) are refused as ambiguous, and the
stack kinds are refused on a model that is not an encoder-decoder.

``ablate`` (zero, or mean over the pairs or a ``reference``), ``patch`` (the task's pairs are
the clean run; ``corrupted=`` other sources for the same targets, each of its clean source's
token length; exact or attribution patching) and ``score`` (``"ablation"``, ``"patching"``,
``"attribution"``, ``"attribution-abs"``, ``"taylor"``, ``"fisher"``, ``"magnitude"``,
``"random"``; the gradient methods take the gradient of ``"target_logprob"``, from both stacks'
first residual streams) take the task; ``evaluate(model, task=...)`` is ``evaluation.seq2seq_quality``. The engine hands
the capture and the replay of the two stacks to ``engine.seq2seq_replay``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..data.prompts import TokenBatch
from ..models.families import SEQ2SEQ_FAMILIES, UnsupportedModelError, family
from ..models.hf import hf_state
from .metrics import METRICS, ScoredBatch, kl, logprob, top1
from .seq2seq_replay import (
    seq2seq_capture,
    seq2seq_evaluate,
    seq2seq_masked_means,
    seq2seq_means,
    seq2seq_readout,
    seq2seq_replay,
    seq2seq_weight_norms,
    stack_sizes,
    unit_count,
)
from .units import STACK_UNIT_KINDS, UNIT_KINDS, Edit, Unit

__all__ = ["SEQ2SEQ_METRICS", "Seq2SeqBatch", "Seq2SeqScored", "Seq2SeqTask"]


@dataclass(frozen=True)
class Seq2SeqBatch(TokenBatch):
    """Tokenised pairs: ``tokens``/``mask`` are the sources (the encoder's input), plus the
    targets [pairs, tgt] with their mask and the decoder inputs (targets shifted right)."""

    targets: Int[Tensor, "batch tgt"] = None
    target_mask: Bool[Tensor, "batch tgt"] = None
    decoder_input: Int[Tensor, "batch tgt"] = None

    def to(self, device) -> Seq2SeqBatch:
        return Seq2SeqBatch(self.tokens.to(device), self.mask.to(device), self.ids, self.targets.to(device),
                            self.target_mask.to(device), self.decoder_input.to(device))


@dataclass
class Seq2SeqScored(ScoredBatch):
    """A ``ScoredBatch`` over the target positions (``targets``, ``valid`` = real target tokens,
    ``ref_logprobs`` of the clean run) plus what the forward needs: the source mask and the
    decoder inputs."""

    src_mask: Bool[Tensor, "batch src"] | None = None
    decoder_input: Int[Tensor, "batch tgt"] | None = None

    def repeat(self, k: int) -> Seq2SeqScored:
        def rep(t):
            return None if t is None else t.repeat(k, *([1] * (t.dim() - 1)))

        return Seq2SeqScored(self.positions, rep(self.targets), rep(self.valid), rep(self.ref_logprobs),
                             src_mask=rep(self.src_mask), decoder_input=rep(self.decoder_input))


def target_logprob(logits, batch: Seq2SeqScored):
    """Mean log-probability of each pair's target tokens (teacher-forced), over its real tokens."""
    return logprob(logits, batch)


#: The metrics of ``Seq2SeqTask``: ``(decoder logits [N, tgt, vocab], Seq2SeqScored) -> [N]``.
SEQ2SEQ_METRICS: dict[str, Callable] = {"target_logprob": target_logprob, "kl": kl, "top1": top1}


def _pairs(sources, targets) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if isinstance(sources, str) or isinstance(targets, str):
        raise TypeError("sources and targets are lists of strings (one pair: Seq2SeqTask([source], [target]))")
    sources, targets = list(sources), list(targets)
    if len(sources) != len(targets):
        raise ValueError(f"sources and targets differ in length ({len(sources)} vs {len(targets)}): pair i is "
                         "(sources[i], targets[i])")
    if not sources:
        raise ValueError("no pairs: give at least one (source, target) pair")
    for name, texts in (("source", sources), ("target", targets)):
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(f"{name} {bad[0]} is empty or not a string ({texts[bad[0]]!r}); every pair needs a "
                             f"non-empty {name} text")
    return tuple(sources), tuple(targets)


class Seq2SeqTask:
    """(source, target) pairs read through an encoder-decoder's teacher-forced decoder logits.

    Args:
        sources: the encoder's input texts.
        targets: the texts the decoder should produce, one per source.
        max_length: truncate sources and targets to this many tokens (default: the tokenizer's
            limit, at most 512).

    Raises:
        ValueError: sources and targets of different lengths, no pairs, an empty text.
    """

    name = "seq2seq"
    carries_inputs = True
    fast_paths = False  # engine.replay's sublayer shortcuts are for one stack; seq2seq_replay has its own
    ablation_metric = patch_metric = gradient_metric = "target_logprob"
    higher_is_worse = frozenset({"kl"})
    units_kinds = tuple(STACK_UNIT_KINDS)
    score_units = units_kinds
    score_methods = ("ablation", "patching", "attribution", "attribution-abs", "acdc", "taylor", "fisher",
                     "magnitude", "random")
    acdc_units = units_kinds  # one stack's units per walk: analyses.acdc replays from a unit through replay_from
    # where the gradient methods' graph starts (engine.attribution.metric_gradients): each stack's
    # first residual stream (the decoder's does not depend on the encoder's)
    gradient_roots = ("encoder_blocks.0.hook_resid_pre", "decoder_blocks.0.hook_resid_pre")

    def __init__(self, sources, targets, max_length: int | None = None):
        self.sources, self.targets = _pairs(sources, targets)
        self.pair_ids = tuple(f"pair{i}" for i in range(len(self.sources)))
        self.max_length = max_length

    def __repr__(self) -> str:
        return f"Seq2SeqTask({len(self.sources)} pairs)"

    def __len__(self) -> int:
        return len(self.sources)

    def check_model(self, model, what: str = "analysis") -> None:  # noqa: ARG002 - the task interface
        name = family(model)
        if name not in SEQ2SEQ_FAMILIES:
            raise UnsupportedModelError(
                f"Seq2SeqTask feeds sources to an encoder and targets to a decoder; model family {name!r} is not an "
                f"encoder-decoder (encoder-decoders: {', '.join(SEQ2SEQ_FAMILIES)}). A decoder LM takes the default "
                "LM task (drop task= and pass prompts); a sentence encoder takes cnb.SentencePairTask(pairs)")

    def tokenize(self, model, sources, targets) -> Seq2SeqBatch:
        """Sources and targets as right-padded, masked batches, and the decoder inputs."""
        tok = model.tokenizer
        if tok is None or tok.pad_token_id is None:
            raise ValueError("the model's tokenizer has no pad token: pairs of different lengths can't be batched")
        limit = self.max_length or min(getattr(tok, "model_max_length", 512) or 512, 512)
        dev = next(model.parameters()).device

        def enc(texts):
            e = tok(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
            return e["input_ids"].to(dev), e["attention_mask"].bool().to(dev)

        (src, src_mask), (tgt, tgt_mask) = enc(sources), enc(targets)
        start = model.original_model.config.decoder_start_token_id
        if start is None:
            raise ValueError("the model's config has no decoder_start_token_id: the decoder inputs can't be built")
        dec = torch.cat([torch.full_like(tgt[:, :1], start), tgt[:, :-1]], 1)
        return Seq2SeqBatch(src, src_mask, tuple(f"pair{i}" for i in range(len(src))), tgt, tgt_mask, dec)

    def prepare(self, model, prompts=None, n_tokens: int | None = None) -> Seq2SeqBatch:
        if prompts is not None:
            raise ValueError(f"{self!r} carries its inputs (the pairs); drop the prompts argument")
        if n_tokens is not None:
            raise ValueError("n_tokens= is not used with Seq2SeqTask: each text keeps its own length (padded and "
                             "masked); truncate with Seq2SeqTask(sources, targets, max_length=...)")
        self.check_model(model)
        return self.tokenize(model, self.sources, self.targets)

    def reference_batch(self, model, reference) -> Seq2SeqBatch:
        """The pairs a mean ablation averages over: a Seq2SeqTask or (sources, targets)."""
        if isinstance(reference, Seq2SeqTask):
            return reference.tokenize(model, reference.sources, reference.targets)
        if isinstance(reference, tuple) and len(reference) == 2:
            return self.tokenize(model, *_pairs(*reference))
        raise TypeError("reference= for Seq2SeqTask: a Seq2SeqTask or a (sources, targets) tuple of two lists")

    def corrupted_batch(self, model, corrupted) -> Seq2SeqBatch:
        """``patch``'s corrupted pairs: a ``Seq2SeqTask`` with the same targets, or a list of
        sources (one per pair; the task's targets). Source i must have as many tokens as clean
        source i, so encoder positions line up (the targets are the same)."""
        if isinstance(corrupted, Seq2SeqTask):
            if corrupted.targets != self.targets:
                bad = [i for i, (a, b) in enumerate(zip(corrupted.targets, self.targets)) if a != b][:5]
                raise ValueError(f"corrupted pairs {bad or 'count'} have other targets than the clean ones: patching "
                                 "compares runs on the same targets; give corrupted=Seq2SeqTask(other_sources, "
                                 "the same targets), or just the list of corrupted sources")
            sources = corrupted.sources
        elif isinstance(corrupted, (str, tuple)) or not hasattr(corrupted, "__iter__"):
            raise TypeError("corrupted= for Seq2SeqTask: a list of corrupted sources (one per pair) or a "
                            "Seq2SeqTask(corrupted_sources, the same targets)")
        else:
            sources = corrupted
        sources, _ = _pairs(sources, self.targets)
        clean = self.tokenize(model, self.sources, self.targets)
        xb = self.tokenize(model, sources, self.targets)
        n_clean, n_corr = clean.mask.sum(1), xb.mask.sum(1)
        bad = (n_clean != n_corr).nonzero()[:5, 0].tolist()
        if bad:
            i = bad[0]
            raise ValueError(f"corrupted source(s) {bad} differ in token length from their clean sources (pair {i}: "
                             f"{int(n_clean[i])} vs {int(n_corr[i])} tokens), so encoder positions don't line up; "
                             "use corrupted sources of the same token length (e.g. swap a word for another word of "
                             "as many tokens: model.tokenizer.tokenize(text) shows them)")
        return xb

    @staticmethod
    def check_positions(positions, batch):  # noqa: ARG004 - the task interface; units() refuses positions
        return positions

    def scoring(self, model, batch: Seq2SeqBatch, scored_positions=None) -> Seq2SeqScored:  # noqa: ARG002
        if scored_positions is not None:
            raise ValueError("scored_positions= is not used with Seq2SeqTask: every real target token is scored")
        pos = torch.arange(batch.targets.shape[1], device=batch.targets.device)
        return Seq2SeqScored(pos, batch.targets, batch.target_mask, src_mask=batch.mask,
                             decoder_input=batch.decoder_input)

    def run(self, model, tokens, scored: Seq2SeqScored):
        """The full forward (hooks active on the model apply): the decoder logits."""
        return model(tokens, attention_mask=scored.src_mask.long(), decoder_input_ids=scored.decoder_input,
                     use_cache=False, return_type="logits")

    def readout(self, model, resid, scored):  # noqa: ARG002 - the task interface
        return seq2seq_readout(model, resid)

    def set_reference(self, scored: Seq2SeqScored, readout: Tensor) -> None:
        scored.ref_logprobs = torch.log_softmax(readout.float(), -1)

    def metric(self, metric) -> Callable:
        if callable(metric):
            from ..core.checks import checked_metric  # noqa: PLC0415

            return metric if metric in SEQ2SEQ_METRICS.values() else checked_metric(metric)
        if metric not in SEQ2SEQ_METRICS:
            lm = " (an LM metric: Seq2SeqTask scores target tokens, use 'target_logprob')" if metric in METRICS \
                else ""
            raise ValueError(f"unknown metric {metric!r} for Seq2SeqTask{lm}; valid: {sorted(SEQ2SEQ_METRICS)} or a "
                             "callable (decoder logits [N, tgt, vocab], Seq2SeqScored) -> [N pairs]")
        return SEQ2SEQ_METRICS[metric]

    def units(self, model, kind: str, layers=None, positions=None, per_position: bool = False) -> list[Unit]:
        """The units of a stack kind (``STACK_UNIT_KINDS``), layer-major."""
        if kind not in STACK_UNIT_KINDS:
            hint = " (ambiguous on an encoder-decoder: say the stack)" if kind in UNIT_KINDS else ""
            raise ValueError(f"unit {kind!r} is not available with Seq2SeqTask{hint}; valid: {list(STACK_UNIT_KINDS)}")
        if positions is not None or per_position:
            raise ValueError("positions= / per_position= are not used with Seq2SeqTask: source and target texts "
                             "differ in length, so a position is not the same token slot across pairs")
        self.check_model(model)
        stack, hooks, axis, _ = STACK_UNIT_KINDS[kind]
        n_layers = stack_sizes(model)[0 if stack == "encoder" else 1]
        layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
        bad = [x for x in layers if not 0 <= x < n_layers]
        if bad:
            raise ValueError(f"layer(s) {bad} do not exist: the {stack} has layers 0..{n_layers - 1}")
        state = hf_state(model.original_model)
        units = []
        for layer in layers:
            for i in range(unit_count(model, kind, layer, state)):
                edits = tuple(Edit(h.format(l=layer), (i,) if axis else ()) for h in hooks)
                coords = {axis: i} if axis else {}
                units.append(Unit(kind, layer, edits, label=f"{kind} L{layer}" + "".join(
                    f" {k[0]}{v}" for k, v in coords.items()), **coords))
        return units

    def n_scored(self, batch: Seq2SeqBatch, scored) -> int:  # noqa: ARG002 - the task interface
        return batch.targets.shape[1]

    def ids(self, batch: Seq2SeqBatch) -> tuple:
        return batch.ids

    def per_value(self, rows: Tensor) -> Tensor:
        return rows

    def replay_from(self, model, base, unit: Unit, scored=None):  # noqa: ARG002 - the task interface
        """The decoder logits with ``unit``'s stack replayed from its layer (an encoder unit: the
        rest of the encoder, then the whole decoder); hooks active on the model apply."""
        return seq2seq_replay(model, base, STACK_UNIT_KINDS[unit.kind][0], unit.layer)

    # The engine hands these to the task (engine.replay.capture / evaluate_units,
    # engine.common.ablation_sources, analyses.scoring): T5 has two stacks.
    def capture(self, model, tokens, hooks, grad: bool = False, scored=None):
        return seq2seq_capture(self, model, tokens, hooks, grad=grad, scored=scored)

    def evaluate_units(self, model, base, sources, units, metric, scored, batch_size=1, progress=None,  # noqa: ARG002
                       desc: str = "interventions"):
        return seq2seq_evaluate(model, base, sources, units, metric, scored, progress, desc)

    def mean_activations(self, model, batch: Seq2SeqBatch, hooks) -> dict[str, Tensor]:
        return seq2seq_means(self, model, batch, hooks)

    def means_of(self, acts: dict[str, Tensor], batch: Seq2SeqBatch, hooks) -> dict[str, Tensor]:
        """``mean_activations`` from activations at hand: each over its own stack's real tokens."""
        return seq2seq_masked_means(acts, batch, hooks)

    def weight_norms(self, model, kind: str, p: int) -> np.ndarray:
        self.units(model, kind)  # the same checks (and order) as the units themselves
        return seq2seq_weight_norms(model, kind, p)
