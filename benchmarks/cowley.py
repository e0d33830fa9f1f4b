"""Published Cowley et al. compact models vs ours on the real V4 test sessions, side by side.

    python benchmarks/cowley.py [--release PATH] [--sessions 190923 201025] [--max-neurons N]
    python benchmarks/cowley.py --ours RUN [--csv PATH]

Without `--ours`: for each test session, the published models' median Pearson
r on the held-out half (images 601-1200, the paper's protocol) against the
repeat-averaged responses, their median parameter count (BN statistics
included, as the paper counts), and CPU throughput of the session's
median-size model at batch 64: unfused, BN folded, BN folded + channels-last.
Scoring every published model costs about 73k model-images, CPU-minutes on two
cores; `--max-neurons` takes the first few per session for a quick look (the
medians then differ from the paper's).

With `--ours RUN` (a real-V4 run, `compactvision pipeline --data RELEASE`):
per test session and on exactly the run's held-out images, our teacher's
median r, our compact models' median r and parameters, and the published
models' median r and parameters for the same neurons, each median with a
bootstrap 95% CI; the share of the teacher's r our compact models keep; and a
per-neuron CSV (`--csv`, by default beside the run).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from compactvision.cowley import (find_published_models, load_published_model, load_session, score_students,
                                  session_summary)
from compactvision.errors import CompactVisionError
from compactvision.models.student import CompactStudent

ROOT = Path(__file__).resolve().parents[1]
#: Where the release is looked up when --release is not given (same rule as the tests).
DEFAULT_RELEASE = Path(os.environ.get("COMPACTVISION_COWLEY_DIR", ROOT.parent / "shared" / "data" / "cowley_v4"))
#: Held-out median r reported with the release (README of the data folder).
PUBLISHED_MEDIAN_R = {"190923": 0.636, "201025": 0.688}


def published_students(release: Path, session: str, max_neurons: int | None) -> dict[int, CompactStudent]:
    models = find_published_models(release, [session])[:max_neurons]
    return {m.index: load_published_model(m) for m in models}


def throughput(model: CompactStudent, batch: int = 64, repeats: int = 5) -> dict[str, float]:
    """Images/s on CPU for the three inference forms of one model (best of `repeats`)."""
    x = torch.rand(batch, 3, *model.arch.input_size, generator=torch.Generator().manual_seed(0))
    fused = model.fused()
    forms = {"unfused": (model.eval(), x), "fused": (fused, x),
             "fused+cl": (fused.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last))}
    out = {}
    with torch.inference_mode():
        for name, (m, inp) in forms.items():
            m(inp)  # warm-up: first call picks kernels
            best = min(_timed(m, inp) for _ in range(repeats))
            out[name] = batch / best
    return out


def _timed(m: torch.nn.Module, x: torch.Tensor) -> float:
    t = time.perf_counter()
    m(x)
    return time.perf_counter() - t


def median_size(students: dict[int, CompactStudent]) -> CompactStudent:
    ranked = sorted(students.values(), key=lambda s: s.n_parameters())
    return ranked[len(ranked) // 2]


def benchmark_row(label: str, session: str, students: dict[int, CompactStudent], images: np.ndarray,
                  responses: np.ndarray, device: str | None) -> dict:
    t = time.perf_counter()
    scores = score_students(students, images, responses, first_half=False, device=device)
    summary = session_summary(session, scores, {k: s.n_parameters() for k, s in students.items()})
    speed = throughput(median_size(students))
    return {"session": session, "models": label, "neurons": len(students), "median_r": summary["median_r_heldout"],
            "median_params": summary["median_n_parameters"], **speed, "score_s": time.perf_counter() - t}


def print_table(rows: list[dict]) -> None:
    head = (f"{'session':<8} {'models':<10} {'neurons':>7} {'median r':>9} {'paper r':>8} {'median params':>14} "
            f"{'img/s unfused':>14} {'img/s fused':>12} {'img/s fused+cl':>15}")
    print(head)
    print("-" * len(head))
    for r in rows:
        paper = PUBLISHED_MEDIAN_R.get(r["session"]) if r["models"] == "published" else None
        print(f"{r['session']:<8} {r['models']:<10} {r['neurons']:>7} {r['median_r']:>9.3f} "
              f"{(f'{paper:.3f}' if paper is not None else '-'):>8} {r['median_params']:>14,.0f} "
              f"{r['unfused']:>14.0f} {r['fused']:>12.0f} {r['fused+cl']:>15.0f}")


def compare_run(run: Path, release: Path, csv_path: Path, device: str | None) -> int:
    """Ours (teacher and compact models) against the published models on the run's held-out images."""
    import csv

    from compactvision.cowley.compare import compare_with_published

    try:
        result = compare_with_published(run, release, device=device)
    except CompactVisionError as e:
        print(f"cannot compare {run}: {e}", file=sys.stderr)
        return 1
    ci = lambda m: f"{m['median']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" if m["median"] is not None else "-"  # noqa: E731
    head = (f"{'session':<8} {'neurons':>7} {'our teacher r [95% CI]':>24} {'our compact r [95% CI]':>24} "
            f"{'kept':>5} {'our params':>10} {'published r [95% CI]':>24} {'their params':>12}")
    print("Held-out second half of each test session, Pearson r vs repeat-averaged responses (median over neurons)")
    print(head)
    print("-" * len(head))
    for sid, m in result["sessions"].items():
        kept = m["ours_r"]["median"] / m["teacher_r"]["median"] if m["teacher_r"]["median"] else float("nan")
        print(f"{sid:<8} {m['n_neurons']:>7} {ci(m['teacher_r']):>24} {ci(m['ours_r']):>24} {kept:>5.0%} "
              f"{m['ours_parameters']['median']:>10,.0f} {ci(m['published_r']):>24} "
              f"{m['published_parameters']['median']:>12,.0f}")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result["rows"][0]))
        writer.writeheader()
        writer.writerows(result["rows"])
    print(f"per-neuron table: {csv_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--release", type=Path, default=DEFAULT_RELEASE, help="the Cowley et al. release folder")
    p.add_argument("--ours", type=Path, help="a real-V4 run whose teacher and compact models to put beside the "
                                             "published ones")
    p.add_argument("--csv", type=Path, help="per-neuron table for --ours (default: RUN-vs-published.csv)")
    p.add_argument("--sessions", nargs="+", default=list(PUBLISHED_MEDIAN_R))
    p.add_argument("--max-neurons", type=int, help="score only the first N neurons per session (quick look)")
    p.add_argument("--device", help="device for scoring (throughput is always measured on CPU)")
    args = p.parse_args(argv)
    if not (args.release / "compact_models").is_dir():
        print(f"no Cowley release at {args.release}; pass --release", file=sys.stderr)
        return 1
    if args.ours:
        csv_path = args.csv or args.ours.with_name(args.ours.name + "-vs-published.csv")
        return compare_run(args.ours, args.release, csv_path, args.device)
    rows = []
    for session in args.sessions:
        try:
            recording = load_session(args.release, session)
            students = published_students(args.release, session, args.max_neurons)
        except CompactVisionError as e:
            print(f"session {session} skipped: {e}", file=sys.stderr)
            continue
        rows.append(benchmark_row("published", session, students, recording.images, recording.mean_responses(),
                                  args.device))
    if not rows:
        print("nothing to score", file=sys.stderr)
        return 1
    print(f"Held-out half of each session (second half in image-name order), Pearson r vs repeat-averaged "
          f"responses; throughput of the median-size model, CPU, batch 64, {torch.get_num_threads()} threads")
    print_table(rows)
    print(f"scoring took {sum(r['score_s'] for r in rows):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
