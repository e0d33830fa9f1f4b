"""VOneBlock and teacher figures, side by side, in one run.

    python benchmarks/teacher.py [--images 2000] [--preset cpu] [--cowley PATH] [--paper] [--trunk resnet50 ...]
    python benchmarks/teacher.py --demo-variants [WORDS ...] [--seeds 0 1]

1. VOneBlock forward: our single grouped convolution (both quadrature phases,
   q1 only for complex cells) against VOneNet's formulation (two dense
   convolutions, one per phase, every filter over all three colour channels),
   same parameters and inputs; images/s and the ratio.
2. Teacher training throughput (images/s, one optimiser step per batch) for
   each preset that fits the machine (`paper` only on CUDA or with --paper),
   and for the cpu preset on a frozen ImageNet-style ResNet trunk (what a
   user's local checkpoint costs; timed with random weights).
3. Teacher accuracy on a digital twin: held-out median r against the noisy
   trial-averaged responses and against the twin's noise-free rates, with the
   wall time of the whole run.
4. With --cowley PATH: the paper's protocol on the real V4 release (median r
   on the second half of each test session).

`--demo-variants` does only this: the bundled demo's teacher (the `demo`
pipeline preset's) against alternatives, each trained
on the demo's own twin for every `--seeds` seed, with r against the truth per
cell type.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from compactvision.models.backbone import DEFAULT_STAGE, ResNetSpec, backbone_entry
from compactvision.models.teacher import PRESETS, build_teacher
from compactvision.models.vone import VOneBlock
from compactvision.runtime import select_device


def _rate(fn, n_images: int, device: torch.device, min_seconds: float = 3.0) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if dt >= min_seconds and reps >= 3:
            return reps * n_images / dt


def _interleaved_rates(a, b, n_images: int, device: torch.device, reps: int = 8) -> tuple[float, float]:
    """Images/s of `a` and of `b`, timed in alternation so a shared machine's load drift hits both alike."""
    a(), b()  # warm-up
    spent = [0.0, 0.0]
    for _ in range(reps):
        for i, fn in enumerate((a, b)):
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            spent[i] += time.perf_counter() - t0
    return reps * n_images / spent[0], reps * n_images / spent[1]


def vone_forward(device: torch.device, batch: int) -> None:
    block = VOneBlock(256, 256, kernel_size=25).to(device).eval()
    x = torch.rand(batch, 3, 112, 112, device=device)
    dense = block.dense_kernels(x.dtype, device)

    def two_convolutions() -> torch.Tensor:  # VOneNet: one pass per phase, all filters, all colours
        return block.reference_forward(x, dense=dense)

    with torch.no_grad():
        err = (block(x) - two_convolutions()).abs().max().item()
        ours, theirs = _interleaved_rates(lambda: block(x), two_convolutions, batch, device)
    print(f"VOneBlock forward (256+256 filters, 25 px kernels, 112 px, batch {batch}, {device.type}):")
    print(f"  one grouped conv : {ours:8.1f} images/s")
    print(f"  two dense convs  : {theirs:8.1f} images/s")
    print(f"  ratio            : {ours / theirs:8.2f}x   (max |difference| {err:.2e})")


def training_throughput(presets: list[str], device: torch.device, n_neurons: int = 64,
                        trunks: tuple[str, ...] = ()) -> None:
    """Images/s of a full training step per preset; `trunks` adds the cpu preset on a frozen ResNet trunk
    of each named torchvision layout (random weights: the speed does not depend on them)."""
    print(f"Teacher training throughput ({device.type}, {n_neurons} neurons, full step: forward, backward, AdamW):")
    configs = {name: PRESETS[name] for name in presets}
    for layout in trunks:
        entry = backbone_entry(ResNetSpec.standard(layout), DEFAULT_STAGE, "pixels")
        configs[f"cpu + frozen {layout} to {DEFAULT_STAGE}"] = replace(PRESETS["cpu"], backbone=entry, first_stride=1)
    for name, cfg in configs.items():
        t = build_teacher(cfg, {"s": n_neurons}, seed=0).to(device).train()
        opt = torch.optim.AdamW([p for p in t.parameters() if p.requires_grad], lr=1e-4)
        x = torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
        y = torch.randn(cfg.batch_size, n_neurons, device=device)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = (t(x).float() - y).square().mean()
            loss.backward()
            opt.step()

        rate = _rate(step, cfg.batch_size, device)
        print(f"  {name:32s}: {rate:8.1f} images/s   ({t.n_parameters() / 1e6:.2f}M parameters, batch {cfg.batch_size})")


def twin_accuracy(preset: str, n_images: int, n_neurons: int, device: str | None) -> None:
    from compactvision.progress import tqdm_reporter
    from compactvision.teacher_stage import train_teacher

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        manifest = train_teacher("twin", out, preset=preset, device=device, progress=tqdm_reporter(),
                                 data_kwargs={"n_neurons": n_neurons, "n_images": n_images, "n_repeats": 4})
        wall = time.perf_counter() - t0
        hist = json.loads((Path(out) / "history" / "teacher_metrics.json").read_text())
    m = manifest["metrics"]["teacher"]
    epochs = hist["training"]["teacher"]
    per_epoch = np.mean([e["seconds"] for e in epochs])
    print(f"Teacher on the twin ({preset}, {n_neurons} neurons, {n_images} images x 4 repeats, 80/10/10 split):")
    print(f"  held-out median r vs responses  : {m['r']['median']:.3f} [{m['r']['ci_low']:.3f}, {m['r']['ci_high']:.3f}]")
    print(f"  held-out median r vs noise-free : {m['r_noise_free']['median']:.3f} "
          f"[{m['r_noise_free']['ci_low']:.3f}, {m['r_noise_free']['ci_high']:.3f}]")
    print(f"  median r2_er / FEVE             : {m['r2_er']['median']:.3f} / {m['feve']['median']:.3f}")
    print(f"  epochs {len(epochs)}, {per_epoch:.1f} s/epoch (train + validation), training {hist['images_per_second']:.1f} images/s, "
          f"whole run {wall:.0f} s (twin simulation and scoring included)")


_LONGER = {"readout_sees_front_end": True, "epochs": 24, "patience": 6}  # the v4 preset's teacher recipe

#: Other designs of the demo's 12,000-trial twin experiment (3,000 images x 4 trials):
#: (images, repeats, test_images), see `make_twin_dataset`.
DESIGNS: dict[str, tuple[int, int, int | None]] = {
    "300 test images x 4 trials, 10,800 others once": (11100, 4, 300),
}

#: The `demo` pipeline preset's teacher and the alternatives measured against it: (teacher overrides on top of
#: the preset's, data design). `None` is the preset's own design.
DEMO_VARIANTS: dict[str, tuple[dict, str | None]] = {
    "demo teacher on the preset's design: 8 epochs, readouts on the back end only": ({}, None),
    **{f"demo teacher on {d}": ({}, d) for d in DESIGNS},
    "readouts also see V1": ({"readout_sees_front_end": True}, None),
    "readouts also see V1, up to 24 epochs (patience 6)": (_LONGER, None),
    "the same on a 16 x 16 readout map (first stride 1)": ({**_LONGER, "first_stride": 1}, None),
    "softplus readout output": ({"readout_output": "softplus"}, None),
    "16 x 16 readout map (first stride 1), back ends 64 wide": ({"first_stride": 1, "width": 64}, None),
    "softplus readout output, readouts also see V1": ({"readout_output": "softplus", "readout_sees_front_end": True},
                                                      None),
    "V1 maps at stride 2 (32 x 32), back ends 64 wide": ({"vone_stride": 2, "width": 64}, None),
    "V1 maps at stride 2 (32 x 32), back ends 128 wide": ({"vone_stride": 2}, None),
    "V1 maps at stride 2 (32 x 32), back ends 64 wide, readouts also see V1": (
        {"vone_stride": 2, "width": 64, "readout_sees_front_end": True}, None),
    "Gaussian readouts (one learned position per neuron, Lurz 2021)": ({"readout": "gaussian"}, None),
    "V1 bank of 192 units (96 simple, 96 complex)": ({"n_simple": 96, "n_complex": 96}, None),
    "V1 bank of 384 units (192 simple, 192 complex)": ({"n_simple": 192, "n_complex": 192}, None),
}


def demo_variants(seeds: list[int], names: list[str] | None, device: str | None) -> None:
    """The bundled demo's teacher against its alternatives, on the demo's own twin for each seed.

    Per variant: median r against the twin's noise-free truth and against the
    held-out responses, the same per cell type (one figure per neuron), and the
    teacher's seconds. The cell types show what the median hides: whether the
    teacher learnt the sparse cells (V1 simple, end-stopped) at all. A variant
    may also change the experiment's design (how many distinct images, how
    often each is shown), at the same number of trials.
    """
    from compactvision.data.twin import make_twin_dataset
    from compactvision.pipeline import PRESETS as PIPELINE_PRESETS
    from compactvision.runs import Run
    from compactvision.teacher_stage import train_teacher

    p = PIPELINE_PRESETS["demo"]
    own = (p.images, p.repeats, None)  # every image repeated
    for seed in seeds:
        print(f"Demo teachers on the demo twin, seed {seed} ({p.neurons} neurons; the preset's design: "
              f"{p.images} images x {p.repeats} trials):")
        datasets: dict[tuple, object] = {}
        for name, (extra, design) in DEMO_VARIANTS.items():
            if names and not any(n in name for n in names):
                continue
            images, repeats, test = DESIGNS[design] if design else own
            if (images, repeats, test) not in datasets:
                datasets[images, repeats, test] = make_twin_dataset(p.neurons, images, repeats, seed=seed,
                                                                    image_size=p.image_size, test_images=test)
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                train_teacher(datasets[images, repeats, test], out, preset=p.teacher_preset, seed=seed, device=device,
                              config_overrides={"image_size": p.image_size, **p.teacher_overrides, **extra})
                seconds = time.perf_counter() - t0
                run = Run.open(out)
                scores, truth = run.teacher_scores(), run.ground_truth()
            by_type: dict[str, list[float]] = {}
            for t in truth:
                by_type.setdefault(t["cell_type"], []).append(scores["r_truth"][str(t["neuron_id"])])
            trials = (test or images) * repeats + (images - test if test else 0)
            print(f"  {name} ({trials:,} trials): r vs truth {np.median(list(scores['r_truth'].values())):.3f}, "
                  f"vs responses {np.median(list(scores['r_heldout'].values())):.3f}, {seconds:.0f} s")
            print("    " + "  ".join(f"{k} {'/'.join(f'{v:.2f}' for v in vs)}" for k, vs in sorted(by_type.items())))


def cowley_accuracy(path: str, preset: str, device: str | None) -> None:
    from compactvision.progress import tqdm_reporter
    from compactvision.teacher_stage import train_teacher

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        train_teacher(path, out, preset=preset, protocol="cowley", device=device, progress=tqdm_reporter())
        hist = json.loads((Path(out) / "history" / "teacher_metrics.json").read_text())
    print(f"Teacher on the V4 release ({preset}, cowley protocol, {time.perf_counter() - t0:.0f} s):")
    for sid, s in hist["by_session"].items():
        r = s["r"]
        print(f"  session {sid}: held-out half median r {r['median']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
              f"over {r['n']} neurons")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu", help="preset for the accuracy runs")
    p.add_argument("--images", type=int, default=2000, help="twin images for the accuracy run (0 skips it)")
    p.add_argument("--neurons", type=int, default=32)
    p.add_argument("--batch", type=int, default=64, help="batch for the VOneBlock forward benchmark")
    p.add_argument("--device", default=None)
    p.add_argument("--paper", action="store_true", help="also time the paper preset on CPU")
    p.add_argument("--cowley", help="path to the Cowley et al. V4 release, for the real-data protocol")
    p.add_argument("--trunk", nargs="*", default=["resnet50"], choices=["resnet18", "resnet34", "resnet50"],
                   help="also time the cpu preset on a frozen ResNet trunk of these layouts (none: skip)")
    p.add_argument("--demo-variants", nargs="*", metavar="WORDS",
                   help="only train the bundled demo's teacher and its alternatives on the demo twin (those whose "
                        "name holds one of WORDS; none: all), and print them")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="twin seeds for --demo-variants")
    args = p.parse_args()
    if args.demo_variants is not None:
        demo_variants(args.seeds, args.demo_variants, args.device)
        return
    device = select_device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    vone_forward(device, args.batch)
    presets = ["tiny", "cpu"] + (["paper"] if device.type == "cuda" or args.paper else [])
    training_throughput(presets, device, trunks=tuple(args.trunk))
    if args.images:
        twin_accuracy(args.preset, args.images, args.neurons, args.device)
    if args.cowley:
        cowley_accuracy(args.cowley, args.preset, args.device)


if __name__ == "__main__":
    main()
