"""Teacher vs compact students of one run, side by side: size, compute, accuracy, speed.

    python benchmarks/compression.py [--run assets/default_run] [--compare-strategies]

Prints one table for the run (the bundled demo run by default): parameters,
multiply-accumulates per prediction, file size, median accuracy (held-out
responses and, for the twin, its noise-free truth), compression time per
neuron, and CPU inference throughput (students with BN folded). With
`--compare-strategies` it also compresses the first neurons of a fresh `tiny`
run both ways — a shared multi-neuron student copied per neuron vs a student
per neuron from scratch — and prints that comparison.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from compactvision.artifacts import export_compact, list_students, load_student, read_manifest
from compactvision.models.teacher import load_teacher
from compactvision.compute import model_macs

ROOT = Path(__file__).resolve().parents[1]


def images_per_second(model: torch.nn.Module, size: int, batch: int = 64, repeats: int = 3) -> float:
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    best = float("inf")
    with torch.no_grad():
        model(x[:2])
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t)
    return batch / best


def med(metrics: dict, key: str) -> str:
    m = metrics.get(key)
    return "-" if not m or m.get("median") is None else f"{m['median']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def run_table(run: Path) -> None:
    manifest = read_manifest(run)
    teacher = load_teacher(run)
    size = int(teacher.config.image_size)
    ids = list_students(run)
    students = [load_student(run, i) for i in ids]
    comp = manifest["metrics"]["compression"]
    tm = manifest["metrics"]["teacher"]
    t_params = teacher.n_parameters()
    s_params = float(np.median([s.n_parameters() for s in students]))
    t_macs = model_macs(teacher, size)
    s_macs = float(np.median([s.macs() for s in students]))
    t_kb = (run / "teacher" / "teacher.safetensors").stat().st_size / 1000
    with tempfile.TemporaryDirectory() as tmp:
        s_kb = float(np.median([export_compact(run, i, Path(tmp) / f"{i}.safetensors").stat().st_size / 1000 for i in ids]))
    median_student = students[int(np.argsort([s.n_parameters() for s in students])[len(students) // 2])]
    t_ips = images_per_second(teacher.eval(), size)
    s_ips = images_per_second(median_student.fused().eval(), size)
    print(f"run {run} ({len(ids)} neurons, {size}x{size} px images, torch threads {torch.get_num_threads()})")
    rows = [
        ("parameters", f"{t_params:,}", f"{s_params:,.0f} (median)"),
        ("compression (teacher / student parameters)", "", f"{t_params / s_params:,.0f}x"),
        ("multiply-accumulates per prediction", f"{t_macs:,}", f"{s_macs:,.0f} ({t_macs / s_macs:,.0f}x fewer)"),
        ("file size, KB", f"{t_kb:,.1f}", f"{s_kb:,.1f} (exported, median)"),
        ("median r, held-out responses [95% CI]", med(tm, "r"), med(comp, "r_heldout")),
        ("median r, twin noise-free truth [95% CI]", med(tm, "r_noise_free"), med(comp, "r_truth")),
        ("median r, student vs teacher labels", "", med(comp, "r_teacher")),
        ("compression time per neuron, s", "", med(comp, "seconds")),
        ("inference, images/s (batch 64, CPU)", f"{t_ips:,.0f}", f"{s_ips:,.0f} ({s_ips / t_ips:,.1f}x)"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'':{w}}  {'teacher':>26}  {'compact student':>30}")
    for name, t, s in rows:
        print(f"{name:{w}}  {t:>26}  {s:>30}")


def compare_strategies(n_neurons: int) -> None:
    """Shared-then-copied vs per-neuron-from-scratch students on a fresh tiny run."""
    from compactvision.compress import compress_run
    from compactvision.pipeline import PRESETS, run_pipeline

    tiny = PRESETS["tiny"]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "shared"
        t = time.perf_counter()
        run_pipeline("tiny", base, seed=0, workers=1)
        print(f"\nstrategies on the tiny preset, first {n_neurons} neurons (pipeline built in {time.perf_counter() - t:.0f} s)")
        other = Path(tmp) / "per_neuron"
        shutil.copytree(base, other)
        for d in ("students", "history"):
            shutil.rmtree(other / d)
        t = time.perf_counter()
        compress_run(other, replace(tiny.compress, strategy="per_neuron"), neurons=range(n_neurons), workers=1)
        per_neuron_s = (time.perf_counter() - t) / n_neurons
        print(f"{'strategy':<12} {'median r vs teacher':>20} {'median r truth':>15} {'median params':>14} {'s/neuron':>9}")
        for name, run in (("shared", base), ("per_neuron", other)):
            import json

            hs = [json.loads((run / "history" / f"prune_{i}.json").read_text()) for i in list_students(run)[:n_neurons]]
            m = lambda k: float(np.median([h["metrics"][k] for h in hs]))  # noqa: E731
            secs = m("seconds") if name == "shared" else per_neuron_s
            print(f"{name:<12} {m('r_teacher'):>20.3f} {m('r_truth'):>15.3f} {m('n_parameters'):>14,.0f} {secs:>9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "assets" / "default_run")
    ap.add_argument("--compare-strategies", action="store_true")
    ap.add_argument("--neurons", type=int, default=4, help="neurons per strategy in the comparison")
    args = ap.parse_args()
    run_table(args.run)
    if args.compare_strategies:
        compare_strategies(args.neurons)


if __name__ == "__main__":
    main()
