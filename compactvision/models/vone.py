"""A fixed V1 front end: a Gabor filter bank and the VOneBlock of Dapello et al. (2020).

The bank's orientation, spatial frequency, phase and envelope sizes are drawn
from published macaque V1 histograms (shipped in `resources/v1_distributions.json`
with their citations), so the front end needs no training and its units can be
compared with real V1 cells.

Geometry and sign conventions are those of `compactvision.data.images`:
positions are (x, y) = (column, row); an orientation is the orientation of the
bars, in degrees counter-clockwise on screen from horizontal; spatial frequency
is in cycles per degree, turned into cycles per pixel by the pixels-per-degree
of the images (`image_size / visual_degrees`).

Unlike the reference VOneNet, which runs one convolution per quadrature phase
over every input colour, the bank here runs ONE grouped convolution: each
filter reads a single colour channel (as in VOneNet), so filters are grouped by
channel, and the 90-degree-shifted kernel is computed only for complex cells,
the only ones that use it.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

#: Cowley et al. V4 images are 112 px; taken to span about 5.6 deg (20 px/deg).
DEFAULT_VISUAL_DEGREES = 5.6
#: Pixels between neighbouring V1 units (VOneNet's stride 4).
DEFAULT_STRIDE = 4
PARAMETER_NAMES = ("orientation_deg", "sf_cpd", "phase_deg", "nx", "ny")


@lru_cache(maxsize=1)
def v1_distributions() -> dict[str, Any]:
    """The shipped macaque V1 histograms (bins are edges, counts are cells)."""
    text = resources.files("compactvision.resources").joinpath("v1_distributions.json").read_text()
    return json.loads(text)


def _inverse_cdf(u: np.ndarray, edges: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Map uniforms through a histogram's piecewise-linear inverse CDF (uniform within each bin)."""
    p = np.asarray(counts, dtype=float)
    cdf = np.concatenate([[0.0], np.cumsum(p / p.sum())])
    return np.interp(u, cdf, edges)


def sample_v1_params(n: int, seed: int = 0, sampler: str = "v1") -> dict[str, np.ndarray]:
    """Draw `n` Gabor parameter sets: orientation_deg, sf_cpd, phase_deg, nx, ny.

    `sampler="v1"` follows VOneNet's sampler: orientation from De Valois et al.
    1982, peak spatial frequency (log-uniform within bins) from De Valois,
    Albrecht & Thorell 1982, nx/ny from Ringach 2002's joint histogram, and a
    Gaussian copula linking nx to spatial frequency (Schiller et al. 1976;
    larger envelopes in cycles go with higher frequencies). `sampler="uniform"`
    draws every parameter uniformly (log-uniformly for sf, nx, ny) over the
    same ranges: a control bank with no V1 prior.
    """
    if sampler not in ("v1", "uniform"):
        raise ValueError(f"sampler must be 'v1' or 'uniform', got {sampler!r}")
    d = v1_distributions()
    rng = np.random.default_rng(seed)
    ori_edges = np.asarray(d["orientation_deg"]["bins"], float)
    sf_edges = np.asarray(d["peak_spatial_frequency_cpd"]["bins"], float)
    n_edges = np.asarray(d["envelope_nx_ny_joint"]["bins_log10_edges"], float)
    phase = rng.uniform(0.0, 360.0, n)
    if sampler == "uniform":
        ori = rng.uniform(0.0, 180.0, n)
        sf = 2.0 ** rng.uniform(np.log2(sf_edges[0]), np.log2(sf_edges[-1]), n)
        nx = 10.0 ** rng.uniform(n_edges[0], n_edges[-1], n)
        ny = 10.0 ** rng.uniform(n_edges[0], n_edges[-1], n)
        return {"orientation_deg": ori, "sf_cpd": sf, "phase_deg": phase, "nx": nx, "ny": ny}

    ori = _inverse_cdf(rng.uniform(size=n), ori_edges, d["orientation_deg"]["counts"]) % 180.0
    rho = float(d["sf_nx_correlation"]["value"])
    z = rng.multivariate_normal([0.0, 0.0], [[1.0, rho], [rho, 1.0]], size=n)
    u = stats.norm.cdf(z)
    joint = np.asarray(d["envelope_nx_ny_joint"]["counts"], float)
    log_nx = _inverse_cdf(u[:, 0], n_edges, joint.sum(axis=1))
    sf = 2.0 ** _inverse_cdf(u[:, 1], np.log2(sf_edges), d["peak_spatial_frequency_cpd"]["counts"])
    # ny given nx's bin: the row of the joint histogram that nx fell in.
    row = np.clip(np.searchsorted(n_edges, log_nx, side="right") - 1, 0, len(joint) - 1)
    u_ny = rng.uniform(size=n)
    log_ny = np.empty(n)
    for r in np.unique(row):
        sel = row == r
        log_ny[sel] = _inverse_cdf(u_ny[sel], n_edges, joint[r])
    return {"orientation_deg": ori, "sf_cpd": sf, "phase_deg": phase, "nx": 10.0 ** log_nx, "ny": 10.0 ** log_ny}


def gabor_kernels(orientation_deg: np.ndarray, sf_cpp: np.ndarray, phase_rad: np.ndarray,
                  sigma_x_px: np.ndarray, sigma_y_px: np.ndarray, size: int) -> torch.Tensor:
    """Gabor kernels (F x size x size), unit-integral envelope, in `images.gratings`' convention.

    sigma_x runs across the bars (along the carrier), sigma_y along them, as in
    Ringach's nx = sigma_x * sf and ny = sigma_y * sf.
    """
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    y, x = torch.meshgrid(r, r, indexing="ij")
    t = torch.as_tensor(np.radians(orientation_deg), dtype=torch.float64).view(-1, 1, 1)
    across = x * torch.sin(t) + y * torch.cos(t)
    along = x * torch.cos(t) - y * torch.sin(t)
    sx = torch.as_tensor(sigma_x_px, dtype=torch.float64).view(-1, 1, 1)
    sy = torch.as_tensor(sigma_y_px, dtype=torch.float64).view(-1, 1, 1)
    f = torch.as_tensor(sf_cpp, dtype=torch.float64).view(-1, 1, 1)
    ph = torch.as_tensor(phase_rad, dtype=torch.float64).view(-1, 1, 1)
    envelope = torch.exp(-0.5 * (across**2 / sx**2 + along**2 / sy**2)) / (2 * math.pi * sx * sy)
    return (envelope * torch.cos(2 * math.pi * f * across + ph)).float()


class GaborFilterBank(nn.Module):
    """Fixed Gabor filters, each on one colour channel; both quadrature phases in one conv.

    Forward takes images already normalised to [-1, 1] (N x 3 x H x W) and
    returns (q0, q1): the in-phase response of every filter (N x F x h x w) and
    the 90-degree-shifted response of the filters flagged `quadrature`
    (N x Q x h x w), both from a single grouped `conv2d`.
    """

    def __init__(self, params: dict[str, np.ndarray], quadrature: np.ndarray, image_size: int = 112,
                 visual_degrees: float = DEFAULT_VISUAL_DEGREES, kernel_size: int = 25, stride: int = 4,
                 seed: int = 0, in_channels: int = 3) -> None:
        super().__init__()
        n = len(params["orientation_deg"])
        quadrature = np.asarray(quadrature, bool)
        if quadrature.shape != (n,):
            raise ValueError(f"quadrature must flag each of the {n} filters")
        if kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd so each kernel has a centre pixel")
        self.image_size, self.visual_degrees = int(image_size), float(visual_degrees)
        self.kernel_size, self.stride, self.in_channels = int(kernel_size), int(stride), int(in_channels)
        self.ppd = self.image_size / self.visual_degrees
        rng = np.random.default_rng(seed + 1)
        # Balanced random colour channel per filter, separately for the two cell classes,
        # so every group of the grouped conv has (nearly) the same number of kernels.
        channel = np.empty(n, dtype=np.int64)
        for flag in (False, True):
            idx = np.flatnonzero(quadrature == flag)
            channel[idx] = rng.permutation(np.arange(len(idx)) % in_channels)
        for k in PARAMETER_NAMES:
            self.register_buffer(k, torch.as_tensor(np.asarray(params[k], dtype=np.float64)))
        self.register_buffer("channel", torch.as_tensor(channel))
        self.register_buffer("quadrature", torch.as_tensor(quadrature))

        k0 = self._phase_kernels(0.0)
        k1 = self._phase_kernels(-math.pi / 2)[quadrature]
        rows = [(c, ker) for c, ker in zip(channel, k0)] + [(c, ker) for c, ker in zip(channel[quadrature], k1)]
        per_group = max(1, max(int((np.asarray([r[0] for r in rows]) == c).sum()) for c in range(in_channels)))
        weight = torch.zeros(in_channels * per_group, 1, kernel_size, kernel_size)
        slot = [0] * in_channels
        out_index = []
        for c, ker in rows:
            pos = int(c) * per_group + slot[int(c)]
            slot[int(c)] += 1
            weight[pos, 0] = ker
            out_index.append(pos)
        self.register_buffer("weight", weight)
        self.register_buffer("q0_index", torch.as_tensor(out_index[:n], dtype=torch.long))
        self.register_buffer("q1_index", torch.as_tensor(out_index[n:], dtype=torch.long))

    def _phase_kernels(self, shift: float) -> torch.Tensor:
        sf_cpp = self.sf_cpd.numpy() / self.ppd
        sigma_x = self.nx.numpy() / sf_cpp
        sigma_y = self.ny.numpy() / sf_cpp
        phase = np.radians(self.phase_deg.numpy()) + shift
        return gabor_kernels(self.orientation_deg.numpy(), sf_cpp, phase, sigma_x, sigma_y, self.kernel_size)

    @property
    def n_filters(self) -> int:
        return int(self.orientation_deg.numel())

    @property
    def padding(self) -> int:
        return self.kernel_size // 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.conv2d(x, self.weight.to(x.dtype), stride=self.stride, padding=self.padding, groups=self.in_channels)
        return out.index_select(1, self.q0_index), out.index_select(1, self.q1_index)

    def kernels(self, quadrature_phase: bool = False) -> np.ndarray:
        """The in-phase (or 90-degree-shifted) kernel of every filter, F x k x k, for display."""
        return self._phase_kernels(-math.pi / 2 if quadrature_phase else 0.0).numpy()

    def parameters_table(self) -> dict[str, np.ndarray]:
        """Per-filter parameters in the field's units (plus the derived sizes in degrees)."""
        table = {k: getattr(self, k).numpy().copy() for k in PARAMETER_NAMES}
        table["sigma_x_deg"] = table["nx"] / table["sf_cpd"]
        table["sigma_y_deg"] = table["ny"] / table["sf_cpd"]
        table["channel"] = self.channel.numpy().copy()
        return table


class VOneBlock(nn.Module):
    """Simple and complex V1 cells over a sampled Gabor bank, with optional Poisson-like noise.

    Input N x 3 x H x W in [0, 1] (grey N x 1 x H x W is broadcast); output
    N x (n_simple + n_complex) x H/stride x W/stride, simple cells first.
    Simple cells are k_exc * ReLU(q0); complex cells are
    k_exc * sqrt(q0^2 + q1^2 + eps) / sqrt(2), the eps keeping gradients finite
    where both phases vanish (Captum's black baselines). Noise, when on, adds
    Gaussian noise whose variance grows with the rate (VOneNet's "neuronal"
    mode): s.d. `noise_level` * sqrt(ReLU(rate) + 1). A fixed `noise_seed` makes
    it the same on every call (for display); without one every call draws
    afresh from torch's global generator, as training needs (a frozen draw is
    a fixed perturbation, not noise), and a seeded caller is reproducible.
    """

    def __init__(self, n_simple: int = 256, n_complex: int = 256, image_size: int = 112,
                 visual_degrees: float = DEFAULT_VISUAL_DEGREES, stride: int = DEFAULT_STRIDE, kernel_size: int = 25,
                 k_exc: float = 25.0, noise: str | None = None, noise_seed: int | None = None,
                 noise_level: float = 1.0, sampler: str = "v1", seed: int = 0, eps: float = 1e-6) -> None:
        super().__init__()
        if noise not in (None, "poisson"):
            raise ValueError(f"noise must be 'poisson' or None, got {noise!r}")
        if not k_exc > 0:  # the gain is folded into the kernels, which needs ReLU(k q) = k ReLU(q)
            raise ValueError(f"k_exc must be positive, got {k_exc}")
        if not noise_level >= 0:
            raise ValueError(f"noise_level must be >= 0, got {noise_level}")
        self.noise_level = float(noise_level)
        self.n_simple, self.n_complex = int(n_simple), int(n_complex)
        self.k_exc, self.noise, self.noise_seed, self.eps = float(k_exc), noise, noise_seed, float(eps)
        self.sampler, self.seed = sampler, int(seed)
        params = sample_v1_params(self.n_simple + self.n_complex, seed=seed, sampler=sampler)
        quadrature = np.arange(self.n_simple + self.n_complex) >= self.n_simple
        self.bank = GaborFilterBank(params, quadrature, image_size=image_size, visual_degrees=visual_degrees,
                                    kernel_size=kernel_size, stride=stride, seed=seed)
        self.simple_relu = nn.ReLU()  # its own module so layer hooks can find simple-cell outputs
        b = self.bank
        gain = torch.zeros(b.weight.shape[0])
        gain[b.q0_index[: self.n_simple]] = self.k_exc
        gain[b.q0_index[self.n_simple:]] = self.k_exc / math.sqrt(2.0)
        gain[b.q1_index] = self.k_exc / math.sqrt(2.0)
        self.register_buffer("_slot_gain", gain.view(-1, 1, 1, 1), persistent=False)
        self.register_buffer("_order", torch.cat([b.q0_index, b.q1_index]), persistent=False)
        self.register_buffer("_complex_eps", torch.tensor(self.eps * self.k_exc ** 2 / 2.0), persistent=False)

    @property
    def out_channels(self) -> int:
        return self.n_simple + self.n_complex

    def output_size(self, image_size: int | None = None) -> int:
        s = self.bank.image_size if image_size is None else image_size
        return (s + 2 * self.bank.padding - self.bank.kernel_size) // self.bank.stride + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # The gain and the complex cells' 1/sqrt(2) are folded into the kernels, so the one convolution
        # already yields k_exc*q0 (simple) and k_exc*q/sqrt(2) (complex); one gather then puts the maps in
        # [simple q0 | complex q0 | complex q1] order. Elementwise passes over the large maps cost as much
        # as the convolution itself on a CPU, so every pass saved counts.
        b = self.bank
        slots = F.conv2d(x * 2.0 - 1.0, b.weight.to(x.dtype) * self._slot_gain.to(x.dtype), stride=b.stride,
                         padding=b.padding, groups=b.in_channels)
        maps = slots[:, self._order]  # advanced indexing copies at memory speed; index_select was 1.5x slower
        ns, nc = self.n_simple, self.n_complex
        simple = self.simple_relu(maps[:, :ns])
        energy = torch.addcmul(self._complex_eps.to(x.dtype), maps[:, ns: ns + nc], maps[:, ns: ns + nc])
        complex_ = torch.sqrt(torch.addcmul(energy, maps[:, ns + nc:], maps[:, ns + nc:]))
        out = torch.cat([simple, complex_], dim=1)  # complex = k_exc * sqrt(q0^2 + q1^2 + eps) / sqrt(2)
        if self.noise == "poisson":
            out = out + self.noise_level * torch.sqrt(F.relu(out) + 1.0) * self._noise_like(out)
        return out

    def dense_kernels(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
        """Both phases of every filter as dense RGB kernels, 2 x F x 3 x k x k (zero off the filter's channel)."""
        b = self.bank
        n = b.n_filters
        dense = torch.zeros(2, n, 3, b.kernel_size, b.kernel_size, dtype=dtype, device=device)
        rows = torch.arange(n, device=device)
        channel = b.channel.to(device)
        dense[0, rows, channel] = torch.as_tensor(b.kernels(), dtype=dtype, device=device)
        dense[1, rows, channel] = torch.as_tensor(b.kernels(quadrature_phase=True), dtype=dtype, device=device)
        return dense

    def reference_forward(self, x: torch.Tensor, noise: torch.Tensor | None = None,
                          dense: torch.Tensor | None = None) -> torch.Tensor:
        """The same cells written as VOneNet writes them: one dense convolution per phase, gain applied last.

        Slower than `forward` (every filter sees all three colour channels,
        mostly zeros), and kept as the definition the fast path is checked
        against: `forward` folds the gain into the kernels, gathers the maps in
        one indexing op and fuses the complex energy. `noise`, when given, is
        the standard-normal draw the Poisson-like noise scales; `dense` is
        `dense_kernels()`, passed in to time the convolutions alone.
        """
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        b = self.bank
        if dense is None:
            dense = self.dense_kernels(x.dtype, x.device)
        z = x * 2.0 - 1.0
        q0 = F.conv2d(z, dense[0], stride=b.stride, padding=b.padding)
        q1 = F.conv2d(z, dense[1], stride=b.stride, padding=b.padding)
        ns = self.n_simple
        simple = F.relu(q0[:, :ns])
        complex_ = torch.sqrt(q0[:, ns:] ** 2 + q1[:, ns:] ** 2 + self.eps) / math.sqrt(2.0)
        out = self.k_exc * torch.cat([simple, complex_], dim=1)
        if noise is not None:
            out = out + self.noise_level * torch.sqrt(F.relu(out) + 1.0) * noise
        return out

    def _noise_like(self, out: torch.Tensor) -> torch.Tensor:
        if self.noise_seed is None:
            return torch.randn_like(out)
        gen = torch.Generator(device=out.device).manual_seed(self.noise_seed)
        return torch.randn(out.shape, generator=gen, device=out.device, dtype=out.dtype)

    def parameters_table(self) -> dict[str, np.ndarray]:
        table = self.bank.parameters_table()
        table["cell_type"] = np.where(self.bank.quadrature.numpy(), "complex", "simple")
        return table

    def kernels(self) -> np.ndarray:
        return self.bank.kernels()

    def config(self) -> dict[str, Any]:
        """Constructor arguments, for an architecture JSON that rebuilds this block."""
        b = self.bank
        return {"n_simple": self.n_simple, "n_complex": self.n_complex, "image_size": b.image_size,
                "visual_degrees": b.visual_degrees, "stride": b.stride, "kernel_size": b.kernel_size,
                "k_exc": self.k_exc, "noise": self.noise, "noise_seed": self.noise_seed,
                "noise_level": self.noise_level,
                "sampler": self.sampler, "seed": self.seed, "eps": self.eps}
