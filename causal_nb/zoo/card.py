"""Render a bundled model's card (card.json) as a Markdown model card."""

from __future__ import annotations


def _table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _phases(tr: dict) -> str:
    phases = tr.get("phases", [])
    if len(phases) < 2:
        return ""
    parts = [f"{p['tokens'] / 1e6:.1f}M tokens at peak lr {p['lr']} ({p['seconds'] / 60:.0f} min)" for p in phases]
    return "- Phases (each: warmup, then cosine decay to 10%; the later ones start from the earlier weights): " + "; then ".join(parts) + "\n"


def render_card(card: dict) -> str:
    """Markdown model card from the numbers the training script measured."""
    tr, ind = card["training"], card["induction"]
    loss_rows = [
        [d, card["heldout_loss"][d], card["unigram_loss"][d], round(card["unigram_loss"][d] - card["heldout_loss"][d], 3)]
        for d in card["heldout_loss"]
    ]
    corpus_rows = [
        [d, s["train_files"], f"{s['train_bytes'] / 1e6:.1f} MB", s["heldout_files"], f"{s['heldout_bytes'] / 1e6:.2f} MB",
         card["corpus_tokens"][f"{d}_train"], card["corpus_tokens"][f"{d}_heldout"]]
        for d, s in card["corpus"].items()
    ]
    head_rows = [
        [layer, " ".join(f"{v:.2f}" for v in prev), " ".join(f"{v:.2f}" for v in indl)]
        for layer, (prev, indl) in enumerate(zip(ind["prev_token_scores"], ind["induction_scores"]))
    ]
    prog_rows = [[r["step"], r["tokens"], r["gap"], r["max_prev_token"], r["max_induction"]] for r in card["progress"]]
    shape = ", ".join(f"{k}={v}" for k, v in card["shape"].items())
    return f"""# {card['name']}

{card['description']}. Bundled with causal_nb; trained by `python -m causal_nb.zoo.train --model {card['name']}`.

- Shape: {shape}
- Tokenizer: {card['tokenizer']['type']}, vocab {card['tokenizer']['vocab_size']}, `{card['tokenizer']['special']}` as BOS/EOS/pad
- Training: {tr['tokens']:,} tokens ({tr['steps']} steps of {tr['batch']}x{tr['seq']}), AdamW lr {tr['lr']}, warmup {tr['warmup']}, cosine, seed {tr['seed']}; {tr['seconds'] / 60:.1f} min on {tr['device']} ({tr['threads']} threads)
{_phases(tr)}- Weights: fp16 safetensors

## Corpus (held out by file)
Python: the CPython standard library without its tests. C++: libstdc++ headers and torch's bundled C/C++ headers.
{_table(corpus_rows, ['domain', 'train files', 'train size', 'held-out files', 'held-out size', 'train tokens', 'held-out tokens'])}

## Held-out loss (nats/token) vs the unigram baseline
{_table(loss_rows, ['domain', 'model', 'unigram', 'margin'])}

Domain classification from in-context loss (a held-out chunk is assigned the domain whose
train-split prefix makes it likelier): accuracy **{card['domain_classification_accuracy']:.3f}**.

## Heads that do recognisable jobs
Repeated random tokens (BOS + r + r, |r| = 50): loss on the first copy {ind['loss_first_copy']}, on the
second copy {ind['loss_second_copy']} (gap **{ind['gap']}** nats; uniform guessing is {ind['uniform_baseline_loss']}).
Best previous-token head {ind['max_prev_token']}, best induction head {ind['max_induction']}
(mean attention to the previous token / to the token after the earlier occurrence).

{_table(head_rows, ['layer', 'previous-token score per head', 'induction score per head'])}

## Training progress
{_table(prog_rows, ['step', 'tokens', 'gap', 'max prev-token', 'max induction'])}
"""
