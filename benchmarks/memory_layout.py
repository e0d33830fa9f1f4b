"""Training speed on this machine's CPU (or a GPU) in the two memory layouts, side by side.

    python benchmarks/memory_layout.py [--steps 4] [--batch 64] [--size 112] [--threads N] [--device cpu]
                                       [--label]

Prints training images/s (forward, MSE, backward, AdamW; `gpu.train_rate`) with
NCHW (PyTorch's default) and channels-last (NHWC) tensors, for the models the
CPU presets train at 112 px: the `v4` teacher, the 64-filter student that
re-compression and the `v4` pipeline distil, and a pruned student of the
reference's median size [47, 57, 3, 7, 3]. The layout changes the arithmetic's
order only, so it is chosen by this table, per model kind. `--size 64` times
them at the bundled demo's image size; `--threads 1` as a compression task
runs (one thread per worker).

`--label` times labelling instead (forward passes without gradients, as
`LabelCache.build` runs them) for the teachers a stream is labelled with: the
`v4` teacher, the bundled demo's teacher at its 64 px, and a bank of eight
reference-sized published models as re-compression loads them, with and
without their BatchNorms folded into the convolutions.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu import infer_rate, train_rate  # noqa: E402

import torch  # noqa: E402

from compactvision.compress import AllSessions  # noqa: E402
from compactvision.models.bank import StudentBank  # noqa: E402
from compactvision.models.student import CompactStudent, StudentArch  # noqa: E402
from compactvision.models.teacher import PRESETS, build_teacher  # noqa: E402
from compactvision.pipeline import PRESETS as PIPELINES  # noqa: E402
from compactvision.runtime import select_device  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=112, help="image side, px")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--label", action="store_true", help="time labelling (forward passes) instead of training")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    size = (args.size, args.size)
    models = {
        "v4 teacher (40 neurons)": (lambda: pipeline_teacher("v4", args.size, 40), 40),
        "student 64-64-64-64-64 (8 neurons)": (lambda: CompactStudent(StudentArch(channels=(64,) * 5, n_outputs=8,
                                                                                  input_size=size)), 8),
        "student 47-57-3-7-3 (1 neuron)": (lambda: CompactStudent(StudentArch(channels=(47, 57, 3, 7, 3),
                                                                              input_size=size)), 1),
    }
    if args.label:
        label_rates(device, args.batch, args.size, args.steps)
        return
    print(f"training images/s on {device.type}, {torch.get_num_threads()} threads, batch {args.batch}, {args.size} px, "
          f"{args.steps} timed steps")
    print(f"{'model':<36} {'NCHW':>8} {'channels-last':>14} {'ratio':>6}")
    for name, (make, n_out) in models.items():
        rates = [train_rate(make(), device, args.batch, args.size, args.steps, n_out, channels_last=cl) for cl in (False, True)]
        print(f"{name:<36} {rates[0]:>8.1f} {rates[1]:>14.1f} {rates[1] / rates[0]:>6.2f}", flush=True)


def pipeline_teacher(pipeline: str, size: int, n_neurons: int) -> torch.nn.Module:
    """A pipeline preset's teacher at `size` px, untrained (timing does not depend on the weights)."""
    p = PIPELINES[pipeline]
    config = replace(PRESETS[p.teacher_preset], **{**p.teacher_overrides, "image_size": size})
    return build_teacher(config, {"s": [str(i) for i in range(n_neurons)]})


def published_bank(n: int = 8) -> StudentBank:
    """`n` one-neuron students of the reference's median size at 112 px, banked as re-compression labels with."""
    ids = [f"n{k}" for k in range(n)]
    return StudentBank({i: CompactStudent(StudentArch(channels=(47, 57, 3, 7, 3))).eval() for i in ids}, {"s": ids})


def label_rates(device: torch.device, batch: int, size: int, steps: int) -> None:
    """Labelling images/s per teacher kind, NCHW against channels-last, side by side."""
    demo_size = PIPELINES["demo"].image_size
    teachers = {
        f"v4 teacher (40 neurons, {size} px)": (lambda: pipeline_teacher("v4", size, 40), size),
        f"demo teacher (16 neurons, {demo_size} px)": (lambda: pipeline_teacher("demo", demo_size, 16), demo_size),
        "8 published-size models, 112 px": (published_bank, 112),
        "the same, BatchNorm folded": (lambda: published_bank().fused(), 112),
    }
    print(f"labelling images/s on {device.type}, {torch.get_num_threads()} threads, batch {batch}, {steps} timed passes")
    print(f"{'teacher':<40} {'NCHW':>8} {'channels-last':>14} {'ratio':>6}")
    for name, (make, px) in teachers.items():
        torch.manual_seed(0)
        model = AllSessions(make())
        rates = [infer_rate(model, device, batch, px, steps, channels_last=cl) for cl in (False, True)]
        print(f"{name:<40} {rates[0]:>8.1f} {rates[1]:>14.1f} {rates[1] / rates[0]:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
