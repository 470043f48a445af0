"""Byte-level BPE tokenizer for the bundled code models, trained on the corpus's train split."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from . import corpus

SPECIAL = "<|endoftext|>"  # BOS, EOS and padding, as in GPT-2


def train_tokenizer(vocab_size: int = 4096) -> Tokenizer:
    """Train a ByteLevel BPE on the train files of both domains (held-out files excluded)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [corpus.read(f) for d in ("python", "cpp") for f in corpus.corpus_files(d) if not f.heldout]
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def save_hf_tokenizer(tok: Tokenizer, out_dir: Path, model_max_length: int) -> None:
    """Save as a Hugging Face fast tokenizer folder (TransformerLens reloads it by path)."""
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - heavy import

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL,
        eos_token=SPECIAL,
        pad_token=SPECIAL,
        unk_token=SPECIAL,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    hf.save_pretrained(str(out_dir))
