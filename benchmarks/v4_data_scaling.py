"""How the real-V4 teacher's accuracy grows with the sessions it trains on: a learning curve.

    python benchmarks/v4_data_scaling.py [--release ../shared/data/cowley_v4] [--work runs/v4-scaling]
                                         [--counts 1 2 4 7] [--order-seed 0] [--device cuda] [--report FILE]

The authors' network fitted on V4 recordings alone (0.52 / 0.62 on the held-out
halves of 190923 / 201025) learned from 44 training sessions; a copy of the
release may have far fewer. This trains the `v4` pipeline preset's teacher on
the cowley protocol with the first k training sessions, for each k of
`--counts` (the sessions in an order shuffled by `--order-seed`, each subset
inside the next), with the same test and validation sessions, and prints each
one's median r on the validation session's and the test sessions' second
halves. It then fits r = a + b log10(training images) per session by least
squares and prints how many images the line would need to reach the authors'
no-ImageNet figures. That is an extrapolation, not a measurement: it says
whether the release one has is large enough to expect them. Nothing is
chosen here, so reading the test halves selects nothing. Every run is kept
under `--work` and resumed, so a rerun continues.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: The authors' direct fit (no ImageNet, no teacher) on the held-out halves: the targets of the curve.
AUTHORS_DIRECT_FIT = {"190923": 0.519, "201025": 0.616}


def nested_subsets(session_ids: list[str], counts: list[int], seed: int) -> dict[int, list[str]]:
    """k -> the first k of `session_ids` in a seeded order, in the order of `counts` (so the run one most wants
    comes first); a count above what there is becomes all of them."""
    order = [session_ids[i] for i in np.random.default_rng(seed).permutation(len(session_ids))]
    return {min(k, len(order)): order[:min(k, len(order))] for k in counts if k >= 1}


def log_fit(n_images: list[int], r: list[float]) -> tuple[float, float]:
    """(a, b) of r = a + b log10(n) by least squares."""
    b, a = np.polyfit(np.log10(np.asarray(n_images, float)), np.asarray(r, float), 1)
    return float(a), float(b)


def images_needed(a: float, b: float, target: float) -> float | None:
    """Images at which the fitted line reaches `target`; None where it does not rise."""
    return float(10 ** ((target - a) / b)) if b > 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", default=str(ROOT.parent / "shared" / "data" / "cowley_v4"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "v4-scaling"))
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 7], help="training sessions per run")
    ap.add_argument("--order-seed", type=int, default=0, help="shuffles the training sessions' order")
    ap.add_argument("--preset", default="v4", help="the pipeline preset whose teacher is trained (tiny: a smoke run)")
    ap.add_argument("--device", help="cuda, cpu, ... (default: CUDA when present)")
    ap.add_argument("--report", help="also write the figures to this JSON file")
    args = ap.parse_args()
    from compactvision.data.dataset import NeuralDataset
    from compactvision.data.formats import load_dataset
    from compactvision.pipeline import PRESETS
    from compactvision.runtime import select_device
    from compactvision.teacher_stage import COWLEY_TEST_SESSIONS, COWLEY_VALIDATION_SESSION, train_teacher

    device = select_device(args.device)
    dataset = load_dataset(args.release)
    held_ids = {*COWLEY_TEST_SESSIONS, COWLEY_VALIDATION_SESSION}
    held = [s for s in dataset.sessions if s.session_id in held_ids]
    training = [s.session_id for s in dataset.sessions if s.session_id not in held_ids]
    preset = PRESETS[args.preset]
    columns = ["validation", *(s for s in COWLEY_TEST_SESSIONS if any(h.session_id == s for h in held))]
    subsets = nested_subsets(training, args.counts, args.order_seed)
    print(f"{args.preset} teacher on {device.type}; training sessions added in the order "
          f"{subsets[max(subsets)]} (seed {args.order_seed}); median r [95% CI] on the second halves")
    print(f"{'sessions':>8} {'images':>7} " + " ".join(f"{c:>22}" for c in columns) + f" {'s':>6}", flush=True)
    rows = []
    for k, chosen in subsets.items():
        subset = NeuralDataset(held + [s for s in dataset.sessions if s.session_id in chosen], dict(dataset.metadata))
        out = Path(args.work) / f"sessions_{k}"
        manifest = train_teacher(subset, out, preset=preset.teacher_preset, protocol="cowley", device=str(device),
                                 resume=True, progress=False, config_overrides=preset.teacher_overrides)
        record = json.loads((out / "history" / "teacher_metrics.json").read_text())
        row = {"sessions": k, "session_ids": chosen, "images": sum(dataset.session(s).n_images for s in chosen),
               "validation": manifest["metrics"]["validation"]["r"],
               **{s: record["by_session"][s]["r"] for s in columns[1:]}, "seconds": record["wall_seconds"]}
        rows.append(row)
        cells = [f"{row[c]['median']:.3f} [{row[c]['ci_low']:.3f}, {row[c]['ci_high']:.3f}]" for c in columns]
        print(f"{k:>8} {row['images']:>7} " + " ".join(f"{c:>22}" for c in cells) + f" {row['seconds']:>6.0f}",
              flush=True)
    fits = {}
    if len(rows) >= 2:
        print("\nr = a + b log10(images), fitted per session over the rows above:")
        for c in columns:
            a, b = log_fit([r["images"] for r in rows], [r[c]["median"] for r in rows])
            fits[c] = {"a": a, "b": b}
            line = f"  {c:>10}: a {a:+.3f}, b {b:+.3f} per tenfold"
            if c in AUTHORS_DIRECT_FIT:
                need = images_needed(a, b, AUTHORS_DIRECT_FIT[c])
                fits[c]["images_for_authors_direct_fit"] = need
                line += (f"; reaches the authors' direct fit ({AUTHORS_DIRECT_FIT[c]}) at "
                         + (f"~{need:,.0f} training images" if need else "no size (the line does not rise)"))
            print(line)
    if args.report:
        Path(args.report).write_text(json.dumps({"device": device.type, "order_seed": args.order_seed,
                                                 "rows": rows, "fits": fits}, indent=1))


if __name__ == "__main__":
    main()
