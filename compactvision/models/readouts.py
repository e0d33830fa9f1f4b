"""Readouts: from a feature map (N x C x H x W) to one response per neuron (N x n_neurons).

One base class with one regularisation hook, as in neuralpredictors, so the
teacher, the student and any new readout compose the same way: a training loop
adds `readout.regularizer()` to its loss without knowing which readout it is.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


#: How a readout's weighted sum becomes its prediction (see `Readout.respond`).
OUTPUTS = ("linear", "softplus")
#: softplus(0): a softplus output's floor starts at minus this, so zero drive predicts zero (the z-scores' mean).
SOFTPLUS_AT_ZERO = math.log(2.0)


class Readout(nn.Module):
    """Base: maps features N x C x H x W to N x n_neurons and can say how to penalise itself."""

    n_neurons: int
    #: Name of the penalty strength a held-out fit chooses on held-back images, and the values it tries.
    tuned_penalty: str
    penalty_grid: tuple[float, ...]

    def regularizer(self, reduction: str = "sum") -> torch.Tensor:
        """Penalty on the readout's weights; `reduction` is "sum" or "mean" over neurons."""
        raise NotImplementedError

    def warm_start(self, x: torch.Tensor, z: torch.Tensor, valid: torch.Tensor) -> None:
        """Start from the data before gradient steps (features x: N x C x H x W; z-scored targets z, valid: N x n).

        The default keeps the random initialisation.
        """

    def _set_output(self, output: str, n_neurons: int) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        # a fresh readout predicts the mean, as a linear one does
        self.floor = nn.Parameter(torch.full((n_neurons,), -SOFTPLUS_AT_ZERO)) if output == "softplus" else None

    def respond(self, drive: torch.Tensor) -> torch.Tensor:
        """The prediction (z-scored) from the weighted sum of features, `drive` (N x n_neurons).

        "linear" returns the sum itself. "softplus" returns softplus(drive) plus a
        learned per-neuron floor: a smooth threshold whose place is the readout's
        bias and whose gain is its weights' scale, as the system-identification
        models of V1 and V4 end (Klindt et al. 2017; Lurz et al. 2021). A
        neuron that fires only past a threshold on a difference of inputs
        (an end-stopped or centre-surround cell: centre minus what suppresses
        it) is then one readout of features that carry both terms; a linear
        sum of rectified features would have to find that rectification in the
        shared channels, or predict negative responses where it fires none.
        On the demo twin that was not what held its teacher back: with this
        output it followed the truth at r 0.785 against 0.790 with the linear
        sum (`benchmarks/teacher.py --demo-variants softplus`, seed 0).
        """
        if self.floor is None:
            return drive
        return F.softplus(drive) + self.floor.to(drive.dtype)

    @staticmethod
    def _reduce(per_neuron: torch.Tensor, reduction: str) -> torch.Tensor:
        if reduction == "sum":
            return per_neuron.sum()
        if reduction == "mean":
            return per_neuron.mean()
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


class FactorisedReadout(Readout):
    """Per neuron: a spatial mask (where it looks) times feature weights (what it looks for), plus a bias.

    response_i = sum_{c,h,w} x[c,h,w] * mask_i[h,w] * feature_i[c] + bias_i,
    the paper's 1x1 "mixing" conv followed by a spatial depthwise pool. Far
    fewer parameters than a dense readout (H*W + C per neuron instead of
    H*W*C), which is what lets one trunk serve hundreds of neurons. The
    regulariser is an L1 penalty on the mask (sparse, localised receptive
    fields) and on the feature weights, scaled by `mask_l1` and `feature_l1`.
    """

    #: The penalty a held-out fit tunes, and the strengths it tries (see `readout_fit`).
    tuned_penalty = "mask_l1"
    penalty_grid = (0.3, 1.0, 3.0, 10.0)

    def __init__(self, in_channels: int, height: int, width: int, n_neurons: int,
                 mask_l1: float = 1e-3, feature_l1: float = 1e-3, init_std: float = 0.01,
                 output: str = "linear") -> None:
        super().__init__()
        self._set_output(output, n_neurons)
        self.in_channels, self.height, self.width, self.n_neurons = in_channels, height, width, n_neurons
        self.mask_l1, self.feature_l1 = float(mask_l1), float(feature_l1)
        self.mask = nn.Parameter(torch.randn(n_neurons, height, width) * init_std + 1.0 / (height * width))
        self.features = nn.Parameter(torch.randn(n_neurons, in_channels) * (1.0 / in_channels) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(n_neurons))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.einsum("nchw,khw->nkc", x, self.mask)  # each neuron's spatial pool of every channel
        return self.respond((pooled * self.features).sum(-1) + self.bias)

    def regularizer(self, reduction: str = "sum") -> torch.Tensor:
        per_neuron = self.mask_l1 * self.mask.abs().flatten(1).sum(1) + self.feature_l1 * self.features.abs().sum(1)
        return self._reduce(per_neuron, reduction)


class GaussianReadout(Readout):
    """Per neuron: one learned position on the feature map, read out by a feature vector, plus a bias.

    Lurz et al. (2021): each neuron looks at a single point (mu, in the map's
    [-1, 1] coordinates) and weighs the channels there. During training the
    point is drawn from a Gaussian around mu whose width sigma is learned too,
    which lets a neuron search the map; at evaluation it reads at mu itself.
    Two position numbers instead of an H x W mask per neuron is what makes it
    data-efficient when a session has a few hundred images. The regulariser is
    an L1 penalty on the feature weights (`feature_l1`).
    """

    #: The penalty a held-out fit tunes, and the strengths it tries (see `readout_fit`).
    tuned_penalty = "feature_l1"
    penalty_grid = (0.003, 0.01, 0.03, 0.1)

    def __init__(self, in_channels: int, height: int, width: int, n_neurons: int,
                 feature_l1: float = 1e-3, init_sigma: float = 0.5, init_mu_range: float = 0.1,
                 output: str = "linear") -> None:
        super().__init__()
        self._set_output(output, n_neurons)
        self.in_channels, self.height, self.width, self.n_neurons = in_channels, height, width, n_neurons
        self.feature_l1 = float(feature_l1)
        self.mu = nn.Parameter(torch.empty(n_neurons, 2).uniform_(-init_mu_range, init_mu_range))
        self.sigma = nn.Parameter(torch.full((n_neurons, 1), float(init_sigma)))
        self.features = nn.Parameter(torch.randn(n_neurons, in_channels) * (1.0 / in_channels) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(n_neurons))

    def positions(self, batch: int) -> torch.Tensor:
        """Where each neuron reads, batch x n_neurons x 1 x 2: sampled around mu in training, mu at evaluation."""
        mu = self.mu.clamp(-1.0, 1.0)
        if self.training:
            grid = mu + self.sigma.abs() * torch.randn(batch, self.n_neurons, 2, device=mu.device, dtype=mu.dtype)
            return grid.clamp(-1.0, 1.0)[:, :, None, :]
        return mu[None, :, None, :].expand(batch, -1, -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.positions(x.shape[0]).to(x.dtype)
        sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)  # N x C x n x 1
        return self.respond(torch.einsum("bck,kc->bk", sampled[..., 0], self.features.to(x.dtype)) + self.bias)

    def regularizer(self, reduction: str = "sum") -> torch.Tensor:
        return self._reduce(self.feature_l1 * self.features.abs().sum(1), reduction)

    @torch.no_grad()
    def warm_start(self, x: torch.Tensor, z: torch.Tensor, valid: torch.Tensor, ridge: float = 0.1) -> None:
        """Put each neuron where the channels best predict it, with those weights: a search gradients cannot do.

        A position only moves by the local slope of a bilinear lookup, so a
        neuron that starts at the centre never finds a receptive field near
        the edge. Here every map location gets a ridge regression of the
        neuron's training responses on its channels (`ridge` times the mean
        channel variance); the neuron starts at the location with the least
        error, with that regression's weights and intercept, and a narrow
        search width.
        """
        n, c, h, w = x.shape
        design = x.permute(2, 3, 0, 1).reshape(h * w, n, c).float()
        centre = design.mean(1, keepdim=True)
        design = design - centre
        target = torch.where(valid, z, torch.zeros_like(z)).float()
        gram = design.transpose(1, 2) @ design
        penalty = ridge * gram.diagonal(dim1=1, dim2=2).mean(1)[:, None, None] * torch.eye(c, device=x.device)
        beta = torch.linalg.solve(gram + penalty + 1e-6 * torch.eye(c, device=x.device), design.transpose(1, 2) @ target)
        intercept = target.sum(0) / valid.sum(0).clamp_min(1)
        error = (((design @ beta + intercept - target) ** 2) * valid).sum(1)  # locations x neurons
        best = error.argmin(0)
        rows, cols = best // w, best % w
        self.mu.copy_(torch.stack([cols / max(w - 1, 1), rows / max(h - 1, 1)], dim=1) * 2 - 1)
        self.sigma.fill_(1.0 / max(h, w))
        k = torch.arange(self.n_neurons, device=x.device)
        weights = beta[best, :, k]  # neurons x channels
        # A softplus output starts on its slope of 1/2 about zero (the z-scores' mean): twice the regression
        # there and the floor at -log 2 give the regression's predictions near the mean.
        gain = 1.0 if self.floor is None else 2.0
        self.features.copy_(gain * weights)
        self.bias.copy_(gain * (intercept - (centre[best, 0, :] * weights).sum(1)))
        if self.floor is not None:
            self.floor.fill_(-SOFTPLUS_AT_ZERO)


class RidgeHead(nn.Module):
    """A linear map solved in closed form, not by gradient steps: z-score the regressors, then weights and bias.

    Everything is a buffer, saved with the teacher's weights: the regressors'
    z-scoring (`mean`, `inv_std`), the weights and the bias (in the session
    readout's z-scored units). `readout_fit` solves them by ridge regression on
    a held-out session's first half, each neuron's penalty chosen by
    cross-validation. `blend` is the weight the teacher gives the head's
    prediction beside what it blends it with.
    """

    def __init__(self, n_in: int, n_neurons: int, blend: float) -> None:
        super().__init__()
        if not 0.0 <= blend <= 1.0:
            raise ValueError(f"blend must be in [0, 1], got {blend}")
        self.n_neurons, self.blend = int(n_neurons), float(blend)
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("inv_std", torch.ones(n_in))
        self.register_buffer("weight", torch.zeros(n_neurons, n_in))
        self.register_buffer("bias", torch.zeros(n_neurons))

    def regress(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction from regressors `x` (N x n_in)."""
        z = (x - self.mean.to(x.dtype)) * self.inv_std.to(x.dtype)
        return z @ self.weight.to(x.dtype).T + self.bias.to(x.dtype)

    def set_solution(self, mean: np.ndarray, inv_std: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> None:
        """Install a solved regression (weight: neurons x regressors)."""
        with torch.no_grad():
            for name, value in (("mean", mean), ("inv_std", inv_std), ("weight", weight), ("bias", bias)):
                buffer = getattr(self, name)
                buffer.copy_(torch.as_tensor(np.asarray(value), dtype=torch.float32, device=buffer.device))

    def n_weights(self) -> int:
        return sum(b.numel() for b in self.buffers())


class PooledLinearProbe(RidgeHead):
    """A ridge regression of each neuron on the maps average-pooled to `pool` x `pool`: the usual linear probe.

    `readout_fit.fit_probe` solves it on a held-out session's first half. That
    session's readout is fitted on a few hundred images; the factorised readout
    and this probe err differently (one sparse mask against a smooth pooled
    map), so the teacher averages them, the probe with weight `blend` (the
    teacher's `heldout_probe_weight`).
    """

    def __init__(self, in_channels: int, pool: int, n_neurons: int, blend: float = 0.5) -> None:
        if pool < 1:
            raise ValueError(f"pool must be at least 1, got {pool}")
        super().__init__(in_channels * pool * pool, n_neurons, blend)
        self.pool = int(pool)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The regressors: the maps pooled to pool x pool, flattened (N x C * pool * pool)."""
        return F.adaptive_avg_pool2d(x, self.pool).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regress(self.pooled(x))


class NeuronBasis(RidgeHead):
    """Each neuron of a held-out session as a ridge combination of the trunk's own neurons' predictions.

    The regressors are the teacher's z-scored predictions of every neuron of
    the `sources` sessions (those the trunk was trained on): a few hundred
    V4-like features the trunk learnt to predict, rather than the thousands of
    raw map values a probe weighs, which is what a few hundred images can
    fit. `readout_fit.fit_basis` solves it; the teacher blends it into the
    session's prediction with weight `blend` (its `heldout_basis_weight`).
    """

    def __init__(self, sources: list[str], n_in: int, n_neurons: int, blend: float = 0.5) -> None:
        if not sources:
            raise ValueError("a neuron basis needs at least one source session")
        super().__init__(n_in, n_neurons, blend)
        self.sources = [str(s) for s in sources]

    def forward(self, source_z: torch.Tensor) -> torch.Tensor:
        return self.regress(source_z)
