"""Interpretation speed, and how often compression recovered the twin's known computation.

    python benchmarks/interpret.py [--teacher-preset cpu] [--repeats 3] [--run RUN] [--max-neurons 24] [--app-jobs]
                                   [--teacher] [--synthesis-seeds 2 3]

Latency of every attribution method on one 112 x 112 image, for a student of
the paper's median size (filters [47, 57, 3, 7, 3]) and for a teacher of the
given preset (untrained weights: latency does not depend on training);
synthesis of a preferred image (128 steps); graph extraction with
activations, with and without the per-filter ablations. Targets: IG (32
steps) on the student <= 50 ms; a graph with activations <= 100 ms. Then the
synthesis optimisers side by side on digital twins, whose optima are known.

With `--run RUN` (a run directory on the digital twin with compressed
students), it also prints the ground-truth recovery table: for each cell
type, the fraction of neurons whose compact model recovered the twin's
computation (see `interpret.stimuli.recovered`), and with `--teacher` the
same for the run's teacher. With `--app-jobs` it first
times the app's long jobs on that run, as the pages run them: synthesis of
each compact model's preferred image, and the Robustness page's first answer.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from compactvision.data.images import natural_crops
from compactvision.interpret.attribution import METHODS, attribute
from compactvision.interpret.graph import neuron_graph
from compactvision.models.teacher import build_teacher
from compactvision.interpret.stimuli import compare_with_twin, recovery_table, synthesise_preferred
from compactvision.models.student import CompactStudent, StudentArch

MEDIAN_CHANNELS = (47, 57, 3, 7, 3)


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in ms over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def median_student(seed: int = 0) -> CompactStudent:
    torch.manual_seed(seed)
    m = CompactStudent(StudentArch(channels=MEDIAN_CHANNELS))
    for layer in m.layers:  # trained-looking BN statistics, so ReLUs are neither all on nor all off
        layer.bn.running_mean.normal_(0, 0.2)
        layer.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def method_options(method: str) -> dict:
    return {"channel": 0} if method == "neuron_conductance" else {}


def attribution_rows(name: str, model: torch.nn.Module, image: np.ndarray, repeats: int) -> None:
    for method in METHODS:
        opts = method_options(method)
        # Occlusion runs hundreds of forward passes: one timed call is enough.
        ms = timed(lambda: attribute(model, image, 0, method, **opts), 1 if method == "occlusion" else repeats)
        print(f"{name:8s} {method:22s} {ms:9.1f} ms")


def latency_tables(args: argparse.Namespace) -> None:
    """Attribution, synthesis and graph-extraction latency."""
    image = natural_crops(1, 112, seed=0)

    student = median_student()
    print(f"\n== attribution latency, one 112x112 image (student {list(MEDIAN_CHANNELS)}, "
          f"{student.n_parameters():,} parameters) ==")
    attribution_rows("student", student, image, args.repeats)

    teacher = build_teacher(args.teacher_preset, {"bench": 8}).eval()
    print(f"\n== attribution latency (teacher preset {args.teacher_preset!r}, "
          f"{sum(p.numel() for p in teacher.parameters()):,} parameters) ==")
    attribution_rows("teacher", teacher, image, args.repeats)

    print("\n== preferred-image synthesis, 128 steps, 112x112 ==")
    print(f"student  {timed(lambda: synthesise_preferred(student, 0, steps=128), 1):9.1f} ms")
    print(f"teacher  {timed(lambda: synthesise_preferred(teacher, 0, steps=128), 1):9.1f} ms")

    print("\n== computation graph of the median student ==")
    print(f"weights only                   {timed(lambda: neuron_graph(student), args.repeats):9.1f} ms")
    print(f"with activations               {timed(lambda: neuron_graph(student, image[0], ablations=False), args.repeats):9.1f} ms")
    print(f"with activations + ablations   {timed(lambda: neuron_graph(student, image[0]), args.repeats):9.1f} ms")


def app_job_seconds(run_dir: str, neurons: int = 4) -> None:
    """The app's long jobs on a run, as its pages run them: targets <= 10 s and <= 30 s on 2 cores."""
    from compactvision.interpret.robustness import robustness_comparison
    from compactvision.runs import Run, neuron_data, teacher_view

    run = Run.open(run_dir)
    ids = run.student_ids()
    heldout, teacher = run.heldout(), run.load_teacher() if run.has_teacher else None
    synth, first = [], []
    for nid in ids:
        student = run.load_student(nid)
        t0 = time.perf_counter()
        synthesise_preferred(student, 0, size=student.arch.input_size[0], steps=96)  # the app's default
        synth.append(time.perf_counter() - t0)
    for nid in ids[:neurons]:  # Robustness page: its first answer under PGD, 16 images, noise-free models
        data = neuron_data(heldout, nid)
        images, targets = data.images[:16], data.responses[:16]
        t0 = time.perf_counter()
        robustness_comparison({"compact model": run.load_student(nid)}, images, targets, 0, "pgd")
        if teacher is not None:
            view, j = teacher_view(teacher, nid)
            robustness_comparison({"teacher": view}, images, targets, j, "pgd", noise_settings=[False])
        first.append(time.perf_counter() - t0)
    print(f"\n== the app's long jobs on {Path(run_dir).name} ==")
    print(f"synthesis, 96 steps, per compact model ({len(synth)}): median {statistics.median(synth):.2f} s, "
          f"worst {max(synth):.2f} s (target <= 10 s)")
    print(f"robustness first answer under PGD (16 images, compact model + teacher), {len(first)} neurons: "
          f"median {statistics.median(first):.1f} s, worst {max(first):.1f} s (target <= 30 s)")


def synthesis_on_twin(seeds: list[int], size: int = 64, n_natural: int = 512) -> None:
    """Each synthesis optimiser on digital twins, whose neurons' optima are known: how hard and where it drives them."""
    from compactvision.data.twin import DigitalTwin
    from compactvision.interpret.stimuli import SYNTHESIS_OPTIMISERS, contrast_share_near

    print(f"\n== preferred-image synthesis on the digital twin ({size} px, 16 neurons a seed, 128 steps) ==")
    print("drive: the twin neuron's response to its synthesised image over its best of "
          f"{n_natural} natural images; near RF: the share of the image's contrast within 10 px of the true RF centre")
    print(f"{'twin seed':>9s} {'optimiser':>10s} {'median drive':>13s} {'lowest drive':>13s} {'near RF':>8s} {'s':>6s}")
    for seed in seeds:
        twin = DigitalTwin(16, seed=seed, image_size=size)
        truth = twin.ground_truth()
        best_natural = np.asarray(twin.rates(natural_crops(n_natural, size, seed=seed + 100))).max(1)
        for opt in SYNTHESIS_OPTIMISERS:
            t0 = time.perf_counter()
            imgs = np.stack([synthesise_preferred(twin, i, size=size, optimizer=opt) for i in range(len(truth))])
            seconds = time.perf_counter() - t0
            drive = np.asarray(twin.rates(imgs))[np.arange(len(truth)), np.arange(len(truth))] / best_natural
            near = contrast_share_near(imgs, [t["rf_center"] for t in truth])
            print(f"{seed:9d} {opt:>10s} {np.median(drive):13.3f} {drive.min():13.3f} {np.median(near):8.2f} "
                  f"{seconds:6.1f}")


def print_recovery(results: list[dict], what: str) -> None:
    """The ground-truth recovery table, per cell type, of `compare_with_twin` results."""
    print(f"\n== twin ground-truth recovery ({what}) ==")
    print("closed loop: the model's synthesised image shown to the twin neuron drives it to >= 80% of its "
          "optimum\n(its own synthesised image or its best held-out image) and above its best held-out image")
    print(f"{'cell type':18s} {'n':>4s} {'recovered':>10s} {'fraction':>9s} {'orientation <=15 deg':>21s} "
          f"{'closed loop':>12s} {'median ratio':>13s}")
    for cell_type, row in sorted(recovery_table(results).items()):
        rs = [r for r in results if r["cell_type"] == cell_type]
        ori = [r["orientation_error_deg"] <= 15 for r in rs if "orientation_error_deg" in r]
        loop = [r["closed_loop_ratio"] >= 0.8 and r.get("closed_loop_beats_natural", True) for r in rs]
        print(f"{cell_type:18s} {row['n']:4d} {row['recovered']:10d} {row['fraction']:9.2f} "
              f"{(f'{sum(ori)}/{len(ori)}' if ori else '-'):>21s} {f'{sum(loop)}/{len(loop)}':>12s} "
              f"{np.median([r['closed_loop_ratio'] for r in rs]):13.2f}")
    total = sum(row["recovered"] for row in recovery_table(results).values())
    print(f"recovered {total}/{len(results)} ({total / len(results):.0%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher-preset", default="cpu", help="teacher size to time (tiny, cpu, paper)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--run", default=None, help="a twin run directory with students, for the recovery table")
    ap.add_argument("--max-neurons", type=int, default=24, help="students compared with the twin (recovery table)")
    ap.add_argument("--recovery-only", action="store_true", help="skip the latency figures")
    ap.add_argument("--app-jobs", action="store_true", help="with --run: time the app's synthesis and robustness jobs")
    ap.add_argument("--teacher", action="store_true",
                    help="with --run: the same recovery table for the run's teacher, on the same neurons")
    ap.add_argument("--synthesis-seeds", type=int, nargs="*", default=[2, 3],
                    help="twin seeds on which the synthesis optimisers are compared (default 2 3; none: skip)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    if not args.recovery_only:
        latency_tables(args)
    if args.synthesis_seeds:
        synthesis_on_twin(args.synthesis_seeds)

    if args.run is None:
        print("\n(recovery table skipped: pass --run RUN, a twin run with compressed students)")
        return
    if args.app_jobs:
        app_job_seconds(args.run)
    from compactvision.data.twin import twin_from_ground_truth
    from compactvision.runs import Run

    run = Run.open(args.run)
    truth = run.ground_truth()
    if not truth:
        print(f"\n(recovery table skipped: {args.run} has no twin ground truth)")
        return
    held = next(iter(run.heldout()["sessions"].values()))["images"]  # the held-out natural images
    twin = twin_from_ground_truth(truth, image_size=held.shape[1])  # the run's own image size
    index = {str(r["neuron_id"]): i for i, r in enumerate(truth)}
    ids = [i for i in run.student_ids() if i in index][: args.max_neurons]
    results = [compare_with_twin(run.load_student(i), twin, index[i], natural_images=held) for i in ids]
    print_recovery(results, f"{len(results)} students of {args.run}")
    if args.teacher and run.has_teacher:
        from compactvision.runs import teacher_view

        teacher = run.load_teacher()
        views = [teacher_view(teacher, i) for i in ids]
        print_recovery([compare_with_twin(view, twin, index[i], model_neuron=j, natural_images=held)
                        for i, (view, j) in zip(ids, views)], f"the teacher of {args.run}, same neurons")


if __name__ == "__main__":
    main()
