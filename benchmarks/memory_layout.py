"""Training speed on this machine's CPU (or a GPU) in the two memory layouts, side by side.

    python benchmarks/memory_layout.py [--steps 4] [--batch 64] [--device cpu]

Prints training images/s (forward, MSE, backward, AdamW; `gpu.train_rate`) with
NCHW (PyTorch's default) and channels-last (NHWC) tensors, for the models the
CPU presets train at 112 px: the `v4` teacher, the 64-filter student that
re-compression and the `v4` pipeline distil, and a pruned student of the
reference's median size [47, 57, 3, 7, 3]. The layout changes the arithmetic's
order only, so it is chosen by this table, per model kind.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu import train_rate  # noqa: E402

from compactvision.models.student import CompactStudent, StudentArch  # noqa: E402
from compactvision.models.teacher import PRESETS, build_teacher  # noqa: E402
from compactvision.pipeline import PRESETS as PIPELINES  # noqa: E402
from compactvision.runtime import select_device  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = select_device(args.device)
    v4 = PIPELINES["v4"]
    teacher_config = replace(PRESETS[v4.teacher_preset], **v4.teacher_overrides)
    models = {
        "v4 teacher (40 neurons)": (lambda: build_teacher(teacher_config, {"s": [str(i) for i in range(40)]}), 40),
        "student 64-64-64-64-64 (8 neurons)": (lambda: CompactStudent(StudentArch(channels=(64,) * 5, n_outputs=8)), 8),
        "student 47-57-3-7-3 (1 neuron)": (lambda: CompactStudent(StudentArch(channels=(47, 57, 3, 7, 3))), 1),
    }
    print(f"training images/s on {device.type}, batch {args.batch}, 112 px, {args.steps} timed steps")
    print(f"{'model':<36} {'NCHW':>8} {'channels-last':>14} {'ratio':>6}")
    for name, (make, n_out) in models.items():
        rates = [train_rate(make(), device, args.batch, 112, args.steps, n_out, channels_last=cl) for cl in (False, True)]
        print(f"{name:<36} {rates[0]:>8.1f} {rates[1]:>14.1f} {rates[1] / rates[0]:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
