"""The model zoo: small code LMs that ship inside the package as Hugging Face folders.

Bundled models load through exactly the same path as hub models (`load_model`), so the kit
works offline. Their shapes live in `SPECS`; `python -m causal_nb.zoo.train` rebuilds them.
"""

from __future__ import annotations

import json
from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"

# Flat, commented specs (nanoGPT style). The first entry is the kit's default model.
SPECS: dict[str, dict] = {
    "code-llama-4l": {
        "arch": "llama",
        "description": "4-layer Llama (RoPE, RMSNorm, gated MLP, grouped-query attention: 8 query heads share 2 key/value heads)",
        "n_layers": 4,
        "d_model": 256,
        "n_heads": 8,
        "n_kv_heads": 2,
        "d_mlp": 688,
        "vocab_size": 4096,
        "n_ctx": 512,
        "tokens": 8_000_000,  # induction heads form around 5-7M tokens at batch 16x256 (ZOO_NOTES)
    },
    "code-gpt2-2l": {
        "arch": "gpt2",
        "description": "2-layer GPT-2 (learned positions, LayerNorm, GELU MLP, multi-head attention)",
        "n_layers": 2,
        "d_model": 256,
        "n_heads": 8,
        "n_kv_heads": 8,
        "d_mlp": 1024,
        "vocab_size": 4096,
        "n_ctx": 512,
        "tokens": 6_000_000,
    },
}

# Bundled vision models: loaded by name like the LMs, cards of their own (``zoo.train_vit``).
VIT_SPECS: dict[str, dict] = {
    "vit-fashion-mnist": {
        "arch": "vit",
        "description": "4-layer ViT classifier (ViTForImageClassification) for 28x28 grey Fashion-MNIST images",
        "why": ("patch 4 gives 49 patches of 4x4 pixels (patch 7 gives 16 of 7x7, too coarse for the details "
                "that separate shirts, T-shirts, pullovers and coats); width 128 (4 heads of 32, MLP 512) because "
                "width 64 tops out at test top-1 0.899 over 16 training recipes (benchmarks/RESULTS.md) and 128 "
                "passes 0.90; depth 4 keeps an epoch of 55,000 images at ~110 s on 2 CPU cores, so its two phases "
                "train in about an hour while leaving 16 heads and 2,048 neurons to study and prune"),
        "n_layers": 4,
        "d_model": 128,
        "n_heads": 4,
        "d_mlp": 512,
        "patch_size": 4,
        "image_size": 28,
        "channels": 1,
        "n_classes": 10,
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot"],
    },
}


# Bundled encoder-decoders: loaded by name as the T5 family, cards of their own (``zoo.train_t5``).
T5_SPECS: dict[str, dict] = {
    "t5-tatoeba-en-de": {
        "arch": "t5",
        "description": ("3+3-layer T5 (T5ForConditionalGeneration, ReLU MLP, relative position buckets) translating "
                        "English to German, trained on Tatoeba sentence pairs"),
        "why": ("d_model 128 with 4 heads of 32 and MLP 512 (the usual 4x), 3 blocks per stack: ~2.1M parameters, "
                "of which 0.77M are the shared 6,000-piece embedding; a step of 64 short sentence pairs takes "
                "~0.45 s on a free CPU core, so an epoch of the 35k training pairs (554 steps) fits the 2 shared "
                "cores the kit is developed on in minutes, and the fp32 weights (~8.6 MB) fit the zoo's size "
                "budget; it leaves 36 heads (12 encoder self-, 12 decoder self-, 12 cross-attention) and 3,072 "
                "neurons to study and prune"),
        "n_layers": 3,
        "n_decoder_layers": 3,
        "d_model": 128,
        "n_heads": 4,
        "d_kv": 32,
        "d_ff": 512,
        "vocab_size": 6000,  # a Unigram vocabulary shared by English and German, trained on the train split
        "dropout": 0.1,
    },
}


def build_config(name: str):
    """The Hugging Face config of a bundled model (random init when used with `from_config`)."""
    from transformers import GPT2Config, LlamaConfig  # noqa: PLC0415 - heavy import

    s = SPECS[name]
    common = {"vocab_size": s["vocab_size"], "bos_token_id": 0, "eos_token_id": 0}
    if s["arch"] == "gpt2":
        common["pad_token_id"] = 0  # GPT-2's embedding has no padding row: this only labels the id
        return GPT2Config(
            n_layer=s["n_layers"], n_embd=s["d_model"], n_head=s["n_heads"], n_inner=s["d_mlp"],
            n_positions=s["n_ctx"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
        )
    # No pad_token_id: Llama makes it the embedding's padding_idx, whose row is frozen at zero, and
    # the pad id here is the BOS id every sequence starts with (a zero BOS stream: see the card).
    return LlamaConfig(
        num_hidden_layers=s["n_layers"], hidden_size=s["d_model"], num_attention_heads=s["n_heads"],
        num_key_value_heads=s["n_kv_heads"], intermediate_size=s["d_mlp"], max_position_embeddings=s["n_ctx"],
        rope_theta=10000.0, tie_word_embeddings=False, attention_dropout=0.0, **common,
    )


def bundled_models() -> list[str]:
    """Names of the bundled models that are present (trained) in this installation: the language
    models (default first), then the vision models (``VIT_SPECS``), then the encoder-decoders
    (``T5_SPECS``)."""
    return [n for n in [*SPECS, *VIT_SPECS, *T5_SPECS] if (MODELS_DIR / n / "config.json").exists()]


def model_card(name: str) -> dict:
    """The card (corpus, shape, training, held-out loss, induction scores) of a bundled model,
    or of a pretrained one (package, file sha256, licence, weights: `pretrained.pretrained_card`)."""
    from .pretrained import PRETRAINED, pretrained_card  # noqa: PLC0415 - the registry imports this module

    if name in PRETRAINED:
        return pretrained_card(name)
    path = MODELS_DIR / name / "card.json"
    if not path.exists():
        raise ValueError(f"no bundled model named {name!r}; bundled: {bundled_models()}")
    return json.loads(path.read_text())
