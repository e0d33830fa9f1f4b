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
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compactvision.inputs import as_model_input
from compactvision.interpret.attribution import eval_mode, model_device, seeded
from compactvision.metrics import pearson_r
from compactvision.models.vone import VOneBlock

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
                      pgd_steps: int = 10) -> dict[str, Any]:
    """Accuracy and response change of `model` at each level of one perturbation.

    `images`: uint8 N x H x W x C (or model-layout tensors). `targets`:
    measured responses, N x n_neurons (all the model's outputs) or N (one
    neuron); None compares with the clean predictions. `neuron`: one index,
    several, or None for every output. Returns a dict with `levels`, `r`,
    `delta`, `delta_rel` (arrays, one value per level), the perturbation's
    name and axis `label`, and the `neurons` used. Seeded: the same call
    gives the same numbers; a noisy model (VOneBlock noise on) sees the same
    noise draws in the clean and the perturbed pass, so `delta` measures the
    perturbation, not the noise.
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
    r, delta, delta_rel = [], [], []
    for level in levels:
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
        pred = torch.cat(preds).numpy().astype(np.float64)
        change = np.abs(pred - clean)
        r.append(float(np.nanmedian(pearson_r(pred.T, ref.T))))
        delta.append(float(change.mean()))
        with np.errstate(invalid="ignore", divide="ignore"):
            delta_rel.append(float(np.nanmean(change.mean(0) / np.where(spread > 0, spread, np.nan))))
    return {"perturbation": perturbation, "label": PERTURBATIONS[perturbation]["label"], "levels": levels,
            "r": np.asarray(r), "delta": np.asarray(delta), "delta_rel": np.asarray(delta_rel), "neurons": neurons}


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
                          noise_settings: Sequence[bool] = (False, True), **options: Any) -> dict[str, dict[str, Any]]:
    """`robustness_curves` for each named model (e.g. teacher and student).

    A model with a VOneBlock is run once per entry of `noise_settings`, its
    label suffixed "(V1 noise on)" / "(V1 noise off)"; others run once.
    `neuron` indexes each model's outputs, so give models with the same outputs.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        if not has_vone_noise(model):
            out[name] = robustness_curves(model, images, targets, neuron, perturbation, levels, **options)
            continue
        for on in noise_settings:
            with vone_noise(model, on):
                label = f"{name} (V1 noise {'on' if on else 'off'})"
                out[label] = robustness_curves(model, images, targets, neuron, perturbation, levels, **options)
    return out
