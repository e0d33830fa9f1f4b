"""Does the V1 front end make teachers and compact models harder to break? VOneBlock vs a learned first conv.

    python benchmarks/robustness.py [--run assets/default_run] [--work runs/robustness] [--students 8]
                                    [--images 128] [--build-only]

The claim (Dapello et al. 2020; Cowley et al. 2026) is that a biologically
constrained V1 front end makes a model more robust to image perturbations and
adversarial attacks than a standard CNN. Tested here on the digital twin:

* **VOneBlock teacher**: the bundled run's (`--run`), V1 noise off;
* **VOneBlock + V1 noise**: the same recipe trained *and* tested with the
  VOneBlock's Poisson-like noise on, at `noise_level` 1 (VOneNet's "neuronal"
  mode in our units), built into `WORK/vone_noise`;
* **control teacher**: the same data, back end, budget and seed with a learned
  convolution of the VOneBlock's shape in its place, built into `WORK/conv`;
* the **compact students** of the VOneBlock and control teachers (the first
  `--students` neurons, one per cell type, compressed with the same preset).

The two extra runs are built by the project's own pipeline stages on first
use and reused after (rerun the command to continue an interrupted build).
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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from compactvision.metrics import bootstrap_median_ci
from compactvision.pipeline import PRESETS, pipeline_teacher, run_pipeline
from compactvision.progress import line_reporter

ROOT = Path(__file__).resolve().parents[1]
DEMO = PRESETS["demo"]
NOISE_LEVEL = 1.0


def build(work: Path, students: int) -> None:
    """The control run (teacher and the first `students` compact models) and the V1-noise teacher, resumably."""
    progress = line_reporter()
    conv = replace(DEMO, teacher_overrides={**DEMO.teacher_overrides, "front_end": "conv"})
    run_pipeline(conv, work / "conv", seed=0, progress=progress, neurons=list(range(students)))
    noisy = replace(DEMO, teacher_overrides={**DEMO.teacher_overrides, "noise": "poisson", "noise_level": NOISE_LEVEL})
    pipeline_teacher(noisy, work / "vone_noise", seed=0, progress=progress)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "assets" / "default_run"), help="the VOneBlock run (default: the bundle)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "robustness"), help="where the control runs are built")
    ap.add_argument("--students", type=int, default=8, help="compact models per teacher (the first neurons)")
    ap.add_argument("--images", type=int, default=128, help="held-out images perturbed")
    ap.add_argument("--build-only", action="store_true", help="build the control runs, print nothing else")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped build resumes from its checkpoints
    build(Path(args.work), args.students)
    if args.build_only:
        return


if __name__ == "__main__":
    main()
