"""GPU figures in one run: teacher training, distillation, student vs teacher inference.

    bash benchmarks/gpu.sh            # on a CUDA machine; finishes in a few minutes
    python benchmarks/gpu.py --steps 2 --batch 4   # a CPU smoke run of the same code

Prints, per teacher preset (`paper` ~60M parameters, `cpu`): training images/s
and peak GPU memory with bf16 autocast and channels-last (and `torch.compile`
with --compile); distillation throughput (teacher labelling images/s and
shared-student training images/s); and inference images/s of the teacher vs a
median-size compact student (BN folded), side by side.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from compactvision.models.student import CompactStudent, StudentArch
from compactvision.models.teacher import PRESETS, build_teacher
from compactvision.runtime import autocast, select_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")


def train_rate(model: torch.nn.Module, device: torch.device, batch: int, size: int, steps: int, n_out: int,
               channels_last: bool) -> float:
    """Images/s of full optimisation steps (forward, MSE, backward, AdamW) after one warm-up step."""
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.rand(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randn(batch, n_out, device=device)
    t = 0.0
    for i in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        with autocast(device):
            loss = ((model(x).float() - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i:
            t += time.perf_counter() - t0
    return batch * steps / t


@torch.no_grad()
def infer_rate(model: torch.nn.Module, device: torch.device, batch: int, size: int, steps: int,
               channels_last: bool = False) -> float:
    """Images/s of forward passes (what labelling a stream costs) after one warm-up pass."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=layout).eval()
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=layout)
    with autocast(device):
        model(x)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with autocast(device):
            model(x)
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--neurons", type=int, default=370, help="teacher readout size (the Cowley training sessions)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    ap.add_argument("--device")
    args = ap.parse_args()
    device = select_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device {name}, batch {args.batch}, {args.size}x{args.size} px, {args.steps} timed steps, "
          f"bf16 autocast {'on' if device.type == 'cuda' else 'off (CPU)'}, channels-last on")
    print(f"{'what':<46} {'images/s':>10} {'peak MB':>9}")
    teachers = {}
    for preset in ("paper", "cpu"):
        t = build_teacher(replace(PRESETS[preset], image_size=args.size), {"s": args.neurons}, seed=0)
        teachers[preset] = t
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rate = train_rate(t, device, args.batch, args.size, args.steps, args.neurons, channels_last=True)
        print(f"{f'teacher {preset} ({t.n_parameters() / 1e6:.1f}M params) training':<46} {rate:>10.1f} {_peak_mb(device):>9.0f}")
        if args.compile:
            ct = torch.compile(t)
            rate = train_rate(ct, device, args.batch, args.size, args.steps, args.neurons, channels_last=True)
            print(f"{f'teacher {preset}, torch.compile':<46} {rate:>10.1f} {_peak_mb(device):>9.0f}")
    paper = teachers["paper"]
    label = infer_rate(paper, device, args.batch * 4, args.size, args.steps)
    shared = CompactStudent(StudentArch(input_size=(args.size, args.size), n_outputs=args.neurons))
    distil = train_rate(shared, device, args.batch, args.size, args.steps, args.neurons, channels_last=True)
    print(f"{'distillation: paper teacher labelling':<46} {label:>10.1f}")
    print(f"{'distillation: shared student (138k/neuron) fit':<46} {distil:>10.1f}")
    student = CompactStudent(StudentArch(channels=(47, 57, 3, 7, 3), input_size=(args.size, args.size))).eval().fused()
    s_rate = infer_rate(student, device, args.batch * 4, args.size, args.steps)
    print(f"{'inference: paper teacher (all neurons)':<46} {label:>10.1f}")
    print(f"{'inference: median compact student (1 neuron)':<46} {s_rate:>10.1f}   ({s_rate / label:.1f}x)")


if __name__ == "__main__":
    main()
