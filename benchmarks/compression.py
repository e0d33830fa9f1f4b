"""Teacher vs compact students of one run, side by side: size, compute, accuracy, speed.

    python benchmarks/compression.py [--run assets/default_run] [--compare-strategies] [--compare-criteria]

Prints one table for the run (the bundled demo run by default): parameters,
multiply-accumulates per prediction, file size, median accuracy (held-out
responses and, for the twin, its noise-free truth), compression time per
neuron, and CPU inference throughput (students with BN folded). For the
digital twin it then prints the compact models per cell type: filters per
layer, total filters, parameters, whether the model has a consolidation layer
(a layer after the first with at most 5 filters), and accuracy; then the
Green AI comparison at the paper's 112 px: an untrained `paper`-preset
teacher against a student of the bundle's median size (parameters, MACs,
images/s; `--no-green` skips it). With
`--compare-strategies` it also compresses the first neurons of a fresh `tiny`
run both ways — a shared multi-neuron student copied per neuron vs a student
per neuron from scratch — and prints that comparison. `--compare-criteria`
prunes the same neurons of a fresh `tiny` run with our output criterion and
with the reference's layer-reconstruction criterion, side by side.
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


def green_table(run: Path) -> None:
    """Green AI: what a prediction costs from the paper-sized teacher (untrained: cost does not depend on the
    weights) against a compact student at the same 112 px, beside the bundle's own pair."""
    from compactvision.models.student import CompactStudent, StudentArch
    from compactvision.models.teacher import build_teacher

    students = [load_student(run, i) for i in list_students(run)]
    median = students[int(np.argsort([s.n_parameters() for s in students])[len(students) // 2])]
    paper = build_teacher("paper", {"s": 40}, seed=0).eval()
    student112 = CompactStudent(StudentArch(channels=median.arch.channels, input_size=(112, 112))).eval()
    t_ips = images_per_second(paper, 112, repeats=1)
    s_ips = images_per_second(student112.fused(), 112)
    print(f"\nGreen AI at 112 px (batch 64, CPU, {torch.get_num_threads()} threads): the paper-preset teacher "
          f"(untrained) vs a student with the bundle's median filters {list(median.arch.channels)}")
    rows = [("parameters", f"{paper.n_parameters():,}", f"{student112.n_parameters():,}"),
            ("multiply-accumulates per prediction", f"{model_macs(paper, 112):,}", f"{student112.macs():,}"),
            ("images/s", f"{t_ips:,.1f}", f"{s_ips:,.0f} ({s_ips / t_ips:,.0f}x)")]
    for name, t, s in rows:
        print(f"{name:<38}  {t:>20}  {s:>24}")


def _histories(run: Path) -> list[dict]:
    import json

    return [json.loads(p.read_text()) for p in sorted((run / "history").glob("prune_*.json"))]


def print_cell_types(sizes: dict, title: str) -> None:
    """One run's `sizes_by_cell_type`, a row per cell type, then the one- vs multi-stage medians."""
    from compactvision.interpret.profile import CONSOLIDATED_MAX

    print(f"\n{title}; consolidation: a layer after the first with <= {CONSOLIDATED_MAX} filters")
    print(f"{'cell type':<16} {'n':>2} {'median filters per layer':>26} {'total':>6} {'params':>7} {'consol.':>8} "
          f"{'r vs teacher':>12} {'r truth':>8}")
    for kind, row in sizes.items():
        if kind == "all":
            continue
        print(f"{kind:<16} {row['n']:>2} {str(row['channels']):>26} {row['total_filters']:>6.0f} "
              f"{row['n_parameters']:>7,.0f} {row['consolidated']:>3}/{row['n']:<4} {row['r_teacher']:>12.3f} "
              f"{row['r_truth']:>8.3f}  {'one-stage' if row['one_stage'] else 'multi-stage'}")
    a = sizes["all"]
    print(f"median total filters: one-stage {a['one_stage_filters']:.0f}, multi-stage {a['multi_stage_filters']:.0f}; "
          f"consolidated {a['consolidated']}/{a['n']} ({a['consolidated'] / a['n']:.0%}); "
          f"median parameters {a['n_parameters']:,.0f}")


def cell_type_table(run: Path) -> None:
    """The twin's compact models grouped by cell type: does model size follow the computation?"""
    from compactvision.interpret.profile import sizes_by_cell_type
    from compactvision.runs import Run

    truth = Run.open(run).ground_truth()
    if not truth:
        return
    metrics = {h["neuron_id"]: h["metrics"] for h in _histories(run)}
    print_cell_types(sizes_by_cell_type(metrics, truth), f"compact models per cell type ({run.name})")


def compare_criteria(n_neurons: int) -> None:
    """Our output criterion vs the reference's layer-reconstruction criterion, same students, same run."""
    from compactvision.compress import compress_run
    from compactvision.pipeline import PRESETS, run_pipeline

    tiny = PRESETS["tiny"]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "output"
        run_pipeline("tiny", base, seed=0, workers=1)
        other = Path(tmp) / "reconstruction"
        shutil.copytree(base, other)
        for d in ("students", "history"):
            shutil.rmtree(other / d)
        reference = replace(tiny.compress.prune, criterion="reconstruction", order="last_first", rounds=1,
                            compensation="mean")
        cfg = replace(tiny.compress, prune=reference)
        compress_run(other, cfg, neurons=range(n_neurons), workers=1)
        print(f"\npruning criteria on the tiny preset, first {n_neurons} neurons")
        print(f"{'criterion':<15} {'median channels':>24} {'median params':>14} {'median r vs teacher':>20} {'median r truth':>15}")
        for name, run in (("output", base), ("reconstruction", other)):
            ms = [h["metrics"] for h in _histories(run)][:n_neurons]
            chans = np.median([m["channels"] for m in ms], axis=0).astype(int).tolist()
            print(f"{name:<15} {str(chans):>24} {np.median([m['n_parameters'] for m in ms]):>14,.0f} "
                  f"{np.median([m['r_teacher'] for m in ms]):>20.3f} {np.median([m['r_truth'] for m in ms]):>15.3f}")


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
            hs = _histories(run)[:n_neurons]
            m = lambda k: float(np.median([h["metrics"][k] for h in hs]))  # noqa: E731
            secs = m("seconds") if name == "shared" else per_neuron_s
            print(f"{name:<12} {m('r_teacher'):>20.3f} {m('r_truth'):>15.3f} {m('n_parameters'):>14,.0f} {secs:>9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "assets" / "default_run")
    ap.add_argument("--compare-strategies", action="store_true")
    ap.add_argument("--compare-criteria", action="store_true")
    ap.add_argument("--no-green", action="store_true", help="skip the paper-sized teacher's timing (slow on a CPU)")
    ap.add_argument("--neurons", type=int, default=4, help="neurons per strategy or criterion in the comparisons")
    args = ap.parse_args()
    run_table(args.run)
    cell_type_table(args.run)
    if not args.no_green:
        green_table(args.run)
    if args.compare_strategies:
        compare_strategies(args.neurons)
    if args.compare_criteria:
        compare_criteria(args.neurons)


if __name__ == "__main__":
    main()
