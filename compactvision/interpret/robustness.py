"""How stable a model's predictions are when the image is degraded or attacked.

For each perturbation level we report two things side by side:

* `r`: Pearson r between the predictions on perturbed images and the targets
  (measured responses; or, without targets, the model's own clean
  predictions, so r then reads as stability), median over neurons;
* `delta`: mean |response(perturbed) - response(clean)| over images and
  neurons, and `delta_rel`, the same divided by the s.d. of the clean
  responses across images, so teacher and student compare on one scale.

Perturbations: Gaussian pixel noise (s.d. in [0, 1] units), Gaussian blur
(sigma, px), contrast reduction about each image's mean (factor, 1 = intact)
and PGD, an L-infinity attack (epsilon in [0, 1] units) that pushes the
predicted responses away from their clean values with sign-gradient steps,
projection onto the epsilon ball and clamping to valid pixels.

A teacher's VOneBlock can add Poisson-like noise; `vone_noise` switches it on
or off for a comparison, and `robustness_comparison` runs both settings.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compactvision.inputs import as_model_input
from compactvision.interpret.attribution import eval_mode, seeded
from compactvision.runtime import model_device
from compactvision.metrics import pearson_r
from compactvision.models.vone import VOneBlock
from compactvision.progress import Progress, silent

PERTURBATIONS: dict[str, dict[str, Any]] = {
    "gaussian_noise": {"label": "Gaussian noise s.d. (fraction of pixel range)",
                       "levels": (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)},
    "blur": {"label": "blur sigma (px)", "levels": (0.0, 0.5, 1.0, 2.0, 4.0)},
    "contrast": {"label": "contrast (x original)", "levels": (1.0, 0.5, 0.25, 0.1, 0.05)},
    "pgd": {"label": "PGD epsilon, L-infinity (fraction of pixel range)",
            "levels": (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)},
}


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N x C x H x W, per channel; edge pixels are repeated outwards."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius,) * 4, mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def perturb(x: torch.Tensor, perturbation: str, level: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A degraded copy of images `x` (N x C x H x W in [0, 1]); not for "pgd", which needs the model."""
    if perturbation == "gaussian_noise":
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return (x + level * noise).clamp(0.0, 1.0)
    if perturbation == "blur":
        return gaussian_blur(x, level)
    if perturbation == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return mean + level * (x - mean)
    raise ValueError(f"unknown perturbation {perturbation!r}; known: {sorted(PERTURBATIONS)}")


def is_stochastic(model: nn.Module) -> bool:
    """Whether two forward passes of `model` can differ: a VOneBlock with noise on and no fixed noise seed."""
    return any(b.noise is not None and b.noise_seed is None for b in _vone_blocks(model))


def pgd_attack(model: nn.Module, x: torch.Tensor, epsilon: float, neurons: Sequence[int] | None = None,
               steps: int = 10, step_size: float | None = None, generator: torch.Generator | None = None,
               eot_samples: int | None = None) -> torch.Tensor:
    """L-infinity PGD pushing the predicted responses of `neurons` (default all) away from their clean values.

    Maximises sum (f(x') - f(x))^2 over |x' - x|_inf <= epsilon, x' in [0, 1].
    The gradient of that loss vanishes at x' = x, so the attack starts from a
    random point of the ball (seeded by `generator`); steps are sign-gradient
    of size `step_size` (default 2.5 epsilon / steps), each followed by
    projection and clamping. For a stochastic model (V1 noise on) every step
    averages the gradient over `eot_samples` noise draws (default 8; 1 for a
    deterministic model), the expectation over transformation of Athalye et
    al. (2018), so noise cannot hide the gradient; the clean reference is the
    mean response over as many draws.
    """
    if epsilon <= 0:
        return x.clone()
    samples = (8 if is_stochastic(model) else 1) if eot_samples is None else max(1, int(eot_samples))
    step_size = 2.5 * epsilon / steps if step_size is None else step_size
    pick = (lambda out: out) if neurons is None else (lambda out: out[:, list(neurons)])
    with torch.no_grad():
        clean = torch.stack([pick(model(x)) for _ in range(samples)]).mean(0)
    start = (torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1) * epsilon
    adv = (x + start).clamp(0.0, 1.0)
    for _ in range(steps):
        adv.requires_grad_(True)
        out = torch.stack([pick(model(adv)) for _ in range(samples)]).mean(0)
        (grad,) = torch.autograd.grad((out - clean).pow(2).sum(), adv)
        with torch.no_grad():
            adv = adv + step_size * grad.sign()
            adv = torch.min(torch.max(adv, x - epsilon), x + epsilon).clamp(0.0, 1.0)
    return adv.detach()


def robustness_curves(model: nn.Module, images: np.ndarray | torch.Tensor, targets: np.ndarray | None = None,
                      neuron: int | Sequence[int] | None = None, perturbation: str = "gaussian_noise",
                      levels: Sequence[float] | None = None, seed: int = 0, batch_size: int = 32,
                      pgd_steps: int = 10, progress: Progress = silent) -> dict[str, Any]:
    """Accuracy and response change of `model` at each level of one perturbation.

    `images`: uint8 N x H x W x C (or model-layout tensors). `targets`:
    measured responses, N x n_neurons (all the model's outputs) or N (one
    neuron); None compares with the clean predictions. `neuron`: one index,
    several, or None for every output. Returns a dict with `levels`, `r`,
    `delta`, `delta_rel` (arrays, one value per level), the perturbation's
    name and axis `label`, and the `neurons` used. Seeded: the same call
    gives the same numbers; a noisy model (VOneBlock noise on) sees the same
    noise draws in the clean and the perturbed pass, so `delta` measures the
    perturbation, not the noise. Per-neuron values are in `r_per_neuron` and
    `delta_rel_per_neuron` (levels x neurons), for confidence intervals over
    neurons. `progress(perturbation, batches done, batches in all)` reports.
    """
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {perturbation!r}; known: {sorted(PERTURBATIONS)}")
    levels = np.asarray(PERTURBATIONS[perturbation]["levels"] if levels is None else levels, np.float64)
    device = model_device(model)
    x_all = as_model_input(images, device)
    with eval_mode(model), seeded(seed), torch.no_grad():
        clean = torch.cat([model(x_all[i:i + batch_size]) for i in range(0, len(x_all), batch_size)]).cpu().numpy()
    neurons = list(range(clean.shape[1])) if neuron is None else ([int(neuron)] if np.ndim(neuron) == 0 else [int(n) for n in neuron])
    clean = clean[:, neurons]
    if targets is None:
        ref = clean
    else:
        t = np.asarray(targets, np.float64)
        t = t[:, None] if t.ndim == 1 else t
        ref = t if t.shape[1] == len(neurons) else t[:, neurons]
        if len(ref) != len(clean):
            raise ValueError(f"{len(ref)} target rows for {len(clean)} images")
    spread = clean.std(0)
    r, delta, delta_rel, r_each, rel_each = [], [], [], [], []
    n_batches = -(-len(x_all) // batch_size)
    for k, level in enumerate(levels):
        gen = torch.Generator().manual_seed(seed)
        preds = []
        with eval_mode(model), seeded(seed):
            for i in range(0, len(x_all), batch_size):
                x = x_all[i:i + batch_size]
                if perturbation == "pgd":
                    x = pgd_attack(model, x, float(level), neurons, steps=pgd_steps, generator=gen)
                else:
                    x = perturb(x, perturbation, float(level), gen)
                with torch.no_grad():
                    preds.append(model(x)[:, neurons].cpu())
                progress(perturbation, k * n_batches + i // batch_size + 1, len(levels) * n_batches)
        pred = torch.cat(preds).numpy().astype(np.float64)
        change = np.abs(pred - clean)
        r_each.append(pearson_r(pred.T, ref.T))
        r.append(float(np.nanmedian(r_each[-1])))
        delta.append(float(change.mean()))
        with np.errstate(invalid="ignore", divide="ignore"):
            rel_each.append(change.mean(0) / np.where(spread > 0, spread, np.nan))
        delta_rel.append(float(np.nanmean(rel_each[-1])))
    return {"perturbation": perturbation, "label": PERTURBATIONS[perturbation]["label"], "levels": levels,
            "r": np.asarray(r), "delta": np.asarray(delta), "delta_rel": np.asarray(delta_rel), "neurons": neurons,
            "r_per_neuron": np.asarray(r_each), "delta_rel_per_neuron": np.asarray(rel_each)}


# --------------------------------------------------------- VOneBlock noise
def _vone_blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, VOneBlock)]


def has_vone_noise(model: nn.Module) -> bool:
    """Whether `model` has a VOneBlock whose noise can be switched."""
    return bool(_vone_blocks(model))


@contextlib.contextmanager
def vone_noise(model: nn.Module, enabled: bool) -> Iterator[nn.Module]:
    """Every VOneBlock in `model` with its Poisson-like noise on (`enabled`) or off, then as before.

    A model without a VOneBlock passes through unchanged.
    """
    blocks = _vone_blocks(model)
    saved = [b.noise for b in blocks]
    for b in blocks:
        b.noise = "poisson" if enabled else None
    try:
        yield model
    finally:
        for b, s in zip(blocks, saved):
            b.noise = s


def robustness_comparison(models: Mapping[str, nn.Module], images: np.ndarray | torch.Tensor,
                          targets: np.ndarray | None = None, neuron: int | Sequence[int] | None = None,
                          perturbation: str = "gaussian_noise", levels: Sequence[float] | None = None,
                          noise_settings: Sequence[bool] = (False, True), progress: Progress = silent,
                          **options: Any) -> dict[str, dict[str, Any]]:
    """`robustness_curves` for each named model (e.g. teacher and student).

    A model with a VOneBlock is run once per entry of `noise_settings`, its
    label suffixed "(V1 noise on)" / "(V1 noise off)"; others run once.
    `neuron` indexes each model's outputs, so give models with the same outputs.
    `progress` reports each model's curve under the model's label.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        settings = [(name, None)] if not has_vone_noise(model) else \
            [(f"{name} (V1 noise {'on' if on else 'off'})", on) for on in noise_settings]
        for label, on in settings:
            with contextlib.nullcontext(model) if on is None else vone_noise(model, on):
                out[label] = robustness_curves(model, images, targets, neuron, perturbation, levels,
                                               progress=lambda _s, d, t, label=label: progress(label, d, t), **options)
    return out


# ------------------------------------------------------ across neurons
def stack_neurons(curves: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One population curve from several models' curves (e.g. one compact model per neuron), same levels.

    Per-neuron values are concatenated; the summary lines are recomputed as
    `robustness_curves` computes them (median r, mean relative change).
    """
    if not curves:
        raise ValueError("no curves to stack")
    first = curves[0]
    if any(not np.array_equal(c["levels"], first["levels"]) or c["perturbation"] != first["perturbation"]
           for c in curves):
        raise ValueError("curves to stack must share the perturbation and its levels")
    r_each = np.concatenate([c["r_per_neuron"] for c in curves], axis=1)
    rel_each = np.concatenate([c["delta_rel_per_neuron"] for c in curves], axis=1)
    return {**first, "r": np.nanmedian(r_each, 1), "delta_rel": np.nanmean(rel_each, 1),
            "delta": np.asarray([np.mean([c["delta"][k] for c in curves]) for k in range(len(first["levels"]))]),
            "neurons": [n for c in curves for n in c["neurons"]], "r_per_neuron": r_each,
            "delta_rel_per_neuron": rel_each}


def area_under_curve(values_per_level: np.ndarray) -> np.ndarray:
    """Area under each neuron's curve over the level index (trapezoid, divided by the span: the mean height).

    Levels of one sweep are spaced unevenly (epsilon doubles), so the index,
    not the level, is the axis: every level weighs the same.
    """
    v = np.asarray(values_per_level, np.float64)
    if len(v) < 2:
        return v[0].copy()
    return ((v[1:] + v[:-1]) / 2).sum(0) / (len(v) - 1)


def population_summary(curve: Mapping[str, Any], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Median over neurons with a bootstrap 95% CI, per level and for the area under the curve.

    Returns {"levels", "r": (median, low, high) arrays per level, "delta_rel":
    likewise, "r_auc": (median, low, high), "delta_rel_auc": likewise, "n"}.
    """
    from compactvision.metrics import bootstrap_median_ci

    out: dict[str, Any] = {"levels": np.asarray(curve["levels"]), "n": int(curve["r_per_neuron"].shape[1])}
    for key in ("r", "delta_rel"):
        each = np.asarray(curve[f"{key}_per_neuron"], np.float64)
        out[key] = np.asarray([bootstrap_median_ci(row, n_boot, seed=seed) for row in each]).T
        out[f"{key}_auc"] = bootstrap_median_ci(area_under_curve(each), n_boot, seed=seed)
    return out


def population_robustness(heldout: Mapping[str, Any], neuron_ids: Sequence[str],
                          student: Callable[[str], nn.Module] | None, teacher: nn.Module | None = None,
                          perturbation: str = "gaussian_noise", n_images: int = 64,
                          levels: Sequence[float] | None = None, progress: Progress = silent,
                          **options: Any) -> dict[str, dict[str, Any]]:
    """The teacher's and the compact models' curves over `neuron_ids`, each one population curve.

    `heldout`: `Run.heldout()`; `student(neuron_id)` gives that neuron's
    compact model (None: no compact models); `teacher` (optional) predicts
    every neuron of the run. The
    first `n_images` held-out images of each session are perturbed, and r is
    taken against their measured responses. Returns {"teacher": ...,
    "compact models": ...}, curves with per-neuron values (`stack_neurons`),
    for `population_summary` and error bars over neurons.
    """
    from compactvision.runs import teacher_view

    teacher_curves, student_curves = [], []
    jobs = (len(neuron_ids) if student is not None else 0) + (1 if teacher is not None else 0)
    step = [0]

    def report(label: str) -> Progress:
        step[0] += 1
        k = step[0]
        return lambda _s, d, t: progress(f"{label}, {k}/{jobs}", d, t)

    by_session: dict[str, list[str]] = {}
    for nid in neuron_ids:
        sid = next((s for s, d in heldout["sessions"].items() if nid in d["neuron_ids"]), None)
        if sid is None:
            raise ValueError(f"no held-out data for neuron {nid!r}")
        by_session.setdefault(sid, []).append(nid)
    for sid, ids in by_session.items():
        s = heldout["sessions"][sid]
        rows = [list(s["neuron_ids"]).index(n) for n in ids]
        images, responses = s["images"][:n_images], np.asarray(s["responses"])[rows][:, :n_images]
        if teacher is not None:
            view, _ = teacher_view(teacher, ids[0])
            outputs = [teacher_view(teacher, n)[1] for n in ids]
            teacher_curves.append(robustness_curves(view, images, responses.T, outputs, perturbation, levels,
                                                    progress=report("teacher"), **options))
        for nid, resp in zip(ids, responses if student is not None else []):
            student_curves.append(robustness_curves(student(nid), images, resp, 0, perturbation, levels,
                                                    progress=report(f"compact model {nid}"), **options))
    out = {"teacher": teacher_curves, "compact models": student_curves}
    return {name: stack_neurons(curves) for name, curves in out.items() if curves}
