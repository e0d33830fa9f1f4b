"""What a model neuron prefers: top dataset images, synthesised images, and in-silico tuning curves.

Everything here treats the model as a black box with the package's call
convention (N x 3 x H x W in [0, 1] in, N x n_neurons out), so the teacher,
a compact student and the digital twin itself are probed with the *same*
stimuli, and a model can be checked against the twin's known computation
(`compare_with_twin`).

Stimuli come from `compactvision.data.images` and share its geometry:
positions (x, y) = (column, row) px, orientations of the bars in degrees
counter-clockwise from horizontal, spatial frequency in cycles per pixel.
Local stimuli (dots, bars, arcs) are centred on the neuron's receptive field:
given by the caller (the twin's ground truth), else estimated from the
model's own gradients (`estimate_rf_center`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from compactvision.data import images as stim
from compactvision.inputs import as_model_input
from compactvision.interpret.attribution import eval_mode, response
from compactvision.runtime import model_device
from compactvision.interpret.robustness import gaussian_blur
from compactvision.metrics import pearson_r
from compactvision.progress import Progress, silent

Point = tuple[float, float]


@dataclass
class Tuning:
    """A tuning measurement: `response` has one axis per entry of `axes`, in that order.

    Axis names carry their unit ("orientation_deg", "sf_cpp", "diameter_px").
    `blank` is the response to a uniform grey image: the floor the curve is read against.
    """

    stimulus: str
    neuron: int
    center: Point
    axes: dict[str, np.ndarray]
    response: np.ndarray
    blank: float
    preferred: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------- top images
def top_images(model: nn.Module, images: np.ndarray, neuron: int, k: int = 9,
               batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the `k` images driving `neuron` hardest, strongest first, and their predicted responses."""
    r = response(model, images, batch_size)[:, neuron]
    order = np.argsort(-r, kind="stable")[:k]
    return order, r[order]


# --------------------------------------------------------------- synthesis
SYNTHESIS_OPTIMISERS = ("normalised", "adam")


def synthesise_preferred(model: nn.Module, neuron: int, size: int = 112, steps: int = 128, lr: float | None = None,
                         seed: int = 0, jitter: int = 4, blur: float = 0.5, blur_every: int = 4,
                         norm_bound: float = 0.25, grayscale: bool = False, n_starts: int = 8, ascents: int = 4,
                         optimizer: str = "normalised", progress: Progress = silent) -> np.ndarray:
    """The image maximising `neuron`'s predicted response, by regularised gradient ascent.

    Ascends the response from the best `ascents` of `n_starts` faint
    smooth-noise images about grey, side by side, and returns the highest image
    any of them showed on the way: ascent on a rectified network finds local
    optima, which one depends on where it starts, and a step can overshoot
    (a saturating unit's vanishing gradient, scaled up, is noise).
    `optimizer` "normalised" (the default) steps along each image's whole
    gradient scaled to an RMS of `lr` (default 0.02), with momentum 0.9: each
    pixel moves in proportion to how much the neuron sees it, so the contrast
    gathers where the receptive field is. "adam" (`lr` default 0.05) divides
    each pixel's step by that pixel's own gradient history, so pixels the
    neuron barely sees move as fast as those it sees most, and the image fills
    with pattern everywhere; on the digital twin, whose optima are known, it
    spends about 30% of the contrast within 10 px of the true receptive field
    against about 65% (`benchmarks/interpret.py`).
    Three regularisers keep the image natural-looking rather than adversarial:
    `jitter` (random shifts of up to that many px each step, so the image must
    work at nearby positions), `blur` (a Gaussian of that sigma, px, every
    `blur_every` steps, suppressing pixel-level noise) and `norm_bound` (the
    RMS contrast about grey, in [0, 1] units, never exceeds it). All
    randomness comes from `seed`: the same call gives the same image.
    `progress("synthesis", step, steps)` is called as the ascent goes.
    Returns uint8 size x size x 3.
    """
    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    channels = 1 if grayscale else 3
    # Start from the best of a few smooth noise patterns: a rectified unit can have zero
    # gradient at grey, and ascent from there would never move.
    starts = gaussian_blur(torch.randn(n_starts, channels, size, size, generator=gen), 1.0).to(device)
    starts = starts * (0.5 * norm_bound / starts.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt())
    drive = lambda d: model((0.5 + d).clamp(0.0, 1.0).expand(-1, 3, -1, -1))[:, neuron]  # noqa: E731
    with eval_mode(model), torch.no_grad():
        first = drive(starts)
    best = torch.argsort(first, descending=True, stable=True)[: max(1, min(ascents, n_starts))]
    delta = starts[best].clone().requires_grad_(True)
    if optimizer not in SYNTHESIS_OPTIMISERS:
        raise ValueError(f"optimizer must be one of {SYNTHESIS_OPTIMISERS}, got {optimizer!r}")
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam([delta], lr=0.05 if lr is None else lr)
    else:
        opt = torch.optim.SGD([delta], lr=0.02 if lr is None else lr, momentum=0.9)
    shifts = torch.randint(-jitter, jitter + 1, (steps, 2), generator=gen).tolist() if jitter else [[0, 0]] * steps
    kept, kept_score = delta.detach().clone(), torch.full((len(delta),), -math.inf, device=device)
    with eval_mode(model):
        for step in range(steps):
            shown = torch.roll(delta, shifts=tuple(shifts[step]), dims=(2, 3))
            out = model((0.5 + shown).clamp(0.0, 1.0).expand(-1, 3, -1, -1))[:, neuron]
            with torch.no_grad():  # the best image each ascent has shown so far, as shown, before this step
                better = out.detach() > kept_score
                kept_score = torch.where(better, out.detach(), kept_score)
                kept[better] = shown.detach()[better]
            # Gradient to the image only: the model's own .grad stays untouched.
            (grad,) = torch.autograd.grad(-out.sum(), delta)
            if optimizer == "normalised":
                grad = grad / grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
            delta.grad = grad
            opt.step()
            with torch.no_grad():
                if blur > 0 and (step + 1) % blur_every == 0:
                    delta.copy_(gaussian_blur(delta, blur))
                rms = delta.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
                delta.mul_(torch.clamp(norm_bound / rms.clamp_min(1e-12), max=1.0))
                delta.clamp_(-0.5, 0.5)
            progress("synthesis", step + 1, steps)
    with eval_mode(model), torch.no_grad():
        candidates = torch.cat([delta.detach(), kept])
        final = candidates[int(torch.argmax(drive(candidates)))]
    img = (0.5 + final).clamp(0.0, 1.0).expand(3, -1, -1).permute(1, 2, 0).cpu().numpy()
    return np.rint(img * 255.0).astype(np.uint8)


def contrast_share_near(images: np.ndarray, centers: Sequence[Sequence[float]], radius: float = 10.0) -> np.ndarray:
    """For each uint8 H x W x 3 image, the share of its contrast energy about grey within `radius` px of its centre.

    Says where a synthesis spent its contrast budget: near a known receptive
    field (the twin's) or spread over the frame.
    """
    images = np.asarray(images, np.float64)
    yy, xx = np.mgrid[:images.shape[1], :images.shape[2]]
    energy = ((images / 255.0 - 0.5) ** 2).sum(-1)
    near = np.stack([np.hypot(xx - c[0], yy - c[1]) <= radius for c in centers])
    return (energy * near).sum((1, 2)) / energy.sum((1, 2))


# ------------------------------------------------------------ RF location
def estimate_rf_center(model: nn.Module, neuron: int, size: int = 112, n_probes: int = 8, seed: int = 0) -> Point:
    """Where `neuron` looks, from the model itself: the peak of its mean gradient magnitude over noise probes.

    1/f noise probes drive most units somewhere; averaging |d response / d pixel|
    over them and smoothing gives a receptive-field map whose peak is the centre.
    """
    x = as_model_input(stim.pink_noise(n_probes, size, seed=seed), model_device(model)).requires_grad_(True)
    with eval_mode(model):
        (grad,) = torch.autograd.grad(model(x)[:, neuron].sum(), x)
    rf = grad.abs().sum(1, keepdim=True).mean(0, keepdim=True)
    rf = gaussian_blur(rf, max(size / 28.0, 1.0))[0, 0].cpu().numpy()
    row, col = np.unravel_index(int(np.argmax(rf)), rf.shape)
    return float(col), float(row)


def _center(model: nn.Module, neuron: int, size: int, center: Sequence[float] | None) -> Point:
    return estimate_rf_center(model, neuron, size) if center is None else (float(center[0]), float(center[1]))


def _blank(model: nn.Module, neuron: int, size: int) -> float:
    return float(response(model, np.full((1, size, size, 3), 128, np.uint8))[0, neuron])


# ----------------------------------------------------------------- tuning
def preferred_orientation(orientations_deg: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    """Vector-average preferred orientation (deg, in [0, 180)) and its selectivity (1 - circular variance).

    Orientation is 180-periodic, so angles are doubled; the response above its
    minimum weights each. Finer than the sampling grid's argmax.
    """
    w = np.asarray(r, np.float64) - np.min(r)
    z = np.sum(w * np.exp(2j * np.radians(orientations_deg)))
    if w.sum() <= 0:
        return float("nan"), 0.0
    return float(np.degrees(np.angle(z)) / 2 % 180.0), float(abs(z) / w.sum())


def orientation_sf_tuning(model: nn.Module, neuron: int, orientations: Sequence[float] | None = None,
                          sfs: Sequence[float] | None = None, size: int = 112, center: Sequence[float] | None = None,
                          radius: float | None = None, n_phases: int = 4, contrast: float = 1.0) -> Tuning:
    """Responses to gratings, orientation x spatial frequency, averaged over `n_phases` spatial phases.

    Averaging over phase gives the same reading for simple cells (phase
    sensitive) and complex cells. Defaults: 12 orientations (15 deg apart)
    and 8 frequencies from 0.02 to 0.25 cycles/px. `radius` (px) puts the
    grating in a circular aperture at `center`; by default it fills the image.
    """
    ori = np.arange(0.0, 180.0, 15.0) if orientations is None else np.asarray(orientations, np.float64)
    sf = np.geomspace(0.02, 0.25, 8) if sfs is None else np.asarray(sfs, np.float64)
    c = (((size - 1) / 2.0,) * 2 if radius is None and center is None else _center(model, neuron, size, center))
    phases = np.arange(n_phases) * 2 * math.pi / n_phases
    imgs = stim.gratings(ori, sf, phases, size=size, contrast=contrast, center=c, radius=radius)
    r = response(model, imgs)[:, neuron].reshape(len(ori), len(sf), n_phases).mean(-1)
    best_ori, best_sf = np.unravel_index(int(np.argmax(r)), r.shape)
    pref_ori, selectivity = preferred_orientation(ori, r[:, best_sf])
    return Tuning("orientation_sf", neuron, c, {"orientation_deg": ori, "sf_cpp": sf}, r, _blank(model, neuron, size),
                  {"orientation_deg": pref_ori, "sf_cpp": float(sf[best_sf]), "orientation_selectivity": selectivity,
                   "peak_response": float(r[best_ori, best_sf])})


def dot_size_tuning(model: nn.Module, neuron: int, diameters: Sequence[float] | None = None, size: int = 112,
                    center: Sequence[float] | None = None, polarities: Sequence[int] = (1, -1)) -> Tuning:
    """Responses to white and black discs of growing diameter (px) at the RF centre (dot detectors)."""
    d = np.geomspace(2.0, size / 2.0, 12) if diameters is None else np.asarray(diameters, np.float64)
    c = _center(model, neuron, size, center)
    imgs = np.concatenate([stim.dots(d, [c], size=size, polarity=p) for p in polarities])
    r = response(model, imgs)[:, neuron].reshape(len(polarities), len(d))
    p_i, d_i = np.unravel_index(int(np.argmax(r)), r.shape)
    return Tuning("dot_size", neuron, c, {"polarity": np.asarray(polarities), "diameter_px": d}, r,
                  _blank(model, neuron, size),
                  {"diameter_px": float(d[d_i]), "polarity": float(polarities[p_i]), "peak_response": float(r[p_i, d_i])})


def bar_length_tuning(model: nn.Module, neuron: int, lengths: Sequence[float] | None = None,
                      orientation_deg: float | None = None, width_px: float = 3.0, size: int = 112,
                      center: Sequence[float] | None = None, polarities: Sequence[int] = (1, -1)) -> Tuning:
    """Responses to bars of growing length at the preferred orientation (end-stopping).

    Without `orientation_deg`, the grating-preferred orientation is measured
    first. `end_stopping_index` = (peak - longest) / (peak - blank): 0 for a
    cell that keeps responding to long bars, near 1 for a strongly end-stopped one.
    """
    L = np.geomspace(2.0, size * 0.9, 12) if lengths is None else np.asarray(lengths, np.float64)
    c = _center(model, neuron, size, center)
    if orientation_deg is None:
        orientation_deg = orientation_sf_tuning(model, neuron, size=size, center=c).preferred["orientation_deg"]
    imgs = np.concatenate([stim.bars(L, width_px, float(orientation_deg), center=c, size=size, polarity=p)
                           for p in polarities])
    r = response(model, imgs)[:, neuron].reshape(len(polarities), len(L))
    blank = _blank(model, neuron, size)
    p_i, l_i = np.unravel_index(int(np.argmax(r)), r.shape)
    peak, longest = r[p_i, l_i], r[p_i, -1]
    esi = float((peak - longest) / (peak - blank)) if peak > blank else 0.0
    return Tuning("bar_length", neuron, c, {"polarity": np.asarray(polarities), "length_px": L}, r, blank,
                  {"length_px": float(L[l_i]), "orientation_deg": float(orientation_deg),
                   "end_stopping_index": esi, "peak_response": float(peak)})


def curvature_tuning(model: nn.Module, neuron: int, curvatures: Sequence[float] | None = None,
                     orientations: Sequence[float] | None = None, size: int = 112,
                     center: Sequence[float] | None = None, length_px: float | None = None,
                     width_px: float = 2.0) -> Tuning:
    """Responses to arcs of constant curvature (1/px; 0 = straight) through the RF centre.

    Arcs are drawn at each tangent orientation (default every 30 deg over
    0-180; signed curvature covers both bending directions).
    """
    k = np.linspace(-1 / 8, 1 / 8, 9) if curvatures is None else np.asarray(curvatures, np.float64)
    ori = np.arange(0.0, 180.0, 30.0) if orientations is None else np.asarray(orientations, np.float64)
    c = _center(model, neuron, size, center)
    imgs = np.concatenate([stim.curved_arcs(k, size=size, center=c, orientation_deg=float(o), length_px=length_px,
                                            width_px=width_px) for o in ori])
    r = response(model, imgs)[:, neuron].reshape(len(ori), len(k))
    o_i, k_i = np.unravel_index(int(np.argmax(r)), r.shape)
    return Tuning("curvature", neuron, c, {"orientation_deg": ori, "curvature_per_px": k}, r,
                  _blank(model, neuron, size),
                  {"curvature_per_px": float(k[k_i]), "orientation_deg": float(ori[o_i]), "peak_response": float(r[o_i, k_i])})


# ------------------------------------------------------ twin ground truth
def orientation_difference(a: float, b: float) -> float:
    """Smallest difference between two orientations, degrees in [0, 90]."""
    d = abs(float(a) - float(b)) % 180.0
    return min(d, 180.0 - d)


def compare_with_twin(model: nn.Module, twin: nn.Module, neuron_index: int, model_neuron: int | None = None,
                      size: int | None = None, synthesis_steps: int = 128, seed: int = 0,
                      natural_images: np.ndarray | None = None) -> dict[str, Any]:
    """Did `model` recover twin neuron `neuron_index`'s real computation? Measured on the same stimuli.

    `model_neuron` is the model's output for that neuron (default: 0 for a
    one-output per-neuron model, else `neuron_index`). Stimuli are placed at
    the twin's true RF centre. Returns the cell type and, where the truth
    defines them:
      * `orientation_error_deg`: model's grating-preferred orientation vs the
        true one, mod 180 (0-90). The gratings fill the image or, for a cell
        with a preferred size (end-stopped), an aperture of that radius:
        full-field gratings drive an end-stopped cell best across its
        preferred orientation;
      * `size_error_px`: preferred dot diameter (dot / centre-surround cells)
        or bar length (end-stopped cells) vs the twin neuron's own, measured
        on the same stimuli (`twin_size_px`; the record's is `true_size_px`);
      * `preferred_image_r`: Pearson r between the model's synthesised
        preferred image and the twin neuron's own (same seed and settings);
        a poor test on its own (a complex cell's free choice of phase gives a
        low r for a perfect model), kept as a description;
      * the in-silico closed loop, as experimenters verify synthesised images
        on real neurons: `closed_loop_ratio`, the twin neuron's response to
        the model's synthesised image over its response to its own optimal
        stimulus (its own synthesised image or, with `natural_images`, uint8
        N x H x W x C such as the held-out set, the best of those if that
        drives it harder), and `closed_loop_beats_natural`: whether the
        model's image drives the neuron above its best natural image.
    """
    truth = twin.ground_truth()[neuron_index]
    if model_neuron is None:
        n_out = getattr(getattr(model, "arch", None), "n_outputs", None)
        model_neuron = 0 if n_out == 1 else neuron_index
    size = int(size or getattr(twin, "image_size", 112))
    center = (float(truth["rf_center"][0]), float(truth["rf_center"][1]))
    out: dict[str, Any] = {"neuron_id": truth.get("neuron_id"), "cell_type": truth["cell_type"], "rf_center": center}

    true_ori = truth.get("preferred_orientation_deg")
    true_size = truth.get("preferred_size_px")
    if true_ori is not None:
        # An end-stopped cell is suppressed by long stimuli, so a grating filling the image drives it best
        # across its preferred orientation: its orientation is read in an aperture of its preferred length.
        radius = float(true_size) if true_size is not None else None
        t = orientation_sf_tuning(model, model_neuron, size=size, center=center, radius=radius)
        out.update(true_orientation_deg=float(true_ori), model_orientation_deg=t.preferred["orientation_deg"],
                   orientation_error_deg=orientation_difference(t.preferred["orientation_deg"], true_ori))
    if true_size is not None:
        # The model is measured beside the twin neuron on the same stimuli, on a grid finer than the tolerance.
        if truth["cell_type"] == "end_stopped":
            lengths = fine_sizes(2.0, size * 0.9)

            def preferred_size(m: nn.Module, j: int) -> float:
                return bar_length_tuning(m, j, lengths, orientation_deg=true_ori, size=size,
                                         center=center).preferred["length_px"]
        else:
            diameters = fine_sizes(2.0, size / 2.0)

            def preferred_size(m: nn.Module, j: int) -> float:
                return dot_size_tuning(m, j, diameters, size=size, center=center).preferred["diameter_px"]
        model_size, twin_size = preferred_size(model, model_neuron), preferred_size(twin, neuron_index)
        out.update(true_size_px=float(true_size), twin_size_px=twin_size, model_size_px=model_size,
                   size_error_px=abs(model_size - twin_size))
    mine = synthesise_preferred(model, model_neuron, size=size, steps=synthesis_steps, seed=seed).astype(np.float64)
    theirs = synthesise_preferred(twin, neuron_index, size=size, steps=synthesis_steps, seed=seed).astype(np.float64)
    out["preferred_image_r"] = float(pearson_r(mine.ravel(), theirs.ravel())[0])
    drive = twin_responses(twin, neuron_index, np.stack([mine, theirs]).round().clip(0, 255).astype(np.uint8))
    out.update(closed_loop_response=float(drive[0]), own_synthesis_response=float(drive[1]))
    optimum = float(drive[1])
    if natural_images is not None and len(natural_images):
        best = float(twin_responses(twin, neuron_index, natural_images).max())
        out.update(best_natural_response=best, closed_loop_beats_natural=bool(drive[0] > best))
        optimum = max(optimum, best)  # where ascent on the twin itself falls short, a natural image is its optimum
    out["closed_loop_ratio"] = float(drive[0] / optimum) if optimum > 0 else float("nan")
    return out


def fine_sizes(smallest: float, largest: float, step: float = 0.1) -> np.ndarray:
    """Sizes from `smallest` to `largest`, each `step` (relative) above the last at most.

    A preferred size read as a grid's argmax can be no closer than one step;
    with the default 12-point grids (29-36% steps at 64 px) a tolerance of
    25% would mean "the same grid point".
    """
    n = int(math.ceil(math.log(largest / smallest) / math.log1p(step))) + 1
    return np.geomspace(smallest, largest, max(n, 2))


def twin_responses(twin: nn.Module, neuron_index: int, images: np.ndarray) -> np.ndarray:
    """The twin neuron's noise-free responses to uint8 N x H x W x C images."""
    return np.asarray(twin.rates(images))[neuron_index]


def recovered(comparison: dict[str, Any], max_orientation_error_deg: float = 15.0, max_size_error: float = 0.25,
              min_closed_loop: float = 0.8) -> bool:
    """Whether a `compare_with_twin` result counts as the computation recovered.

    Every criterion the cell type defines must hold: orientation within
    `max_orientation_error_deg`, preferred size within `max_size_error` of the
    twin neuron's own on the same stimuli (relative), and for every type the closed loop: the model's
    synthesised image drives the twin neuron to at least `min_closed_loop` of
    its response to its own optimum and, where natural images were given,
    above its best natural image.
    """
    checks = [comparison["closed_loop_ratio"] >= min_closed_loop]
    if "closed_loop_beats_natural" in comparison:
        checks.append(comparison["closed_loop_beats_natural"])
    if "orientation_error_deg" in comparison:
        checks.append(comparison["orientation_error_deg"] <= max_orientation_error_deg)
    if "size_error_px" in comparison:
        reference = comparison.get("twin_size_px", comparison["true_size_px"])
        checks.append(comparison["size_error_px"] <= max_size_error * reference)
    return all(checks)


def recovery_table(comparisons: Sequence[dict[str, Any]], **criteria: float) -> dict[str, dict[str, float]]:
    """Per cell type: how many neurons were compared, how many `recovered`, and the fraction."""
    table: dict[str, dict[str, float]] = {}
    for c in comparisons:
        row = table.setdefault(c["cell_type"], {"n": 0, "recovered": 0})
        row["n"] += 1
        row["recovered"] += int(recovered(c, **criteria))
    for row in table.values():
        row["fraction"] = row["recovered"] / row["n"]
    return table
