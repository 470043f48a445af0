"""Tiny random-init Hugging Face model folders, for tests and for trying hub-style loading offline.

`make_tiny_model(folder, arch)` writes a `save_pretrained` folder (config, safetensors,
tokenizer) that `load_model(folder)` loads through the same code path as a hub download.
"""

from __future__ import annotations

from pathlib import Path

import torch

_TEXT = (
    "def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"
    "#include <vector>\nint main() { std::vector<int> v; for (int i = 0; i < 10; ++i) v.push_back(i); return 0; }\n"
    "The market rose as interest rates fell. The patient was given 5 mg of the drug twice a day.\n"
)


def make_tiny_model(folder: str | Path, arch: str = "gpt2", n_layers: int = 2, d_model: int = 32, n_heads: int = 4,
                    n_kv_heads: int | None = None, d_mlp: int = 64, vocab_size: int = 300, n_ctx: int = 128,
                    seed: int = 0) -> Path:
    """Write a random-init GPT-2 or Llama folder with a small byte-level BPE tokenizer.

    Args:
        folder: output folder (created).
        arch: ``"gpt2"`` or ``"llama"``; Llama gets ``n_kv_heads`` key/value heads (GQA when
            fewer than ``n_heads``).
        seed: torch seed for the random weights.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig  # noqa: PLC0415

    from .tokenizer import SPECIAL, save_hf_tokenizer  # noqa: PLC0415

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_TEXT] * 4, trainer=trainer)
    vocab = tok.get_vocab_size()
    common = {"vocab_size": vocab, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    if arch == "gpt2":
        cfg = GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_inner=d_mlp, n_positions=n_ctx,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    elif arch == "llama":
        cfg = LlamaConfig(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                          num_key_value_heads=n_kv_heads or n_heads, intermediate_size=d_mlp,
                          max_position_embeddings=n_ctx, tie_word_embeddings=False, **common)
    else:
        raise ValueError(f"unknown arch {arch!r}; use 'gpt2' or 'llama'")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(str(folder), safe_serialization=True)
    save_hf_tokenizer(tok, folder, model_max_length=n_ctx)
    return folder
