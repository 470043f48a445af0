"""Wall-clock timing of a model's forward, shared by every evaluator (LM, encoder, vision)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["median_ms"]


def median_ms(run: Callable[[], object], device, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time (ms) of ``run()`` over ``repeats`` calls after ``warmup`` untimed ones,
    under ``torch.no_grad`` (as deployed), synchronising CUDA around each call so the time is the
    kernels' and not the launch's."""
    cuda = torch.device(device).type == "cuda"
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))
