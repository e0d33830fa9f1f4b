"""Device, precision and seeding in one place, so no module keeps a global device.

Every stage asks here which device to use (CUDA when present, else CPU), whether
to autocast (bf16 on CUDA only) and how to seed, which keeps runs reproducible
and the code device-agnostic.
"""
from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import numpy as np
import torch


def select_device(preference: str | None = None) -> torch.device:
    """`preference` may be "cpu", "cuda", "cuda:1"; None picks CUDA when available."""
    if preference:
        return torch.device(preference)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    """Where `model` lives (its first parameter, else its first buffer; CPU when it has neither)."""
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return torch.device("cpu") if p is None else p.device


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op on CPU, where bf16 is slower and less exact."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for explicit use."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily cap intra-op threads (used by per-neuron worker processes)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def cpu_count() -> int:
    """Cores this process may use (respects affinity masks and containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
