"""Readouts: from a feature map (N x C x H x W) to one response per neuron (N x n_neurons).

One base class with one regularisation hook, as in neuralpredictors, so the
teacher, the student and any new readout compose the same way: a training loop
adds `readout.regularizer()` to its loss without knowing which readout it is.
"""
from __future__ import annotations

import torch
from torch import nn


class Readout(nn.Module):
    """Base: maps features N x C x H x W to N x n_neurons and can say how to penalise itself."""

    n_neurons: int

    def regularizer(self, reduction: str = "sum") -> torch.Tensor:
        """Penalty on the readout's weights; `reduction` is "sum" or "mean" over neurons."""
        raise NotImplementedError

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

    def __init__(self, in_channels: int, height: int, width: int, n_neurons: int,
                 mask_l1: float = 1e-3, feature_l1: float = 1e-3, init_std: float = 0.01) -> None:
        super().__init__()
        self.in_channels, self.height, self.width, self.n_neurons = in_channels, height, width, n_neurons
        self.mask_l1, self.feature_l1 = float(mask_l1), float(feature_l1)
        self.mask = nn.Parameter(torch.randn(n_neurons, height, width) * init_std + 1.0 / (height * width))
        self.features = nn.Parameter(torch.randn(n_neurons, in_channels) * (1.0 / in_channels) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(n_neurons))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.einsum("nchw,khw->nkc", x, self.mask)  # each neuron's spatial pool of every channel
        return (pooled * self.features).sum(-1) + self.bias

    def regularizer(self, reduction: str = "sum") -> torch.Tensor:
        per_neuron = self.mask_l1 * self.mask.abs().flatten(1).sum(1) + self.feature_l1 * self.features.abs().sum(1)
        return self._reduce(per_neuron, reduction)
