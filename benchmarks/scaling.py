"""Neurons compressed per minute: local worker processes vs Ray tasks, on this machine.

    python benchmarks/scaling.py [--neurons 8] [--workers 2]

Builds one `tiny` run (twin -> teacher -> shared student), then compresses the
same neurons three ways from that same starting point: one local process, a
local process pool, and Ray tasks on a local Ray (`ray.init(num_cpus=workers)`),
and prints neurons per minute side by side, plus whether the backends' students
are identical.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from compactvision.artifacts import load_student
from compactvision.compress import compress_run
from compactvision.rundir import history_path, neuron_ids_of
from compactvision.pipeline import PRESETS, run_pipeline


def reset(run: Path) -> None:
    for d in ("students", "history"):
        shutil.rmtree(run / d, ignore_errors=True)


def timed(run: Path, neurons: int, **kw) -> float:
    reset(run)
    t = time.perf_counter()
    compress_run(run, PRESETS["tiny"].compress, neurons=range(neurons), **kw)
    return neurons / ((time.perf_counter() - t) / 60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "tiny"
        run_pipeline("tiny", run, workers=args.workers)
        ids = neuron_ids_of(run)[: args.neurons]
        n = len(ids)
        rows = [("local, 1 process", timed(run, n, workers=1))]
        reference = {i: load_student(run, i).state_dict() for i in ids}
        rows.append((f"local, {args.workers} processes", timed(run, n, workers=args.workers)))
        try:
            import ray
        except ImportError:
            rows.append(("ray", float("nan")))
            same = None
        else:
            ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
            try:
                rows.append((f"ray, {args.workers} CPUs", timed(run, n, backend="ray")))
            finally:
                ray.shutdown()
            same = all(torch.equal(reference[i][k], v) for i in ids for k, v in load_student(run, i).state_dict().items())
        assert all(history_path(run, i).exists() for i in ids)
    print(f"per-neuron compression, tiny preset, {n} neurons, {torch.get_num_threads()} torch threads in the driver")
    print(f"{'backend':<22} {'neurons/min':>12}")
    for name, rate in rows:
        print(f"{name:<22} {rate:>12.1f}")
    if same is not None:
        print(f"ray students identical to local: {same}")


if __name__ == "__main__":
    main()
