"""A tiny random-weight T5 folder, built offline (tests, examples of the seq2seq task).

The tokenizer is ``transformers``' own ``T5Tokenizer`` (a ``tokenizers`` Unigram model, the
class T5 checkpoints use) built from a word list: ``<pad>`` = 0 (also T5's decoder start
token), ``</s>`` = 1 (appended to every text), ``<unk>`` = 2, ``▁``, the words as ``▁word``
pieces and single characters, so any lower-case text of letters, digits and common punctuation
tokenizes (unknown words fall back to characters). No SentencePiece model or download is needed.
"""

from __future__ import annotations

import string
from pathlib import Path

__all__ = ["TINY_T5_WORDS", "make_tiny_t5"]

#: The default word pieces: a few English and German words (sentence pairs of the tests).
TINY_T5_WORDS: tuple[str, ...] = tuple(
    "the a cat dog sat on mat runs birds sing in morning light we eat bread is red blue house small big and "
    "die der das ein eine katze hund sass auf matte lauft vogel singen am morgen wir essen brot ist rot blau "
    "haus klein gross und".split())


def make_tiny_t5(folder: str | Path, n_layers: int = 2, n_decoder_layers: int | None = None, d_model: int = 32,
                 n_heads: int = 4, d_kv: int = 8, d_ff: int = 64, words=TINY_T5_WORDS, gated: bool = False,
                 seed: int = 0) -> Path:
    """Write a random-init ``T5ForConditionalGeneration`` folder with its tokenizer.

    Args:
        folder: output folder (created).
        n_layers, n_decoder_layers: encoder and decoder blocks (decoder default: ``n_layers``).
        d_model, n_heads, d_kv, d_ff: widths (``d_kv`` is one head's width).
        words: the tokenizer's word pieces (besides single characters).
        gated: a gated-GELU MLP (``wi_0``/``wi_1``, as Flan-T5) instead of ReLU ``wi``.
        seed: torch seed for the random weights.

    Returns:
        The folder.
    """
    import torch  # noqa: PLC0415
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer  # noqa: PLC0415

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ".,!?'-"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in dict.fromkeys(words)]
    vocab += [(c, -5.0) for c in chars] + [("\u2581" + c, -4.0) for c in chars]
    vocab = list(dict(vocab).items())  # a piece once
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=n_layers,
                   num_decoder_layers=n_decoder_layers, num_heads=n_heads, relative_attention_num_buckets=8,
                   relative_attention_max_distance=16, dropout_rate=0.0,
                   feed_forward_proj="gated-gelu" if gated else "relu", decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1)
    torch.manual_seed(seed)
    T5ForConditionalGeneration(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
