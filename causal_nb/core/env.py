"""Reproducible sessions: one call seeds everything and fixes the output settings that nbval
compares (deterministic torch kernels, plotly's JSON renderer, progress bars on or off)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["DeviceError", "resolve_device", "setup", "progress_enabled"]


class DeviceError(ValueError):
    """A device that is not a torch device, not supported here, or CUDA where there is none."""


def resolve_device(device: str | torch.device = "auto", *, flag: str = "device",
                   allowed: tuple[str, ...] | None = None) -> torch.device:
    """The torch device a call runs on, refused with the fix when it cannot be used.

    Args:
        device: ``"auto"`` (CUDA when present, else CPU), or anything ``torch.device`` reads.
        flag: how the caller names the setting in messages (``"device"``, ``"--device"``).
        allowed: the device types the caller supports (``None``: any torch knows).

    Raises:
        DeviceError: not a torch device, a type outside ``allowed``, or CUDA asked for on a
            machine without it (instead of torch's error at the first tensor moved there).
    """
    named = f"{flag} {device}" if flag.startswith("--") else f"{flag}={str(device)!r}"
    fix = (lambda d: f"{flag} {d}") if flag.startswith("--") else (lambda d: f"{flag}={d!r}")
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"{named} is not a torch device ({e}); pass {fix('cpu')}, {fix('cuda')} or "
                          f"{fix('cuda:N')}") from None
    if allowed is not None and dev.type not in allowed:
        raise DeviceError(f"{named}: only {' and '.join(allowed)} are supported; pass {fix(allowed[0])}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{named}: this machine has no CUDA device (torch.cuda.is_available() is False); "
                          f"pass {fix('cpu')}")
    return dev


def progress_enabled(progress: bool | None = None) -> bool:
    """An explicit ``progress`` wins; otherwise bars show unless ``TQDM_DISABLE`` is set."""
    if progress is not None:
        return progress
    return os.environ.get("TQDM_DISABLE", "") in ("", "0", "false", "False")


def setup(seed: int = 0, deterministic: bool = True, threads: int | None = None) -> dict:
    """Seed ``random``, numpy and torch, and make runs reproducible.

    Args:
        seed: the one seed of the session.
        deterministic: ``torch.use_deterministic_algorithms(True)`` and no cuDNN autotuning;
            ``CUBLAS_WORKSPACE_CONFIG`` is set before CUDA starts.
        threads: torch CPU threads (``None`` leaves torch's default).

    Returns:
        A dict of the settings and library versions, for the notebook's record.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        import plotly.io as pio  # noqa: PLC0415

        # JSON output: no random div ids, no embedded plotly.js, so nbval can compare it.
        pio.renderers.default = "plotly_mimetype"
    except ImportError:
        pass
    import transformer_lens  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    from .version import __version__  # noqa: PLC0415

    return {
        "seed": seed,
        "deterministic": deterministic,
        "causal_nb": __version__,
        "torch": torch.__version__.split("+")[0],
        "transformer_lens": getattr(transformer_lens, "__version__", "?"),
        "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available(),
    }
