"""Train the bundled vision transformer ``vit-fashion-mnist`` (``python -m causal_nb vit train``).

The model is a small ``ViTForImageClassification`` for 28x28 grey images and 10 classes
(``VIT_SPECS["vit-fashion-mnist"]``): patch 4 (7x7 = 49 patches + CLS = 50 tokens; patch 7 gives
only 16 patches of 7x7 pixels, too coarse for the thin structures that separate shirts from
T-shirts and pullovers), width 128 with 4 heads of 32 dimensions, MLP 512 (the usual 4x), depth 4
(width 64 tops out just under 0.90 test top-1 over 16 recipes; ``benchmarks/RESULTS.md``). That is
~0.8M parameters and ~0.25 s per step of 128 images on 2 CPU cores, so a full epoch of 55,000
training images takes ~110 s and the bundled model's two phases (38 epochs) train in about an
hour (66.5 min) on the 2 cores the kit is developed on.

Training is deterministic on CPU: the data order and the augmentation (a random shift of up to 2
pixels, and a horizontal flip with probability 1/2) of epoch ``e`` come from a generator seeded
by ``(seed, e)``, AdamW with a linear warm-up then cosine decay per step. A checkpoint
(``<out>/checkpoint.pt``: weights, optimizer and scheduler state, history) is written after every
epoch, so ``--resume`` continues from the last finished epoch and ends bit-exactly where an
uninterrupted run ends (``tests/unit/test_vit_train.py``). Model selection reads only the
validation split (held out of the training file by ``load_fashion_mnist``); the test split is
read once, at the end, for the card.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.env import DeviceError, resolve_device
from ..data.images import ImageSet, load_fashion_mnist
from . import VIT_SPECS
from .training import check_run_settings, ship_folder, warmup_cosine
from .vit_card import SHAPE_FLAGS, render_vit_card, train_command

__all__ = ["FinetuneConfig", "TrainConfig", "TrainVitError", "build_vit", "check_finetune", "finetune_vit",
           "recovery_loss", "train_epoch", "train_vit", "vit_accuracy"]

CHECKPOINT = "checkpoint.pt"


class TrainVitError(ValueError):
    """A training request that cannot run as given (the message names the fix)."""


@dataclass
class TrainConfig:
    """The optimisation settings of a run (stored in the checkpoint: ``--resume`` must match them).

    Attributes:
        epochs: passes over the training split (the cosine schedule spans all of them).
        batch_size: images per step.
        lr: AdamW's peak learning rate (after ``warmup`` steps).
        weight_decay: AdamW's decoupled weight decay.
        warmup: linear warm-up steps.
        seed: the seed of the initial weights, the data order and the augmentation.
        augment: random shifts (up to 2 pixels) and horizontal flips.
        val_size: training images held out as the validation split.
        max_steps_per_epoch: stop each epoch after this many steps (tests; None: the whole split).
        spec: the model's shape (``VIT_SPECS`` entry).
        init_from: start from the weights of an earlier run's ``model/`` folder (a further
            phase with its own schedule; the card lists the earlier phases), not random init.
    """

    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 300
    seed: int = 0
    augment: bool = True
    val_size: int = 5000
    max_steps_per_epoch: int | None = None
    spec: dict = field(default_factory=lambda: dict(VIT_SPECS["vit-fashion-mnist"]))
    init_from: str | None = None


def build_vit(spec: dict, seed: int = 0):
    """A random-init ``ViTForImageClassification`` of the spec's shape (no dropout: exact replays)."""
    from transformers import ViTConfig, ViTForImageClassification  # noqa: PLC0415 - heavy import

    cfg = ViTConfig(hidden_size=spec["d_model"], num_hidden_layers=spec["n_layers"],
                    num_attention_heads=spec["n_heads"], intermediate_size=spec["d_mlp"],
                    image_size=spec["image_size"], patch_size=spec["patch_size"], num_channels=spec["channels"],
                    num_labels=spec["n_classes"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if spec.get("classes"):
        cfg.id2label = dict(enumerate(spec["classes"]))
        cfg.label2id = {c: i for i, c in enumerate(spec["classes"])}
    torch.manual_seed(seed)
    return ViTForImageClassification(cfg)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shift each image by up to 2 pixels (zero fill) and flip half of them left-right."""
    n, _, h, w = x.shape
    pad = torch.nn.functional.pad(x, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=g)
    dx = torch.randint(0, 5, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    out = pad[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(n, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@torch.no_grad()
def vit_accuracy(model, data: ImageSet, batch_size: int = 500) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) on a split."""
    model.eval()
    dev = next(model.parameters()).device  # batches follow the model (a no-op on CPU)
    correct, loss = 0, 0.0
    for i in range(0, len(data), batch_size):
        logits = model(pixel_values=data.images[i:i + batch_size].to(dev)).logits
        y = data.labels[i:i + batch_size].to(dev)
        correct += int((logits.argmax(-1) == y).sum())
        loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
    return correct / len(data), loss / len(data)


def _weights_of(folder, model) -> dict:
    """The state dict of an earlier run's model folder, checked against this run's shape."""
    from transformers import ViTForImageClassification  # noqa: PLC0415

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise TrainVitError(f"--init-from {str(folder)!r} has no config.json: pass the model/ folder of an earlier run")
    state = ViTForImageClassification.from_pretrained(str(folder)).state_dict()
    own = model.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad:
        raise TrainVitError(f"--init-from {folder}: its weights do not fit this run's shape (first mismatch {bad[0]}); "
                            "start from a model of the same spec")
    return state


def _check_config(cfg: TrainConfig) -> None:
    check_run_settings(cfg, ("epochs", "batch_size"), TrainVitError)


def _device(device) -> torch.device:
    """The training device, refused with the fix when it is not there."""
    try:
        return resolve_device(device, flag="--device", allowed=("cpu", "cuda"))
    except DeviceError as e:
        raise TrainVitError(str(e)) from None


def train_vit(out, cfg: TrainConfig | None = None, data_dir=None, resume: bool = False, progress: bool = True,
              ship: bool = False, device="cpu") -> dict:
    """Train (or resume) the ViT and write the Hugging Face folder with its card.

    Args:
        out: the run folder: ``checkpoint.pt`` after every epoch, ``model/`` (``config.json``,
            ``model.safetensors``, ``card.json``, ``README.md``) at the end.
        cfg: the settings (default ``TrainConfig()``, the bundled model's).
        data_dir: the idx files' folder (``load_fashion_mnist``'s; default Debian's).
        resume: continue from ``<out>/checkpoint.pt`` (the settings must match the checkpoint's).
        progress: a tqdm bar per epoch.
        ship: copy ``model/`` into the package's zoo (``causal_nb/zoo/models/vit-fashion-mnist``).
        device: where the model trains (``"cpu"``, ``"cuda"``); the data order and augmentation
            come from the same CPU generator on either, so a GPU run sees the same batches, but
            only a CPU run is bit-exact (``--resume`` included). The card records the device.

    Returns:
        The card (``card.json``'s content).

    Raises:
        TrainVitError: bad settings, ``resume`` without a checkpoint, or settings that differ
            from the checkpoint's.
        ImageDataError: the data is missing or malformed (the message names both routes to it).
    """
    cfg = cfg or TrainConfig()
    _check_config(cfg)
    dev = _device(device)
    bundled = VIT_SPECS["vit-fashion-mnist"]
    if ship and any(cfg.spec[k] != bundled[k] for k in SHAPE_FLAGS):
        raise TrainVitError("--ship with a shape other than the bundled one: set VIT_SPECS['vit-fashion-mnist'] in "
                            "causal_nb/zoo/__init__.py to the new shape first, so the zoo's spec and weights agree")
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    train = load_fashion_mnist("train", data_dir, val_size=cfg.val_size, seed=cfg.seed)
    val = load_fashion_mnist("val", data_dir, val_size=cfg.val_size, seed=cfg.seed)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, int(cfg.max_steps_per_epoch))
    model = build_vit(cfg.spec, cfg.seed)
    if cfg.init_from is not None:
        model.load_state_dict(_weights_of(cfg.init_from, model))
    model = model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup, cfg.epochs, steps_per_epoch))
    history, start, seconds = [], 0, 0.0
    if resume:
        if not ckpt_path.exists():
            raise TrainVitError(f"--resume: no checkpoint at {ckpt_path}; run without --resume to start, or pass the "
                                "--out folder of the run to continue")
        ck = torch.load(ckpt_path, weights_only=False, map_location=dev)
        if ck["config"] != asdict(cfg):
            diff = {k: (ck["config"].get(k), v) for k, v in asdict(cfg).items() if ck["config"].get(k) != v}
            raise TrainVitError(f"--resume: settings differ from the checkpoint's (name: (checkpoint, now)) {diff}; "
                                "resume with the checkpoint's settings, or start a new run in another --out")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        history, start, seconds = ck["history"], ck["epoch"], ck["seconds"]
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        mean_loss = train_epoch(model, opt, sched, train, epoch, batch_size=cfg.batch_size, seed=cfg.seed,
                                augment=cfg.augment, steps=steps_per_epoch, progress=progress,
                                desc=f"epoch {epoch + 1}/{cfg.epochs}")
        val_acc, val_loss = vit_accuracy(model, val)
        seconds += time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "train_loss": round(mean_loss, 5), "val_top1": round(val_acc, 5),
                        "val_loss": round(val_loss, 5), "seconds": round(seconds, 1)})
        if progress:
            print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {mean_loss:.4f}, val top-1 {val_acc:.4f}, "
                  f"{seconds / 60:.1f} min", flush=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "history": history, "epoch": epoch + 1, "seconds": seconds, "config": asdict(cfg)}, ckpt_path)
    return _write_model(model.cpu(), cfg, out / "model", history, seconds, threads, data_dir, ship, len(train), dev)


@dataclass
class FinetuneConfig:
    """Recovery fine-tuning of a (pruned) ViT: the training loop of ``train_vit`` on a short schedule.

    Attributes:
        epochs: passes over the training split (the cosine schedule spans them all).
        steps: optimizer steps per epoch (None: the whole split; a few for tests and quick runs).
        batch_size: images per step.
        lr: AdamW's peak learning rate (lower than training's: the weights are already good).
        weight_decay: AdamW's decoupled weight decay.
        warmup: linear warm-up steps.
        seed: the data order's and the augmentation's seed.
        augment: random shifts and flips, as in training.
        distill: weight of the distillation term (0: cross-entropy only): the loss is
            ``(1 - distill) * CE + distill * T^2 * KL(teacher || student)`` at temperature ``T``
            (Hinton et al. 2015), the teacher being the dense model (``finetune_vit(teacher=)``).
        temperature: the distillation temperature ``T``.
    """

    epochs: int = 1
    steps: int | None = None
    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.05
    warmup: int = 50
    seed: int = 0
    augment: bool = True
    distill: float = 0.0
    temperature: float = 2.0


def recovery_loss(logits: Float[Tensor, "batch cls"], labels: Int[Tensor, " batch"],
                  teacher_logits: Float[Tensor, "batch cls"] | None = None, distill: float = 0.0,
                  temperature: float = 2.0) -> Tensor:
    """Cross-entropy, mixed with distillation from ``teacher_logits`` when ``distill > 0``:
    ``(1 - distill) * CE + distill * T^2 * KL(softmax(t / T) || softmax(s / T))`` (the ``T^2``
    keeps the soft term's gradients on the scale of the hard one's)."""
    ce = torch.nn.functional.cross_entropy(logits, labels)
    if distill == 0:
        return ce
    t = temperature
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits / t, -1), torch.log_softmax(teacher_logits / t, -1),
                                    log_target=True, reduction="batchmean")
    return (1 - distill) * ce + distill * t * t * kl


def check_finetune(cfg: FinetuneConfig) -> None:
    """Refuse fine-tuning settings that cannot run (``TrainVitError`` naming the fix)."""
    for name, least in (("epochs", 1), ("batch_size", 1), ("warmup", 0)):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < least:
            raise TrainVitError(f"fine-tuning {name}={v!r} must be an integer of at least {least} "
                                f"(e.g. --finetune-epochs 1)")
    if not 0 <= cfg.distill <= 1:
        raise TrainVitError(f"fine-tuning distill={cfg.distill!r} must be in [0, 1] (0: cross-entropy only, 1: "
                            "the teacher's soft labels only)")
    if cfg.temperature <= 0:
        raise TrainVitError(f"fine-tuning temperature={cfg.temperature!r} must be > 0 (e.g. 2)")
    if cfg.steps is not None and (not isinstance(cfg.steps, int) or cfg.steps < 1):
        raise TrainVitError(f"fine-tuning steps={cfg.steps!r} must be a positive integer, or None for whole epochs")
    check_run_settings(cfg, (), TrainVitError, label="fine-tuning ")


def finetune_vit(model, train: ImageSet, val: ImageSet | None = None, cfg: FinetuneConfig | None = None,
                 progress: bool = True, teacher=None) -> dict:
    """Recovery fine-tuning, in place: ``cfg.epochs`` of ``train_epoch`` on the training split.

    Seeded and deterministic on CPU (the same model, data and settings give bit-equal weights).
    A physically pruned model keeps its shapes: only the surviving weights are trained.

    Args:
        model: a Hugging Face ``ViTForImageClassification`` (e.g. ``cnb.models.hf.plain_hf`` of a
            pruned bridge, or a Torch-Pruning result); trained in place, left in eval mode.
        train: the training images (never the validation or test split).
        val: images whose top-1 is recorded before and after (the validation split).
        cfg: the settings (default ``FinetuneConfig()``).
        progress: a tqdm bar per epoch.
        teacher: the dense model whose logits the student is distilled towards when
            ``cfg.distill > 0`` (a Hugging Face ViT; kept in eval mode, not trained).

    Returns:
        The record: settings, ``train_loss`` per epoch, ``val_top1_before``/``val_top1_after``
        (None without ``val``), ``seconds``.

    Raises:
        TrainVitError: bad settings (the message names the fix).
    """
    cfg = cfg or FinetuneConfig()
    check_finetune(cfg)
    if (cfg.distill > 0) != (teacher is not None):
        raise TrainVitError("distill > 0 needs teacher= (the dense model)" if teacher is None else
                            "teacher= is used only with distill > 0 (FinetuneConfig(distill=0.5), --finetune-distill)")
    if teacher is not None:
        teacher.eval()
    if len(train) == 0:
        raise TrainVitError("fine-tuning got no training images: pass the training split (load_fashion_mnist('train'))")
    steps = math.ceil(len(train) / cfg.batch_size)
    steps = min(steps, cfg.steps) if cfg.steps is not None else steps
    before = vit_accuracy(model, val)[0] if val is not None else None
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup, cfg.epochs, steps))
    t0, losses = time.perf_counter(), []
    for epoch in range(cfg.epochs):
        losses.append(round(train_epoch(model, opt, sched, train, epoch, batch_size=cfg.batch_size, seed=cfg.seed,
                                        augment=cfg.augment, steps=steps, progress=progress,
                                        desc=f"fine-tune {epoch + 1}/{cfg.epochs}", teacher=teacher,
                                        distill=cfg.distill, temperature=cfg.temperature), 5))
    model.eval()
    after = vit_accuracy(model, val)[0] if val is not None else None
    return {"settings": asdict(cfg), "steps_per_epoch": steps, "n_train": len(train),
            "n_val": len(val) if val is not None else 0, "train_loss": losses,
            "val_top1_before": None if before is None else round(before, 5),
            "val_top1_after": None if after is None else round(after, 5),
            "seconds": round(time.perf_counter() - t0, 1)}


def train_epoch(model, opt, sched, train: ImageSet, epoch: int, *, batch_size: int, seed: int, augment: bool,
                steps: int, progress: bool = True, desc: str = "", teacher=None, distill: float = 0.0,
                temperature: float = 2.0) -> float:
    """One pass of the training loop (the bundled model's and the recovery fine-tuning's).

    The data order and the augmentation come from a generator seeded by ``(seed, epoch)``, so an
    epoch replays bit-exactly on CPU; ``sched`` steps once per optimizer step.

    Args:
        model: a Hugging Face ``ViTForImageClassification`` (any shape, pruned or not).
        opt: its optimizer.
        sched: the learning-rate scheduler (stepped per step).
        train: the training images (never the validation or test split).
        epoch: the epoch's index (seeds its order and augmentation).
        batch_size: images per step.
        seed: the run's seed.
        augment: random shifts (up to 2 pixels) and horizontal flips.
        steps: optimizer steps in this epoch (at most one pass over ``train``).
        progress: a tqdm bar.
        desc: the bar's label.
        teacher, distill, temperature: distillation from ``teacher``'s logits on the same
            (augmented) images (``recovery_loss``); none by default.

    Returns:
        The mean training loss over the epoch's images.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(train), generator=g)
    dev = next(model.parameters()).device
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    total, n = 0.0, 0
    for step in bar:
        idx = order[step * batch_size:(step + 1) * batch_size]
        x, y = train.images[idx], train.labels[idx]
        if augment:
            x = _augment(x, g)
        # The order and augmentation stay on the CPU generator (the same images on any device);
        # only the batch moves to the model's device.
        x, y = x.to(dev), y.to(dev)
        if teacher is None:
            loss = recovery_loss(model(pixel_values=x).logits, y)
        else:
            with torch.no_grad():
                soft = teacher(pixel_values=x).logits
            loss = recovery_loss(model(pixel_values=x).logits, y, soft, distill, temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total, n = total + loss.item() * len(y), n + len(y)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return total / max(n, 1)


def _write_model(model, cfg: TrainConfig, folder: Path, history: list, seconds: float, threads: int, data_dir,
                 ship: bool, n_train: int, dev: torch.device) -> dict:
    test = load_fashion_mnist("test", data_dir)
    test_acc, test_loss = vit_accuracy(model, test)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    spec = cfg.spec
    card = {"name": "vit-fashion-mnist", "architecture": "vit",
            "shape": {k: spec[k] for k in ("n_layers", "d_model", "n_heads", "d_mlp", "patch_size", "image_size",
                                           "channels", "n_classes")},
            "params": int(sum(p.numel() for p in model.parameters())),
            "description": spec["description"], "why": spec["why"],
            "data": {"name": "Fashion-MNIST", "source": str(test.source), "train": n_train,
                     "val_size": cfg.val_size, "split_seed": cfg.seed, "test": len(test)},
            "training": {**{k: v for k, v in asdict(cfg).items() if k != "spec"}, "seconds": round(seconds, 1),
                         "device": str(dev) if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})",
                         "threads": threads, "command": train_command(cfg, TrainConfig(), dev)},
            "history": history,
            "val_top1": history[-1]["val_top1"] if history else None,
            "test_top1": round(test_acc, 5), "test_loss": round(test_loss, 5)}
    if cfg.init_from is not None and (Path(cfg.init_from) / "card.json").exists():
        prev = json.loads((Path(cfg.init_from) / "card.json").read_text())
        card["phases"] = [*prev.get("phases", [{"training": prev["training"], "history": prev["history"],
                                                 "test_top1": prev["test_top1"]}]),
                          {"training": card["training"], "history": history, "test_top1": card["test_top1"]}]
        card["training"] = {**card["training"], "seconds_all_phases": round(sum(
            p["training"]["seconds"] for p in card["phases"]), 1)}
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (folder / "README.md").write_text(render_vit_card(card))
    if ship:
        ship_model(folder)
    return card


def ship_model(folder) -> Path:
    """Copy a trained model folder into the package zoo (``vit-fashion-mnist``)."""
    return ship_folder(folder, "vit-fashion-mnist")
