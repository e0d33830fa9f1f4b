"""Compact models of the twin's truth beside those of its fitted teacher: what does size owe to the teacher?

    python benchmarks/truth.py [--run assets/default_run] [--truth runs/truth_default_run] [--workers 2]
                               [--recovery]

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
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_truth_run(run: Path, truth: Path, workers: int) -> dict:
    """The truth run of `run`, compressed with `run`'s own recorded settings (resumed where it stopped)."""
    from compactvision.artifacts import read_manifest
    from compactvision.compress import CompressConfig, compress_run
    from compactvision.progress import tqdm_reporter
    from compactvision.truth_run import prepare_truth_run

    config = CompressConfig.from_dict(read_manifest(run, verify=False)["config"]["compress"])
    prepare_truth_run(run, truth)
    return compress_run(truth, config, workers=workers, progress=tqdm_reporter())


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


def print_recovery(run: Path, truth: Path) -> None:
    from compactvision.data.twin import twin_from_ground_truth
    from compactvision.interpret.stimuli import compare_with_twin, recovered
    from compactvision.runs import Run

    a, b = Run.open(run), Run.open(truth)
    ground = a.ground_truth()
    held = next(iter(a.heldout()["sessions"].values()))["images"]
    twin = twin_from_ground_truth(ground, image_size=held.shape[1])
    index = {str(r["neuron_id"]): i for i, r in enumerate(ground)}
    ids = [i for i in a.student_ids() if i in set(b.student_ids())]
    rows: dict[str, list[tuple[bool, bool, float, float]]] = {}
    for i in ids:
        ca = compare_with_twin(a.load_student(i), twin, index[i], natural_images=held)
        cb = compare_with_twin(b.load_student(i), twin, index[i], natural_images=held)
        rows.setdefault(ca["cell_type"], []).append((recovered(ca), recovered(cb), ca["closed_loop_ratio"],
                                                    cb["closed_loop_ratio"]))
    print("\nground truth recovered (orientation <= 15 deg, size within 25%, closed loop >= 80% and above the best "
          "held-out image):\nfrom the teacher | from the truth, with the median closed-loop ratio")
    for kind, rs in sorted(rows.items()):
        print(f"{kind:16} {sum(r[0] for r in rs)}/{len(rs)} ({np.median([r[2] for r in rs]):.2f}) | "
              f"{sum(r[1] for r in rs)}/{len(rs)} ({np.median([r[3] for r in rs]):.2f})")
    every = [r for rs in rows.values() for r in rs]
    print(f"{'total':16} {sum(r[0] for r in every)}/{len(every)} | {sum(r[1] for r in every)}/{len(every)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "assets" / "default_run"), help="a digital-twin run with compact models")
    ap.add_argument("--truth", default=None, help="its truth run (default: runs/truth_<run name>)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--recovery", action="store_true", help="also the ground-truth recovery of both")
    args = ap.parse_args()
    run = Path(args.run)
    truth = Path(args.truth) if args.truth else ROOT / "runs" / f"truth_{run.name}"
    summary = make_truth_run(run, truth, args.workers)
    stages = summary.get("stage_seconds") or {}
    print(f"truth run {truth}: {summary['n_students']} compact models; shared stages "
          + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())
          + f"; median {summary['seconds']['median']:.0f} s per neuron on one of {args.workers} workers")
    print_side_by_side(run, truth)
    if args.recovery:
        print_recovery(run, truth)


if __name__ == "__main__":
    main()
