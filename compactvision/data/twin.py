"""The digital twin: a simulated V1/V4 population whose computations are known.

Real recordings cannot ship with the project, so the built-in data come from
eight cell types with textbook computations. Because every neuron's
receptive field and tuning are known, later stages can check whether a
fitted model recovered the real computation (preferred orientation, dot
size, ...), which no recording allows.

Each neuron computes a *drive* `u >= 0` from the image's luminance contrast
(or colour), then a smooth threshold nonlinearity turns it into a rate in
spike counts per presentation::

    x = gain * softplus(beta * (u / drive_scale - threshold)) / beta
    rate = baseline + max_rate * x / (x + max_rate)

`drive_scale` and `gain` are calibrated once on natural crops so the drive
is in comparable units across types and the mean rate is a few spikes, as in
the Cowley et al. V4 recordings; `max_rate` saturates strong stimuli (a
full-contrast optimal grating) at a few tens of spikes without flattening any
tuning curve (the map is strictly increasing). Trials are over-dispersed
Poisson counts (a gamma-distributed gain per trial, as in cortex where the
Fano factor is above 1), so split-half reliabilities resemble the recordings'.

Cell types (the drives; all filters are DC-free so mean luminance is ignored):

* ``v1_simple``: half-wave rectified Gabor at the RF.
* ``v1_complex``: quadrature energy sqrt(even**2 + odd**2) of a Gabor pair.
* ``end_stopped``: a complex centre minus two complex end zones along the bar
  axis: responds to short bars, less to long ones.
* ``curvature``: conjunction (geometric mean) of two complex subunits placed
  on an arc, oriented along its tangents: a curve/corner detector.
* ``dot_detector``: rectified difference-of-Gaussians (size-tuned centre
  minus surround), max-pooled over a Gaussian window: position tolerant.
* ``texture``: Gabor energy at one orientation pooled over a large window,
  divided by the energy pooled over four orientations (divisive normalisation).
* ``centre_surround``: rectified DoG at a fixed position (ON or OFF).
* ``colour_opponent``: rectified Gaussian-weighted colour contrast
  (red-green or blue-yellow), blind to achromatic luminance.

Geometry follows `compactvision.data.images`: positions are (x, y) =
(column, row) pixels; orientations are bar orientations in degrees
counter-clockwise from horizontal; spatial frequency in cycles per pixel.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compactvision.data.dataset import TEST_INDICES, NeuralDataset, Session
from compactvision.data.images import arc_points, mixed_images, natural_crops

CELL_TYPES: tuple[str, ...] = ("v1_simple", "v1_complex", "end_stopped", "curvature",
                               "dot_detector", "texture", "centre_surround", "colour_opponent")
#: The cell types computed in one stage from the image (a filter, a pair of filters, or a difference of
#: Gaussians, then the output nonlinearity); the others combine several such stages.
ONE_STAGE_TYPES: tuple[str, ...] = ("v1_simple", "v1_complex", "centre_surround", "colour_opponent")

#: Sharpness of the softplus threshold, in units of the calibrated drive.
BETA = 4.0
#: Keeps sqrt and fractional powers differentiable at zero contrast (energy units).
EPS = 1e-6
#: Calibration crops: fixed, so a twin's rates do not depend on which data set it labels.
CALIBRATION_SEED = 1_000_003
CALIBRATION_IMAGES = 256
#: Opponent colour axes: RGB weights summing to zero, so grey and white give no drive.
COLOUR_AXES = {"red_green": (1.0, -1.0, 0.0), "blue_yellow": (-0.5, -0.5, 1.0)}
#: Texture cells' highest spatial frequency (cpp): keeps their maps exact at half resolution.
TEXTURE_MAX_SF = 0.09
#: Share of synthetic images in `make_twin_dataset` (the rest are natural crops).
SYNTHETIC_MIX = {"natural": 0.8, "pink_noise": 0.05, "dead_leaves": 0.05, "gratings": 0.05, "dots": 0.05}


# ------------------------------------------------------------------ geometry
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(size, dtype=np.float64)
    return np.meshgrid(r, r, indexing="xy")


def _axes(size: int, cx: float, cy: float, ori_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along and across bars of orientation `ori_deg` through (cx, cy)."""
    x, y = _grid(size)
    t = math.radians(ori_deg)
    along = (x - cx) * math.cos(t) - (y - cy) * math.sin(t)
    across = (x - cx) * math.sin(t) + (y - cy) * math.cos(t)
    return along, across


def gabor_pair(size: int, cx: float, cy: float, ori_deg: float, sf_cpp: float,
               sigma_across: float, sigma_along: float) -> tuple[np.ndarray, np.ndarray]:
    """Even and odd Gabor filters (size x size), DC-free, scaled so a full-amplitude
    optimal grating gives a quadrature amplitude of 1 (so energy ~ contrast**2)."""
    along, across = _axes(size, cx, cy, ori_deg)
    env = np.exp(-0.5 * ((along / sigma_along) ** 2 + (across / sigma_across) ** 2))
    env *= 2.0 / env.sum()
    carrier = 2 * math.pi * sf_cpp * across
    even = env * np.cos(carrier)
    even -= env * (even.sum() / env.sum())
    return even, env * np.sin(carrier)


def gaussian(size: int, cx: float, cy: float, sigma: float) -> np.ndarray:
    """Isotropic Gaussian weights summing to 1."""
    x, y = _grid(size)
    g = np.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / sigma**2)
    return g / g.sum()


def dog_sigmas(diameter_px: float, surround_ratio: float, surround_weight: float) -> tuple[float, float]:
    """Centre and surround sigmas of a DoG whose response to a centred disc peaks at `diameter_px`.

    For a DoG c(r) - w s(r) (unit-mass Gaussians, sigmas sc and k*sc) the
    response to a disc of radius R is (1 - exp(-R^2/2sc^2)) - w(1 - exp(-R^2/2k^2sc^2)),
    maximal at R^2 = 2 ln(k^2/w) sc^2 k^2 / (k^2 - 1).
    """
    k, w, radius = surround_ratio, surround_weight, diameter_px / 2
    sc = radius / math.sqrt(2 * math.log(k * k / w) * k * k / (k * k - 1))
    return sc, k * sc


def end_stopped_preferred_length(sigma_along: float, end_offset: float, inhibition: float) -> float:
    """Bar length (px) maximising centre - w * (two end zones) for Gaussian along-profiles."""
    lengths = np.linspace(0.25, 4 * (end_offset + 3 * sigma_along), 4000)
    half, r2s = lengths / 2, math.sqrt(2) * sigma_along
    from scipy.special import erf

    centre = erf(half / r2s)
    end = 0.5 * (erf((half - end_offset) / r2s) + erf((half + end_offset) / r2s))
    return float(lengths[np.argmax(centre - 2 * inhibition * end)])


# -------------------------------------------------------------- the groups
class _CellGroup(nn.Module):
    """All neurons of one cell type; `forward(contrast, rgb)` gives their drives (N x n)."""

    def __init__(self, index: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("index", torch.as_tensor(list(index), dtype=torch.long), persistent=False)

    @staticmethod
    def _stack(filters: list[np.ndarray]) -> torch.Tensor:
        return torch.as_tensor(np.stack([f.ravel() for f in filters]), dtype=torch.float32)


def _energy(q: torch.Tensor) -> torch.Tensor:
    """Quadrature amplitude of interleaved (even, odd) outputs: N x 2k -> N x k."""
    even, odd = q[:, 0::2], q[:, 1::2]
    return torch.sqrt(even * even + odd * odd + EPS)


class _FilterCells(_CellGroup):
    """Cells whose drive starts with one product of the image and a fixed filter bank (filters of each cell in turn)."""

    def __init__(self, index: Sequence[int], records: list[dict], size: int) -> None:
        super().__init__(index)
        filters = [f for r in records for f in self.filters_of(r["params"], r["rf_center"], size)]
        self.register_buffer("filters", self._stack(filters), persistent=False)

    def filters_of(self, p: dict[str, float], center: Sequence[float], size: int) -> list[np.ndarray]:
        """One cell's filters, in the order its `forward` reads them."""
        raise NotImplementedError

    def _filtered(self, image: torch.Tensor) -> torch.Tensor:
        return image.flatten(1) @ self.filters.T


class SimpleCells(_FilterCells):
    def filters_of(self, p: dict[str, float], center: Sequence[float], size: int) -> list[np.ndarray]:
        even, odd = gabor_pair(size, *center, p["orientation_deg"], p["sf_cpp"], p["sigma_across_px"], p["sigma_along_px"])
        return [math.cos(p["phase_rad"]) * even - math.sin(p["phase_rad"]) * odd]

    def forward(self, contrast: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        return F.relu(self._filtered(contrast))


class ComplexCells(_FilterCells):
    def filters_of(self, p: dict[str, float], center: Sequence[float], size: int) -> list[np.ndarray]:
        return list(gabor_pair(size, *center, p["orientation_deg"], p["sf_cpp"], p["sigma_across_px"], p["sigma_along_px"]))

    def forward(self, contrast: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        return _energy(self._filtered(contrast))


class EndStoppedCells(_FilterCells):
    def __init__(self, index: Sequence[int], records: list[dict], size: int) -> None:
        super().__init__(index, records, size)
        weights = [r["params"]["end_inhibition"] for r in records]
        self.register_buffer("inhibition", torch.tensor(weights, dtype=torch.float32), persistent=False)

    def filters_of(self, p: dict[str, float], center: Sequence[float], size: int) -> list[np.ndarray]:
        (cx, cy), t = center, math.radians(p["orientation_deg"])
        out: list[np.ndarray] = []
        for offset in (0.0, -p["end_offset_px"], p["end_offset_px"]):  # centre, end, end
            out += gabor_pair(size, cx + offset * math.cos(t), cy - offset * math.sin(t), p["orientation_deg"],
                              p["sf_cpp"], p["sigma_across_px"], p["sigma_along_px"])
        return out

    def forward(self, contrast: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        a = _energy(self._filtered(contrast)).unflatten(1, (-1, 3))  # centre, end, end
        return F.relu(a[..., 0] - self.inhibition * (a[..., 1] + a[..., 2]))


class CurvatureCells(_FilterCells):
    def filters_of(self, p: dict[str, float], center: Sequence[float], size: int) -> list[np.ndarray]:
        s0 = p["subunit_arc_px"]
        pts, tangents = arc_points(p["curvature_per_px"], center, p["orientation_deg"], np.array([-s0, s0]))
        out: list[np.ndarray] = []
        for (x, y), ori in zip(pts, tangents):
            out += gabor_pair(size, x, y, ori, p["sf_cpp"], p["sigma_across_px"], p["sigma_along_px"])
        return out

    def forward(self, contrast: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        a = _energy(self._filtered(contrast)).unflatten(1, (-1, 2))
        # Geometric mean of the two subunit amplitudes: both must be driven (a conjunction).
        return torch.sqrt(a[..., 0] * a[..., 1])


class CentreSurroundCells(_FilterCells):
    def filters_of(self, p: dict[str, float], center: Sequence[float], size: int) -> list[np.ndarray]:
        sc, ss = dog_sigmas(p["diameter_px"], p["surround_ratio"], p["surround_weight"])
        dog = gaussian(size, *center, sc) - p["surround_weight"] * gaussian(size, *center, ss)
        return [p["polarity"] * dog]

    def forward(self, contrast: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        return F.relu(self._filtered(contrast))


class ColourOpponentCells(_FilterCells):
    def filters_of(self, p: dict[str, float], center: Sequence[float], size: int) -> list[np.ndarray]:
        g = gaussian(size, *center, p["sigma_px"])
        return [np.stack([p["weight_r"] * g, p["weight_g"] * g, p["weight_b"] * g])]

    def forward(self, contrast: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        return F.relu(self._filtered(rgb))


def _fft_size(size: int) -> int:
    """Zero-padded FFT size (a multiple of 16): enough that wrap-around only touches map
    positions near the border, where the pooling windows (centred near the middle) are ~0."""
    return -(-(size + max(16, size // 8)) // 16) * 16


class _PooledCells(_CellGroup):
    """Cells that filter the whole image (by FFT) and pool the map over a window."""

    def __init__(self, index: Sequence[int], size: int, n_maps: int) -> None:
        super().__init__(index)
        self.size, self.pad = size, _fft_size(size)
        # Keep each chunk's maps to ~32 MB however many cells there are (cache-friendly).
        self.chunk = max(1, (1 << 22) // (n_maps * self.pad * self.pad))

    def _spectrum(self, filt: np.ndarray) -> np.ndarray:
        """FFT of a filter drawn centred in a size x size image, moved to the padded origin."""
        big = np.zeros((self.pad, self.pad), dtype=filt.dtype)
        big[: self.size, : self.size] = filt
        c = (self.size - 1) // 2
        return np.fft.fft2(np.roll(big, (-c, -c), axis=(0, 1)))

    def _padded(self, contrast: torch.Tensor) -> torch.Tensor:
        return F.pad(contrast[:, 0], (0, self.pad - self.size, 0, self.pad - self.size))

    def forward(self, contrast: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._pool(part) for part in contrast.split(self.chunk)])


class DotDetectorCells(_PooledCells):
    def __init__(self, index: Sequence[int], records: list[dict], size: int) -> None:
        super().__init__(index, size, len(records))
        c = (size - 1) / 2
        spectra, envelopes = [], []
        for r in records:
            p = r["params"]
            sc, ss = dog_sigmas(p["diameter_px"], p["surround_ratio"], 1.0)
            spectrum = self._spectrum(gaussian(size, c, c, sc) - gaussian(size, c, c, ss))
            spectra.append(p["polarity"] * spectrum[:, : self.pad // 2 + 1])  # real filter: half spectrum
            g = gaussian(size, *r["rf_center"], p["pool_sigma_px"])
            envelopes.append(g / g.max())
        self.register_buffer("spectra", torch.as_tensor(np.stack(spectra), dtype=torch.complex64), persistent=False)
        self.register_buffer("envelopes", torch.as_tensor(np.stack(envelopes), dtype=torch.float32), persistent=False)

    def _pool(self, contrast: torch.Tensor) -> torch.Tensor:
        maps = torch.fft.irfft2(torch.fft.rfft2(self._padded(contrast))[:, None] * self.spectra, s=(self.pad, self.pad))
        m = F.relu(maps[..., : self.size, : self.size]) * self.envelopes
        # Max over position: the same dot anywhere in the window drives the cell equally (up to the envelope).
        return m.flatten(2).amax(dim=2)


class TextureCells(_PooledCells):
    """Energy maps are evaluated on every second pixel: texture cells' Gabors are low
    frequency (<= TEXTURE_MAX_SF cpp), so their outputs are band-limited below the
    half-resolution Nyquist limit and the stride-2 samples are exact. The pooling
    window is wide and smooth, so the pooled energy over those samples equals the
    full-resolution sum. That makes texture cells 4x cheaper."""

    N_ORIENTATIONS = 4

    def __init__(self, index: Sequence[int], records: list[dict], size: int) -> None:
        super().__init__(index, size, self.N_ORIENTATIONS * len(records))
        half = self.pad // 4
        self.register_buffer("band", torch.as_tensor(np.r_[0:half, self.pad - half:self.pad]), persistent=False)
        c = (size - 1) / 2
        spectra, pools, sigma_n = [], [], []
        for r in records:
            p = r["params"]
            for k in range(self.N_ORIENTATIONS):  # k = 0 is the preferred orientation
                even, odd = gabor_pair(size, c, c, p["orientation_deg"] + 180.0 * k / self.N_ORIENTATIONS,
                                       p["sf_cpp"], p["sigma_across_px"], p["sigma_along_px"])
                spectra.append(self._spectrum(even + 1j * odd)[np.ix_(self.band.numpy(), self.band.numpy())])
            g = gaussian(size, *r["rf_center"], p["pool_sigma_px"])[::2, ::2]
            pools.append(g / g.sum())
            sigma_n.append(p["normalisation_constant"])
        self.register_buffer("spectra", torch.as_tensor(np.stack(spectra), dtype=torch.complex64), persistent=False)
        self.register_buffer("pools", torch.as_tensor(np.stack(pools), dtype=torch.float32), persistent=False)
        self.register_buffer("sigma_n", torch.tensor(sigma_n, dtype=torch.float32), persistent=False)

    def _pool(self, contrast: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.fft2(self._padded(contrast))[:, self.band][:, :, self.band]
        n = (self.size + 1) // 2
        q = torch.fft.ifft2(spectrum[:, None] * self.spectra)[..., :n, :n]  # 4 x the outputs at even pixels
        energy = (q.real**2 + q.imag**2).unflatten(1, (-1, self.N_ORIENTATIONS)) / 16.0  # N x cells x orient x h x w
        pooled = (energy * self.pools[:, None]).sum(dim=(-2, -1))
        return pooled[..., 0] / (self.sigma_n + pooled.mean(dim=-1))


_GROUPS: dict[str, type[_CellGroup]] = {
    "v1_simple": SimpleCells, "v1_complex": ComplexCells, "end_stopped": EndStoppedCells,
    "curvature": CurvatureCells, "dot_detector": DotDetectorCells, "texture": TextureCells,
    "centre_surround": CentreSurroundCells, "colour_opponent": ColourOpponentCells,
}


# ----------------------------------------------------------------- sampling
def _sample_record(i: int, cell_type: str, rng: np.random.Generator, size: int) -> dict[str, Any]:
    """One neuron's ground truth: type, RF centre and every parameter its computation needs."""
    s = size / 112.0  # lengths are drawn for 112 px images and scaled with the image
    c = (size - 1) / 2
    r, a = 0.1 * size * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
    center = [c + r * math.cos(a), c + r * math.sin(a)]
    p: dict[str, float] = {"baseline": rng.uniform(0.2, 1.0), "mean_rate": rng.uniform(2.0, 6.0),
                           "max_rate": rng.uniform(20.0, 40.0), "threshold": rng.uniform(0.0, 0.5),
                           "gain_noise_shape": rng.uniform(1.5, 4.0)}
    ori = size_px = None

    def gabor(sf_lo: float, sf_hi: float, along: tuple[float, float]) -> None:
        p["orientation_deg"] = rng.uniform(0.0, 180.0)
        p["sf_cpp"] = math.exp(rng.uniform(math.log(sf_lo), math.log(sf_hi))) / s
        p["sigma_across_px"] = rng.uniform(0.35, 0.5) / p["sf_cpp"]
        p["sigma_along_px"] = p["sigma_across_px"] * rng.uniform(*along)

    if cell_type in ("v1_simple", "v1_complex"):
        gabor(0.06, 0.16, (0.9, 1.5))
        if cell_type == "v1_simple":
            p["phase_rad"] = rng.uniform(0, 2 * math.pi)
        ori = p["orientation_deg"]
    elif cell_type == "end_stopped":
        gabor(0.08, 0.16, (0.7, 1.0))
        p["end_offset_px"] = p["sigma_along_px"] * rng.uniform(2.2, 3.0)
        p["end_inhibition"] = rng.uniform(0.6, 0.9)
        ori = p["orientation_deg"]
        size_px = end_stopped_preferred_length(p["sigma_along_px"], p["end_offset_px"], p["end_inhibition"])
    elif cell_type == "curvature":
        gabor(0.1, 0.18, (0.8, 1.2))
        p["curvature_per_px"] = math.copysign(math.exp(rng.uniform(math.log(1 / 24), math.log(1 / 10))) / s,
                                              rng.choice([-1.0, 1.0]))
        p["subunit_arc_px"] = rng.uniform(6.0, 9.0) * s
        ori = p["orientation_deg"]
    elif cell_type == "dot_detector":
        p.update(diameter_px=rng.uniform(5.0, 16.0) * s, surround_ratio=rng.uniform(2.5, 3.5),
                 polarity=float(rng.choice([-1.0, 1.0])), pool_sigma_px=rng.uniform(8.0, 14.0) * s)
        size_px = p["diameter_px"]
    elif cell_type == "texture":
        gabor(0.04, TEXTURE_MAX_SF, (0.9, 1.5))
        p.update(pool_sigma_px=rng.uniform(10.0, 18.0) * s, normalisation_constant=rng.uniform(0.003, 0.02))
        ori = p["orientation_deg"]
    elif cell_type == "centre_surround":
        p.update(diameter_px=rng.uniform(5.0, 16.0) * s, surround_ratio=rng.uniform(2.5, 3.5),
                 surround_weight=rng.uniform(0.6, 0.95), polarity=float(rng.choice([-1.0, 1.0])))
        size_px = p["diameter_px"]
    elif cell_type == "colour_opponent":
        axis = str(rng.choice(sorted(COLOUR_AXES)))
        sign = float(rng.choice([-1.0, 1.0]))
        wr, wg, wb = (sign * w + 0.0 for w in COLOUR_AXES[axis])  # + 0.0: no negative zeros in the record
        p.update(sigma_px=rng.uniform(3.0, 8.0) * s, weight_r=wr, weight_g=wg, weight_b=wb)
    else:
        raise ValueError(f"unknown cell type {cell_type!r}; known: {list(CELL_TYPES)}")
    return {"neuron_id": f"twin_{i:03d}", "cell_type": cell_type, "rf_center": center,
            "preferred_orientation_deg": ori, "preferred_size_px": size_px,
            "params": {k: float(v) for k, v in p.items()}}


# ---------------------------------------------------------------- the twin
class DigitalTwin(nn.Module):
    """A simulated population with known computations; differentiable rates.

    `DigitalTwin(n_neurons, seed)` draws a new population (cell types cycle
    over `cell_types`, default all of `CELL_TYPES`); pass `ground_truth`
    (records from `ground_truth()`) instead to rebuild an existing one
    exactly. `forward` takes N x 3 x H x W (or N x 1 x H x W) in [0, 1] and
    returns noise-free rates, N x n_neurons; images of another size are
    resampled to `image_size`.
    """

    def __init__(self, n_neurons: int, seed: int = 0, image_size: int = 112,
                 cell_types: Sequence[str] | None = None, ground_truth: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        if n_neurons < 1:
            raise ValueError(f"need at least one neuron, got {n_neurons}")
        self.image_size = int(image_size)
        if ground_truth is None:
            types = list(cell_types or CELL_TYPES)
            rng = np.random.default_rng(seed)
            records = [_sample_record(i, types[i % len(types)], rng, self.image_size) for i in range(n_neurons)]
        else:
            if len(ground_truth) != n_neurons:
                raise ValueError(f"{len(ground_truth)} ground-truth records for {n_neurons} neurons")
            records = [_copy_record(r) for r in ground_truth]
        self._records = records
        self.groups = nn.ModuleList()
        for cell_type, group in _GROUPS.items():
            idx = [i for i, r in enumerate(records) if r["cell_type"] == cell_type]
            if idx:
                self.groups.append(group(idx, [records[i] for i in idx], self.image_size))
        unknown = {r["cell_type"] for r in records} - set(_GROUPS)
        if unknown:
            raise ValueError(f"unknown cell types {sorted(unknown)}; known: {list(CELL_TYPES)}")
        order = torch.cat([g.index for g in self.groups])
        self.register_buffer("_order", torch.argsort(order), persistent=False)
        if any("gain" not in r["params"] for r in records):
            self._calibrate()
        self._set_output_buffers()

    # -- description
    @property
    def n_neurons(self) -> int:
        return len(self._records)

    @property
    def neuron_ids(self) -> list[str]:
        return [r["neuron_id"] for r in self._records]

    def ground_truth(self) -> list[dict[str, Any]]:
        """One JSON-ready record per neuron: neuron_id, cell_type, rf_center (x, y px),
        preferred_orientation_deg (or None), preferred_size_px (or None), params (floats)."""
        return [_copy_record(r) for r in self._records]

    # -- computation
    def drives(self, x: torch.Tensor) -> torch.Tensor:
        """Each neuron's drive u >= 0 before calibration and output nonlinearity (N x n_neurons)."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected N x 3 x H x W (or N x 1 x H x W) images, got shape {tuple(x.shape)}")
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        luminance = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        contrast = luminance - 0.5
        u = torch.cat([g(contrast, x) for g in self.groups], dim=1)
        return u[:, self._order]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = BETA * (self.drives(x) / self.drive_scale - self.threshold)
        unsaturated = self.gain * F.softplus(z) / BETA
        return self.baseline + self.max_rate * unsaturated / (unsaturated + self.max_rate)

    @torch.no_grad()
    def rates(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Noise-free rates (n_neurons x n_images, float64) for uint8 N x H x W x C images."""
        return self._batched(self.forward, images, batch_size)

    def trials(self, images: np.ndarray, repeats: int, seed: int = 0) -> np.ndarray:
        """Spike counts, n_neurons x n_images x repeats (float64): Poisson with a per-trial
        gamma gain of mean 1 and shape k (`gain_noise_shape`), so variance = rate + rate**2 / k."""
        rng = np.random.default_rng(seed)
        lam = self.rates(images)[..., None]
        k = np.array([r["params"]["gain_noise_shape"] for r in self._records])[:, None, None]
        gain = rng.gamma(k, 1.0 / k, size=lam.shape[:2] + (int(repeats),))
        return rng.poisson(lam * gain).astype(np.float64)

    # -- internals
    def _batched(self, fn: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 N x H x W x C images, got {images.dtype} with shape {images.shape}")
        device = self.drive_scale.device if hasattr(self, "drive_scale") else torch.device("cpu")
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255.0
            out.append(fn(x).double().cpu())
        return torch.cat(out).T.numpy() if out else np.zeros((self.n_neurons, 0))

    @torch.no_grad()
    def _calibrate(self) -> None:
        """Set drive_scale (drive s.d.) and gain (for the target mean rate) on fixed natural crops."""
        from scipy.optimize import brentq

        crops = natural_crops(CALIBRATION_IMAGES, self.image_size, seed=CALIBRATION_SEED)
        u = self._batched(self.drives, crops, 64)
        for r, ui in zip(self._records, u):
            p = r["params"]
            p["drive_scale"] = float(max(ui.std(), 1e-9))
            s = np.logaddexp(0.0, BETA * (ui / p["drive_scale"] - p["threshold"])) / BETA
            target, top = p["mean_rate"] - p["baseline"], p["max_rate"]

            def excess(log_gain: float) -> float:
                x = math.exp(log_gain) * s
                return float(np.mean(top * x / (x + top))) - target

            p["gain"] = math.exp(brentq(excess, -30.0, 30.0, xtol=1e-12))

    def _set_output_buffers(self) -> None:
        for name in ("drive_scale", "threshold", "baseline", "gain", "max_rate"):
            self.register_buffer(name, torch.tensor([r["params"][name] for r in self._records], dtype=torch.float32),
                                 persistent=False)


def _copy_record(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: r[k] for k in ("neuron_id", "cell_type", "preferred_orientation_deg", "preferred_size_px")}
    out["rf_center"] = [float(v) for v in r["rf_center"]]
    out["params"] = {k: float(v) for k, v in r["params"].items()}
    return out


def twin_from_ground_truth(records: list[dict[str, Any]], image_size: int = 112) -> DigitalTwin:
    """Rebuild the exact twin described by `records` (e.g. read back from a saved .npz)."""
    return DigitalTwin(len(records), image_size=image_size, ground_truth=records)


def make_twin_dataset(n_neurons: int, n_images: int, n_repeats: int, seed: int = 0,
                      image_size: int = 112, test_images: int | None = None) -> NeuralDataset:
    """A one-session ("twin") dataset: mostly natural crops plus some synthetic images, Poisson trials.

    By default every image is shown `n_repeats` times. With `test_images`, the
    experiment is designed as system-identification recordings usually are:
    that many images, drawn at random, are shown `n_repeats` times and make the
    session's test set (`TEST_INDICES`), and every other image is shown once.
    For a fixed number of trials, more distinct images teach a model more than
    repeats of fewer. With the demo's 12,000 trials, the demo teacher fit to
    3,000 images x 4 followed the noise-free truth at a median r of 0.790 and
    0.786 (twins of seeds 0 and 1), fit to 300 test images x 4 plus 10,800
    shown once at 0.866 and 0.879; its V1 simple cells went from 0.39-0.51 to
    0.76-0.91 (`benchmarks/teacher.py --demo-variants "demo teacher on"`).
    The dataset's `ground_truth` holds every neuron's record, and its metadata
    the seed and image size, so a saved copy describes and rebuilds itself.
    """
    twin = DigitalTwin(n_neurons, seed=seed, image_size=image_size)
    images, family = mixed_images(n_images, image_size, seed=seed + 1, mix=SYNTHETIC_MIX)
    responses = twin.trials(images, n_repeats, seed=seed + 2)
    session_meta: dict[str, Any] = {"source": "twin", "image_family": family}
    if test_images is not None:
        if not 1 <= test_images <= n_images - 2:
            raise ValueError(f"test_images must be in [1, {n_images - 2}] for {n_images} images, got {test_images}")
        test = np.sort(np.random.default_rng(seed + 3).choice(n_images, test_images, replace=False))
        once = np.setdiff1d(np.arange(n_images), test)
        responses[:, once, 1:] = np.nan
        session_meta[TEST_INDICES] = test.tolist()
    session = Session("twin", images, responses, twin.neuron_ids, session_meta)
    meta = {"source": "twin", "seed": int(seed), "image_size": int(image_size), "n_repeats": int(n_repeats),
            "test_images": test_images}
    return NeuralDataset([session], meta, twin.ground_truth())
