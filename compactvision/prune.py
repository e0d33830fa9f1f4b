"""Per-neuron filter pruning of a compact student, from the last layer to the first.

Every layer is cut the same way: rank its filters by how much they matter,
then binary-search the smallest top-k set that still passes the criterion,
with never fewer than `min_filters`. A dropped filter is not just zeroed: its
*mean* contribution to what comes next is folded into the next bias, so a
filter that is nearly constant over images costs nothing to remove. The
network is then physically rebuilt smaller (`select_channels`), the caller
fine-tunes it, and the step is recorded as a point on the pruning path.

What stands in for a dropped filter is the `compensation`. "mean" (the
default) folds each dropped filter's mean into the next bias. "least_squares"
(after He et al. 2017's channel pruning; the real-V4 presets use it) also
lets the kept filters carry what the dropped ones shared with them: the next
layer's pointwise weights are refitted so the kept filters reconstruct its
input best over the probe images, and the last layer's readout is refitted to
the unpruned response over the kept filters, which are then chosen by greedy
forward selection. A distributed
representation (a shared student's copy spreads one neuron over many
correlated filters) is thereby consolidated instead of truncated.

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
BUDGETS = ("greedy", "even")
COMPENSATIONS = ("least_squares", "mean")
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
    # How a visit of the layers spends the accuracy budget (what the model has above the floor). "greedy": each
    # layer may spend all that is left, so the layer cut first takes it and the later ones get only free cuts.
    # "even": each layer may spend its share of what is left, 1/n with n layers still to visit, so every layer
    # is cut some (the retraining between visits, `CompressConfig.round_epochs`, then refills the budget).
    budget: str = "greedy"
    # "least_squares" or "mean". The twin presets were built and measured with "mean"; the real-V4 presets
    # carry by least squares (measured in benchmarks/recompress.py). The reference criterion needs "mean".
    compensation: str = "mean"

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
        if self.compensation not in COMPENSATIONS:
            raise ValueError(f"compensation must be one of {COMPENSATIONS}, got {self.compensation!r}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        if self.criterion == "reconstruction" and self.compensation != "mean":
            raise ValueError("the reconstruction criterion is the reference's, which carries dropped filters by "
                             "their means: use compensation='mean' with it")
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
    return torch.cat([student(x)[:, 0] for x in _chunks(probe)]).double().cpu().numpy()


def r_squared(pred: np.ndarray, target: np.ndarray) -> float:
    """Squared Pearson r, the reference's accuracy for pruning decisions (0 where undefined)."""
    r = float(pearson_r(np.asarray(pred, np.float64), np.asarray(target, np.float64))[0])
    return r * r if np.isfinite(r) else 0.0


# ------------------------------------------------------------ cutting a layer
@dataclass(frozen=True)
class Fold:
    """What a layer's filters give the next stage: how dropped filters are carried by what stays.

    `means[k, c]` is filter c's mean contribution to next unit k (for the last
    layer, the readout's one unit). `mean` and `cov` (non-last layers, least
    squares only) are the mean (C,) and covariance (C, C), over images and
    positions, of the depthwise outputs the next pointwise conv reads.
    """

    means: torch.Tensor
    mean: torch.Tensor | None = None
    cov: torch.Tensor | None = None


@torch.no_grad()
def fold_of(student: CompactStudent, probe: torch.Tensor, layer: int, least_squares: bool = False) -> Fold:
    """`layer`'s `Fold` on the probe images; with `least_squares`, the moments a refit needs too.

    For the last layer the next stage is the readout; otherwise it is the next
    layer's pointwise pre-activation, which filter j reaches only as
    pointwise[:, j] * depthwise_j(activation_j): linear, hence separable.
    """
    if layer == len(student.layers) - 1:
        return Fold(_readout_contributions(student, probe).mean(dim=0, keepdim=True))
    nxt = student.layers[layer + 1]
    s1, s2, n = 0.0, 0.0, 0
    for x in _chunks(probe):
        d = nxt.depthwise(tf_same_pad(student.layers[layer](_layer_input(student, x, layer)), nxt.kernel, nxt.stride))
        f = d.permute(0, 2, 3, 1).reshape(-1, d.shape[1]).double()
        s1 = s1 + f.sum(0)
        if least_squares:
            s2 = s2 + f.T @ f
        n += len(f)
    mean = s1 / n
    means = nxt.pointwise.weight[:, :, 0, 0].double() * mean[None]
    if not least_squares:
        return Fold(means.float())
    return Fold(means.float(), mean, s2 / n - torch.outer(mean, mean))


def _carried_by_kept(fold: Fold, pointwise: torch.Tensor, kept: list[int], dropped: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares carry of dropped filters: the next layer's new pointwise weights (C_next, K) and bias shift.

    Each dropped input d_j is replaced by its regression on the kept ones,
    m_j + B_j (d_K - m_K), with B from the probe covariance (a little ridge
    keeps a dead filter harmless), so every next unit's pre-activation is
    reconstructed as well as the kept filters can, all at once.
    """
    k = torch.tensor(kept, device=fold.cov.device)
    d = torch.nonzero(dropped).flatten()
    cov_kk = fold.cov[k][:, k]
    ridge = 1e-6 * float(torch.diagonal(cov_kk).mean().clamp_min(1e-12))
    eye = torch.eye(len(k), dtype=cov_kk.dtype, device=cov_kk.device)
    b = torch.linalg.solve(cov_kk + ridge * eye, fold.cov[k][:, d]).T  # (D, K)
    pw = pointwise.double()
    weight = pw[:, k] + pw[:, d] @ b
    shift = pw[:, d] @ (fold.mean[d] - b @ fold.mean[k])
    return weight.float(), shift.float()


def cut_layer(student: CompactStudent, probe: torch.Tensor, layer: int, kept: torch.Tensor | list[int],
              fold: Fold | None = None) -> CompactStudent:
    """A rebuilt copy of `student` keeping only filters `kept` of `layer`, the dropped ones carried.

    `fold` is `fold_of(student, probe, layer)`, passed in when several cuts of
    the same layer are tried; with a covariance it carries them by least
    squares, otherwise by their means. The input model is left untouched.
    """
    fold = fold_of(student, probe, layer) if fold is None else fold
    kept = sorted({int(j) for j in kept})
    dropped = torch.ones(fold.means.shape[1], dtype=torch.bool, device=fold.means.device)
    dropped[kept] = False
    keep = [list(range(c)) for c in student.arch.channels]
    keep[layer] = kept
    small = select_channels(student, keep)
    with torch.no_grad():
        if layer == len(student.layers) - 1:
            small.readout.bias.add_(fold.means[:, dropped].sum(1))
        elif fold.cov is None or not dropped.any():
            small.layers[layer + 1].pointwise.bias.add_(fold.means[:, dropped].sum(1))
        else:
            pointwise = student.layers[layer + 1].pointwise.weight[:, :, 0, 0]
            weight, shift = _carried_by_kept(fold, pointwise, kept, dropped)
            small.layers[layer + 1].pointwise.weight[:, :, 0, 0] = weight
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
def _forward_selection(x: torch.Tensor, y: torch.Tensor
                       ) -> tuple[list[int], Callable[[int], tuple[torch.Tensor, float]]]:
    """Columns of `x` (N, C) in greedy forward-selection order for a least-squares fit of `y` (N,).

    Returns the order and `fit(k)`: the coefficients (k,) of the first k
    columns and the intercept. Each step adds the column that most reduces the
    residual sum of squares given those already chosen, so a column another one
    already explains comes late, however large its own variance.
    """
    mean_x, mean_y = x.mean(0), y.mean()
    xc, yc = x - mean_x, y - mean_y
    gram, cross = xc.T @ xc, xc.T @ yc
    ridge = 1e-9 * float(torch.diagonal(gram).mean().clamp_min(1e-12))

    def coef(cols: list[int]) -> torch.Tensor:
        idx = torch.tensor(cols)
        return torch.linalg.solve(gram[idx][:, idx] + ridge * torch.eye(len(cols), dtype=gram.dtype), cross[idx])

    order: list[int] = []
    rest = list(range(x.shape[1]))
    while rest:
        gains = [float(cross[order + [j]] @ coef(order + [j])) for j in rest]
        order.append(rest.pop(int(np.argmax(gains))))

    def fit(k: int) -> tuple[torch.Tensor, float]:
        c = coef(order[:k])
        return c, float(mean_y - mean_x[order[:k]] @ c)

    return order, fit


def _prune_last_on_output(student: CompactStudent, probe: torch.Tensor, labels: np.ndarray, config: PruneConfig,
                          floor: float) -> tuple[CompactStudent, float]:
    """The last layer, whose response is linear in its filters: a kept set is scored without a forward pass."""
    last = len(student.layers) - 1
    contrib = _readout_contributions(student, probe)
    fold = Fold(contrib.mean(dim=0, keepdim=True))
    # (N, C) numbers, searched column by column: on the CPU, whatever device the model is on.
    contrib = contrib.double().cpu()
    bias = float(student.readout.bias.detach()[0])
    if config.compensation == "least_squares":
        # The kept filters' readout weights are rescaled to reconstruct the unpruned response.
        ranked, fit = _forward_selection(contrib, contrib.sum(1))
        order = torch.tensor(ranked)

        def predict(k: int) -> torch.Tensor:
            c, intercept = fit(k)
            return contrib[:, order[:k]] @ c + intercept + bias
    else:
        order = torch.argsort(contrib.var(dim=0), descending=True)
        means = fold.means[0].cpu()

        def predict(k: int) -> torch.Tensor:
            kept = order[:k]
            return contrib[:, kept].sum(1) + bias + float(means.sum() - means[kept].sum())

    def r2_of(k: int) -> float:
        return r_squared(predict(k).numpy(), labels)

    bar = min(floor, r2_of(len(order)))  # as for the other layers: a spent budget allows only free cuts
    k = _smallest_passing(order, lambda k: r2_of(k) >= bar - 1e-9, config.min_filters)
    small = cut_layer(student, probe, last, order[:k], fold)
    if config.compensation == "least_squares":
        c, intercept = fit(k)
        scale = dict(zip(order[:k].tolist(), c.tolist()))
        h, w = small.arch.readout_hw
        with torch.no_grad():
            weight = small.readout.weight.view(1, h, w, k)
            weight.mul_(torch.tensor([scale[j] for j in sorted(scale)], dtype=weight.dtype, device=weight.device))
            small.readout.bias.fill_(intercept + bias)
    return small, r2_of(k)


def _prune_on_output(student: CompactStudent, probe: torch.Tensor, labels: np.ndarray, layer: int,
                     config: PruneConfig, floor: float) -> tuple[CompactStudent, float]:
    if layer == len(student.layers) - 1:
        return _prune_last_on_output(student, probe, labels, config, floor)
    fold = fold_of(student, probe, layer, least_squares=config.compensation == "least_squares")
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
        mask = torch.zeros(d.shape[1], dtype=torch.bool, device=d.device)
        mask[kept] = True
        approx = torch.einsum("kc,nchw->nkhw", pw[:, mask], d[:, mask]) + (pw[:, ~mask] @ d_mean[~mask])[None, :, None, None]
        approx = (approx * scale.view(1, -1, 1, 1)).permute(0, 2, 3, 1).reshape(-1, pw.shape[0])
        return float(1.0 - ((full - approx) ** 2).sum() / total)

    return torch.argsort(rank, descending=True), explained


def _prune_on_reconstruction(student: CompactStudent, probe: torch.Tensor, labels: np.ndarray, layer: int,
                             config: PruneConfig, floor: float) -> tuple[CompactStudent, float]:
    if layer == len(student.layers) - 1:
        # The reference's own last-layer cut: ranked by contribution, dropped filters carried by their means.
        return _prune_last_on_output(student, probe, labels, config, floor)
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
                 on_step: Callable[[PruneStep], None] | None = None,
                 reference: CompactStudent | None = None,
                 recover: Callable[[CompactStudent], CompactStudent] | None = None
                 ) -> tuple[CompactStudent, list[PruneStep]]:
    """Prune every layer of a one-output student, last to first.

    Every cut must keep `threshold` x the *unpruned* student's r² against the
    teacher on the probe, so the whole path, not only each step, stays within
    the budget; with `config.budget` "even" a cut may spend only its layer's
    share of what is left in the visit. `finetune(model, layer)` retrains after each cut (the paper
    retrains the rebuilt network); `evaluate(model)` returns the scores of
    each step ("r_teacher" becomes the step's accuracy). `reference` is the
    unpruned student when `student` is already a sparser version of it (a
    slimmed fit): the budget is then the reference's, so the two losses do not
    compound, and the path starts from the reference.

    `recover(model)` retrains the model before every visit after the first.
    Each cut spends the budget down to the floor, and a short fine-tune wins
    back little of it, so the layers cut last in a visit are left nearly
    whole; a full retraining of the pruned network often brings it back above
    the unpruned student (as the final retraining does), and the next visit
    spends that on the layers the first could not cut. The last step is then
    scored again, as the retrained model (and `on_step` hears of it again). A
    model already at `min_filters` everywhere is not retrained: no visit could
    cut it.
    """
    def step(layer: int | None, m: CompactStudent, explained: float | None, visit: int = 0) -> PruneStep:
        scores = dict(evaluate(m)) if evaluate else {}
        s = PruneStep(layer, list(m.arch.channels), m.n_parameters(), m.macs(), explained,
                      scores.pop("r_teacher", None), scores, visit)
        if on_step:
            on_step(s)
        return s

    student = student.eval()
    unpruned = student if reference is None else reference.eval()
    floor = config.threshold * r_squared(responses(unpruned, probe), labels)
    path = [step(None, unpruned, None)] + ([] if reference is None else [step(None, student, None)])
    for visit in range(config.rounds):
        before = student.arch.channels
        if visit and recover is not None and any(c > config.min_filters for c in student.arch.channels):
            student = recover(student).eval()
            path[-1] = step(path[-1].layer, student, path[-1].explained, path[-1].round)
        layers = [layer for layer in config.layer_order(config.order, len(student.layers))
                  if not (visit and student.arch.channels[layer] <= config.min_filters)]
        for i, layer in enumerate(layers):
            bar = floor
            if config.budget == "even":
                now = r_squared(responses(student, probe), labels)
                bar = max(floor, now - (now - floor) / (len(layers) - i))
            cut, explained = prune_layer(student, probe, labels, layer, config, bar)
            if visit and cut.arch.channels == student.arch.channels:
                continue  # nothing more to cut here: no fine-tune, no step
            student = cut if finetune is None else finetune(cut, layer).eval()
            path.append(step(layer, student, explained, visit))
        if visit and student.arch.channels == before:
            break  # a later visit that cut nothing changed nothing: the next would be the same
    return student, path
