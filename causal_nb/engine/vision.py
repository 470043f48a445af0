"""Image classification with a vision transformer (ViT): the engine's task for image batches.

``ImageClassificationTask(images, labels)`` is what ``ablate``, ``patch`` and ``score`` read when
given ``task=``: the inputs are pixel values [batch, channels, height, width] (a float tensor, or
``cnb.load_fashion_mnist(...)``'s ``ImageSet``), the readout is the classifier's logits on the CLS
token after the final layer norm (``ViTForImageClassification``: ``classifier(layernorm(h)[:, 0])``),
one value per image. The block replay starts from the cached residual as for a decoder (a ViT
block is pre-LN, so the resume-after-a-sublayer fast paths apply; each is still checked
numerically per layer, ``tests/unit/test_vit.py``).

Metrics (``IMAGE_METRICS``, ``(logits [batch, classes], LabelBatch) -> [batch]``):
``"label_logprob"`` (log-probability of the true label; damage = its drop), ``"loss"`` (its
negative, the cross-entropy; the gradient methods' metric), ``"kl"`` (KL from the unmodified
run's class distribution; the ablation default), ``"accuracy"`` (1 where the top class is the
label) and ``"top1"`` (1 where the top class is the unmodified run's, as the LM's ``top1``).

Units: ``"head"`` (``attn.hook_z``), ``"neuron"`` (``mlp.hook_post``), ``"mlp"``
(``hook_mlp_out``), ``"attn"`` (``hook_attn_out``), ``"block"`` (both), optionally at chosen
token positions (0 is the CLS token, 1.. the patches in raster order).

Ablation: ``"zero"``; ``"mean"``, the activation averaged over the reference images (default:
the task's own) and over every token position, CLS included, as the LM's mean is over prompts
and positions; ``"resample"``, another image's activations (a seeded derangement of the
images, or ``reference=`` images in turn). ``patch(vit, corrupted=images, task=...)`` patches
clean (the task's images) into corrupted ones, or back with ``direction="noise"``; exact only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..core.checks import checked_metric
from ..data.prompts import TokenBatch
from ..models.families import VISION_FAMILIES, UnsupportedModelError, family
from .units import Unit, enumerate_units

__all__ = ["IMAGE_METRICS", "ImageBatch", "ImageClassificationTask", "LabelBatch", "class_logits", "image_batch",
           "vit_geometry"]


@dataclass(frozen=True)
class ImageBatch(TokenBatch):
    """Images as the engine carries them: ``tokens`` holds the pixel values (the field every
    engine input has), ``mask`` marks the ViT's token positions (CLS and patches, all real).
    A ``TokenBatch`` subclass, so the engine's functions that take a batch take it too.

    Attributes:
        tokens: pixel values [batch, channels, height, width] in the model's dtype.
        mask: True at every token position [batch, 1 + n_patches] (what mean ablation averages over).
        ids: one id per image.
    """

    tokens: Float[Tensor, "batch channel height width"]
    mask: Bool[Tensor, "batch pos"]
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def pixel_values(self) -> Tensor:
        return self.tokens

    def to(self, device) -> ImageBatch:
        return ImageBatch(self.tokens.to(device), self.mask.to(device), self.ids)


@dataclass
class LabelBatch:
    """What an image metric needs besides the logits.

    Attributes:
        labels: the true class of each image [batch].
        ref_logprobs: log-softmax of the unmodified run's logits [batch, classes] (set by the engine).
    """

    labels: Int[Tensor, " batch"]
    ref_logprobs: Float[Tensor, "batch classes"] | None = None

    def repeat(self, k: int) -> LabelBatch:
        """The batch stacked k times (k interventions in one pass)."""
        return LabelBatch(self.labels.repeat(k), None if self.ref_logprobs is None else self.ref_logprobs.repeat(k, 1))


def _up(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _need_ref(batch: LabelBatch, name: str) -> None:
    if batch.ref_logprobs is None:
        raise ValueError(f"the {name} metric needs the unmodified run's log-probs (LabelBatch.ref_logprobs)")


def label_logprob(logits, batch: LabelBatch):
    """Log-probability of each image's true label."""
    lg = _up(logits)
    return lg.gather(-1, batch.labels[:, None])[:, 0] - torch.logsumexp(lg, -1)


def label_loss(logits, batch: LabelBatch):
    """Cross-entropy of the true label (= -label_logprob)."""
    return -label_logprob(logits, batch)


label_loss.__name__ = "loss"


def class_kl(logits, batch: LabelBatch):
    """KL(unmodified run || this run) of the class distribution, in nats."""
    _need_ref(batch, "kl")
    ref = batch.ref_logprobs
    return (ref.exp() * (ref - torch.log_softmax(_up(logits), -1))).sum(-1)


class_kl.__name__ = "kl"


def accuracy(logits, batch: LabelBatch):
    """1 where the top class is the true label, else 0."""
    return (logits.argmax(-1) == batch.labels).to(torch.float32)


def agreement(logits, batch: LabelBatch):
    """1 where the top class is the unmodified run's top class, else 0."""
    _need_ref(batch, "top1")
    return (logits.argmax(-1) == batch.ref_logprobs.argmax(-1)).to(torch.float32)


agreement.__name__ = "top1"

#: The metrics of ``ImageClassificationTask``: ``(logits [batch, classes], LabelBatch) -> [batch]``.
IMAGE_METRICS: dict[str, Callable] = {"label_logprob": label_logprob, "loss": label_loss, "kl": class_kl,
                                      "accuracy": accuracy, "top1": agreement}


def vit_geometry(model) -> dict:
    """What a ViT's inputs must be: channels, image size (height, width), patch size, classes."""
    cfg = getattr(getattr(model, "original_model", model), "config", model)

    def pair(v):
        return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))

    return {"channels": int(cfg.num_channels), "size": pair(cfg.image_size), "patch": pair(cfg.patch_size),
            "n_classes": int(getattr(cfg, "num_labels", 0) or 0)}


def _as_images(images, what: str = "images") -> Tensor:
    if hasattr(images, "images") and hasattr(images, "labels"):  # an ImageSet
        images = images.images
    if isinstance(images, str) or (isinstance(images, (list, tuple)) and images and isinstance(images[0], str)):
        raise TypeError(f"{what} are text; a vision transformer reads pixel values: pass a float tensor [batch, "
                        "channels, height, width] (e.g. cnb.load_fashion_mnist('test').images). Text goes to a "
                        "language model with the default LM task (drop task=)")
    if not isinstance(images, Tensor):
        try:
            images = torch.as_tensor(images)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{what} must be a float tensor [batch, channels, height, width], got "
                            f"{type(images).__name__}") from None
    if not images.is_floating_point():
        raise TypeError(f"{what} are {images.dtype}; the model reads float pixel values: convert them (e.g. "
                        "images.float() / 255 for 0..255 bytes)")
    if images.dim() == 3:
        raise ValueError(f"{what} have shape {tuple(images.shape)}: a ViT needs [batch, channels, height, width]; "
                         "add the channel axis of grey images with images.unsqueeze(1)")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"{what} have shape {tuple(images.shape)}: a ViT needs a non-empty [batch, channels, height, "
                         "width] tensor")
    return images


def _as_labels(labels, n: int) -> Tensor:
    if labels is None:
        raise TypeError("ImageClassificationTask needs labels: ImageClassificationTask(images, labels), one class "
                        "index per image (an ImageSet carries its own)")
    t = labels if isinstance(labels, Tensor) else torch.as_tensor(labels)
    if t.is_floating_point() or t.dtype == torch.bool or t.dim() != 1:
        raise TypeError(f"labels must be a 1-d integer tensor of class indices, got {t.dtype} of shape "
                        f"{tuple(t.shape)}")
    if t.shape[0] != n:
        raise ValueError(f"{t.shape[0]} labels for {n} images: give one label per image")
    return t.long()


class ImageClassificationTask:
    """Images read through a ViT classifier: the class logits on the CLS token.

    Args:
        images: pixel values, a float tensor [batch, channels, height, width], or an ``ImageSet``
            (``cnb.load_fashion_mnist``), whose labels are then used.
        labels: the true class per image (int, 0..num_labels-1); taken from an ``ImageSet``.
        ids: one id per image (default ``img0``, ``img1``...; the ``per_prompt`` columns).

    The images are checked against the model when it is first used (``check_model``): channel
    count, image size and label range must fit its config.
    """

    name = "image-classification"
    carries_inputs = True
    # A ViT block is pre-LN (x + attn(ln1(x)), then + mlp(ln2(x))): the replay's fast paths hold
    # and are still checked numerically per layer on each base run (tests/unit/test_vit.py).
    fast_paths = True
    ablation_metric, patch_metric, gradient_metric = "kl", "label_logprob", "loss"
    higher_is_worse = frozenset({"kl", "loss"})
    units_kinds = ("head", "neuron", "mlp", "attn", "block")

    def __init__(self, images, labels=None, ids=None):
        if labels is None and hasattr(images, "labels") and hasattr(images, "images"):
            labels = images.labels
        self.images = _as_images(images)
        self.labels = _as_labels(labels, self.images.shape[0])
        self.image_ids = tuple(str(i) for i in ids) if ids is not None else \
            tuple(f"img{i}" for i in range(self.images.shape[0]))
        if len(self.image_ids) != self.images.shape[0]:
            raise ValueError(f"{len(self.image_ids)} ids for {self.images.shape[0]} images")

    def __repr__(self) -> str:
        return f"ImageClassificationTask({self.images.shape[0]} images)"

    def __len__(self) -> int:
        return self.images.shape[0]

    def check_model(self, model, what: str = "analysis") -> None:
        name = family(model)
        if name not in VISION_FAMILIES:
            raise UnsupportedModelError(
                f"ImageClassificationTask reads a vision transformer's class logits; model family {name!r} is not a "
                f"vision model (vision families: {', '.join(VISION_FAMILIES)}). A language model takes the default "
                "LM task: drop task= and pass text prompts")
        if not hasattr(model, "unembed"):
            raise UnsupportedModelError("this ViT has no classifier head (a bare ViTModel): load a "
                                        "ViTForImageClassification folder, whose classifier is the readout")
        self.check_images(model, self.images)
        g = vit_geometry(model)
        bad = self.labels[(self.labels < 0) | (self.labels >= g["n_classes"])]
        if bad.numel():
            raise ValueError(f"label(s) {sorted(set(bad.tolist()))[:5]} are outside the model's classes "
                             f"0..{g['n_classes'] - 1}: use labels in that range (or a model with "
                             f"num_labels > {int(bad.max())})")

    @staticmethod
    def check_images(model, images: Tensor, what: str = "images") -> None:
        """Raise a clear error when the images don't fit the model's channels and image size."""
        g = vit_geometry(model)
        c, h, w = images.shape[1:]
        if c != g["channels"]:
            hint = " (grey images: repeat the channel, images.expand(-1, 3, -1, -1))" if c == 1 else ""
            raise ValueError(f"{what} have {c} channel(s), the model takes {g['channels']}: give images of shape "
                             f"[batch, {g['channels']}, {g['size'][0]}, {g['size'][1]}]{hint}")
        if (h, w) != g["size"]:
            raise ValueError(f"{what} are {h}x{w}, the model takes {g['size'][0]}x{g['size'][1]}: resize them (e.g. "
                             "torch.nn.functional.interpolate(images, size=...)) to the model's image_size")

    def batch(self, model, images: Tensor, ids=None) -> ImageBatch:
        """Checked images as an ``ImageBatch`` on the model's device and dtype."""
        return image_batch(model, images, ids)

    def prepare(self, model, prompts=None, n_tokens: int | None = None) -> ImageBatch:
        if prompts is not None:
            raise ValueError(f"{self!r} carries its inputs (the images); drop the prompts argument")
        if n_tokens is not None:
            raise ValueError("n_tokens= is not used with ImageClassificationTask: a ViT's tokens are the CLS token "
                             "and the image's patches")
        self.check_model(model)
        return self.batch(model, self.images, self.image_ids)

    def reference_batch(self, model, reference) -> ImageBatch:
        """The images a mean ablation averages over: a tensor, an ``ImageSet`` or a task."""
        return image_batch(model, reference, what="reference images")

    def resample_tokens(self, model, batch: ImageBatch, reference, seed: int) -> Tensor:
        """Resample ablation's sources: another image's pixels per image (a seeded derangement
        of the batch, or the ``reference`` images in turn)."""
        if reference is None:
            if len(batch) < 2:
                raise ValueError("resample ablation needs at least 2 images (or reference images)")
            perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(seed))
            fixed = perm == torch.arange(len(batch))
            perm[fixed] = (perm[fixed] + 1) % len(batch)
            return batch.tokens[perm.to(batch.tokens.device)]
        ref = self.reference_batch(model, reference).tokens
        return ref[(torch.arange(len(batch)) % len(ref)).to(ref.device)]

    def corrupted_batch(self, model, corrupted) -> ImageBatch:
        """``patch``'s corrupted images: as many as the task's, of the same shape."""
        if isinstance(corrupted, ImageClassificationTask):
            corrupted = corrupted.images
        x = _as_images(corrupted, "corrupted images")
        if x.shape != self.images.shape:
            raise ValueError(f"corrupted images have shape {tuple(x.shape)}, the task's clean images "
                             f"{tuple(self.images.shape)}: patching pairs image i of one with image i of the other")
        return self.batch(model, x, self.image_ids)

    def scoring(self, model, batch: ImageBatch, scored_positions=None) -> LabelBatch:  # noqa: ARG002
        if scored_positions is not None:
            raise ValueError("scored_positions= is not used with ImageClassificationTask: the readout is the CLS "
                             "token's class logits")
        return LabelBatch(self.labels.to(batch.tokens.device))

    def run(self, model, tokens, scored: LabelBatch | None):
        """The bridge's full forward on the pixel values (hooks active apply); its class logits."""
        logits = model(tokens, return_type="logits")
        return logits if scored is not None else None

    def readout(self, model, resid, scored: LabelBatch):  # noqa: ARG002 - the task interface
        """The final layer norm on the CLS token, then the classifier."""
        return model.unembed(model.ln_final(resid[:, 0]))

    def set_reference(self, scored: LabelBatch, readout: Tensor) -> None:
        scored.ref_logprobs = torch.log_softmax(readout.float(), -1)

    @staticmethod
    def check_positions(positions, batch: ImageBatch) -> list[int] | None:
        """Token positions to edit as a list (None: all); 0 is the CLS token, 1.. the patches."""
        if positions is None:
            return None
        try:
            pos = [int(p) for p in positions]
        except TypeError:
            raise TypeError(f"positions= is a list of token positions, got {positions!r}") from None
        n_pos = batch.mask.shape[1]
        bad = [p for p in pos if not 0 <= p < n_pos]
        if bad or not pos:
            raise ValueError(f"positions= {bad or 'empty'}: not token positions of this ViT; 0 is the CLS token and "
                             f"1..{n_pos - 1} the patches (raster order); pass None for all")
        return pos

    def units(self, model, kind: str, layers=None, positions=None, per_position: bool = False) -> list[Unit]:
        if kind not in self.units_kinds:
            raise ValueError(f"unit {kind!r} is not available with ImageClassificationTask (a ViT has no such "
                             f"unit, or it is not wired for images); valid: {list(self.units_kinds)}")
        return enumerate_units(model, kind, layers, positions, per_position)

    def metric(self, metric) -> Callable:
        if callable(metric):
            return metric if metric in IMAGE_METRICS.values() else checked_metric(metric, per="image", hint="")
        if metric not in IMAGE_METRICS:
            raise ValueError(f"unknown metric {metric!r} for ImageClassificationTask; valid: {sorted(IMAGE_METRICS)} "
                             "or a callable (logits [batch, classes], LabelBatch) -> [batch]")
        return IMAGE_METRICS[metric]

    def n_scored(self, batch: ImageBatch, scored: LabelBatch) -> int:  # noqa: ARG002 - the task interface
        return 1  # one readout row (the CLS token) per image

    def ids(self, batch: ImageBatch) -> tuple:
        return batch.ids

    def per_value(self, rows: Tensor) -> Tensor:
        """[unit, images] first-order terms are already per image."""
        return rows


def image_batch(model, images, ids=None, what: str = "images") -> ImageBatch:
    """Images (a tensor, an ``ImageSet`` or a task) checked against a ViT, as an ``ImageBatch``
    on its device and dtype (what ``prune(..., fill="mean", reference=images)`` averages over)."""
    if isinstance(images, ImageClassificationTask):
        images, ids = images.images, images.image_ids if ids is None else ids
    images = _as_images(images, what)
    ImageClassificationTask.check_images(model, images, what)
    g = vit_geometry(model)
    n_pos = 1 + (g["size"][0] // g["patch"][0]) * (g["size"][1] // g["patch"][1])
    p = next(model.parameters())
    ids = tuple(ids) if ids is not None else tuple(f"img{i}" for i in range(images.shape[0]))
    return ImageBatch(images.to(device=p.device, dtype=p.dtype),
                      torch.ones(images.shape[0], n_pos, dtype=torch.bool, device=p.device), ids)


@torch.no_grad()
def class_logits(model, images, batch_size: int = 256) -> Float[Tensor, "n classes"]:
    """A ViT's class logits for many images (a tensor or an ``ImageSet``), ``batch_size`` at a
    time, checked against the model first; on the CPU, float32."""
    if family(model) not in VISION_FAMILIES:
        raise UnsupportedModelError(f"class_logits reads a vision transformer; model family {family(model)!r} is not "
                                    f"one (vision families: {', '.join(VISION_FAMILIES)})")
    x = _as_images(images)
    ImageClassificationTask.check_images(model, x)
    p = next(model.parameters())
    out = [model(x[i:i + batch_size].to(device=p.device, dtype=p.dtype), return_type="logits").float().cpu()
           for i in range(0, x.shape[0], int(batch_size))]
    return torch.cat(out)
