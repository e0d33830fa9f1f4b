"""Does the V1 front end make teachers and compact models harder to break? VOneBlock vs a learned first conv.

    python benchmarks/robustness.py [--run assets/default_run] [--work runs] [--students 8] [--images 128]
                                    [--control RUN [--noisy RUN]] [--build-only]

The claim (Dapello et al. 2020; Cowley et al. 2026) is that a biologically
constrained V1 front end makes a model more robust to image perturbations and
adversarial attacks than a standard CNN. Tested here on the digital twin:

* **VOneBlock teacher**: the bundled run's (`--run`), V1 noise off;
* **VOneBlock + V1 noise**: the same recipe trained *and* tested with the
  VOneBlock's Poisson-like noise on, at `noise_level` 1 (VOneNet's "neuronal"
  mode in our units), built into `WORK/robustness-vone-noise`;
* **control teacher**: the same data, back end, budget and seed with a learned
  convolution of the VOneBlock's shape in its place, built into
  `WORK/robustness-control` (the Robustness page can compare with it);
* the **compact students** of the VOneBlock and control teachers (the first
  `--students` neurons, one per cell type, compressed with the same preset).

The two extra runs are built by the project's own pipeline stages on first
use and reused after (rerun the command to continue an interrupted build).
For a run on other data (a real-V4 run), train and compress its control
yourself (`compactvision teacher ... --front-end conv`, then `compress`) and
pass it as `--control` (and a `--v1-noise` teacher as `--noisy`).
For each model and perturbation (Gaussian noise, blur, contrast reduction and
an L-infinity PGD epsilon sweep) it prints r against the measured held-out
responses and the response change (mean |response - clean| over the clean
responses' s.d.) at every level, and the area under each curve (trapezoid
over the level index, so every sweep weighs its levels equally), each a
median over neurons with a bootstrap 95% CI. Lower response-change AUC and
higher r AUC mean more robust.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from compactvision.interpret.robustness import PERTURBATIONS, population_robustness, population_summary, vone_noise
from compactvision.pipeline import PRESETS, pipeline_teacher, run_pipeline
from compactvision.progress import line_reporter
from compactvision.runs import Run

ROOT = Path(__file__).resolve().parents[1]
DEMO = PRESETS["demo"]
NOISE_LEVEL = 1.0
#: The two runs built beside the user's other runs, so the app's Robustness page can pick the control.
CONTROL, NOISY = "robustness-control", "robustness-vone-noise"


def build(work: Path, students: int) -> None:
    """The control run (teacher and the first `students` compact models) and the V1-noise teacher, resumably."""
    progress = line_reporter()
    conv = replace(DEMO, teacher_overrides={**DEMO.teacher_overrides, "front_end": "conv"})
    run_pipeline(conv, work / CONTROL, seed=0, progress=progress, neurons=list(range(students)))
    noisy = replace(DEMO, teacher_overrides={**DEMO.teacher_overrides, "noise": "poisson", "noise_level": NOISE_LEVEL})
    pipeline_teacher(noisy, work / NOISY, seed=0, progress=progress)


def _fmt(ci: tuple[float, float, float]) -> str:
    return f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"


def _level(p: str, v: float) -> str:
    return f"{v * 255:.0f}/255" if p == "pgd" and v > 0 else f"{v:g}"


def models_to_compare(bundle: Run, control: Run, noisy: Run | None) -> list[tuple[str, Run, bool, bool]]:
    """(name, run, teacher V1 noise on, with compact models) for every model the table compares."""
    return [("VOneBlock teacher", bundle, False, False),
            *([("VOneBlock teacher + V1 noise", noisy, True, False)] if noisy is not None else []),
            ("control teacher (learned conv)", control, False, False),
            ("VOneBlock compact models", bundle, False, True), ("control compact models", control, False, True)]


def evaluate(bundle: Run, control: Run, noisy: Run | None, students: int, n_images: int,
             perturbations: list[str]) -> dict:
    """Population curves of every model for every perturbation, with their medians, CIs and AUCs.

    Every model is scored on `bundle`'s held-out images and neurons, so the control must share them.
    """
    heldout = bundle.heldout()
    all_ids = bundle.student_ids()
    compact_ids = [i for i in all_ids if i in set(control.student_ids())][:students]
    if not compact_ids:
        raise SystemExit(f"the control run {control.path} has no compact models of {bundle.path}'s neurons")
    results: dict[str, dict] = {}
    for p in perturbations:
        results[p] = {}
        for name, run, noise_on, compact in models_to_compare(bundle, control, noisy):
            t0 = time.perf_counter()
            if compact:
                curves = population_robustness(heldout, compact_ids, run.load_student, None, p, n_images)
            else:
                teacher = run.load_teacher()
                with vone_noise(teacher, noise_on):
                    curves = population_robustness(heldout, all_ids, None, teacher, p, n_images)
            curve = next(iter(curves.values()))
            results[p][name] = {"curve": curve, "summary": population_summary(curve),
                                "seconds": time.perf_counter() - t0}
            print(f"  {p}: {name} done in {results[p][name]['seconds']:.0f} s", file=sys.stderr, flush=True)
    return results


def print_tables(results: dict) -> None:
    for p, by_model in results.items():
        levels = next(iter(by_model.values()))["summary"]["levels"]
        print(f"\n== {p}: {PERTURBATIONS[p]['label']} ==")
        head = " ".join(f"{_level(p, v):>8}" for v in levels)
        print(f"{'model':34} {'n':>3} | r at each level:  {head}")
        for name, res in by_model.items():
            s = res["summary"]
            print(f"{name:34} {s['n']:>3} | {'':17} " + " ".join(f"{v:8.3f}" for v in s["r"][0]))
        print(f"{'':38} | change at each level: " + " ".join(f"{_level(p, v):>8}" for v in levels)[5:])
        for name, res in by_model.items():
            s = res["summary"]
            print(f"{name:34} {s['n']:>3} | {'':17} " + " ".join(f"{v:8.3f}" for v in s["delta_rel"][0]))
        print(f"{'model':34} {'n':>3} | {'AUC of r (higher: robust)':>28} | {'AUC of change (lower: robust)':>30}")
        for name, res in by_model.items():
            s = res["summary"]
            print(f"{name:34} {s['n']:>3} | {_fmt(s['r_auc']):>28} | {_fmt(s['delta_rel_auc']):>30}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "assets" / "default_run"), help="the VOneBlock run (default: the bundle)")
    ap.add_argument("--work", default=str(ROOT / "runs"),
                    help=f"where the runs {CONTROL} and {NOISY} are built (default: runs/)")
    ap.add_argument("--students", type=int, default=8, help="compact models per teacher (the first neurons)")
    ap.add_argument("--images", type=int, default=128, help="held-out images perturbed")
    ap.add_argument("--perturbations", nargs="+", default=list(PERTURBATIONS), choices=list(PERTURBATIONS))
    ap.add_argument("--control", help="a control run of your own (e.g. a real-V4 teacher trained with --front-end "
                                      "conv on the same data, then compressed); default: the twin's, built here")
    ap.add_argument("--noisy", help="a VOneBlock teacher trained with --v1-noise on the same data (optional with "
                                    "--control)")
    ap.add_argument("--build-only", action="store_true", help="build the control runs, print nothing else")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped build resumes from its checkpoints
    work = Path(args.work)
    if args.control is None:  # the twin demo's: built by the same pipeline preset as the bundle
        build(work, args.students)
        args.control, args.noisy = str(work / CONTROL), str(work / NOISY)
    if args.build_only:
        return
    torch.manual_seed(0)
    bundle = Run.open(args.run)
    shown = {p: (Path(p).resolve().relative_to(ROOT) if Path(p).resolve().is_relative_to(ROOT) else p)
             for p in (args.run, args.control, args.noisy) if p is not None}
    print(f"VOneBlock run {shown[args.run]}; control {shown[args.control]}; V1-noise teacher "
          f"{shown.get(args.noisy, '(none)')}; {args.images} held-out images")
    control, noisy = Run.open(args.control), Run.open(args.noisy) if args.noisy else None
    results = evaluate(bundle, control, noisy, args.students, args.images, args.perturbations)
    clean = {name: res["summary"]["r"][0, 0] for name, res in next(iter(results.values())).items()}
    line = (f"\nclean accuracy (median r, no perturbation): VOneBlock teacher {clean['VOneBlock teacher']:.3f}, "
            f"control {clean['control teacher (learned conv)']:.3f}")
    if noisy is not None:
        level = noisy.config.get("teacher", {}).get("noise_level")
        gap = clean["VOneBlock teacher"] - clean["VOneBlock teacher + V1 noise"]
        line += (f", with V1 noise (level {level}) trained and on {clean['VOneBlock teacher + V1 noise']:.3f}: "
                 f"{'within' if gap <= 0.05 else 'NOT within'} 0.05 of the noise-free one")
    print(line)
    print_tables(results)


if __name__ == "__main__":
    main()
