"""CPU work with the C allocator as the platform configures it, against freed memory kept for reuse.

    python benchmarks/allocator.py [--steps 6] [--threads N]

`compactvision.runtime.keep_freed_memory` (applied when a stage selects the
CPU, where COMPACTVISION_KEEP_FREED_MEMORY=1) stops glibc from unmapping the
large blocks PyTorch frees at every step. Each case below runs twice, in a
fresh process each time (the setting cannot be undone within a process):
once with the platform's default and once with the setting. Per case it
prints images/s, the share of the process's CPU time spent in the kernel, and
minor page faults per image, side by side:

* training the 64-filter student that re-compression and the `v4` pipeline
  distil (8 outputs, 112 px, batch 64, channels-last);
* training the bundled demo's 64-filter student (64 px, batch 16);
* labelling with a bank of eight reference-sized published models
  ([47, 57, 3, 7, 3], BatchNorm folded, channels-last, batch 128).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = ("student 64 x 5, 112 px, batch 64 (train)", "demo student 64 x 5, 64 px, batch 16 (train)",
         "8 published-size models, 112 px, batch 128 (label)")


def measure(case: int, steps: int) -> dict[str, float]:
    """One case in this process: images/s, kernel share of CPU time, page faults per image, peak MB."""
    sys.path.insert(0, str(HERE))
    import torch

    from gpu import infer_rate, train_rate
    from memory_layout import published_bank
    from compactvision.models.student import CompactStudent, StudentArch
    from compactvision.runtime import keep_freed_memory, select_device

    device = select_device("cpu")
    torch.manual_seed(0)
    before = resource.getrusage(resource.RUSAGE_SELF)
    if case == 0:
        model, size, batch = CompactStudent(StudentArch(channels=(64,) * 5, n_outputs=8)), 112, 64
        rate = train_rate(model, device, batch, size, steps, 8, channels_last=True)
    elif case == 1:
        model, size, batch = CompactStudent(StudentArch(channels=(64,) * 5, input_size=(64, 64))), 64, 16
        rate = train_rate(model, device, batch, size, steps * 4, 1, channels_last=True)
        steps *= 4
    else:
        batch = 128
        rate = infer_rate(published_bank().fused(), device, batch, 112, max(1, steps // 3), channels_last=True)
        steps = max(1, steps // 3)
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"rate": rate, "kernel_share": system / max(user + system, 1e-9),
            "faults_per_image": (after.ru_minflt - before.ru_minflt) / (batch * (steps + 1)),
            "peak_mb": after.ru_maxrss / 1024,
            "kept": keep_freed_memory()}


def run_child(case: int, steps: int, keep: bool, threads: int | None) -> dict[str, float]:
    from compactvision.runtime import KEEP_FREED_MEMORY_ENV

    env = {**os.environ, KEEP_FREED_MEMORY_ENV: "1" if keep else "0"}
    cmd = [sys.executable, __file__, "--child", str(case), "--steps", str(steps)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per case (default 6)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.child, args.steps)))
        return
    print(f"CPU, {args.threads or os.cpu_count()} threads; each cell: images/s, kernel share of CPU time, "
          f"page faults per image, peak MB")
    print(f"{'case':<52} {'platform default':>32} {'freed memory kept':>32} {'speed-up':>9}")
    for case, name in enumerate(CASES):
        cells = [run_child(case, args.steps, keep, args.threads) for keep in (False, True)]
        text = [f"{c['rate']:7.1f} {100 * c['kernel_share']:4.0f}% {c['faults_per_image']:7.0f} {c['peak_mb']:6.0f}"
                for c in cells]
        note = "" if cells[1]["kept"] else "  (not applied: not glibc)"
        print(f"{name:<52} {text[0]:>32} {text[1]:>32} {cells[1]['rate'] / cells[0]['rate']:>8.2f}x{note}",
              flush=True)


if __name__ == "__main__":
    main()
