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

#: The architectures ``make_tiny_model`` can write (Hugging Face ``model_type`` names).
TINY_ARCHS = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "bloom", "opt", "gpt_neox")


def _config(*args, overrides: dict | None = None):
    cfg = _base_config(*args)
    for k, v in (overrides or {}).items():
        if not hasattr(cfg, k):
            raise ValueError(f"{type(cfg).__name__} has no option {k!r}")
        setattr(cfg, k, v)
    return cfg


def _base_config(arch: str, n_layers: int, d_model: int, n_heads: int, n_kv_heads: int | None, d_mlp: int,
            head_dim: int | None, n_ctx: int, common: dict):
    import transformers  # noqa: PLC0415

    kv = n_kv_heads or n_heads
    if arch == "gpt2":
        return transformers.GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_inner=d_mlp,
                                       n_positions=n_ctx, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if arch == "bloom":
        return transformers.BloomConfig(n_layer=n_layers, hidden_size=d_model, n_head=n_heads, **common)
    if arch == "opt":
        return transformers.OPTConfig(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                                      ffn_dim=d_mlp, word_embed_proj_dim=d_model, max_position_embeddings=n_ctx,
                                      dropout=0.0, attention_dropout=0.0, **common)
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                                          intermediate_size=d_mlp, max_position_embeddings=n_ctx, rotary_pct=0.25,
                                          use_parallel_residual=True, **common)
    llama_like = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
                  "gemma": "GemmaConfig", "gemma2": "Gemma2Config"}
    if arch not in llama_like:
        raise ValueError(f"unknown arch {arch!r}; use one of {TINY_ARCHS}")
    extra = {"head_dim": head_dim} if head_dim else {}
    if arch in ("gemma", "gemma2"):
        extra.setdefault("head_dim", d_model // n_heads)
    return getattr(transformers, llama_like[arch])(
        num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads, num_key_value_heads=kv,
        intermediate_size=d_mlp, max_position_embeddings=n_ctx, tie_word_embeddings=arch.startswith("gemma"),
        **extra, **common)


def make_tiny_model(folder: str | Path, arch: str = "gpt2", n_layers: int = 2, d_model: int = 32, n_heads: int = 4,
                    n_kv_heads: int | None = None, d_mlp: int = 64, vocab_size: int = 300, n_ctx: int = 128,
                    seed: int = 0, head_dim: int | None = None, init_std: float | None = None,
                    config: dict | None = None) -> Path:
    """Write a random-init model folder of one of ``TINY_ARCHS`` with a small byte-level BPE tokenizer.

    Args:
        folder: output folder (created).
        arch: a Hugging Face ``model_type`` from ``TINY_ARCHS``. Llama-style families
            (llama, mistral, qwen2, qwen3, gemma, gemma2) get ``n_kv_heads`` key/value heads
            (GQA when fewer than ``n_heads``); BLOOM ignores ``d_mlp`` (it is 4 x ``d_model``).
        head_dim: per-head width for the Llama-style families (default ``d_model // n_heads``;
            Qwen3 and Gemma checkpoints often differ from that).
        seed: torch seed for the random weights.
        init_std: redraw every weight from N(0, init_std) (vectors: 2 x init_std, norm
            scales around 1), so norms and biases are not the library's identity init and a
            test sees them; default keeps the library's init.
        config: further config options, set on the family's config (e.g. OPT's
            ``do_layer_norm_before=False``, GPT-NeoX's ``use_parallel_residual=False``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

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
    cfg = _config(arch, n_layers, d_model, n_heads, n_kv_heads, d_mlp, head_dim, n_ctx, common, overrides=config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    if init_std:
        with torch.no_grad():
            for name, p in model.named_parameters():
                vec = p.dim() == 1
                p.normal_(0.0, 2 * init_std if vec else init_std)
                if vec and "norm" in name and not name.endswith("bias"):
                    p.add_(0.0 if arch.startswith("gemma") else 1.0)  # Gemma's norms scale by 1 + weight
    model.save_pretrained(str(folder), safe_serialization=True)
    save_hf_tokenizer(tok, folder, model_max_length=n_ctx)
    return folder


#: Sentences the tiny BERT's WordPiece vocabulary is trained on (and good test inputs).
BERT_TEXT = ("a man is playing a guitar . someone plays an instrument . the stock market fell sharply today . "
             "the cat sat on the mat . a dog runs in the park . is it raining ? she reads a book .")


def make_tiny_bert(folder: str | Path, n_layers: int = 2, d_model: int = 32, n_heads: int = 4, d_mlp: int = 64,
                   seed: int = 0, sentence_transformers: bool = True) -> Path:
    """Write a random-init BERT (``BertForMaskedLM``) folder with a small WordPiece tokenizer.

    Args:
        sentence_transformers: also write the sentence-transformers files (``modules.json`` with
            a Normalize module, ``1_Pooling/config.json`` with mean pooling,
            ``sentence_bert_config.json`` with ``max_seq_length`` 32), as all-MiniLM-L6-v2 has.
    """
    import json  # noqa: PLC0415

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers  # noqa: PLC0415
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast  # noqa: PLC0415

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([BERT_TEXT] * 4, trainer=trainers.WordPieceTrainer(vocab_size=200, special_tokens=special,
                                                                                show_progress=False))
    vocab = tok.get_vocab()
    # a BERT tokenizer built from the vocabulary adds [CLS] ... [SEP] as BERT's own does
    fast = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=64)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=d_model, num_hidden_layers=n_layers,
                     num_attention_heads=n_heads, intermediate_size=d_mlp, max_position_embeddings=64,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    torch.manual_seed(seed)
    BertForMaskedLM(cfg).save_pretrained(str(folder), safe_serialization=True)
    fast.save_pretrained(str(folder))
    if sentence_transformers:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": d_model, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
             "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    return folder


def make_tiny_vit(folder: str | Path, n_layers: int = 2, d_model: int = 32, n_heads: int = 4, d_mlp: int = 64,
                  image_size: int = 28, patch_size: int = 7, channels: int = 1, n_classes: int = 10,
                  seed: int = 0, init_std: float = 0.2) -> Path:
    """Write a random-init ``ViTForImageClassification`` folder (no tokenizer: it reads pixels).

    Args:
        init_std: the weights' init scale (``initializer_range``). Hugging Face's 0.02 leaves a
            random tiny ViT nearly constant in its input (every unit's effect ~1e-4); 0.2 makes
            heads and neurons matter, so exactness tests can fail.
    """
    from transformers import ViTConfig, ViTForImageClassification  # noqa: PLC0415

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = ViTConfig(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                    intermediate_size=d_mlp, image_size=image_size, patch_size=patch_size, num_channels=channels,
                    num_labels=n_classes, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    initializer_range=init_std)
    torch.manual_seed(seed)
    ViTForImageClassification(cfg).save_pretrained(str(folder), safe_serialization=True)
    return folder
