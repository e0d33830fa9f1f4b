"""Compact models of the twin's truth beside those of its fitted teacher: what does size owe to the teacher?

    python benchmarks/truth.py [--run assets/default_run] [--truth runs/truth_default_run] [--workers 2]
                               [--images N] [--shared-epochs E] [--distil-only] [--recovery]

A compact model distilled from a fitted teacher copies the teacher, errors
included. `compactvision compress-truth` distils and prunes the same neurons
from the digital twin itself, with the settings the run's own compact models
were made with and on the same image stream. This benchmark makes that truth
run (or continues it: it resumes per neuron) and prints, neuron by neuron and
per cell type, both compact models side by side: filters per layer, total
filters, parameters, and r against the twin's noise-free truth on the held-out
images. Then the median total filters of one-stage and multi-stage cells for
each. With `--recovery`, the ground-truth recovery (`interpret.stimuli.recovered`:
orientation, preferred size, and the in-silico closed loop) per cell type for both.
`--images N` and `--shared-epochs E` lengthen the truth's distillation (its labels
are nearly free); with `--distil-only` nothing is pruned, and `--recovery` then
scores each neuron's column of the unpruned shared student of both runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def make_truth_run(run: Path, truth: Path, workers: int, images: int | None = None,
                   shared_epochs: int | None = None, distil_only: bool = False) -> dict:
    """The truth run of `run`, compressed with `run`'s own recorded settings (resumed where it stopped).

    `images` and `shared_epochs` change the distillation stream's length and the shared student's epochs;
    with `distil_only` no neuron is pruned.
    """
    from dataclasses import replace

    from compactvision.artifacts import read_manifest
    from compactvision.compress import CompressConfig, compress_run
    from compactvision.progress import tqdm_reporter
    from compactvision.truth_run import prepare_truth_run

    config = CompressConfig.from_dict(read_manifest(run, verify=False)["config"]["compress"])
    if images:
        config = replace(config, stream=replace(config.stream, n_images=images))
    if shared_epochs:
        config = replace(config, shared_epochs=shared_epochs)
    prepare_truth_run(run, truth)
    return compress_run(truth, config, workers=workers, neurons=[] if distil_only else None,
                        progress=tqdm_reporter())


def records(run: Path) -> dict[str, dict]:
    """Neuron id -> its compact model's recorded metrics."""
    from compactvision.artifacts import read_json

    return {(r := read_json(p))["neuron_id"]: r["metrics"] for p in sorted((run / "history").glob("prune_*.json"))}


def print_side_by_side(run: Path, truth: Path) -> None:
    from compactvision.interpret.profile import sizes_by_cell_type
    from compactvision.runs import Run

    ground = Run.open(run).ground_truth()
    types = {r["neuron_id"]: r["cell_type"] for r in ground}
    ours, true = records(run), records(truth)
    ids = [i for i in ours if i in true]
    print(f"\ncompact models of {run.name}: distilled from its fitted teacher | from the twin itself ({truth.name})")
    print(f"{'neuron':10} {'cell type':16} {'teacher: filters':>22} {'params':>7} {'r truth':>7} | "
          f"{'truth: filters':>22} {'params':>7} {'r truth':>7}")
    for i in ids:
        a, b = ours[i], true[i]
        print(f"{i:10} {types.get(i, '?'):16} {str(a['channels']):>22} {a['n_parameters']:>7,} {a['r_truth']:>7.3f} | "
              f"{str(b['channels']):>22} {b['n_parameters']:>7,} {b['r_truth']:>7.3f}")
    sa = sizes_by_cell_type({i: ours[i] for i in ids}, ground)
    sb = sizes_by_cell_type({i: true[i] for i in ids}, ground)
    print(f"\nper cell type (medians): from the teacher | from the truth")
    print(f"{'cell type':16} {'n':>2} {'filters per layer':>20} {'total':>5} {'params':>7} {'r truth':>7} | "
          f"{'filters per layer':>20} {'total':>5} {'params':>7} {'r truth':>7}")
    for kind in (k for k in sa if k != "all"):
        a, b = sa[kind], sb[kind]
        print(f"{kind:16} {a['n']:>2} {str(a['channels']):>20} {a['total_filters']:>5.0f} {a['n_parameters']:>7,.0f} "
              f"{a['r_truth']:>7.3f} | {str(b['channels']):>20} {b['total_filters']:>5.0f} {b['n_parameters']:>7,.0f} "
              f"{b['r_truth']:>7.3f}")
    for name, s in (("from the teacher", sa["all"]), ("from the truth", sb["all"])):
        print(f"{name:>16}: median total filters one-stage {s['one_stage_filters']:.0f}, multi-stage "
              f"{s['multi_stage_filters']:.0f}; consolidated {s['consolidated']}/{s['n']}; median parameters "
              f"{s['n_parameters']:,.0f}")
    r_truth = [true[i]["r_truth"] for i in ids]
    print(f"the truth's compact models follow the truth at a median r of {np.median(r_truth):.3f} "
          f"(the teacher's: {np.median([ours[i]['r_truth'] for i in ids]):.3f})")


def print_recovery(run: Path, models: dict[str, Callable[[str], tuple[nn.Module, int]]]) -> None:
    """Ground-truth recovery per cell type, one column per entry of `models` (name -> neuron id -> model, output)."""
    from compactvision.data.twin import twin_from_ground_truth
    from compactvision.interpret.stimuli import compare_with_twin, recovered
    from compactvision.runs import Run

    base = Run.open(run)
    ground = base.ground_truth()
    held = next(iter(base.heldout()["sessions"].values()))["images"]
    twin = twin_from_ground_truth(ground, image_size=held.shape[1])
    rows: dict[str, list[list[tuple[bool, float]]]] = {}
    for k, record in enumerate(ground):
        results = []
        for model_of in models.values():
            model, j = model_of(str(record["neuron_id"]))
            c = compare_with_twin(model, twin, k, model_neuron=j, natural_images=held)
            results.append((recovered(c), c["closed_loop_ratio"]))
        rows.setdefault(record["cell_type"], []).append(results)
    print("\nground truth recovered (orientation <= 15 deg, size within 25%, closed loop >= 80% and above the best "
          "held-out image),\nwith the median closed-loop ratio: " + " | ".join(models))
    for kind, rs in sorted(rows.items()):
        cells = [f"{sum(r[m][0] for r in rs)}/{len(rs)} ({np.median([r[m][1] for r in rs]):.2f})"
                 for m in range(len(models))]
        print(f"{kind:16} " + " | ".join(f"{c:>12}" for c in cells))
    every = [r for rs in rows.values() for r in rs]
    print(f"{'total':16} " + " | ".join(f"{f'{sum(r[m][0] for r in every)}/{len(every)}':>12}"
                                        for m in range(len(models))))


def compact_models(run: Path) -> Callable[[str], tuple[nn.Module, int]]:
    from compactvision.runs import Run

    opened = Run.open(run)
    return lambda neuron_id: (opened.load_student(neuron_id), 0)


def unpruned_columns(run: Path) -> Callable[[str], tuple[nn.Module, int]]:
    """Each neuron's column of the run's shared student, before any pruning."""
    from compactvision.compress import load_shared_student
    from compactvision.rundir import neuron_ids_of

    shared, ids = load_shared_student(run), neuron_ids_of(run)
    return lambda neuron_id: (shared, ids.index(neuron_id))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "assets" / "default_run"), help="a digital-twin run with compact models")
    ap.add_argument("--truth", default=None, help="its truth run (default: runs/truth_<run name>[_<variant>])")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--images", type=int, help="distillation stream length (default: the run's own)")
    ap.add_argument("--shared-epochs", type=int, help="epochs of the shared student (default: the run's own)")
    ap.add_argument("--distil-only", action="store_true",
                    help="stop after the shared student; with --recovery, score its unpruned columns")
    ap.add_argument("--recovery", action="store_true", help="also the ground-truth recovery of both")
    args = ap.parse_args()
    run = Path(args.run)
    variant = "".join(f"_{k}{v}" for k, v in (("i", args.images), ("e", args.shared_epochs)) if v)
    truth = Path(args.truth) if args.truth else ROOT / "runs" / f"truth_{run.name}{variant}"
    summary = make_truth_run(run, truth, args.workers, args.images, args.shared_epochs, args.distil_only)
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in (summary.get("stage_seconds") or {}).items())
    if args.distil_only:
        print(f"truth run {truth}: shared stages {stages}")
        if args.recovery:
            print_recovery(run, {"the run's unpruned student": unpruned_columns(run),
                                 "the truth's unpruned student": unpruned_columns(truth)})
        return
    print(f"truth run {truth}: {summary['n_students']} compact models; shared stages {stages}; "
          f"median {summary['seconds']['median']:.0f} s per neuron on one of {args.workers} workers")
    print_side_by_side(run, truth)
    if args.recovery:
        print_recovery(run, {"from the teacher": compact_models(run), "from the truth": compact_models(truth)})


if __name__ == "__main__":
    main()
