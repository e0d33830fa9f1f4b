"""The compact student of Cowley et al. (2026), shrinkable layer by layer.

Layer 0 is a 5x5 conv + BN + ReLU; layers 1-4 are 5x5 depthwise-separable
convs + BN + ReLU, with stride 2 in layers 1 and 2; the readout is one dense
spatial x feature layer. Padding is TensorFlow's "same" (asymmetric for stride
2) so the published Keras models run here bit-for-bit in the same arithmetic.

Every layer's channel count is a field of `StudentArch`, so a pruned network
is just a smaller `CompactStudent`; `select_channels` builds it from a bigger
one. Models take RGB images in [0, 1] (N x 3 x H x W, grey images are
broadcast) and subtract the dataset mean in 0-255 units internally, exactly as
the reference preprocessing does.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from compactvision.compute import model_macs

#: Per-channel RGB mean (0-255) subtracted by the reference models.
COWLEY_MEAN_RGB = (116.222, 109.270, 100.381)
#: Keras' BatchNormalization epsilon, kept so imported models match.
KERAS_BN_EPS = 1e-3


@dataclass(frozen=True)
class StudentArch:
    """Everything needed to rebuild a student: serialised next to its weights."""

    channels: tuple[int, ...] = (100, 100, 100, 100, 100)
    strides: tuple[int, ...] = (1, 2, 2, 1, 1)
    kernel_size: int = 5
    input_size: tuple[int, int] = (112, 112)
    n_outputs: int = 1
    bn_eps: float = KERAS_BN_EPS
    input_mean: tuple[float, ...] = COWLEY_MEAN_RGB
    input_scale: float = 255.0
    output_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.strides):
            raise ValueError("channels and strides must have one entry per layer")
        if min(self.channels) < 1:
            raise ValueError(f"every layer needs at least one channel, got {self.channels}")

    @property
    def readout_hw(self) -> tuple[int, int]:
        h, w = self.input_size
        for s in self.strides:
            h, w = math.ceil(h / s), math.ceil(w / s)
        return h, w

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudentArch":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    @classmethod
    def from_json(cls, s: str) -> "StudentArch":
        return cls.from_dict(json.loads(s))

    def with_channels(self, channels: Sequence[int]) -> "StudentArch":
        d = self.to_dict()
        d["channels"] = list(channels)
        return StudentArch.from_dict(d)


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "same" padding: the extra pixel, if any, goes after (bottom/right)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class StudentLayer(nn.Module):
    """conv (full for layer 0, depthwise + pointwise after) -> BN -> ReLU -> channel mask.

    The mask buffer (all ones by default) lets pruning switch channels off in
    place before the network is physically rebuilt smaller.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, separable: bool, bn_eps: float) -> None:
        super().__init__()
        self.kernel, self.stride, self.separable = kernel, stride, separable
        if separable:
            self.depthwise = nn.Conv2d(c_in, c_in, kernel, stride=stride, groups=c_in, bias=False)
            self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=True)
        else:
            self.depthwise = None
            self.pointwise = nn.Conv2d(c_in, c_out, kernel, stride=stride, bias=True)
        self.bn = nn.BatchNorm2d(c_out, eps=bn_eps)
        self.relu = nn.ReLU()  # never in-place: Captum's hooks need the pre-activation
        self.register_buffer("mask", torch.ones(c_out))

    @property
    def out_channels(self) -> int:
        return self.pointwise.out_channels

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        x = tf_same_pad(x, self.kernel, self.stride)
        if self.depthwise is not None:
            x = self.pointwise(self.depthwise(x))
        else:
            x = self.pointwise(x)
        return self.bn(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.pre_activation(x)) * self.mask.view(1, -1, 1, 1)


class Normalise(nn.Module):
    """[0, 1] RGB (or grey) in, reference-scaled mean-subtracted pixels out."""

    def __init__(self, mean: Sequence[float], scale: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, self.mean.shape[1], -1, -1)
        return x * self.scale - self.mean


class FactorisedReadout(nn.Module):
    """The dense readout held at low rank while it is fitted: per output, `rank` terms of *where* (h x w) times *what* (c).

    A dense 28 x 28 x 64 readout is 50k weights for one neuron, far more than
    the few thousand distillation images a CPU can afford pin down, so a fresh
    student fitted with it learns the teacher poorly (r 0.32 against a
    published model on held-back stream images, against 0.75 with this form at
    rank one, after the same epoch). Factorising where from what (Klindt et al.
    2017) leaves rank * (h*w + c) weights to learn. Rank one cannot say that
    different features are read at different places, which some published
    models do: cut to rank one, the re-compression sample's readouts follow
    their own models at r 0.89-0.99 on the held-out halves (median 0.986), at
    rank two at 0.91-1.00 (`benchmarks/recompress.py --rank-cap`). Yet a shared
    student read out at rank two learnt those neurons no better than at rank
    one, so rank one is the presets' choice. It takes and gives what the
    dense layer does, and `dense()` is that layer exactly, so the exported
    model keeps the reference's architecture.
    """

    def __init__(self, h: int, w: int, c: int, n_outputs: int, rank: int = 1) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"a factorised readout needs rank >= 1, got {rank}")
        self.hw, self.c = h * w, c
        # Each output's terms side by side in one row: at rank one these are the shapes (and the random start)
        # of the rank-one form before it, so a fit checkpointed by an older version resumes.
        # A flat spatial start (every position read equally) and small random features.
        self.spatial = nn.Parameter(torch.full((n_outputs, rank * h * w), 1.0 / (h * w))
                                    * (1 + 0.1 * torch.randn(n_outputs, rank * h * w)))
        self.feature = nn.Parameter(0.1 * torch.randn(n_outputs, rank * c))
        self.bias = nn.Parameter(torch.zeros(n_outputs))

    @property
    def rank(self) -> int:
        return int(self.spatial.shape[1]) // self.hw

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(where, what) as (outputs, rank, h*w) and (outputs, rank, c) views."""
        n = self.bias.shape[0]
        return self.spatial.view(n, self.rank, self.hw), self.feature.view(n, self.rank, self.c)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        x = flat.view(flat.shape[0], self.hw, self.c)
        return torch.einsum("npc,okp,okc->no", x, *self.factors()) + self.bias

    @torch.no_grad()
    def dense(self) -> nn.Linear:
        """The equal dense layer: weight[o, (p, c)] = sum_k where[o, k, p] * what[o, k, c], channel-last as the input."""
        out = nn.Linear(self.hw * self.c, self.bias.shape[0]).to(self.bias.device)
        out.weight.copy_(torch.einsum("okp,okc->opc", *self.factors()).reshape(self.bias.shape[0], -1))
        out.bias.copy_(self.bias)
        return out


class CompactStudent(nn.Module):
    """Input N x 3 x H x W in [0, 1]; output N x n_outputs predicted responses."""

    def __init__(self, arch: StudentArch = StudentArch()) -> None:
        super().__init__()
        self.arch = arch
        self.normalise = Normalise(arch.input_mean, arch.input_scale)
        c_in = len(arch.input_mean)
        layers = []
        for i, (c, s) in enumerate(zip(arch.channels, arch.strides)):
            layers.append(StudentLayer(c_in, c, arch.kernel_size, s, separable=i > 0, bn_eps=arch.bn_eps))
            c_in = c
        self.layers = nn.ModuleList(layers)
        h, w = arch.readout_hw
        # Dense readout over the (H, W, C) map flattened channel-last, the Keras order.
        self.readout = nn.Linear(h * w * c_in, arch.n_outputs)

    def features(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Post-ReLU (masked) activation of every layer up to `upto` (inclusive)."""
        x = self.normalise(x)
        out = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            out.append(x)
            if upto is not None and i == upto:
                break
        return out

    def readout_from(self, feat: torch.Tensor) -> torch.Tensor:
        if feat.shape[-2:] != self.arch.readout_hw:
            raise ValueError(f"input gives a {tuple(feat.shape[-2:])} map; this model was built for "
                             f"{self.arch.input_size} images ({self.arch.readout_hw} readout)")
        return self.readout(feat.permute(0, 2, 3, 1).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalise(x)
        for layer in self.layers:
            x = layer(x)
        return self.readout_from(x)

    def factorise_readout(self, bias: torch.Tensor | float | None = None, rank: int = 1) -> "CompactStudent":
        """Swap in a fresh low-rank readout for fitting (see `FactorisedReadout`); returns self.

        `bias` (one value, or one per output) is where its outputs start: the
        mean label, so the first steps learn the pattern, not the offset.
        """
        h, w = self.arch.readout_hw
        self.readout = FactorisedReadout(h, w, self.arch.channels[-1], self.arch.n_outputs,
                                         rank=rank).to(self.readout.bias.device)
        if bias is not None:
            with torch.no_grad():
                self.readout.bias.copy_(torch.as_tensor(bias, dtype=torch.float32).expand_as(self.readout.bias))
        return self

    def low_rank_readout(self, max_rank: int = 1, tol: float = 1e-4) -> bool:
        """Hold the dense readout as an equal `FactorisedReadout` if it is of rank <= `max_rank` per output.

        Says whether it was. A student whose readout was fitted at rank k stays
        at rank k or less through pruning (dropping channels, rescaling them and
        folding means into the bias keep the sum-of-products form), so its
        fine-tunes can again learn k*(h*w + c) weights instead of h*w*c. A
        readout of higher rank (an imported model's) is left dense; `tol` is the
        largest relative part of any output's weights outside the kept singular
        pairs. The smallest rank that holds it is used.
        """
        if isinstance(self.readout, FactorisedReadout):
            return True
        h, w = self.arch.readout_hw
        c = self.arch.channels[-1]
        with torch.no_grad():
            wt = self.readout.weight.double().view(self.arch.n_outputs, h * w, c)
            u, s, vh = torch.linalg.svd(wt, full_matrices=False)
            energy = s.pow(2)
            rank = next((k for k in range(1, min(max_rank, s.shape[1]) + 1)
                         if not bool((energy[:, k:].sum(1) > tol ** 2 * energy.sum(1)).any())), None)
            if rank is None:
                return False
            fr = FactorisedReadout(h, w, c, self.arch.n_outputs, rank=rank).to(self.readout.bias.device)
            # What is a unit vector, so its entries are on one scale whatever the readout's.
            where, what = fr.factors()
            where.copy_(u[:, :, :rank].transpose(1, 2) * s[:, :rank, None])
            what.copy_(vh[:, :rank, :])
            fr.bias.copy_(self.readout.bias)
        self.readout = fr
        return True

    def dense_readout(self) -> "CompactStudent":
        """Back to the reference's dense readout, computing the same outputs; returns self."""
        if isinstance(self.readout, FactorisedReadout):
            self.readout = self.readout.dense()
        return self

    # -------------------------------------------------------------- accounting
    def n_parameters(self, include_bn_stats: bool = True) -> int:
        """Trainable parameters, plus BN running stats as the published counts do."""
        n = sum(p.numel() for p in self.parameters())
        if include_bn_stats:
            n += sum(layer.bn.running_mean.numel() + layer.bn.running_var.numel() for layer in self.layers)
        return n

    def macs(self) -> int:
        """Multiply-accumulates for one prediction (convs + readout; BN folded), counted by running it once."""
        return model_macs(self, self.arch.input_size)

    def fused(self) -> "CompactStudent":
        """An eval-mode copy with every BN folded into the conv before it.

        Same outputs (to float rounding), fewer ops: the form we time and export
        for inference.
        """
        m = copy.deepcopy(self).eval()
        for layer in m.layers:
            layer.pointwise = fuse_conv_bn_eval(layer.pointwise, layer.bn)
            layer.bn = nn.Identity()
        return m


def select_channels(model: CompactStudent, keep: Sequence[Sequence[int]], outputs: Sequence[int] | None = None) -> CompactStudent:
    """Physically rebuild `model` keeping only the listed channels of each layer.

    `keep[i]` are indices of layer i's output channels; `outputs` optionally
    picks readout units (e.g. one neuron out of a shared student). The result
    computes exactly what `model` computes with every other channel masked to 0.
    """
    arch = model.arch
    if len(keep) != len(model.layers):
        raise ValueError(f"need a keep-list per layer ({len(model.layers)}), got {len(keep)}")
    keep = [torch.as_tensor(sorted(set(int(j) for j in k)), dtype=torch.long) for k in keep]
    outputs_t = torch.arange(arch.n_outputs) if outputs is None else torch.as_tensor(list(outputs), dtype=torch.long)
    names = arch.output_names
    new_arch = StudentArch.from_dict({**arch.to_dict(), "channels": [len(k) for k in keep], "n_outputs": len(outputs_t),
                                      "output_names": [names[i] for i in outputs_t.tolist()] if names else []})
    device = model.readout.bias.device  # the copy is made where the model is (a pruning cut on a GPU stays there)
    keep = [k.to(device) for k in keep]
    outputs_t = outputs_t.to(device)
    new = CompactStudent(new_arch).to(device)
    prev = torch.arange(len(arch.input_mean), device=device)
    with torch.no_grad():
        new.normalise.mean.copy_(model.normalise.mean)
        for old_l, new_l, k in zip(model.layers, new.layers, keep):
            if old_l.depthwise is not None:
                new_l.depthwise.weight.copy_(old_l.depthwise.weight[prev])
                new_l.pointwise.weight.copy_(old_l.pointwise.weight[k][:, prev])
            else:
                new_l.pointwise.weight.copy_(old_l.pointwise.weight[k][:, prev])
            new_l.pointwise.bias.copy_(old_l.pointwise.bias[k])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new_l.bn, name).copy_(getattr(old_l.bn, name)[k])
            new_l.bn.num_batches_tracked.copy_(old_l.bn.num_batches_tracked)
            new_l.mask.copy_(old_l.mask[k])
            prev = k
        h, w = arch.readout_hw
        c_last = arch.channels[-1]
        wr = model.readout.weight.view(arch.n_outputs, h, w, c_last)
        new.readout.weight.copy_(wr[outputs_t][..., prev].reshape(len(outputs_t), -1))
        new.readout.bias.copy_(model.readout.bias[outputs_t])
    return new.train(model.training)
