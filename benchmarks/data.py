"""Data-layer speed: natural crops per second, twin responses per second, Cowley session load time.

    python benchmarks/data.py [--cowley PATH] [--crops 2000] [--neurons 64] [--images 512]

The Cowley line is skipped, with a message, when the release is not found
(default: ../shared/data/cowley_v4 beside the project, or $COMPACTVISION_COWLEY_DIR).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from compactvision.data.formats import cowley_sessions, load_cowley
from compactvision.data.images import natural_crops, natural_photos
from compactvision.data.twin import DigitalTwin

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COWLEY = Path(os.environ.get("COMPACTVISION_COWLEY_DIR", ROOT.parent / "shared" / "data" / "cowley_v4"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cowley", type=Path, default=DEFAULT_COWLEY, help="Cowley et al. V4 release folder")
    ap.add_argument("--crops", type=int, default=2000, help="natural crops to time")
    ap.add_argument("--neurons", type=int, default=64, help="twin population size")
    ap.add_argument("--images", type=int, default=512, help="images the twin responds to")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice); "
                    "1 is faster on a machine already loaded by other processes")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    t = time.perf_counter()
    photos = natural_photos()
    print(f"bundled photos: {len(photos)} loaded in {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    crops = natural_crops(args.crops, size=112, seed=0)
    dt = time.perf_counter() - t
    print(f"natural crops (112x112, augmented): {args.crops / dt:,.0f} crops/s")

    t = time.perf_counter()
    twin = DigitalTwin(args.neurons, seed=0)
    build = time.perf_counter() - t
    images = crops[: args.images]
    twin.rates(images[:8])  # warm-up
    t = time.perf_counter()
    twin.rates(images)
    dt = time.perf_counter() - t
    print(f"twin ({args.neurons} neurons, built + calibrated in {build:.2f} s): {len(images) / dt:,.0f} images/s "
          f"= {len(images) * args.neurons / dt:,.0f} neuron responses/s")

    sessions = cowley_sessions(args.cowley) if args.cowley.is_dir() else []
    if not sessions:
        print(f"Cowley session load: skipped (no Cowley et al. V4 release at {args.cowley}; pass --cowley PATH)")
        return
    first = sessions[0]
    t = time.perf_counter()
    s = load_cowley(args.cowley, [first]).sessions[0]
    dt = time.perf_counter() - t
    print(f"Cowley session {first} ({s.n_neurons} neurons x {s.n_images} images): loaded in {dt:.2f} s "
          f"({s.n_images / dt:,.0f} images/s)")
    t = time.perf_counter()
    ds = load_cowley(args.cowley)
    print(f"Cowley release, all {len(ds.sessions)} sessions ({ds.n_neurons} neurons): loaded in {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
