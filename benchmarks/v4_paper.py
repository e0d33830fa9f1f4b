"""The `paper` teacher preset (~70M parameters on the V4 release) on the real-V4 cowley protocol, on a GPU.

    python benchmarks/v4_paper.py [--release ../shared/data/cowley_v4] [--out runs/v4-paper]
                                  [--minutes M] [--device cuda] [--report FILE.json]

The protocol is `benchmarks/v4_teacher.py`'s: the trunk trains on every session but the
test sessions (190923, 201025) and the validation session (210224); each held-out
session's readout is fitted on the first half of its images; the second halves are read
only for the final figure. The preset trains for its 40 epochs unless `--minutes` caps
the trunk's training: a few timed optimisation steps on the device measure images/s
first, and the epoch count is cut to what fits, so the cosine schedule still runs to its
end (a run killed midway would stop at a high learning rate). It prints the epochs it
chose and why, the measured images/s, the validation and test sessions' median r with
bootstrap CIs, and the time of each stage. Rerun with the same --out, it resumes, with the
epoch count chosen when the run began.
Meant for a CUDA machine (bf16 autocast, channels-last); on a CPU it runs, slowly.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu import train_rate  # noqa: E402  (the timed-steps helper of benchmarks/gpu.py)


def epochs_that_fit(minutes: float | None, images_per_second: float, n_images: int, preset_epochs: int) -> int:
    """The preset's epochs, or fewer so that `n_images` per epoch at the measured rate fit in `minutes`.

    A fifth of the budget is left for the per-epoch validation pass and the data pipeline.
    """
    if minutes is None:
        return preset_epochs
    fit = int(0.8 * minutes * 60 * images_per_second / max(n_images, 1))
    return max(1, min(preset_epochs, fit))


def every_tenth(report: Callable[[str, int, int], None]) -> Callable[[str, int, int], None]:
    """Pass on a stage's progress at each tenth and at its end: a log, not a stream of lines."""
    def throttled(stage: str, done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            report(stage, done, total)
    return throttled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", default=str(ROOT.parent / "shared" / "data" / "cowley_v4"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "v4-paper"))
    ap.add_argument("--minutes", type=float, help="cap the trunk's training time (default: the preset's epochs)")
    ap.add_argument("--device", help="cuda, cpu, ... (default: CUDA when present)")
    ap.add_argument("--preset", default="paper", help="another preset, e.g. tiny for a smoke run (default: paper)")
    ap.add_argument("--report", help="also write the figures to this JSON file")
    args = ap.parse_args()
    import torch

    from compactvision.artifacts import atomic_write_json
    from compactvision.data.formats import load_dataset
    from compactvision.models.teacher import PRESETS, build_teacher
    from compactvision.progress import line_reporter
    from compactvision.runtime import select_device
    from compactvision.teacher_stage import COWLEY_TEST_SESSIONS, COWLEY_VALIDATION_SESSION, train_teacher

    device = select_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    t0 = time.perf_counter()
    dataset = load_dataset(args.release)
    held_out = set(COWLEY_TEST_SESSIONS) | {COWLEY_VALIDATION_SESSION}
    trunk = [s for s in dataset.sessions if s.session_id not in held_out]
    n_trunk_images = sum(s.n_images for s in trunk)
    print(f"device {name}; release {len(dataset.sessions)} sessions, trunk on {len(trunk)} "
          f"({n_trunk_images} images), loaded in {time.perf_counter() - t0:.1f} s", flush=True)

    size = dataset.sessions[0].images.shape[1]
    config = replace(PRESETS[args.preset], image_size=size)
    chosen = Path(args.out) / "chosen_epochs.json"
    if chosen.is_file():  # a resumed run keeps its schedule, whatever this machine would measure now
        plan = json.loads(chosen.read_text())
        epochs, rate, why = int(plan["epochs"]), float(plan["images_per_second"]), "as chosen when this run began"
    else:
        # one session's readout stands in for the rest: a step's cost is the trunk's
        probe = build_teacher(config, {"probe": trunk[0].neuron_ids}, seed=0)
        rate = train_rate(probe, device, config.batch_size, size, 5, len(trunk[0].neuron_ids),
                          channels_last=config.channels_last)
        del probe
        if device.type == "cuda":
            torch.cuda.empty_cache()
        epochs = epochs_that_fit(args.minutes, rate, n_trunk_images, config.epochs)
        why = (f"cut from {config.epochs} to fit {args.minutes:g} min" if epochs < config.epochs
               else "the preset's")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(chosen, {"epochs": epochs, "minutes": args.minutes, "images_per_second": rate})
    print(f"{args.preset} preset: {rate:.0f} training images/s "
          f"(batch {config.batch_size}); {epochs} epochs ({why})", flush=True)

    manifest = train_teacher(dataset, args.out, preset=args.preset, protocol="cowley", device=str(device),
                             resume=True, epochs=epochs, progress=every_tenth(line_reporter()))
    record = json.loads((Path(args.out) / "history" / "teacher_metrics.json").read_text())
    val = manifest["metrics"]["validation"]
    rows = [(f"validation {val['session']}", val["r"])]
    rows += [(f"test {s}", record["by_session"][s]["r"]) for s in COWLEY_TEST_SESSIONS if s in record["by_session"]]
    print(f"\n{'second half of':<20} {'median r [95% CI]':>24}")
    for label, r in rows:
        print(f"{label:<20} {r['median']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
    n_params = manifest["config"]["n_parameters"]
    print(f"{n_params / 1e6:.1f}M parameters; epochs run {len(record['training']['teacher'])} of {epochs}; "
          f"trunk {record['train_seconds']:.0f} s, whole run {record['wall_seconds']:.0f} s", flush=True)
    if args.report:
        Path(args.report).write_text(json.dumps({
            "device": name, "preset": args.preset, "n_parameters": n_params, "train_images_per_second": rate,
            "epochs": epochs,
            "epochs_cut_to_fit_minutes": args.minutes if epochs < config.epochs else None,
            "medians": {label: r for label, r in rows}, "train_seconds": record["train_seconds"],
            "wall_seconds": record["wall_seconds"], "config": replace(config, epochs=epochs).to_dict()}, indent=1))


if __name__ == "__main__":
    main()
