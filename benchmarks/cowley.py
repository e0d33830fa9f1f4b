"""Published Cowley et al. compact models vs ours on the real V4 test sessions, side by side.

    python benchmarks/cowley.py [--release PATH] [--ours RUN] [--sessions 190923 201025]

For each test session: median Pearson r on the held-out half (images 601-1200,
the paper's protocol) against the repeat-averaged responses, median parameter
count (BN statistics included, as the paper counts), and CPU throughput of the
session's median-size model at batch 64: unfused, BN folded, BN folded +
channels-last. `--ours RUN` scores a run's students the same way; they join
the recording on the data layer's neuron ids (`<session>_neuron<k>`), as
`compress` and `import-cowley` both name them (so an imported run is a valid
sanity check: its row must equal the published one).

Scoring every published model costs about 73k model-images, CPU-minutes on two
cores; `--max-neurons` takes the first few per session for a quick look (the
medians then differ from the paper's).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from compactvision.artifacts import list_students, load_student
from compactvision.cowley import (find_published_models, load_published_model, load_session, score_students,
                                  session_summary)
from compactvision.data.formats import Session
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


def our_students(run_dir: Path, recording: Session, max_neurons: int | None) -> dict[int, CompactStudent]:
    """The run's students of this session's neurons, keyed by response row.

    Students join the recording on the data layer's neuron ids
    ("<session>_neuron<k>"), as both `compress` and `import-cowley` name them.
    """
    rows = {nid: k for k, nid in enumerate(recording.neuron_ids)}
    ids = [i for i in list_students(run_dir) if i in rows][:max_neurons]
    return {rows[i]: load_student(run_dir, i) for i in ids}


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--release", type=Path, default=DEFAULT_RELEASE, help="the Cowley et al. release folder")
    p.add_argument("--ours", type=Path, help="a run directory whose students to score beside the published ones")
    p.add_argument("--sessions", nargs="+", default=list(PUBLISHED_MEDIAN_R))
    p.add_argument("--max-neurons", type=int, help="score only the first N neurons per session (quick look)")
    p.add_argument("--device", help="device for scoring (throughput is always measured on CPU)")
    args = p.parse_args(argv)
    if not (args.release / "compact_models").is_dir():
        print(f"no Cowley release at {args.release}; pass --release", file=sys.stderr)
        return 1
    rows = []
    for session in args.sessions:
        try:
            recording = load_session(args.release, session)
            contenders = {"published": published_students(args.release, session, args.max_neurons)}
            if args.ours:
                contenders["ours"] = our_students(args.ours, recording, args.max_neurons)
        except CompactVisionError as e:
            print(f"session {session} skipped: {e}", file=sys.stderr)
            continue
        for label, students in contenders.items():
            if students:
                rows.append(benchmark_row(label, session, students, recording.images, recording.mean_responses(),
                                          args.device))
            else:
                print(f"{label}: no students of session {session}", file=sys.stderr)
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
