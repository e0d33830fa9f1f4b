"""Per-neuron filter pruning of a compact student, from the last layer to the first.

Every layer is cut the same way: rank its filters by how much they matter,
then binary-search the smallest top-k set that still passes the criterion,
with never fewer than `min_filters`. A dropped filter is not just zeroed: its
*mean* contribution to what comes next is folded into the next bias, so a
filter that is nearly constant over images costs nothing to remove. The
network is then physically rebuilt smaller (`select_channels`), the caller
fine-tunes it, and the step is recorded as a point on the pruning path.

Two criteria decide how far a layer may be cut:

* ``"output"`` (the default) judges every cut on the neuron's own response:
  the rebuilt network's r² against the teacher's labels on the probe images
  must stay at least `threshold` times the unpruned student's. Filters are
  ranked by a first-order (Taylor) estimate of how much replacing each one by
  its mean would change the response. This is what lets a per-neuron model
  *consolidate*: filters that carry other neurons' features, or that the
  next layer could reconstruct but the neuron never reads, are removed.
* ``"reconstruction"`` is the reference formulation of Cowley et al. (2026):
  the last layer as above (its readout-weighted contributions, scored by r²
  against the teacher), each earlier layer by how much of the *next layer's*
  pre-activation the kept filters explain, ranked by (depthwise output
  variance) x (squared pointwise weights). It keeps every filter some kept
  downstream filter uses, whether or not the neuron needs it, and is kept so
  the two can be compared side by side (`benchmarks/compression.py`).

Everything is computed in chunks of the probe set, so memory stays bounded
at the paper's 112 px and 100 filters.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from compactvision.metrics import pearson_r
from compactvision.models.student import CompactStudent, select_channels, tf_same_pad

CRITERIA = ("output", "reconstruction")
ORDERS = ("last_first", "readout_then_first")
CHUNK = 128  # probe images per forward pass


@dataclass(frozen=True)
class PruneConfig:
    """`threshold`: what fraction of the unpruned accuracy (r² vs teacher) a cut may keep at the least.

    `rounds`: how many times every layer is visited. A layer is cut while the
    layers after it are still wide, and each of them reads a little of every
    filter; once they have consolidated (and been fine-tuned), a second visit
    finds that most of the early filters feed nothing the neuron keeps. Later
    rounds record a step only where they cut something.
    """

    threshold: float = 0.9
    min_filters: int = 3
    criterion: str = "output"
    order: str = "readout_then_first"
    rounds: int = 2

    @staticmethod
    def layer_order(order: str, n_layers: int) -> list[int]:
        """The order in which layers are cut.

        "last_first" is the reference's. "readout_then_first" cuts the last layer
        (exact: it feeds a linear readout), then the full-resolution first layer,
        then the rest in order: the output criterion does not need the reference's
        order, and the costly wide first layer stops slowing every later
        fine-tune.
        """
        last = n_layers - 1
        if order == "last_first":
            return list(range(last, -1, -1))
        return [last, *range(last)]

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.min_filters < 1:
            raise ValueError("min_filters must be >= 1")
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.order != "last_first" and self.criterion != "output":
            raise ValueError("only the output criterion can cut layers out of the reference's order")


@dataclass
class PruneStep:
    """One point on the pruning path: the model's size and cost after `layer` was cut, and its scores."""

    layer: int | None            # None for the unpruned starting point
    channels: list[int]          # filters per layer after this step
    n_parameters: int
    macs: int
    explained: float | None      # the criterion's value for the kept filters of `layer`
    accuracy: float | None = None  # r against the teacher's labels on validation images
    scores: dict[str, float] = field(default_factory=dict)  # any further scores (r vs held-out data, ...)
    round: int = 0               # which visit of the layers made this cut

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------- probe passes
def _chunks(probe: torch.Tensor):
    for i in range(0, len(probe), CHUNK):
        yield probe[i:i + CHUNK]


def _layer_input(student: CompactStudent, x: torch.Tensor, layer: int) -> torch.Tensor:
    """What `student.layers[layer]` receives for images `x`."""
    h = student.normalise(x)
    for l in student.layers[:layer]:
        h = l(h)
    return h


def _run_from(student: CompactStudent, h: torch.Tensor, layer: int) -> torch.Tensor:
    """The response (N,) from layer `layer`'s input onwards."""
    for l in student.layers[layer:]:
        h = l(h)
    return student.readout_from(h)[:, 0]


@torch.no_grad()
def responses(student: CompactStudent, probe: torch.Tensor) -> np.ndarray:
    """The one-output student's response to every probe image, in chunks."""
    return torch.cat([student(x)[:, 0] for x in _chunks(probe)]).double().numpy()


def r_squared(pred: np.ndarray, target: np.ndarray) -> float:
    """Squared Pearson r, the reference's accuracy for pruning decisions (0 where undefined)."""
    r = float(pearson_r(np.asarray(pred, np.float64), np.asarray(target, np.float64))[0])
    return r * r if np.isfinite(r) else 0.0


# ------------------------------------------------------------ cutting a layer
@torch.no_grad()
def _fold_means(student: CompactStudent, probe: torch.Tensor, layer: int) -> torch.Tensor:
    """Each filter of `layer`'s mean contribution to the next stage (per next unit), (C_next, C).

    For the last layer that stage is the readout (one unit); otherwise it is
    the next layer's pointwise pre-activation, which filter j reaches only as
    pointwise[:, j] * depthwise_j(activation_j): linear, hence separable.
    """
    if layer == len(student.layers) - 1:
        return _readout_contributions(student, probe).mean(dim=0, keepdim=True)
    nxt = student.layers[layer + 1]
    total, n = None, 0
    for x in _chunks(probe):
        a = student.layers[layer](_layer_input(student, x, layer))
        d = nxt.depthwise(tf_same_pad(a, nxt.kernel, nxt.stride)).mean(dim=(2, 3)).sum(0)  # (C,)
        m = nxt.pointwise.weight[:, :, 0, 0] * d[None]
        total = m if total is None else total + m
        n += len(x)
    return total / n


def cut_layer(student: CompactStudent, probe: torch.Tensor, layer: int, kept: torch.Tensor | list[int],
              fold: torch.Tensor | None = None) -> CompactStudent:
    """A rebuilt copy of `student` keeping only filters `kept` of `layer`, dropped means folded in.

    `fold` is `_fold_means(student, probe, layer)`, passed in when several cuts
    of the same layer are tried. The input model is left untouched.
    """
    fold = _fold_means(student, probe, layer) if fold is None else fold
    kept = sorted({int(j) for j in kept})
    dropped = torch.ones(fold.shape[1], dtype=torch.bool)
    dropped[kept] = False
    keep = [list(range(c)) for c in student.arch.channels]
    keep[layer] = kept
    small = select_channels(student, keep)
    with torch.no_grad():
        shift = fold[:, dropped].sum(1)
        if layer == len(student.layers) - 1:
            small.readout.bias.add_(shift)
        else:
            small.layers[layer + 1].pointwise.bias.add_(shift)
    return small.eval()


# ---------------------------------------------------------- ranking filters
def _readout_contributions(student: CompactStudent, probe: torch.Tensor) -> torch.Tensor:
    """Each last-layer filter's readout-weighted contribution to the response, (N, C)."""
    h, w = student.arch.readout_hw
    wr = student.readout.weight.view(student.arch.n_outputs, h, w, -1)[0]
    last = len(student.layers) - 1
    with torch.no_grad():
        return torch.cat([torch.einsum("nchw,hwc->nc", student.layers[last](_layer_input(student, x, last)), wr)
                          for x in _chunks(probe)])


def taylor_scores(student: CompactStudent, probe: torch.Tensor, layer: int) -> torch.Tensor:
    """First-order estimate of how much replacing each filter of `layer` by its mean moves the response.

    With g = d(response)/d(activation), replacing activation a_c by its mean m_c
    changes the response by about sum_hw g_c (m_c - a_c). Its mean square over
    the probe images is the score (Molchanov et al. 2019, with mean rather than
    zero replacement, matching the bias fold). For the last layer the response
    is linear in the activations and the score is the exact variance of each
    filter's contribution.
    """
    if layer == len(student.layers) - 1:
        return _readout_contributions(student, probe).var(dim=0)
    ga, g1, a_sum, n_pos = [], [], 0.0, 0
    for x in _chunks(probe):
        with torch.no_grad():
            h = _layer_input(student, x, layer)
        a = student.layers[layer](h).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_run_from(student, a, layer + 1).sum(), a)
        ga.append((g * a).sum(dim=(2, 3)).detach())
        g1.append(g.sum(dim=(2, 3)).detach())
        a_sum = a_sum + a.detach().sum(dim=(0, 2, 3))
        n_pos += a.shape[0] * a.shape[2] * a.shape[3]
    mean = a_sum / n_pos
    change = torch.cat(g1) * mean[None] - torch.cat(ga)  # (N, C)
    return (change ** 2).mean(dim=0)


def _smallest_passing(order: torch.Tensor, passes: Callable[[int], bool], min_filters: int) -> int:
    """Smallest k >= min_filters with passes(k), by bisection (the criterion grows with k, near enough)."""
    lo, hi = min(min_filters, len(order)), len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


# ------------------------------------------------------------------ criteria
def _prune_on_output(student: CompactStudent, probe: torch.Tensor, labels: np.ndarray, layer: int,
                     config: PruneConfig, floor: float) -> tuple[CompactStudent, float]:
    if layer == len(student.layers) - 1:
        # The readout is linear: a kept set's response is a sum of cached contributions, no forward pass.
        contrib = _readout_contributions(student, probe)
        fold = contrib.mean(dim=0, keepdim=True)
        contrib = contrib.double()
        base = float(student.readout.bias.detach()[0]) + float(fold.sum())
        order = torch.argsort(contrib.var(dim=0), descending=True)

        def r2_of(k: int) -> float:
            kept = order[:k]
            return r_squared((contrib[:, kept].sum(1) + base - float(fold[0, kept].sum())).numpy(), labels)
    else:
        fold = _fold_means(student, probe, layer)
        order = torch.argsort(taylor_scores(student, probe, layer), descending=True)
        tried: dict[int, float] = {}

        def r2_of(k: int) -> float:
            if k not in tried:
                tried[k] = r_squared(responses(cut_layer(student, probe, layer, order[:k], fold), probe), labels)
            return tried[k]

    # The budget is spent once the model is below the floor; from then on a cut may not cost anything.
    bar = min(floor, r2_of(len(order)))
    k = _smallest_passing(order, lambda k: r2_of(k) >= bar - 1e-9, config.min_filters)
    return cut_layer(student, probe, layer, order[:k], fold), r2_of(k)


@torch.no_grad()
def _reconstruction_explained(student: CompactStudent, probe: torch.Tensor, layer: int
                              ) -> tuple[torch.Tensor, Callable[[torch.Tensor], float]]:
    """The reference's ranking of `layer`'s filters and its variance-explained criterion for a kept set."""
    nxt = student.layers[layer + 1]
    pw = nxt.pointwise.weight[:, :, 0, 0].detach()                          # (C_next, C)
    scale = (nxt.bn.weight / torch.sqrt(nxt.bn.running_var + nxt.bn.eps)).detach()
    d = torch.cat([nxt.depthwise(tf_same_pad(student.layers[layer](_layer_input(student, x, layer)), nxt.kernel,
                                             nxt.stride)) for x in _chunks(probe)])  # (N, C, H', W')
    rank = d.var(dim=(0, 2, 3)) * ((scale[:, None] * pw) ** 2).sum(0)
    d_mean = d.mean(dim=(0, 2, 3))
    full = torch.einsum("kc,nchw->nkhw", pw, d) * scale.view(1, -1, 1, 1)
    full = full.permute(0, 2, 3, 1).reshape(-1, pw.shape[0])
    total = ((full - full.mean(dim=0, keepdim=True)) ** 2).sum().clamp_min(1e-12)

    def explained(kept: torch.Tensor) -> float:
        mask = torch.zeros(d.shape[1], dtype=torch.bool)
        mask[kept] = True
        approx = torch.einsum("kc,nchw->nkhw", pw[:, mask], d[:, mask]) + (pw[:, ~mask] @ d_mean[~mask])[None, :, None, None]
        approx = (approx * scale.view(1, -1, 1, 1)).permute(0, 2, 3, 1).reshape(-1, pw.shape[0])
        return float(1.0 - ((full - approx) ** 2).sum() / total)

    return torch.argsort(rank, descending=True), explained


def _prune_on_reconstruction(student: CompactStudent, probe: torch.Tensor, labels: np.ndarray, layer: int,
                             config: PruneConfig, floor: float) -> tuple[CompactStudent, float]:
    if layer == len(student.layers) - 1:
        return _prune_on_output(student, probe, labels, layer, config, floor)
    order, explained = _reconstruction_explained(student, probe, layer)
    k = _smallest_passing(order, lambda k: explained(order[:k]) >= config.threshold, config.min_filters)
    return cut_layer(student, probe, layer, order[:k]), explained(order[:k])


def prune_layer(student: CompactStudent, probe: torch.Tensor, labels: np.ndarray, layer: int,
                config: PruneConfig, floor: float | None = None) -> tuple[CompactStudent, float]:
    """A rebuilt student with `layer` pruned, and the criterion's value for what it kept.

    `labels` are the teacher's responses to the probe images; `floor` is the
    r² a cut must keep (default: `threshold` x the student's own r²). The
    input model is left untouched.
    """
    if student.arch.n_outputs != 1:
        raise ValueError("prune a per-neuron student (n_outputs == 1)")
    labels = np.asarray(labels, np.float64).reshape(-1)
    if len(labels) != len(probe):
        raise ValueError(f"{len(probe)} probe images but {len(labels)} labels")
    student = student.eval()
    if floor is None:
        floor = config.threshold * r_squared(responses(student, probe), labels)
    cut = _prune_on_output if config.criterion == "output" else _prune_on_reconstruction
    return cut(student, probe, labels, layer, config, floor)


def prune_neuron(student: CompactStudent, probe: torch.Tensor, labels: np.ndarray,
                 config: PruneConfig = PruneConfig(),
                 finetune: Callable[[CompactStudent, int], CompactStudent] | None = None,
                 evaluate: Callable[[CompactStudent], dict[str, float]] | None = None,
                 on_step: Callable[[PruneStep], None] | None = None) -> tuple[CompactStudent, list[PruneStep]]:
    """Prune every layer of a one-output student, last to first.

    Every cut must keep `threshold` x the *unpruned* student's r² against the
    teacher on the probe, so the whole path, not only each step, stays within
    the budget. `finetune(model, layer)` retrains after each cut (the paper
    retrains the rebuilt network); `evaluate(model)` returns the scores of
    each step ("r_teacher" becomes the step's accuracy).
    """
    def step(layer: int | None, m: CompactStudent, explained: float | None, visit: int = 0) -> PruneStep:
        scores = dict(evaluate(m)) if evaluate else {}
        s = PruneStep(layer, list(m.arch.channels), m.n_parameters(), m.macs(), explained,
                      scores.pop("r_teacher", None), scores, visit)
        if on_step:
            on_step(s)
        return s

    student = student.eval()
    floor = config.threshold * r_squared(responses(student, probe), labels)
    path = [step(None, student, None)]
    for visit in range(config.rounds):
        before = student.arch.channels
        for layer in config.layer_order(config.order, len(student.layers)):
            if visit and student.arch.channels[layer] <= config.min_filters:
                continue
            cut, explained = prune_layer(student, probe, labels, layer, config, floor)
            if visit and cut.arch.channels == student.arch.channels:
                continue  # nothing more to cut here: no fine-tune, no step
            student = cut if finetune is None else finetune(cut, layer).eval()
            path.append(step(layer, student, explained, visit))
        if visit and student.arch.channels == before:
            break  # a later visit that cut nothing changed nothing: the next would be the same
    return student, path
