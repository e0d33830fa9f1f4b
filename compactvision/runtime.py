"""Device, precision and seeding in one place, so no module keeps a global device.

Every stage asks here which device to use (CUDA when present, else CPU), whether
to autocast (bf16 on CUDA only) and how to seed, which keeps runs reproducible
and the code device-agnostic.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import random
from typing import Iterator

import numpy as np
import torch


def select_device(preference: str | None = None) -> torch.device:
    """`preference` may be "cpu", "cuda", "cuda:1"; None picks CUDA when available.

    Every stage that computes asks here first, so this is where
    `keep_freed_memory` is applied (where the user asked for it). It is applied
    whatever the device: a GPU run works on the CPU too (it reads and batches
    the label cache there, and decodes images).
    """
    device = torch.device(preference) if preference else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    keep_freed_memory()
    return device


#: Set to 1 to have glibc keep freed memory for reuse (`benchmarks/allocator.py` compares the two settings).
KEEP_FREED_MEMORY_ENV = "COMPACTVISION_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
_TRIM_THRESHOLD = 1 << 30
_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Where `KEEP_FREED_MEMORY_ENV` is "1", have glibc keep the memory PyTorch frees on the CPU for reuse.

    Why: a convolution's activations at 112 px are tens to hundreds of MB, above
    glibc's largest mmap threshold (32 MB), so by default each one is mapped
    fresh and unmapped again at every step, and the kernel faults in and zeroes
    every page anew. On a 2-core machine that was half of all CPU time while a
    student trained (40 against 75 images/s; `benchmarks/allocator.py`).
    With mmap off and a trim threshold of 1 GiB, freed blocks stay in the heap
    and are reused. Why it is not the default: a process whose allocations
    change size all the time fragments that heap. A re-compression worker,
    pruning and retraining ever smaller copies, grew to 11 GB and was killed
    for memory. Compression hands the kept pages back after every fit
    (`release_freed_memory`); its workers then stayed under 6.7 GB.
    Applied once per process, only on glibc. Returns whether it is in effect.
    """
    global _kept
    if _kept is None:
        _kept = False
        if os.environ.get(KEEP_FREED_MEMORY_ENV) == "1" and platform.libc_ver()[0] == "glibc":
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):
                return False
            _kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _kept


def release_freed_memory() -> bool:
    """Where freed memory is kept (`keep_freed_memory`), hand its free pages back to the kernel now.

    glibc's `malloc_trim(0)` returns every whole free page of every arena, so a
    process that keeps freed memory between the steps of a fit can still
    bound what it holds between fits. Returns whether anything was asked of
    the allocator.
    """
    if not _kept:
        return False
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


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
