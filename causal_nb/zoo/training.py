"""Pieces the kit's trainers of bundled models share (``train_vit``, ``train_t5``)."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

from . import MODELS_DIR

__all__ = ["check_run_settings", "phase_lines", "ship_folder", "warmup_cosine"]


def warmup_cosine(warmup: int, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """``LambdaLR``'s factor: linear warm-up over ``warmup`` steps, then a cosine to 0 at the end
    of ``epochs * steps_per_epoch`` steps (held at 0 after)."""
    total = max(1, epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return factor


def phase_lines(card: dict, result: Callable[[dict], str], carried: str = "weights") -> str:
    """The card's list of training phases (empty for a one-phase run): each phase's command, its
    minutes and ``result(phase)`` (e.g. its test score), then the total over all phases.

    Args:
        card: a trained model's card with ``phases`` and ``training.seconds_all_phases``.
        result: the phase's measured outcome as text (``"test top-1 0.8941"``).
        carried: what each later phase starts from (``"weights"``, ``"weights and tokenizer"``).
    """
    if not card.get("phases"):
        return ""
    lines = [f"  - phase {i + 1}: `{p['training']['command']}` ({p['training']['seconds'] / 60:.1f} min, "
             f"{result(p)})" for i, p in enumerate(card["phases"])]
    return (f"\n- Phases (each later one starts from the earlier one's {carried}; "
            f"{card['training']['seconds_all_phases'] / 60:.1f} min in all):\n" + "\n".join(lines))


def check_run_settings(cfg, at_least_one: tuple[str, ...], error: type[Exception], label: str = "") -> None:
    """Raise ``error`` naming the field when one of ``at_least_one`` is below 1, ``cfg.lr`` is not
    positive, or ``cfg.weight_decay`` (where the settings have one) is negative.

    Args:
        cfg: the run's settings (a dataclass).
        at_least_one: integer fields that must be at least 1.
        error: the exception the caller raises (its module's ``...Error``).
        label: a prefix naming the settings in the message (e.g. ``"fine-tuning "``).
    """
    for name in at_least_one:
        if int(getattr(cfg, name)) < 1:
            raise error(f"{label}{name}={getattr(cfg, name)} must be at least 1")
    if not cfg.lr > 0:
        raise error(f"{label}lr={cfg.lr} must be positive (e.g. --lr 1e-3)")
    # torch's AdamW refuses a negative decay too, but only once the optimizer is built
    if not getattr(cfg, "weight_decay", 0.0) >= 0:
        raise error(f"{label}weight_decay={cfg.weight_decay} must be at least 0 (e.g. --weight-decay 0.05)")


def ship_folder(folder, name: str) -> Path:
    """Copy a trained model folder's files into the package zoo as ``name``."""
    dest = MODELS_DIR / name
    dest.mkdir(parents=True, exist_ok=True)
    for f in Path(folder).iterdir():
        shutil.copy2(f, dest / f.name)
    return dest
