"""Per-neuron filter pruning of a compact student, from the last layer to the first.

For each layer we measure how much each filter's *contribution* to what comes
next varies over images (and positions): for the last layer, its contribution
to the neuron's response; for earlier layers, its contribution to the next
layer's pre-activation. Filters are kept in order of decreasing variance until
the kept set explains at least `threshold` (default 90%) of that output's
variance, with never fewer than `min_filters`. A dropped filter's *mean*
contribution is folded into the next layer's bias, so removing a filter that is
nearly constant costs nothing. The network is then physically rebuilt smaller
(`select_channels`) and fine-tuned, and every step is recorded as a point on
the pruning path (parameters vs accuracy).

This follows the procedure of Cowley et al. (2026); the variance-explained
criterion is evaluated on the rebuilt network's real output, not on a proxy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from compactvision.models.student import CompactStudent, select_channels


@dataclass(frozen=True)
class PruneConfig:
    """`threshold`: fraction of the output variance the kept filters must explain."""

    threshold: float = 0.9
    min_filters: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.min_filters < 1:
            raise ValueError("min_filters must be >= 1")


@dataclass
class PruneStep:
    """One point on the pruning path."""

    layer: int | None            # None for the unpruned starting point
    channels: list[int]          # filters per layer after this step
    n_parameters: int
    explained: float | None      # variance explained by the kept filters of `layer`
    accuracy: float | None = None  # caller-defined (e.g. r against the teacher's labels)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _contributions_last(student: CompactStudent, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-filter contribution of the last layer to the single output: (N, C) and the bias term."""
    h, w = student.arch.readout_hw
    c = feats.shape[1]
    wr = student.readout.weight.view(student.arch.n_outputs, h, w, c)[0]  # (H, W, C)
    contrib = torch.einsum("nchw,hwc->nc", feats, wr)
    return contrib, student.readout.bias[0]


def _contributions_next(student: CompactStudent, layer: int, feats: torch.Tensor) -> torch.Tensor:
    """Each filter of `layer` pushed through layer+1's depthwise conv: (N, C, H', W').

    Layer+1 is separable, so filter j reaches the next pre-activation only as
    pointwise[:, j] * depthwise_j(act_j): linear, hence separable per filter.
    """
    from compactvision.models.student import tf_same_pad

    nxt = student.layers[layer + 1]
    return nxt.depthwise(tf_same_pad(feats, nxt.kernel, nxt.stride))


def _explained(full: torch.Tensor, approx: torch.Tensor) -> float:
    resid = ((full - approx) ** 2).sum()
    total = ((full - full.mean(dim=0, keepdim=True)) ** 2).sum().clamp_min(1e-12)
    return float(1.0 - resid / total)


def _pick(order: torch.Tensor, explained_for: Callable[[torch.Tensor], float], threshold: float, min_filters: int) -> tuple[torch.Tensor, float]:
    """Smallest top-k (by contribution variance) whose kept set explains >= threshold."""
    n = len(order)
    lo, hi = min(min_filters, n), n
    best = explained_for(order[:hi])
    if lo >= hi:
        return order[:hi], best
    # Explained variance grows with k for variance-ranked filters; bisect on it.
    while lo < hi:
        mid = (lo + hi) // 2
        if explained_for(order[:mid]) >= threshold:
            hi = mid
        else:
            lo = mid + 1
    return order[:lo], explained_for(order[:lo])


@torch.no_grad()
def prune_layer(student: CompactStudent, probe: torch.Tensor, layer: int, config: PruneConfig) -> tuple[CompactStudent, float]:
    """Return a rebuilt student with `layer` pruned, and the variance its kept filters explain.

    `student` must have one output (a per-neuron model). The input model is
    left untouched.
    """
    if student.arch.n_outputs != 1:
        raise ValueError("prune a per-neuron student (n_outputs == 1)")
    student = select_channels(student, [range(c) for c in student.arch.channels])  # private copy
    student.eval()
    feats = student.features(probe, upto=layer)[-1]
    last = layer == len(student.layers) - 1
    if last:
        contrib, bias = _contributions_last(student, feats)          # (N, C)
        full = contrib.sum(1) + bias
        var = contrib.var(dim=0)
        mean = contrib.mean(dim=0)

        def explained_for(kept: torch.Tensor) -> float:
            dropped_mean = mean.sum() - mean[kept].sum()
            return _explained(full[:, None], (contrib[:, kept].sum(1) + bias + dropped_mean)[:, None])
    else:
        nxt = student.layers[layer + 1]
        d = _contributions_next(student, layer, feats)                # (N, C, H', W')
        pw = nxt.pointwise.weight[:, :, 0, 0]                         # (C_next, C)
        scale = nxt.bn.weight / torch.sqrt(nxt.bn.running_var + nxt.bn.eps)
        var = d.var(dim=(0, 2, 3)) * ((scale[:, None] * pw) ** 2).sum(0)
        d_mean = d.mean(dim=(0, 2, 3))
        full = torch.einsum("kc,nchw->nkhw", pw, d)

        def explained_for(kept: torch.Tensor) -> float:
            mask = torch.zeros(d.shape[1], dtype=torch.bool)
            mask[kept] = True
            approx = torch.einsum("kc,nchw->nkhw", pw[:, mask], d[:, mask])
            approx = approx + (pw[:, ~mask] @ d_mean[~mask])[None, :, None, None]
            # Variance explained per next-layer channel, weighted by BN's gain.
            return _explained((full * scale.view(1, -1, 1, 1)).flatten(2).transpose(1, 2).reshape(-1, full.shape[1]),
                              (approx * scale.view(1, -1, 1, 1)).flatten(2).transpose(1, 2).reshape(-1, full.shape[1]))

    order = torch.argsort(var, descending=True)
    kept, explained = _pick(order, explained_for, config.threshold, config.min_filters)
    dropped = torch.ones(len(var), dtype=torch.bool)
    dropped[kept] = False
    # Fold the dropped filters' mean contribution into the next bias.
    if last:
        student.readout.bias.add_(mean[dropped].sum())
    else:
        student.layers[layer + 1].pointwise.bias.add_(pw[:, dropped] @ d_mean[dropped])
    keep = [list(range(c)) for c in student.arch.channels]
    keep[layer] = sorted(kept.tolist())
    return select_channels(student, keep), explained


def prune_neuron(student: CompactStudent, probe: torch.Tensor, config: PruneConfig = PruneConfig(),
                 finetune: Callable[[CompactStudent, int], CompactStudent] | None = None,
                 evaluate: Callable[[CompactStudent], float] | None = None,
                 on_step: Callable[[PruneStep], None] | None = None) -> tuple[CompactStudent, list[PruneStep]]:
    """Prune every layer of a one-output student, last to first.

    `finetune(model, layer)` retrains after each layer is cut (the paper
    retrains the rebuilt network); `evaluate(model)` scores each step for the
    pruning path. Both are optional so the procedure can be tested on its own.
    """
    path = [PruneStep(None, list(student.arch.channels), student.n_parameters(), None,
                      evaluate(student) if evaluate else None)]
    if on_step:
        on_step(path[0])
    for layer in reversed(range(len(student.layers))):
        student, explained = prune_layer(student, probe, layer, config)
        if finetune is not None:
            student = finetune(student, layer)
        step = PruneStep(layer, list(student.arch.channels), student.n_parameters(), explained,
                         evaluate(student) if evaluate else None)
        path.append(step)
        if on_step:
            on_step(step)
    return student, path
