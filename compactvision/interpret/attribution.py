"""Which pixels drive one neuron's predicted response: Captum attributions with one call shape.

`attribute(model, images, neuron, method)` works for any model that follows
the package convention (N x 3 x H x W in [0, 1] in, N x n_neurons out), so
teacher and student maps come from the same code and can be compared with
`map_similarity`. Captum does the work; this module only fixes what Captum
leaves to the caller and gets wrong for images by default:

* baselines and noise are in the input's units: a mean-grey baseline (0.5)
  rather than black, and SmoothGrad / VarGrad noise of ~15% of the [0, 1]
  range instead of Captum's stdev of 1.0, which buries the image in noise;
* the model is put in eval mode for the call (BatchNorm must use its running
  statistics, DeepLift requires it) and its previous mode is restored;
* randomness (NoiseTunnel, GradientShap) is seeded without touching the
  global RNG, so the same call gives the same map;
* images go through in batches (`batch_size`) and path methods additionally
  split their interpolation steps (`internal_batch_size`), bounding memory.

Layer methods need a layer. `default_layer` picks the last layer of a compact
student (its 28 x 28 consolidated map) and, for other models, the last
Conv2d; `layer=` accepts a module or a dotted name such as "layers.2".
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from compactvision.inputs import as_model_input
from compactvision.runtime import model_device

#: Default noise level for SmoothGrad / VarGrad / GradientShap, as a fraction of the [0, 1] input range.
NOISE_FRACTION = 0.15
#: Mean grey: the "no image" reference for path methods and occlusion.
GREY = 0.5


@dataclass(frozen=True)
class Method:
    """One entry of the method menu."""

    label: str
    description: str
    needs_layer: bool = False


METHODS: dict[str, Method] = {
    "integrated_gradients": Method("Integrated Gradients", "gradients averaged along the path from a grey baseline; sums to f(x) - f(grey)"),
    "saliency": Method("Saliency", "absolute gradient of the response"),
    "input_x_gradient": Method("Input x Gradient", "gradient times the pixel values"),
    "guided_backprop": Method("Guided Backprop", "gradient passing only positive signals through each ReLU"),
    "deeplift": Method("DeepLIFT", "contribution relative to a grey baseline, propagated with the rescale rule"),
    "gradient_shap": Method("GradientSHAP", "expected gradients over noisy samples and grey-level baselines"),
    "occlusion": Method("Occlusion", "response change when a patch (1/8 of the image side) is set to grey"),
    "smoothgrad": Method("SmoothGrad", "saliency averaged over noisy copies of the image"),
    "vargrad": Method("VarGrad", "variance of the saliency over noisy copies of the image"),
    "layer_gradcam": Method("Grad-CAM", "layer activation weighted by its mean gradient, upsampled to the image", needs_layer=True),
    "layer_conductance": Method("Layer conductance", "integrated-gradients flow through a layer, summed over its filters", needs_layer=True),
    "neuron_conductance": Method("Filter conductance", "integrated gradients of the pixels routed through one filter of a layer", needs_layer=True),
}


#: Every option `attribute` / `attribute_raw` understands, with what it sets.
OPTIONS: dict[str, str] = {
    "baseline": "reference image for path methods and occlusion: a float grey level or a tensor (default 0.5)",
    "n_steps": "interpolation steps of path methods (default 32)",
    "internal_batch_size": "images per forward pass inside a path method (default 8)",
    "stdev": "noise s.d. of SmoothGrad / VarGrad / GradientSHAP, in [0, 1] units (default 0.15)",
    "nt_samples": "noisy copies per image (default 16)",
    "nt_samples_batch_size": "noisy copies per forward pass (default nt_samples)",
    "base": "inner method of SmoothGrad / VarGrad: saliency, integrated_gradients or input_x_gradient",
    "abs": "saliency's absolute value (default True)",
    "baseline_levels": "GradientSHAP's grey baseline levels (default 0.25, 0.5, 0.75)",
    "window": "occlusion patch side in pixels (default 1/8 of the image side)",
    "stride": "occlusion stride in pixels (default half the window)",
    "perturbations_per_eval": "occlusion patches per forward pass (default 32)",
    "layer": "layer methods' layer: a module, a dotted name or a student layer index",
    "channel": "neuron_conductance's filter of the layer (default: the one carrying most of the response)",
    "relu": "Grad-CAM's positive part only (default False)",
}
#: Captum's own names for the same options, accepted so its documentation's calls work here too.
CAPTUM_NAMES = {"baselines": "baseline", "stdevs": "stdev", "relu_attributions": "relu"}


def attribution_options(options: dict[str, Any]) -> dict[str, Any]:
    """`options` in this module's names; Captum's names are translated, anything unknown is refused.

    A misspelt or foreign option that was silently ignored would give a map
    computed with the default (a grey baseline, say) while the caller believes
    otherwise; refusing it is the only safe answer.
    """
    out: dict[str, Any] = {}
    for name, value in options.items():
        own = CAPTUM_NAMES.get(name, name)
        if own not in OPTIONS:
            raise ValueError(f"unknown attribution option {name!r}; known: {sorted(OPTIONS)} "
                             f"(Captum's {sorted(CAPTUM_NAMES)} are accepted too)")
        if own in out:
            raise ValueError(f"option {own!r} given twice (as {own!r} and as Captum's {name!r})"
                             if name != own else f"option {own!r} given twice")
        out[own] = value
    return out


# ------------------------------------------------------------------ inputs
@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration of a call, then whatever mode the caller had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Local torch RNG state: seeded noise without disturbing the caller's stream."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def default_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM and conductance use when none is named.

    A compact student's last layer (its consolidated map feeding the
    readout); a model naming one in `attribution_layer` (a teacher names the
    stage every ensemble member shares, so the map reflects the whole
    ensemble); else the last Conv2d.
    """
    from compactvision.models.student import CompactStudent

    if isinstance(model, CompactStudent):
        return model.layers[-1]
    named = getattr(model, "attribution_layer", None)
    if isinstance(named, nn.Module):
        return named
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer; pass layer= explicitly")
    return convs[-1]


def resolve_layer(model: nn.Module, layer: nn.Module | str | int | None) -> nn.Module:
    """`layer` as a module, a dotted submodule name, or (for a student) a layer index."""
    if layer is None:
        return default_layer(model)
    if isinstance(layer, nn.Module):
        return layer
    if isinstance(layer, int):
        layers = getattr(model, "layers", None)
        if layers is None:
            raise ValueError(f"{type(model).__name__} has no indexed .layers; name the layer instead")
        return layers[layer]
    return model.get_submodule(layer)


# ------------------------------------------------------------- attribution
def _baseline(x: torch.Tensor, value: Any) -> torch.Tensor:
    if value is None:
        value = GREY
    if isinstance(value, (int, float)):
        return torch.full_like(x, float(value))
    b = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return b.expand_as(x) if b.shape != x.shape else b


def _run_method(model: nn.Module, x: torch.Tensor, neuron: int, method: str, opts: dict[str, Any]) -> torch.Tensor:
    """One batch through one Captum method; returns N x C' x H' x W' attributions."""
    import captum.attr as ca

    steps = int(opts.get("n_steps", 32))
    ibs = opts.get("internal_batch_size", 8)
    baseline = _baseline(x, opts.get("baseline"))
    stdev = float(opts.get("stdev", NOISE_FRACTION))
    samples = int(opts.get("nt_samples", 16))

    if method == "integrated_gradients":
        return ca.IntegratedGradients(model).attribute(x, baselines=baseline, target=neuron, n_steps=steps,
                                                       internal_batch_size=ibs)
    if method == "saliency":
        return ca.Saliency(model).attribute(x, target=neuron, abs=bool(opts.get("abs", True)))
    if method == "input_x_gradient":
        return ca.InputXGradient(model).attribute(x, target=neuron)
    if method == "guided_backprop":
        return ca.GuidedBackprop(model).attribute(x, target=neuron)
    if method == "deeplift":
        return ca.DeepLift(model).attribute(x, baselines=baseline, target=neuron)
    if method == "gradient_shap":
        levels = opts.get("baseline_levels", (0.25, 0.5, 0.75))
        dist = torch.stack([torch.full_like(x[0], float(v)) for v in levels])
        return ca.GradientShap(model).attribute(x, baselines=dist, n_samples=samples, stdevs=stdev, target=neuron)
    if method == "occlusion":
        # Patch of 1/8 of the image side, half-overlapping: 225 forward passes at any size.
        window = int(opts.get("window", max(2, x.shape[-1] // 8)))
        stride = int(opts.get("stride", max(1, window // 2)))
        c = x.shape[1]
        return ca.Occlusion(model).attribute(x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
                                             baselines=baseline, target=neuron,
                                             perturbations_per_eval=int(opts.get("perturbations_per_eval", 32)))
    if method in ("smoothgrad", "vargrad"):
        base = opts.get("base", "saliency")
        inner = {"saliency": ca.Saliency, "integrated_gradients": ca.IntegratedGradients,
                 "input_x_gradient": ca.InputXGradient}[base](model)
        extra = {"n_steps": steps, "internal_batch_size": ibs, "baselines": baseline} if base == "integrated_gradients" else {}
        if base == "saliency":
            extra["abs"] = False if method == "vargrad" else bool(opts.get("abs", True))
        return ca.NoiseTunnel(inner).attribute(x, nt_type=method, nt_samples=samples, stdevs=stdev,
                                               nt_samples_batch_size=opts.get("nt_samples_batch_size", samples),
                                               target=neuron, **extra)
    layer = resolve_layer(model, opts.get("layer"))
    if method == "layer_gradcam":
        cam = ca.LayerGradCam(model, layer).attribute(x, target=neuron, relu_attributions=bool(opts.get("relu", False)))
        return ca.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    if method == "layer_conductance":
        return ca.LayerConductance(model, layer).attribute(x, baselines=baseline, target=neuron, n_steps=steps,
                                                           internal_batch_size=ibs)
    if method == "neuron_conductance":
        channel = opts.get("channel")
        if channel is None:
            # Default: the filter that carries most of the response for these images (largest |layer conductance|).
            flow = ca.LayerConductance(model, layer).attribute(x, baselines=baseline, target=neuron, n_steps=steps,
                                                                internal_batch_size=ibs)
            channel = int(flow.sum(dim=(2, 3)).abs().mean(0).argmax())
        return _channel_conductance(model, layer, int(channel), x, baseline, neuron, steps, ibs)
    raise ValueError(f"unknown attribution method {method!r}; known: {sorted(METHODS)}")


def _channel_conductance(model: nn.Module, layer: nn.Module, channel: int, x: torch.Tensor, baseline: torch.Tensor,
                         neuron: int, steps: int, ibs: int | None) -> torch.Tensor:
    """Integrated gradients of the pixels through one filter (all its positions) of `layer`.

    Captum's NeuronConductance routes through a single unit; summing a
    channel with its callable selector multiplies sums of gradients instead
    of summing products, which is wrong. Masking the gradient at the layer to
    the one channel gives the exact channel conductance: over the pixels it
    sums to that filter's layer conductance.
    """
    import captum.attr as ca

    def keep_channel(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        if out.requires_grad:
            mask = torch.zeros(1, out.shape[1], *([1] * (out.ndim - 2)), dtype=out.dtype, device=out.device)
            mask[0, channel] = 1.0
            out.register_hook(lambda g: g * mask)

    handle = layer.register_forward_hook(keep_channel)
    try:
        return ca.IntegratedGradients(model).attribute(x, baselines=baseline, target=neuron, n_steps=steps,
                                                       internal_batch_size=ibs)
    finally:
        handle.remove()


def attribute_raw(model: nn.Module, images: np.ndarray | torch.Tensor, neuron: int, method: str,
                  batch_size: int = 16, seed: int | None = 0, **options: Any) -> np.ndarray:
    """Attributions before summing channels: N x C x H x W (C = 3 for pixel methods).

    `layer_conductance` returns the layer's own N x C_layer x h x w, which is
    what a per-filter breakdown needs (see `filter_contributions`). Options
    are listed in `OPTIONS`; Captum's names (`baselines=`, `stdevs=`,
    `relu_attributions=`) mean the same, and any other name is a ValueError.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; known: {sorted(METHODS)}")
    options = attribution_options(options)
    device = model_device(model)
    x = as_model_input(images, device)
    out = []
    with eval_mode(model), seeded(seed), warnings.catch_warnings():
        # Captum announces every hook it sets on a ReLU; that is expected here.
        warnings.filterwarnings("ignore", category=UserWarning, module="captum")
        for i in range(0, len(x), batch_size):
            batch = x[i:i + batch_size].clone().requires_grad_(True)
            out.append(_run_method(model, batch, int(neuron), method, options).detach())
    attr = torch.cat(out)
    if not torch.isfinite(attr).all():
        raise FloatingPointError(f"{method} gave non-finite attributions for {type(model).__name__}; "
                                 "a sqrt or division without epsilon in the model is the usual cause")
    return attr.cpu().numpy()


def attribute(model: nn.Module, images: np.ndarray | torch.Tensor, neuron: int, method: str,
              batch_size: int = 16, seed: int | None = 0, **options: Any) -> np.ndarray:
    """Attribution map per image, N x H x W at the input's resolution, channels summed (signed).

    Positive values raise the neuron's response. Layer conductance's map is
    its filters' sum, upsampled to the image. See `attribute_raw` for options.
    """
    x = as_model_input(images)
    maps = attribute_raw(model, x, neuron, method, batch_size=batch_size, seed=seed, **options).sum(axis=1)
    if maps.shape[-2:] != x.shape[-2:]:
        t = torch.from_numpy(maps)[:, None]
        maps = torch.nn.functional.interpolate(t, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0].numpy()
    return maps


def filter_contributions(model: nn.Module, images: np.ndarray | torch.Tensor, neuron: int,
                         layer: nn.Module | str | int | None = None, n_steps: int = 32, **options: Any) -> np.ndarray:
    """How much each filter of `layer` contributes to the response: N x C_layer (layer conductance).

    Conductance summed over space; over the filters it adds up (to the
    path-integral error) to f(image) - f(grey baseline).
    """
    raw = attribute_raw(model, images, neuron, "layer_conductance", layer=layer, n_steps=n_steps, **options)
    return raw.reshape(raw.shape[0], raw.shape[1], -1).sum(-1)


def map_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation between two attribution maps of the same image (teacher vs student).

    Ranks make the score blind to each model's scale and to monotone
    reshaping, so it asks only "do they point at the same pixels in the same
    order". Maps of different sizes are compared after resizing `b` to `a`.
    """
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
        t = torch.from_numpy(b)[None, None]
        b = torch.nn.functional.interpolate(t, size=a.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def response(model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Predicted responses, N x n_neurons, in eval mode without gradients."""
    device = model_device(model)
    x = as_model_input(images, device)
    out = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(x[i:i + batch_size]).float().cpu())
    return torch.cat(out).numpy()

