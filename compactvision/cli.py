"""`compactvision ...`: the command line, one sub-command per pipeline stage.

Each stage's module holds the work; this file only parses arguments and turns
library errors into a one-line message and a non-zero exit code.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from compactvision.errors import CompactVisionError

if TYPE_CHECKING:
    from compactvision.progress import Progress

Handler = Callable[[argparse.Namespace], int | None]


class PresetNames:
    """The names of a preset table, as argparse `choices`, read from the table when first needed.

    The choices are the table's own keys, so a preset added there is offered
    here; reading them lazily keeps building the parser (and `--help`) free of
    the torch import the stage modules need.
    """

    def __init__(self, module: str, table: str = "PRESETS") -> None:
        self.module, self.table = module, table

    def _names(self) -> list[str]:
        return list(getattr(importlib.import_module(self.module), self.table))

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


PIPELINE_PRESETS = PresetNames("compactvision.pipeline")
COMPRESS_PRESETS = PresetNames("compactvision.pipeline", "COMPRESS_PRESETS")
TEACHER_PRESETS = PresetNames("compactvision.models.teacher")


class _DefaultsShown(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none or already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        no_default = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if no_default or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """The parser of every (sub-)command: options listed with their defaults."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _DefaultsShown)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="compactvision", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    # Each add_* function registers one stage's sub-command(s) and sets `func`.
    for add in _STAGES:
        add(sub)
    return parser


_stop_requested = False


def _interrupt(signum: int, frame: object) -> None:
    # Python drops an exception raised where it cannot propagate (a finaliser, an import's cleanup), so
    # the request is also remembered and honoured at the next progress report (`_progress`).
    global _stop_requested
    _stop_requested = True
    raise KeyboardInterrupt


def _progress(fmt: str) -> Progress:
    """The `--progress` reporter, which also stops the command at a Ctrl-C or SIGTERM that was swallowed."""
    from compactvision.progress import reporter


    report = reporter(fmt)

    def checked(stage: str, done: int, total: int) -> None:
        if _stop_requested:
            raise KeyboardInterrupt
        report(stage, done, total)

    return checked


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Ctrl-C and SIGTERM both stop between steps with checkpoints intact, even when a
    # launcher started us with SIGINT ignored (as background shells do).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        # The app starts jobs with SIGINT blocked so that a cancel sent while they start is held, not lost:
        # now that it stops cleanly, a held one is taken here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        return int(args.func(args) or 0)
    except CompactVisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Only `teacher` has --resume; compress and pipeline skip finished work by themselves.
        how = "rerun with --resume" if hasattr(args, "resume") else "run the same command again"
        print(f"interrupted: the last checkpoint is intact; {how} to continue", file=sys.stderr)
        return 130


# ---------------------------------------------------------------- the stages
# (registered in pipeline order; each imports its stage lazily so `--help` is fast)

_STAGES: list[Callable[[argparse._SubParsersAction], None]] = []


def stage(fn: Callable[[argparse._SubParsersAction], None]) -> Callable[[argparse._SubParsersAction], None]:
    _STAGES.append(fn)
    return fn


@stage
def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect a dataset, or write a digital-twin dataset")
    data = p.add_subparsers(dest="data_command", required=True)
    d = data.add_parser("describe", help="sessions, neurons, images, repeats and median reliability")
    d.add_argument("path", help="a .npz, an .nwb, a Cowley et al. V4 release folder, or 'twin'")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    d.set_defaults(func=_data_describe)
    t = data.add_parser("twin", help="simulate the digital twin and write its dataset (.npz, with ground truth)")
    t.add_argument("--out", required=True, help="output .npz file")
    t.add_argument("--neurons", type=int, default=32, help="simulated neurons, cycling through the cell types")
    t.add_argument("--images", type=int, default=1000, help="natural-image crops shown to every neuron")
    t.add_argument("--repeats", type=int, default=4, help="noisy trials per image")
    _add_test_images(t)
    t.add_argument("--seed", type=int, default=0, help="seed of the population, the images and the trial noise")
    t.add_argument("--image-size", type=int, default=112, help="image side in pixels")
    t.set_defaults(func=_data_twin)


def _add_test_images(p: argparse._ActionsContainer) -> None:
    p.add_argument("--test-images", type=int, default=None, metavar="N",
                   help="repeat only N images (the test set) and show every other image once, as system-identification "
                        "experiments do (default: every image is repeated)")


def _data_describe(args: argparse.Namespace) -> None:
    import json

    from compactvision.data.formats import describe, load_dataset

    summary = describe(load_dataset(args.path))
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{summary['source']}: {len(summary['sessions'])} session(s), {summary['neurons']} neurons, {summary['images']} images")
    print(f"{'session':>12} {'neurons':>8} {'images':>7} {'image':>11} {'repeats':>8} {'reliability':>12}")
    for s in summary["sessions"]:
        rel = "-" if s["median_reliability"] is None else f"{s['median_reliability']:.3f}"
        shape = "x".join(map(str, s["image_shape"]))
        print(f"{s['session']:>12} {s['neurons']:>8} {s['images']:>7} {shape:>11} {s['repeats_max']:>8} {rel:>12}")
    if "cell_types" in summary:
        print("cell types: " + ", ".join(f"{k} {v}" for k, v in summary["cell_types"].items()))


def _data_twin(args: argparse.Namespace) -> None:
    from compactvision.data.formats import save_npz
    from compactvision.data.twin import make_twin_dataset

    ds = make_twin_dataset(args.neurons, args.images, args.repeats, seed=args.seed, image_size=args.image_size,
                           test_images=args.test_images)
    out = save_npz(ds, args.out)
    shown = f"{args.test_images} of them" if args.test_images else "each"
    print(f"{out}: {args.neurons} neurons x {args.images} images, {shown} x {args.repeats} repeats, seed {args.seed} "
          f"({out.stat().st_size / 1e6:.1f} MB)")


@stage
def add_teacher(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teacher", help="train the teacher (VOneBlock or a local ResNet trunk, residual back ends, "
                                       "readouts) and score it")
    p.add_argument("--data", required=True, help="a .npz, an .nwb, a Cowley et al. V4 release folder, or 'twin'")
    p.add_argument("--preset", default="cpu", choices=TEACHER_PRESETS, metavar="NAME",
                   help="teacher size: %(choices)s")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split, initialisation and batch order")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--epochs", type=int, help="override the preset's epoch count")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (worth it on a GPU)")
    p.add_argument("--front-end", choices=["vone", "conv"], default="vone",
                   help="vone: the fixed V1 Gabor bank (default); conv: a learned convolution of the same shape, "
                        "the standard-CNN control for robustness comparisons")
    p.add_argument("--ensemble", type=int, metavar="N",
                   help="members sharing the V1 front end, each with its own back end and readouts; the prediction "
                        "is their average (default: the preset's; 4 won on the V4 validation session)")
    p.add_argument("--readout-output", choices=["linear", "softplus"],
                   help="how each readout's weighted sum becomes its prediction: linear, or softplus (a learned "
                        "threshold and floor per neuron; default: the preset's)")
    p.add_argument("--readout-folds", type=int, metavar="K",
                   help="with --protocol cowley: fit each held-out session's readout by K-fold cross-validation "
                        "over its first half, then on all of it (0: choose on its last tenth; default: the "
                        "preset's; 5 won on the V4 validation session)")
    p.add_argument("--heldout-probe", type=int, metavar="P",
                   help="with --protocol cowley: blend into each held-out session's prediction a ridge probe of the "
                        "maps pooled to P x P (0: none; default: the preset's; 4 won on the V4 validation session)")
    p.add_argument("--heldout-probe-weight", type=float, metavar="W",
                   help="the probe's share of the blend, in [0, 1] (default 0.5; 1: the probe alone)")
    p.add_argument("--heldout-basis", type=float, metavar="W",
                   help="with --protocol cowley: blend into each held-out session's prediction, with weight W in "
                        "[0, 1], a ridge combination of the trunk's own sessions' predicted neurons (0: none; "
                        "default: the preset's)")
    _add_v1_stride_option(p)
    p.add_argument("--v1-noise", type=float, metavar="LEVEL",
                   help="VOneNet-style V1 noise in training and at test time, s.d. LEVEL x sqrt(rate + 1) "
                        "(1.0 is VOneNet's level; default: no noise)")
    p.add_argument("--protocol", default="split", choices=["split", "cowley"],
                   help="split: held-out test images per session; cowley: the paper's held-out sessions")
    p.add_argument("--test-sessions", nargs="+", metavar="ID",
                   help="with --protocol cowley: the held-out sessions (default: 190923 201025, the paper's)")
    p.add_argument("--validation-session", metavar="ID",
                   help="with --protocol cowley: a session kept out of the trunk's training and scored apart, to "
                        "choose settings on (default: 210224 when the data has it)")
    p.add_argument("--progress", default="bar", choices=["bar", "lines", "none"],
                   help="tqdm bars, 'PROGRESS <stage> <done>/<total>' lines for programs, or nothing")
    twin = p.add_argument_group("with --data twin")
    twin.add_argument("--neurons", type=int, default=32, help="simulated neurons")
    twin.add_argument("--images", type=int, default=1000, help="images shown to every neuron")
    twin.add_argument("--repeats", type=int, default=4, help="noisy trials per image")
    _add_test_images(twin)
    bb = p.add_argument_group("optional pretrained trunk (a local file; nothing is downloaded)")
    bb.add_argument("--backbone", metavar="CHECKPOINT",
                    help="a torchvision ResNet state dict (.pth/.pt, read with weights_only=True, or .safetensors)")
    bb.add_argument("--backbone-stage", default="layer3", choices=["layer1", "layer2", "layer3", "layer4"],
                    help="cut the trunk after this stage (default layer3, the paper's conv4)")
    bb.add_argument("--backbone-stem", default="pixels", choices=["pixels", "vone"],
                    help="pixels: the checkpoint's own stem (the paper); vone: the VOneBlock replaces it (VOneNet)")
    bb.add_argument("--finetune-backbone", action="store_true", help="train the trunk too (default: frozen)")
    p.set_defaults(func=_teacher)


def _teacher(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from compactvision.models.teacher import PRESETS
    from compactvision.teacher_stage import COWLEY_TEST_SESSIONS, train_teacher

    kwargs = ({"n_neurons": args.neurons, "n_images": args.images, "n_repeats": args.repeats, "seed": args.seed,
               "test_images": args.test_images} if args.data == "twin" else {})
    overrides = {"front_end": args.front_end, **({"compile": True} if args.compile else {}),
                 **({"ensemble": args.ensemble} if args.ensemble is not None else {}),
                 **({"readout_output": args.readout_output} if args.readout_output else {}),
                 **({"readout_folds": args.readout_folds} if args.readout_folds is not None else {}),
                 **({"heldout_probe_pool": args.heldout_probe} if args.heldout_probe is not None else {}),
                 **({"heldout_probe_weight": args.heldout_probe_weight}
                    if args.heldout_probe_weight is not None else {}),
                 **({"heldout_basis_weight": args.heldout_basis} if args.heldout_basis is not None else {}),
                 **({"vone_stride": args.v1_stride} if args.v1_stride is not None else {}),
                 **({"noise": "poisson", "noise_level": args.v1_noise} if args.v1_noise is not None else {})}
    try:  # options the preset cannot take: a usage error before anything is read or written, not a traceback
        replace(PRESETS[args.preset], **overrides)
    except ValueError as e:
        raise CompactVisionError(str(e)) from None
    manifest = train_teacher(args.data, args.out, preset=args.preset, seed=args.seed, protocol=args.protocol,
                             device=args.device, resume=args.resume, epochs=args.epochs, data_kwargs=kwargs,
                             progress=_progress(args.progress), config_overrides=overrides,
                             backbone=args.backbone, backbone_stage=args.backbone_stage,
                             backbone_stem=args.backbone_stem, finetune_backbone=args.finetune_backbone,
                             test_sessions=tuple(args.test_sessions or COWLEY_TEST_SESSIONS),
                             validation_session=args.validation_session)
    r = manifest["metrics"]["teacher"]["r"]
    print(f"{args.out}: teacher held-out median r {r['median']:.3f} "
          f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] over {r['n']} neurons")
    if val := manifest["metrics"].get("validation"):
        print(f"  validation session {val['session']}: median r {val['r']['median']:.3f} (choose settings on this)")


@stage
def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write one neuron's compact model as a single self-describing file")
    p.add_argument("run", help="run directory")
    p.add_argument("--neuron", required=True, help="neuron id, as in students/neuron_<id>.safetensors")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> None:
    from compactvision.artifacts import export_compact

    out = export_compact(args.run, args.neuron, args.out)
    print(f"{out} ({out.stat().st_size / 1000:.1f} kB)")


@stage
def add_import_cowley(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-cowley", help="convert the published Cowley et al. compact models into a run")
    p.add_argument("weights_dir", help="the release's compact_models/ folder (or the release root)")
    p.add_argument("--out", required=True,
                   help="new run directory (an import stopped part-way continues in its folder)")
    p.add_argument("--sessions", nargs="+", help="only these sessions (default: every model found)")
    p.add_argument("--per-session", type=int, metavar="K", help="only the first K models of each session")
    p.add_argument("--no-evaluate", action="store_true",
                   help="skip scoring on the session's images even when the release has them")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--progress-format", choices=["bar", "lines", "none"], default="bar",
                   help="a bar for people; 'lines' prints PROGRESS lines for the app (default: bar)")
    p.set_defaults(func=_import_cowley)


def _import_cowley(args: argparse.Namespace) -> None:
    from compactvision.artifacts import read_manifest
    from compactvision.cowley import import_cowley

    run = import_cowley(args.weights_dir, args.out, sessions=args.sessions, evaluate=not args.no_evaluate,
                        progress=_progress(args.progress_format), device=args.device, per_session=args.per_session)
    metrics = read_manifest(run, verify=False)["metrics"]
    summary = metrics["compression"]
    print(f"{run}: {summary['n_students']} students, median {summary['n_parameters']['median']:.0f} parameters")
    for session, m in metrics["sessions"].items():
        print(f"  session {session}: median r {m['median_r_heldout']:.3f} on the held-out half, "
              f"{m['median_r_first_half']:.3f} on the first half")
    for session, why in metrics.get("not_scored", {}).items():
        print(f"  session {session}: imported without a score: {why}")


def _add_compress_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local processes (default) or Ray tasks, one per neuron")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--progress-format", choices=["bar", "lines", "none"], default="bar",
                   help="tqdm bars, or 'PROGRESS <stage> <done>/<total>' lines for programs")


@stage
def add_compress(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="distil the run's teacher and prune one compact model per neuron (resumable)")
    p.add_argument("run", help="a run directory with a trained teacher")
    p.add_argument("--preset", default="paper", choices=COMPRESS_PRESETS, metavar="NAME",
                   help="compression sizes: %(choices)s (default %(default)s: students start at 100 filters per "
                        "layer, as in the reference; tiny and demo are the pipeline presets' sizes)")
    _add_neurons_and_compression_options(p)
    p.set_defaults(func=_compress)


def _add_neurons_and_compression_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--neurons", type=int, nargs="+", help="only these neuron indices")
    _add_pruning_options(p)
    _add_compress_options(p)


def _add_pruning_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=["shared", "per_neuron"], help="starting student(s); default from the preset")
    p.add_argument("--readout-form", choices=["dense", "factorised"],
                   help="how a fresh student's readout is fitted: dense (the reference's) or factorised (rank one, "
                        "made dense before pruning); default from the preset")
    p.add_argument("--readout-rank", type=int,
                   help="terms of where x what per neuron in the factorised readout; default from the preset")
    p.add_argument("--threshold", type=float,
                   help="fraction of the unpruned student's r² against the teacher that pruning must keep "
                        "(default from the preset, 0.9)")
    p.add_argument("--criterion", choices=["output", "reconstruction"],
                   help="output: every cut judged on the neuron's response (default); reconstruction: the "
                        "reference's per-layer variance explained")
    p.add_argument("--compensation", choices=["least_squares", "mean"],
                   help="how the kept filters stand in for dropped ones: least_squares refits the next layer's "
                        "weights; mean folds the dropped filters' means into its bias (default from the preset)")
    p.add_argument("--min-filters", type=int, help="filters every layer keeps at the least (default 3)")
    p.add_argument("--budget", choices=["greedy", "even"],
                   help="how each visit of the layers spends the accuracy budget: greedy lets each layer spend all "
                        "that is left; even, its share of it (default from the preset)")
    _add_round_epochs_option(p)
    _add_slimming_option(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the image stream, initialisation and pruning probes")


def _add_v1_stride_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--v1-stride", type=int, metavar="PX",
                   help="the teacher's pixels between neighbouring V1 units (default: the preset's, VOneNet's 4); "
                        "2 samples a fine simple cell's phase at small image sizes, for four times the back end's "
                        "compute")


def _add_round_epochs_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--round-epochs", type=int, metavar="N",
                   help="epochs of retraining of the pruned network before each later visit of its layers, which "
                        "wins back the budget the first visit spent (0: none; default from the preset)")


def _add_slimming_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slimming", type=float, metavar="L1",
                   help="network slimming after each neuron's fit: an L1 on BatchNorm scales zeroes the channels "
                        "the neuron does not need before pruning; its strength is searched down from L1 until the "
                        "pruning budget holds (0: off; default from the preset; needs a per-neuron fit)")


def _compression_config(args: argparse.Namespace, base=None):
    """The preset's (or `base`'s) `CompressConfig` with the command line's pruning options applied."""
    from dataclasses import replace

    from compactvision.pipeline import COMPRESS_PRESETS

    config = replace(base or COMPRESS_PRESETS[args.preset], seed=args.seed)
    if args.strategy:
        # A fresh per-neuron student must be fitted; a preset whose shared copies skip that lends its shared epochs.
        epochs = (config.neuron_epochs or config.shared_epochs) if args.strategy == "per_neuron" else config.neuron_epochs
        config = replace(config, strategy=args.strategy, neuron_epochs=epochs)
    if args.readout_form:
        config = replace(config, readout_form=args.readout_form)
    if args.readout_rank is not None:
        config = replace(config, readout_rank=args.readout_rank)
    prune = {k: v for k, v in (("threshold", args.threshold), ("criterion", args.criterion),
                               ("min_filters", args.min_filters), ("compensation", args.compensation),
                               ("budget", args.budget))
             if v is not None}
    rest = {} if args.round_epochs is None else {"round_epochs": args.round_epochs}
    if args.criterion == "reconstruction":
        prune["order"] = "last_first"  # the reference's criterion needs the reference's order
        prune["rounds"] = 1            # and visits each layer once, as the reference does
        prune.setdefault("compensation", "mean")  # and carries dropped filters by their means
        rest.setdefault("round_epochs", 0)  # one visit: nothing comes between visits
    try:
        if args.slimming is not None:
            config = replace(config, neuron_channel_l1=args.slimming)
        return replace(config, prune=replace(config.prune, **prune), **rest)
    except ValueError as e:  # options that do not go together: a usage error, not a traceback
        raise CompactVisionError(str(e)) from None


def _compress(args: argparse.Namespace) -> None:
    from compactvision.compress import compress_run

    summary = compress_run(args.run, _compression_config(args), backend=args.backend, workers=args.workers,
                           address=args.address, neurons=args.neurons, progress=_progress(args.progress_format),
                           device=args.device)
    _print_compression(summary)


@stage
def add_recompress(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recompress", help="treat each imported published model as its neuron's teacher: distil them "
                                          "into a wide student and prune it per neuron (resumable per neuron)")
    p.add_argument("imported", help="a run made by import-cowley")
    p.add_argument("--out", required=True, help="the re-compression run (rerun the same command to continue it)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--neurons", nargs="+", metavar="ID", help="these neurons, e.g. 190923_neuron0")
    which.add_argument("--per-session", type=int, metavar="K", help="the first K neurons of every session")
    p.add_argument("--sessions", nargs="+", help="only these sessions")
    p.add_argument("--release", help="the release folder with images/ and responses (default: the one imported from)")
    p.add_argument("--preset", default="recompress", choices=COMPRESS_PRESETS, metavar="NAME",
                   help="compression sizes: %(choices)s (default %(default)s: a 64-filter student shared by the "
                        "chosen neurons, then pruned per neuron)")
    _add_pruning_options(p)
    _add_compress_options(p)
    p.set_defaults(func=_recompress)


def _recompress(args: argparse.Namespace) -> None:
    from compactvision.compress import compress_run
    from compactvision.cowley.recompress import prepare_recompress

    run = prepare_recompress(args.imported, args.out, neurons=args.neurons, per_session=args.per_session,
                             sessions=args.sessions, release=args.release)
    summary = compress_run(run, _compression_config(args), backend=args.backend, workers=args.workers,
                           address=args.address, progress=_progress(args.progress_format), device=args.device)
    _print_compression(summary)


@stage
def add_compress_truth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress-truth", help="distil and prune a digital-twin run's neurons from the twin itself, "
                                              "not from its fitted teacher: the compact models of the true "
                                              "computations, to compare with the run's own (resumable per neuron)")
    p.add_argument("run", help="a run whose data is the digital twin (the bundle, or one made by pipeline)")
    p.add_argument("--out", required=True, help="the truth run (rerun the same command to continue it)")
    p.add_argument("--preset", choices=COMPRESS_PRESETS, metavar="NAME",
                   help="compression sizes: %(choices)s (default: the settings the run's own compact models were "
                        "made with, so the two compare like for like)")
    _add_neurons_and_compression_options(p)
    p.set_defaults(func=_compress_truth, seed=None)  # no --seed: the run's own, like every other setting


def _truth_compression_config(args: argparse.Namespace):
    """The settings the twin run's compact models were made with (or `--preset`'s), with the options applied."""
    from compactvision.artifacts import read_manifest
    from compactvision.compress import CompressConfig

    recorded = (read_manifest(args.run, verify=False).get("config") or {}).get("compress")
    base = None if args.preset or not recorded else CompressConfig.from_dict(recorded)
    if base is None and not args.preset:
        args.preset = "demo"
    if args.seed is None:
        args.seed = base.seed if base is not None else 0
    return _compression_config(args, base)


def _compress_truth(args: argparse.Namespace) -> None:
    from compactvision.compress import compress_run
    from compactvision.truth_run import prepare_truth_run

    config = _truth_compression_config(args)
    run = prepare_truth_run(args.run, args.out)
    summary = compress_run(run, config, backend=args.backend, workers=args.workers,
                           address=args.address, neurons=args.neurons, progress=_progress(args.progress_format),
                           device=args.device)
    _print_compression(summary)


def _print_compression(summary: dict) -> None:
    print(f"{summary.get('n_students', 0)} compact models")
    for key, label in (("n_parameters", "parameters"), ("r_heldout", "r held-out"), ("r_truth", "r vs noise-free truth"),
                       ("r_teacher", "r vs teacher"), ("seconds", "seconds per neuron")):
        if key in summary:
            m = summary[key]
            print(f"  median {label}: {m['median']:.4g} (95% CI {m['ci_low']:.4g} to {m['ci_high']:.4g})")
    stages = summary.get("stage_seconds") or {}
    if stages:
        from compactvision.compress import describe_stage_seconds

        print(f"  shared by every neuron: {describe_stage_seconds(stages)}")


@stage
def add_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="twin data (or recordings, --data) -> teacher -> compact models, end to end "
                                        "(resumable)")
    p.add_argument("--preset", choices=PIPELINE_PRESETS, default="demo", metavar="NAME",
                   help="sizes of every stage: %(choices)s")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    p.add_argument("--force", action="store_true", help="delete an existing run directory first")
    real = p.add_argument_group("recordings instead of the twin")
    real.add_argument("--data", metavar="PATH",
                      help="a Cowley et al. V4 release folder (or a .npz/.nwb with sessions): the teacher follows the "
                           "cowley protocol and the test sessions' neurons get compact models (preset v4 suits it)")
    real.add_argument("--test-sessions", nargs="+", metavar="ID",
                      help="held-out sessions, compressed and scored (default: 190923 201025, the paper's)")
    real.add_argument("--validation-session", metavar="ID",
                      help="kept out of the trunk and scored apart (default: 210224 when the data has it)")
    real.add_argument("--per-session", type=int, metavar="K", help="compress only the first K neurons of each test session")
    twin = p.add_argument_group("the twin experiment's design (default: the preset's)")
    twin.add_argument("--twin-images", type=int, metavar="N", help="distinct images shown to the twin")
    _add_test_images(twin)
    _add_slimming_option(p)
    _add_round_epochs_option(p)
    _add_v1_stride_option(p)
    _add_compress_options(p)
    p.set_defaults(func=_pipeline)


def _pipeline_preset(args: argparse.Namespace):
    """The preset's name, or with `--slimming`, `--round-epochs`, `--v1-stride`, `--twin-images` or `--test-images`
    its sizes with those changes (recorded as a custom preset, so the run's manifest says what it was built with)."""
    from dataclasses import replace

    from compactvision.models.teacher import TeacherConfig
    from compactvision.pipeline import PRESETS

    changes = (args.slimming, args.round_epochs, args.v1_stride, args.twin_images, args.test_images)
    if all(c is None for c in changes):
        return args.preset
    p = PRESETS[args.preset]
    try:  # a preset without a per-neuron fit, negative epochs, a stride below 1 px or no images left: usage errors
        if args.twin_images is not None or args.test_images is not None:
            if args.data is not None:
                raise ValueError("--twin-images and --test-images design the twin experiment; recordings (--data) "
                                 "come with their own")
            p = replace(p, images=p.images if args.twin_images is None else args.twin_images,
                        test_images=p.test_images if args.test_images is None else args.test_images)
        if args.slimming is not None:
            p = replace(p, compress=replace(p.compress, neuron_channel_l1=args.slimming))
        if args.round_epochs is not None:
            p = replace(p, compress=replace(p.compress, round_epochs=args.round_epochs))
        if args.v1_stride is not None:
            TeacherConfig(vone_stride=args.v1_stride)  # refused before any stage runs
            p = replace(p, teacher_overrides={**p.teacher_overrides, "vone_stride": args.v1_stride})
    except ValueError as e:
        raise CompactVisionError(str(e)) from None
    return p


def _pipeline(args: argparse.Namespace) -> None:
    import shutil
    from pathlib import Path

    from compactvision.pipeline import run_pipeline

    preset = _pipeline_preset(args)
    if args.force and Path(args.out).exists():
        shutil.rmtree(args.out)
    if args.data is None and (args.test_sessions or args.validation_session or args.per_session):
        raise CompactVisionError("--test-sessions, --validation-session and --per-session need --data")
    manifest = run_pipeline(preset, args.out, seed=args.seed, progress=_progress(args.progress_format),
                            backend=args.backend, workers=args.workers, address=args.address, device=args.device,
                            data=args.data, test_sessions=args.test_sessions,
                            validation_session=args.validation_session, per_session=args.per_session)
    print(f"{args.out}: teacher median r {manifest['metrics']['teacher']['r']['median']:.3f}")
    _print_compression(manifest["metrics"]["compression"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
