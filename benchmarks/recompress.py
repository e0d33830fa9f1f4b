"""Re-compressing the published V4 compact models: ours against theirs, neuron by neuron.

    python benchmarks/recompress.py [--release PATH] [--work runs/recompress] [--per-session 4] [--shared-epochs N]
                                    [--images N] [--own-zoom Z] [--batch-size B] [--lr LR]
                                    [--readout-rank K] [--neuron-epochs N] [--threshold T] [--round-epochs N]
                                    [--final-epochs N] [--budget even]
                                    [--distil-only] [--rank-cap]
                                    [--finished-only] [--sessions 190923 201025] [--preset recompress]
    bash benchmarks/recompress_gpu.sh [SECONDS [ARGS...]]   # on one GPU, within a time budget

Each published model of Cowley et al. (2026) is taken as the teacher of its
neuron (`compactvision recompress`): distilled into a fresh wide student
(shared by the sample's neurons, each read out alone) and pruned per neuron by
our criterion. On CPU the sample is fixed and printed: the first
`--per-session` (4) neurons of each test session, 190923 and 201025 unless
`--sessions` names others. With a
GPU, or `--all`, every published model, unless `--per-session` is given. The
work is resumable: rerunning the command continues where it stopped, and
finished neurons are only re-scored; `--finished-only` prints the table for
the neurons finished so far and prunes no further.

Per neuron, on the held-out second half of its session's images (the paper's
protocol), it prints: parameters (ours, theirs), r of our model against
theirs, r of ours and of theirs against the measured responses, and the
seconds our compression took; then the medians. `--shared-epochs N` trains
the shared student for N epochs instead of the preset's, in a run of its own
(`ours_<sample>_e<N>`), so the two can be compared neuron by neuron; `--images N`
likewise labels N images for it instead of the preset's, `--own-zoom Z` shows it the
release's images through random windows of 1 - Z to 1 times their side, `--batch-size B` and
`--lr LR` train the students in batches of B at rate LR, and `--readout-rank K`
reads each neuron out at rank K. `--neuron-epochs N` fits each neuron's copy
of the shared student for N epochs on its own before pruning, and links the
labels and shared student from the run that made them; `--threshold T` and
`--round-epochs N` prune to another share of the unpruned r² and retrain
between visits of the layers, `--final-epochs N` retrains each pruned model
for N epochs, and `--budget even` shares each visit's budget
among its layers (`PruneConfig.budget`), linking them likewise. `--rank-cap` prints,
and does nothing else, how closely each published model follows itself with
its own readout cut to rank 1 and 2: what a readout of that form loses on the
published model's own features. `r distilled~theirs`
is the unpruned shared student's column against the published model, so a
shortfall can be put on distillation or on pruning; `--distil-only` stops there.
"""
from __future__ import annotations

import argparse
import copy
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from compactvision.artifacts import MANIFEST, list_students, load_student, read_json
from compactvision.compress import (SETTINGS, CompressConfig, compress_run, default_workers, describe_stage_seconds,
                                   load_shared_student, same_shared_stages)
from compactvision.cowley import import_cowley, session_predictions
from compactvision.cowley.recompress import prepare_recompress
from compactvision.distill import LabelCache, same_stream
from compactvision.errors import CompactVisionError
from compactvision.metrics import pearson_r
from compactvision.pipeline import COMPRESS_PRESETS
from compactvision.prune import BUDGETS
from compactvision.progress import reporter
from compactvision.rundir import CACHE_DIR, SHARED_STUDENT, heldout_data, history_path, neuron_ids_of
from compactvision.train import predict

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RELEASE = Path(os.environ.get("COMPACTVISION_COWLEY_DIR", ROOT.parent / "shared" / "data" / "cowley_v4"))
TEST_SESSIONS = ("190923", "201025")


def _r(a: np.ndarray, b: np.ndarray) -> float:
    return float(pearson_r(np.asarray(a, np.float64), np.asarray(b, np.float64))[0])


def published_predictions(imported: Path, run: Path) -> dict[str, np.ndarray]:
    """Each published model's responses to its session's held-out half: the costliest forward pass, done once."""
    return {nid: session_predictions(load_student(imported, nid), s["images"])
            for s in heldout_data(run)["sessions"].values() for nid in s["neuron_ids"]}


def distilled_r(run: Path, theirs: dict[str, np.ndarray]) -> dict[str, float]:
    """Per neuron, r of the unpruned shared student against the published model (`theirs`) on the held-out half.

    Set beside the pruned model's r, it says where a shortfall comes from:
    distillation (this column) or pruning (the drop from it).
    """
    shared = load_shared_student(run)
    names = list(shared.arch.output_names)
    out = {}
    for s in heldout_data(run)["sessions"].values():
        pred = predict(shared, s["images"], amp=False)  # every neuron's column in one pass
        for nid in s["neuron_ids"]:
            out[nid] = _r(pred[:, names.index(nid)], theirs[nid])
    return out


def distilled_r_stream(run: Path) -> dict[str, float]:
    """Per neuron, r of the unpruned shared student against the labels of the stream's held-back images.

    Those images are never trained on and are not the session's held-out
    half, so variants are chosen on this, and the held-out figures stay for reporting.
    """
    shared = load_shared_student(run)
    cache = LabelCache(run / CACHE_DIR / "labels")
    val = cache.split()[1]
    pred = predict(shared, np.asarray(cache.images[val]), amp=False)
    labels = np.asarray(cache.labels[val])
    return {nid: _r(pred[:, k], labels[:, k]) for k, nid in enumerate(shared.arch.output_names)}


def readout_rank_cap(imported: Path, run: Path, theirs: dict[str, np.ndarray],
                     ranks: tuple[int, ...] = (1, 2)) -> dict[str, list[float]]:
    """Per neuron, r of each published model against itself with its readout cut to rank k (k in `ranks`).

    The cut is the best rank-k approximation of the weights (by SVD), not of
    the response, so this is what a rank-k readout of the published model's
    own features reaches at the least: a rough ceiling on r distilled~theirs
    that the readout's form alone sets.
    """
    out = {}
    for s in heldout_data(run)["sessions"].values():
        for nid in s["neuron_ids"]:
            model = load_student(imported, nid)
            h, w = model.arch.readout_hw
            weight = model.readout.weight.detach().double().view(h * w, -1)
            u, sv, vh = torch.linalg.svd(weight, full_matrices=False)
            out[nid] = []
            for k in ranks:
                cut = copy.deepcopy(model)
                with torch.no_grad():
                    cut.readout.weight.copy_(((u[:, :k] * sv[:k]) @ vh[:k]).reshape_as(cut.readout.weight))
                out[nid].append(_r(session_predictions(cut, s["images"]), theirs[nid]))
    return out


def neuron_rows(imported: Path, run: Path) -> list[dict[str, float | str]]:
    """One row per re-compressed neuron, scored on its session's held-out half."""
    rows = []
    held = heldout_data(run)["sessions"]
    theirs_y = published_predictions(imported, run)
    distilled = distilled_r(run, theirs_y)
    for session, s in held.items():
        for j, nid in enumerate(s["neuron_ids"]):
            if not history_path(run, nid).exists():
                continue
            ours, theirs = load_student(run, nid), load_student(imported, nid)
            y_ours, y_theirs = session_predictions(ours, s["images"]), theirs_y[nid]
            metrics = read_json(history_path(run, nid))["metrics"]
            rows.append({"neuron": nid, "params_ours": ours.n_parameters(), "params_theirs": theirs.n_parameters(),
                         "channels_ours": "-".join(map(str, ours.arch.channels)),
                         "channels_theirs": "-".join(map(str, theirs.arch.channels)),
                         "r_distilled_vs_theirs": distilled[nid],
                         "r_ours_vs_theirs": _r(y_ours, y_theirs), "r_ours": _r(y_ours, s["responses"][j]),
                         "r_theirs": _r(y_theirs, s["responses"][j]), "seconds": float(metrics["seconds"])})
    return rows


def print_table(rows: list[dict[str, float | str]]) -> None:
    head = (f"{'neuron':<18} {'ours: filters':>16} {'params':>7} {'theirs: filters':>16} {'params':>7} "
            f"{'r distilled~theirs':>18} {'r ours~theirs':>13} {'r ours':>7} {'r theirs':>8} {'s':>6}")
    print(head)
    for r in rows:
        print(f"{r['neuron']:<18} {r['channels_ours']:>16} {r['params_ours']:>7} {r['channels_theirs']:>16} "
              f"{r['params_theirs']:>7} {r['r_distilled_vs_theirs']:>18.3f} {r['r_ours_vs_theirs']:>13.3f} "
              f"{r['r_ours']:>7.3f} {r['r_theirs']:>8.3f} {r['seconds']:>6.0f}")
    med = {k: float(np.median([r[k] for r in rows])) for k in ("params_ours", "params_theirs", "r_distilled_vs_theirs",
                                                                 "r_ours_vs_theirs", "r_ours", "r_theirs", "seconds")}
    print(f"{'median (' + str(len(rows)) + ')':<18} {'':>16} {med['params_ours']:>7.0f} {'':>16} "
          f"{med['params_theirs']:>7.0f} {med['r_distilled_vs_theirs']:>18.3f} {med['r_ours_vs_theirs']:>13.3f} "
          f"{med['r_ours']:>7.3f} {med['r_theirs']:>8.3f} {med['seconds']:>6.0f}")
    print(f"targets: median params ours <= theirs: {med['params_ours'] <= med['params_theirs']}; "
          f"r ours~theirs >= 0.95: {med['r_ours_vs_theirs'] >= 0.95}; "
          f"r ours >= r theirs - 0.02: {med['r_ours'] >= med['r_theirs'] - 0.02} (15 min per neuron: the time line)")


def print_time(rows: list[dict[str, float | str]], stages: dict[str, float], workers: int) -> None:
    """The sample's whole cost per neuron: its shared stages plus the pruning, spread over the workers.

    A neuron's own seconds (the table's `s`) are its pruning on one worker;
    the labels and the shared student are paid once for the whole sample.
    """
    pruning = sum(float(r["seconds"]) for r in rows)
    line = (f"time: shared stages ({describe_stage_seconds(stages)}); "
            f"pruning {pruning:.0f} s summed over {len(rows)} neurons")
    if {"labels", "shared_student"} <= stages.keys():
        whole = (stages["labels"] + stages["shared_student"] + pruning / workers) / len(rows)
        line += f"; on {workers} workers the sample costs {whole:.0f} s per neuron (<= 15 min: {whole <= 900})"
    slowest = max(float(r["seconds"]) for r in rows)
    print(line + f"\none neuron's pruning on one worker: median {np.median([r['seconds'] for r in rows]):.0f} s, "
          f"slowest {slowest:.0f} s")


def reuse_shared_stages(run: Path, work: Path, config: CompressConfig) -> tuple[Path | None, list[str]]:
    """Link a sibling run's finished labels, and its shared student where that was made the same way, into `run`.

    Variants that differ only after labelling (epochs, readout rank) then skip
    the labels' minutes, and variants that differ only per neuron (a per-neuron
    fit) also skip the shared student's. The files are hard links to finished
    files, which are only ever read. Returns the run they came from (None: nothing
    linked) and what was linked.
    """
    mine = run / CACHE_DIR / "labels"
    if (mine / "cache.json").exists():
        return None, []
    ids = neuron_ids_of(run)
    for other in sorted(work.glob("ours_*/" + CACHE_DIR + "/labels/cache.json")):
        meta = read_json(other)
        if meta.get("complete") and meta.get("neuron_ids") == ids and same_stream(meta.get("stream"), config.stream):
            source = other.parents[2]
            mine.mkdir(parents=True, exist_ok=True)
            for name in ("images.npy", "labels.npy", "cache.json"):
                os.link(other.parent / name, mine / name)
            linked = ["labels"]
            settings = source / SETTINGS
            if ((source / SHARED_STUDENT).exists() and not (run / SHARED_STUDENT).exists() and settings.exists()
                    and same_shared_stages(read_json(settings), config.to_dict())):
                (run / SHARED_STUDENT).parent.mkdir(parents=True, exist_ok=True)
                os.link(source / SHARED_STUDENT, run / SHARED_STUDENT)
                linked.append("shared student")
            return source, linked
    return None, []


#: Settings a variant changes from its preset: option, type (or choices), where in `CompressConfig` it goes, the
#: tag its run's folder carries, and what it is. In the order of the tags in a folder's name.
VARIANT_OPTIONS: tuple[tuple[str, type | tuple[str, ...], str, str, str], ...] = (
    ("--shared-epochs", int, "shared_epochs", "e", "epochs of the shared student"),
    ("--images", int, "stream.n_images", "i", "images the published models label for distillation"),
    ("--batch-size", int, "batch_size", "b", "the students' batch size"),
    ("--lr", float, "lr", "lr", "the students' learning rate"),
    ("--own-zoom", float, "stream.own_zoom", "z",
     "the stream's own images seen through random windows of 1 - Z to 1 times their side"),
    ("--readout-rank", int, "readout_rank", "k", "rank of the shared student's factorised readout"),
    ("--neuron-epochs", int, "neuron_epochs", "n", "epochs of each neuron's own fit before pruning"),
    ("--threshold", float, "prune.threshold", "t",
     "fraction of the unpruned student's r² against the teacher that pruning keeps"),
    ("--round-epochs", int, "round_epochs", "re",
     "epochs of retraining, as the final one, before each later visit of the layers"),
    ("--final-epochs", int, "final_epochs", "f", "epochs of each pruned model's final retraining"),
    ("--budget", BUDGETS, "prune.budget", "", "how each visit of the layers spends the accuracy budget"),
)


def variant_name(per_session: int | None, preset_name: str, config: CompressConfig) -> str:
    """A run's folder names what sets it apart: its sample, a preset other than `recompress`, and each setting
    changed from the preset, so a variant never resumes another."""
    preset = COMPRESS_PRESETS[preset_name]
    changed = [(tag, _setting(config, path)) for _, _, path, tag, _ in VARIANT_OPTIONS
               if _setting(config, path) != _setting(preset, path)]
    return (f"{per_session or 'all'}" + ("" if preset_name == "recompress" else f"_{preset_name}")
            + "".join(f"_{tag}{v:g}" if isinstance(v, float) else f"_{tag}{v}" for tag, v in changed))


def _setting(config: object, path: str) -> object:
    for part in path.split("."):
        config = getattr(config, part)
    return config


def _with_setting(config: object, path: str, value: object) -> object:
    """`config` with the (dotted) setting at `path` changed; the frozen settings it sits in are copied."""
    head, _, rest = path.partition(".")
    return replace(config, **{head: _with_setting(getattr(config, head), rest, value) if rest else value})


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", type=Path, default=DEFAULT_RELEASE, help="the V4 release folder")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "recompress", help="where the runs are kept (resumable)")
    ap.add_argument("--per-session", type=int,
                    help="neurons per test session (default: 4 on CPU, every one where a GPU is present)")
    ap.add_argument("--all", action="store_true", help="every published model (the default where a GPU is present)")
    ap.add_argument("--sessions", nargs="+", default=list(TEST_SESSIONS),
                    help=f"the sessions whose published models are re-compressed (default {' '.join(TEST_SESSIONS)})")
    ap.add_argument("--preset", default="recompress", choices=COMPRESS_PRESETS)
    ap.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    for option, kind, _, _, text in VARIANT_OPTIONS:
        ap.add_argument(option, **({"choices": kind} if isinstance(kind, tuple) else {"type": kind}),
                        help=f"{text}, instead of the preset's (a run of its own; labels and a shared student made "
                             "the same way are linked from a sibling run)")
    ap.add_argument("--rank-cap", action="store_true",
                    help="print how closely each published model follows itself with its readout cut to rank 1 and 2")
    ap.add_argument("--distil-only", action="store_true",
                    help="stop after the shared student: print its r against the published models, prune nothing")
    ap.add_argument("--finished-only", action="store_true",
                    help="prune no further: print the table for the neurons finished so far (after a run was cut "
                         "short, say)")
    args = ap.parse_args(argv)
    # Ctrl-C and SIGTERM stop the workers and keep every finished neuron, as `compactvision compress` does.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.all:
        per_session = None
    elif args.per_session is not None:
        per_session = args.per_session
    else:
        per_session = None if torch.cuda.is_available() else 4
    config = COMPRESS_PRESETS[args.preset]
    for option, _, path, _, _ in VARIANT_OPTIONS:
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None:
            config = _with_setting(config, path, value)
    variant = variant_name(per_session, args.preset, config)
    # Another choice of sessions is another sample, kept in folders of its own.
    tag = "" if tuple(args.sessions) == TEST_SESSIONS else "_" + "-".join(args.sessions)
    imported, run = args.work / f"imported_{per_session or 'all'}{tag}", args.work / f"ours_{variant}{tag}"
    print(f"sample: {'every published model' if per_session is None else f'neurons 0-{per_session - 1}'} "
          f"of sessions {', '.join(args.sessions)}; preset {args.preset}, shared student {config.shared_epochs} epochs "
          f"on {config.stream.n_images} labelled images, read out at rank {config.readout_rank}")
    try:
        if not (imported / MANIFEST).exists():
            import_cowley(args.release / "compact_models", imported, sessions=args.sessions, per_session=per_session,
                          progress=reporter("lines"))
        prepare_recompress(imported, run)
        if args.rank_cap:
            caps = readout_rank_cap(imported, run, published_predictions(imported, run))
            for nid, (r1, r2) in caps.items():
                print(f"{nid:<18} theirs~theirs with the readout at rank 1 {r1:.3f}, rank 2 {r2:.3f}")
            print(f"median ({len(caps)}): rank 1 {np.median([c[0] for c in caps.values()]):.3f}, "
                  f"rank 2 {np.median([c[1] for c in caps.values()]):.3f}")
            return 0
        if args.finished_only and not any(history_path(run, nid).exists() for nid in neuron_ids_of(run)):
            print("no neuron is finished yet: run without --finished-only to compress them", file=sys.stderr)
            return 1
        source, linked = reuse_shared_stages(run, args.work, config)
        if source is not None:
            print(f"{' and '.join(linked)}: made the same way as {source.name}'s, linked from it")
        summary = compress_run(run, config, workers=args.workers, progress=reporter("lines"),
                               neurons=[] if args.distil_only or args.finished_only else None)
    except CompactVisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished neurons are kept; run the same command again to continue", file=sys.stderr)
        return 130
    if args.distil_only:
        distilled, stream = distilled_r(run, published_predictions(imported, run)), distilled_r_stream(run)
        for nid, r in distilled.items():
            print(f"{nid:<18} r distilled~theirs {r:.3f} (held-back stream images: {stream[nid]:.3f})")
        print(f"median ({len(distilled)}): {np.median(list(distilled.values())):.3f} "
              f"(held-back stream images: {np.median([stream[i] for i in distilled]):.3f}); "
              f"shared stages: {describe_stage_seconds(summary['stage_seconds'])}")
        return 0
    rows = neuron_rows(imported, run)
    print_table(rows)
    print_time(rows, summary["stage_seconds"], args.workers or default_workers(config))
    out = args.work / f"recompress_{variant}{tag}.csv"
    with open(out, "w") as f:
        f.write(",".join(rows[0]) + "\n")
        f.writelines(",".join(str(v) for v in r.values()) + "\n" for r in rows)
    print(f"per-neuron table: {out} (students of {len(list_students(run))} neurons)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
