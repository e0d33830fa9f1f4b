"""The runtime's opt-in CPU allocator setting: freed memory is reused, not faulted in again from the kernel."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from compactvision.runtime import KEEP_FREED_MEMORY_ENV

#: 64 MB tensors, each filled and freed in turn (the size of a student's activations at 112 px): the page faults
#: of the last 8, once the first 16 have settled where the allocator puts them.
ALLOCATE = """
import resource, torch
from compactvision.runtime import keep_freed_memory, select_device
select_device("cpu")
for step in range(24):
    if step == 16:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 1024 * 1024)
    del x
print(keep_freed_memory(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _child(script: str, keep: str | None) -> list[str]:
    """What `script` prints in a fresh process, with the variable set to `keep` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != KEEP_FREED_MEMORY_ENV}
    if keep is not None:
        env[KEEP_FREED_MEMORY_ENV] = keep
    done = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True)
    return done.stdout.split()


def _page_faults(keep: str | None) -> tuple[bool, int]:
    kept, faults = _child(ALLOCATE, keep)
    return kept == "True", int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (mallopt)")
def test_the_variable_has_freed_memory_kept_for_reuse_and_by_default_it_is_not() -> None:
    kept, faults = _page_faults("1")
    plain, plain_faults = _page_faults(None)
    assert kept and not plain and not _page_faults("0")[0]
    # 8 x 64 MB is 131,072 pages: faulted in anew each time by default, about once when kept.
    assert plain_faults > 100_000
    assert faults < plain_faults / 4


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (mallopt)")
def test_a_stage_that_picks_the_gpu_keeps_freed_memory_too_where_asked() -> None:
    """A GPU run prunes on the CPU between its fits, so the setting must not depend on the device picked."""
    script = "from compactvision import runtime\nruntime.select_device('cuda')\nprint(runtime._kept)"
    assert _child(script, "1") == ["True"]
    assert _child(script, None) == ["False"]


RELEASE = """
import torch
from compactvision.runtime import release_freed_memory, select_device
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
select_device("cpu")
x = torch.ones(64 * 1024 * 1024)  # 256 MB, every page touched
del x
held = resident_mb()
released = release_freed_memory()
print(released, held - resident_mb())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (mallopt)")
def test_kept_memory_is_handed_back_between_fits_and_nothing_is_asked_by_default() -> None:
    def run(keep: str) -> tuple[bool, float]:
        released, freed_mb = _child(RELEASE, keep)
        return released == "True", float(freed_mb)

    released, freed_mb = run("1")
    assert released and freed_mb > 200, "the 256 MB the kept heap held went back to the kernel"
    assert not run("0")[0]
