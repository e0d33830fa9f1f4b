"""Median first-render time of every app page on the bundled run, imports warm.

Each measurement is a fresh browser session (a new AppTest) opening the page:
what a visitor waits for when arriving on it. One warm-up pass per page first
pays for imports and for loading the cached models and data once, as a running
server would have; the table reports the median and worst of the timed passes
against the 1 s target.

    python benchmarks/app_render.py [--run RUN_DIR] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["home", "gallery", "profile", "gabor_bank", "layer_weights", "attributions", "neuron_graph", "teacher_vs_student",
         "preferred_stimuli", "robustness", "train"]
TARGET_S = 1.0


def render_seconds(page: str) -> float:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    t0 = time.perf_counter()
    at.switch_page(f"pages/{page}.py").run()
    elapsed = time.perf_counter() - t0
    if at.exception:
        raise RuntimeError(f"{page}: {at.exception[0].message}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(ROOT / "assets" / "default_run"), help="run directory (default: the bundle)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pages", nargs="+", default=PAGES, choices=PAGES)
    args = parser.parse_args(argv)
    if not (Path(args.run) / "manifest.json").is_file():
        print(f"no run at {args.run}; build the bundle with `make bundle`", file=sys.stderr)
        return 1
    os.environ["COMPACTVISION_RUN"] = str(Path(args.run).resolve())
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))
    sys.path.insert(0, str(ROOT))
    import logging

    logging.getLogger("streamlit").setLevel(logging.ERROR)

    rows = []
    for page in args.pages:
        cold = render_seconds(page)  # imports + filling the caches, once per server
        times = [render_seconds(page) for _ in range(args.repeats)]
        rows.append((page, cold, statistics.median(times), max(times)))
    print(f"App first render per page, run {Path(args.run).name}, {args.repeats} fresh sessions each (AppTest)")
    print(f"{'page':<20} {'cold (s)':>9} {'median (s)':>11} {'max (s)':>8}  target <= {TARGET_S:.1f} s")
    for page, cold, med, worst in rows:
        print(f"{page:<20} {cold:>9.3f} {med:>11.3f} {worst:>8.3f}  {'ok' if med <= TARGET_S else 'SLOW'}")
    return 0 if all(med <= TARGET_S for _, _, med, _ in rows) else 2


if __name__ == "__main__":
    sys.exit(main())
