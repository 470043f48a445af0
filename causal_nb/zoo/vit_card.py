"""The bundled ViT's card and command line, and the shapes ``vit train`` accepts (``--d-model`` ...)."""

from __future__ import annotations

from . import VIT_SPECS
from .training import phase_lines

__all__ = ["SHAPE_FLAGS", "ShapeError", "render_vit_card", "shape_spec", "train_command"]


class ShapeError(ValueError):
    """A model shape that cannot be built (the message names the flag and the fix)."""


#: ``vit train``'s shape flags and the spec keys they set.
SHAPE_FLAGS = {"n_layers": "--n-layers", "d_model": "--d-model", "n_heads": "--n-heads", "d_mlp": "--d-mlp",
               "patch_size": "--patch-size"}


def shape_spec(**shape) -> dict:
    """The bundled ViT's spec with some of its shape changed (``n_layers``, ``d_model``, ``n_heads``,
    ``d_mlp``, ``patch_size``; None keeps the bundled value), checked, described by its shape.

    Raises:
        ShapeError: an unknown key, a size below 1, ``d_model`` not divisible by ``n_heads``, or
            a patch size that does not tile the 28x28 image (each names the fix).
    """
    spec = dict(VIT_SPECS["vit-fashion-mnist"])
    bad = [k for k in shape if k not in SHAPE_FLAGS]
    if bad:
        raise ShapeError(f"unknown shape keys {bad}; valid: {list(SHAPE_FLAGS)}")
    given = {k: v for k, v in shape.items() if v is not None}
    for k, v in given.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ShapeError(f"{SHAPE_FLAGS[k]} {v!r} must be a positive integer")
    if not given or all(spec[k] == v for k, v in given.items()):
        return spec
    spec.update(given)
    if spec["d_model"] % spec["n_heads"]:
        raise ShapeError(f"--d-model {spec['d_model']} is not divisible by --n-heads {spec['n_heads']}: pick "
                            "them so each head gets d_model / n_heads dimensions")
    if spec["image_size"] % spec["patch_size"]:
        raise ShapeError(f"--patch-size {spec['patch_size']} does not tile the {spec['image_size']}x"
                            f"{spec['image_size']} image: use a divisor of {spec['image_size']} (4, 7, 14)")
    spec["description"] = (f"{spec['n_layers']}-layer ViT classifier (ViTForImageClassification) for 28x28 grey "
                           f"Fashion-MNIST images, d_model {spec['d_model']}")
    spec["why"] = "a shape given on the command line (" + " ".join(
        f"{SHAPE_FLAGS[k]} {v}" for k, v in given.items()) + "), not the bundled one"
    return spec


def train_command(cfg, defaults, dev=None) -> str:
    """The ``vit train`` command line that reproduces a run: ``cfg``'s settings that differ from
    ``defaults`` (a default ``TrainConfig``) spelled out, the shape flags and ``--device`` included."""
    d, parts = defaults, [f"--epochs {cfg.epochs}"]
    for name, flag in (("batch_size", "--batch-size"), ("lr", "--lr"), ("seed", "--seed"), ("val_size", "--val-size"),
                       ("warmup", "--warmup"), ("weight_decay", "--weight-decay"), ("init_from", "--init-from")):
        if getattr(cfg, name) != getattr(d, name):
            parts.append(f"{flag} {getattr(cfg, name)}")
    if not cfg.augment:
        parts.append("--no-augment")
    bundled = VIT_SPECS["vit-fashion-mnist"]
    parts += [f"{flag} {cfg.spec[k]}" for k, flag in SHAPE_FLAGS.items() if cfg.spec[k] != bundled[k]]
    if dev is not None and dev.type != "cpu":
        parts.append(f"--device {dev}")
    return "nice -n 10 python -m causal_nb vit train " + " ".join(parts)


def render_vit_card(card: dict) -> str:
    """The Markdown model card of the bundled ViT, from the numbers training measured."""
    tr, s = card["training"], card["shape"]
    rows = "\n".join(f"| {h['epoch']} | {h['train_loss']} | {h['val_top1']} | {h['val_loss']} | {h['seconds'] / 60:.1f} |"
                     for h in card["history"])
    return f"""# {card['name']}

{card['description']}. Bundled with causal_nb; loads with `cnb.load_model("{card['name']}")` as a
TransformerBridge (family `vit`), read with `cnb.ImageClassificationTask(images, labels)`.

- Shape: patch {s['patch_size']} on {s['image_size']}x{s['image_size']}x{s['channels']} images, {s['n_layers']} layers,
  d_model {s['d_model']}, {s['n_heads']} heads, MLP {s['d_mlp']}, {s['n_classes']} classes; {card['params']:,} parameters
- Why this shape: {card['why']}
- Inputs: pixel values in [0, 1] as `cnb.load_fashion_mnist(...)` gives them (no normalisation)
- Data: Fashion-MNIST; {card['data']['val_size']} training images held out as validation (seed
  {card['data']['split_seed']}), the 10,000 t10k images as test (read only for the numbers on this card, after each phase)
- Training: {tr['epochs']} epochs, batch {tr['batch_size']}, AdamW lr {tr['lr']} (warm-up {tr['warmup']} steps, cosine),
  weight decay {tr['weight_decay']}, augmentation {'shift <= 2 px + horizontal flip' if tr['augment'] else 'none'},
  seed {tr['seed']}; **{tr['seconds'] / 60:.1f} min** on {tr['device']} ({tr['threads']} thread(s), machine shared)
- Command: `{tr['command']}`{phase_lines(card, lambda p: f"test top-1 {p['test_top1']:.4f}")}
- Weights: fp32 safetensors

## Accuracy
Test top-1 **{card['test_top1']:.4f}** (cross-entropy {card['test_loss']:.4f}); final validation top-1 {card['val_top1']}.

## Training progress
| epoch | train loss | val top-1 | val loss | minutes |
|---|---|---|---|---|
{rows}
"""




