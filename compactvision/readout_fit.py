"""A new session's readout on a frozen trunk: the features once, then many full-batch steps.

The cowley protocol fits each held-out session's readout on the first half of
its images (540 to fit, 60 to stop on, for a 1,200-image session) with the
trunk frozen. Run through the trunk's training loop, that is 5 minibatches an
epoch, so 8 epochs give the readout 40 optimiser steps: far too few for a
spatial mask and feature weights that start from noise. Here the frozen
members' feature maps are computed once, and every member's readout takes up
to `max_steps` full-batch Adam steps on them, stopped on the held-back images'
median r.

What limits a held-out session's score is the readout's variance: 540
images against a 14 x 14 spatial mask plus the feature weights per neuron. The
L1 penalty on the mask is the lever (on real V4, raising it from 1e-3 to 1 took
one member's validation r from 0.13 to 0.34, and a 4-member ensemble's from
0.29 to 0.40 at 3), and the right strength depends on the data. So
`fit_heldout_readout` chooses the readout's tuned penalty (the mask's for a
factorised readout, the features' for a Gaussian one) from a grid on the
held-back images, with the first member alone, then fits every member at that
strength.
The second half of the session is never seen.

Chosen on 60 images, the penalty and the stopping step are as noisy as the
differences between strengths, and those 60 images never train the readout.
`ReadoutFitConfig.folds` (the teacher's `readout_folds`) chooses both by
k-fold cross-validation over the whole first half instead, then fits every
member on all of it (`fit_cross_validated`), for about `folds` times the
penalty search's cost.

Members fit independently, each on its own back end's maps (an ensemble of
readouts, as the trunk's members are); the session's prediction is their
average, as always in `Teacher.forward`.

A teacher with `heldout_probe_pool` also fits each member a linear probe on
the same first half (`fit_probe`: ridge regression on the maps average-pooled
to a few cells a side, each neuron's penalty chosen by cross-validation) and
blends it into the readout's prediction. On the real-V4 validation session
the blend beat either alone (`benchmarks/v4_teacher.py --refit-readouts`).
With `heldout_basis_weight` the session's prediction also blends in a ridge
regression on the teacher's predictions of the neurons its trunk was trained
on (`fit_basis`), solved the same way.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compactvision.artifacts import atomic_write_json, read_json
from compactvision.errors import ArtifactError
from compactvision.hashing import sha256_bytes
from compactvision.inputs import as_model_input
from compactvision.models.readouts import PooledLinearProbe, Readout
from compactvision.models.teacher import Teacher
from compactvision.progress import Progress, silent
from compactvision.train import pearson_per_neuron


@dataclass(frozen=True)
class ReadoutFitConfig:
    """How long and how fast; the regularisation is the readout's own (`mask_l1`, `feature_l1`)."""

    max_steps: int = 3000
    #: Strengths of the readout's tuned penalty tried on the held-back images (None: the readout's own grid).
    penalty_grid: tuple[float, ...] | None = None
    lr: float = 1e-2
    eval_every: int = 10
    patience: int = 300  # steps without a better held-back median r before stopping
    regularizer_weight: float = 1.0
    batch_size: int = 256  # for computing the features only
    #: 0: choose the penalty, and stop, on the held-back images. k >= 2: choose both by k-fold cross-validation
    #: over the fitting and held-back images together, then fit every member on all of them (`fit_cross_validated`).
    folds: int = 0
    #: Which images fall in which fold.
    seed: int = 0

    def __post_init__(self) -> None:
        if self.folds == 1 or self.folds < 0:
            raise ValueError(f"folds must be 0 (one held-back set) or at least 2, got {self.folds}")


@torch.no_grad()
def member_features(teacher: Teacher, images: Any, batch_size: int = 256) -> list[torch.Tensor]:
    """Each member's back-end maps for `images` (eval mode: BatchNorm statistics and no dropout)."""
    was_training = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    out: list[list[torch.Tensor]] = [[] for _ in teacher.members]
    try:
        for s in range(0, len(images), batch_size):
            shared = teacher.features(as_model_input(images[s:s + batch_size], device))
            for k, m in enumerate(teacher.members):
                out[k].append(m.back_end(shared).float())
    finally:
        teacher.train(was_training)
    return [torch.cat(f) for f in out]


def _zscore(y: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.as_tensor(np.asarray(y, np.float32), device=mean.device)
    valid = torch.isfinite(t)
    return torch.where(valid, (t - mean) / std, torch.zeros_like(t)), valid


def fit_heldout_readout(teacher: Teacher, session: str, train: tuple[Any, np.ndarray], val: tuple[Any, np.ndarray],
                        config: ReadoutFitConfig = ReadoutFitConfig(), progress: Progress = silent,
                        journal: str | Path | None = None) -> dict[str, Any]:
    """Choose the readout's penalty on `val` with the first member, then fit every member's readout at it.

    The session must already exist (`Teacher.add_session`) with its response
    statistics set; its readouts start from their initialisation. Targets
    are images x neurons; NaN marks a missing response. Returns the chosen
    penalty and strength, each strength's held-back median r, and the final fit's history.
    With cross-validation, `journal` keeps each finished fold's outcome (see `fit_cross_validated`).
    """
    if session not in teacher.sessions:
        raise KeyError(f"no session {session!r}; add it first")
    readouts = teacher.readouts_of(session)
    scale = teacher.response_scale(session)
    if config.folds:
        images = np.concatenate([np.asarray(train[0]), np.asarray(val[0])])
        feats_all = member_features(teacher, images, config.batch_size)
        return fit_cross_validated(readouts, scale, feats_all, np.concatenate([train[1], val[1]]), config,
                                   progress, stage=f"readout_{session}", journal=journal)
    feats = (member_features(teacher, train[0], config.batch_size), member_features(teacher, val[0], config.batch_size))
    z, valid = _zscore(train[1], scale.mean, scale.std)
    for r, f in zip(readouts, feats[0]):
        r.warm_start(f, z, valid)
    init = copy.deepcopy(readouts[0].state_dict())
    penalty = readouts[0].tuned_penalty
    grid = config.penalty_grid or readouts[0].penalty_grid
    stage, total = f"readout_{session}", (len(grid) + 1) * config.max_steps
    tried: dict[float, float] = {}
    for i, strength in enumerate(grid):
        readouts[0].load_state_dict(init)
        setattr(readouts[0], penalty, float(strength))
        done = i * config.max_steps
        fit = fit_readouts(readouts[:1], scale, ([feats[0][0]], [feats[1][0]]),
                           (train[1], val[1]), config, lambda _s, d, _t: progress(stage, done + d, total))
        tried[float(strength)] = fit["best_val_r"]
    chosen = max(tried, key=lambda k: tried[k])
    readouts[0].load_state_dict(init)
    for r in readouts:
        setattr(r, penalty, chosen)
    done = len(grid) * config.max_steps
    fit = fit_readouts(readouts, scale, feats, (train[1], val[1]), config,
                       lambda _s, d, _t: progress(stage, done + d, total))
    return {"penalty": penalty, "strength": chosen, "tried": {str(k): v for k, v in tried.items()}, **fit}


def fit_readouts(readouts: list[nn.Module], scale: nn.Module, feats: tuple[list[torch.Tensor], list[torch.Tensor]],
                 targets: tuple[np.ndarray, np.ndarray], config: ReadoutFitConfig = ReadoutFitConfig(),
                 progress: Progress = silent) -> dict[str, Any]:
    """Fit `readouts` (one per member, on that member's `feats`) to (train, val) targets, stopping on val.

    `feats` holds each member's training and held-back maps; `scale` maps the
    readouts' z-scores to response units. Leaves the readouts at their best
    held-back median r and returns the history: step, training loss and
    held-back median r per check.
    """
    f_train, f_val = feats
    z_train, valid = _zscore(targets[0], scale.mean, scale.std)
    y_val = np.asarray(targets[1], np.float64)
    optimizer, n_valid = _trainable(readouts, config), valid.sum().clamp_min(1)

    def val_score() -> float:
        """Held-back median r in evaluation mode (a Gaussian readout reads at its mean position)."""
        for r in readouts:
            r.eval()
        with torch.no_grad():
            z = torch.stack([r(f) for r, f in zip(readouts, f_val)]).mean(0)
            pred = scale(z).cpu().numpy().astype(np.float64)
        for r in readouts:
            r.train()
        return float(np.nanmedian(pearson_per_neuron(pred, y_val)))

    best = (val_score(), 0, copy.deepcopy([r.state_dict() for r in readouts]))
    history: list[dict[str, float]] = [{"step": 0, "train_loss": float("nan"), "val_r": best[0]}]
    for step in range(1, config.max_steps + 1):
        loss = _step(readouts, optimizer, f_train, z_train, valid, n_valid, config.regularizer_weight)
        if step % config.eval_every == 0 or step == config.max_steps:
            score = val_score()
            history.append({"step": step, "train_loss": loss, "val_r": score})
            if score > best[0]:
                best = (score, step, copy.deepcopy([r.state_dict() for r in readouts]))
            progress("readout", step, config.max_steps)
            if step - best[1] >= config.patience:
                break
    for r, state in zip(readouts, best[2]):
        r.load_state_dict(state)
        r.eval()
    progress("readout", config.max_steps, config.max_steps)
    return {"best_step": best[1], "best_val_r": best[0], "steps_run": history[-1]["step"], "history": history}


def _trainable(readouts: list[nn.Module], config: ReadoutFitConfig) -> torch.optim.Optimizer:
    """The readouts' parameters made trainable (the trunk froze them with it), and one Adam over them all."""
    params = [p for r in readouts for p in r.parameters()]
    for p in params:
        p.requires_grad_(True)
    return torch.optim.Adam(params, lr=config.lr)


def _step(readouts: list[nn.Module], optimizer: torch.optim.Optimizer, f_train: list[torch.Tensor],
          z_train: torch.Tensor, valid: torch.Tensor, n_valid: torch.Tensor, regularizer_weight: float) -> float:
    """One full-batch step of every member's readout on its own maps; returns the mean squared error."""
    optimizer.zero_grad(set_to_none=True)
    loss = sum((((r(f) - z_train) ** 2) * valid).sum() / n_valid for r, f in zip(readouts, f_train)) / len(readouts)
    reg = torch.stack([r.regularizer("mean") for r in readouts]).mean()
    (loss + regularizer_weight * reg).backward()
    optimizer.step()
    return float(loss.detach())


def _fit_steps(readouts: list[nn.Module], scale: nn.Module, f_train: list[torch.Tensor], targets: np.ndarray,
               config: ReadoutFitConfig, steps: int, progress: Progress) -> dict[str, Any]:
    """`steps` full-batch steps (a number chosen elsewhere) with nothing held back; the readouts keep where they end."""
    z_train, valid = _zscore(targets, scale.mean, scale.std)
    optimizer, n_valid = _trainable(readouts, config), valid.sum().clamp_min(1)
    for r in readouts:
        r.train()
    history: list[dict[str, float]] = []
    for step in range(1, steps + 1):
        loss = _step(readouts, optimizer, f_train, z_train, valid, n_valid, config.regularizer_weight)
        if step % config.eval_every == 0 or step == steps:
            history.append({"step": step, "train_loss": loss})
            progress("readout", step, steps)
    for r in readouts:
        r.eval()
    return {"steps_run": steps, "history": history}


def fit_cross_validated(readouts: list[Readout], scale: nn.Module, feats: list[torch.Tensor], targets: np.ndarray,
                        config: ReadoutFitConfig, progress: Progress = silent, stage: str = "readout",
                        journal: str | Path | None = None) -> dict[str, Any]:
    """Choose the penalty and the number of steps by k-fold cross-validation, then fit every member on everything.

    With one held-back set of 60 images (a tenth of a first half), the penalty
    and the stopping step are chosen on a median r whose noise is as large as
    the differences between strengths, and those 60 images never train the
    readout. Here every image is held back once: for each strength the first
    member is fitted `folds` times, each time stopping on the fold it left
    out; the strength with the best mean held-back median r wins, and the
    median of its stopping steps is how long every member then trains on all
    the images. `feats` are each member's maps of all `targets`' images.

    The folds cost `folds` x the grid's size fits (about 10 min for a real V4
    session on 2 cores), so with `journal` (a JSON file) each fold's outcome
    is written down as it finishes, and a fit that was stopped skips the folds
    it finished. Every fold starts from the readouts' initial state, so the
    result equals that of an uninterrupted fit. A journal kept under other
    settings, or for other data, is ignored and rewritten.
    """
    n = len(targets)
    if n < 2 * config.folds:
        raise ValueError(f"{config.folds}-fold cross-validation needs at least {2 * config.folds} images, got {n}")
    folds = np.array_split(np.random.default_rng(config.seed).permutation(n), config.folds)
    init = [copy.deepcopy(r.state_dict()) for r in readouts]
    penalty = readouts[0].tuned_penalty
    grid = config.penalty_grid or readouts[0].penalty_grid
    total = (len(grid) * config.folds + 1) * config.max_steps

    def start(k: int, idx: np.ndarray, strength: float) -> None:
        """Member k's readout from its initial state, at `strength`, warm-started on images `idx`."""
        readouts[k].load_state_dict(init[k])
        setattr(readouts[k], penalty, float(strength))
        z, valid = _zscore(targets[idx], scale.mean, scale.std)
        readouts[k].warm_start(feats[k][idx], z, valid)

    key = {"config": {**asdict(config), "penalty_grid": [float(g) for g in grid]}, "penalty": penalty,
           "n_images": n, "targets": _fingerprint(targets)}
    finished = _read_journal(journal, key)
    tried: dict[float, float] = {}
    stops: dict[float, int] = {}
    for i, strength in enumerate(grid):
        held_r, best_steps = [], []
        for j, held in enumerate(folds):
            done = (i * config.folds + j) * config.max_steps
            name = f"{float(strength)!r}/{j}"
            if name not in finished:
                fit_idx = np.setdiff1d(np.arange(n), held)
                start(0, fit_idx, strength)
                fit = fit_readouts(readouts[:1], scale, ([feats[0][fit_idx]], [feats[0][held]]),
                                   (targets[fit_idx], targets[held]), config,
                                   lambda _s, d, _t: progress(stage, done + d, total))
                finished[name] = {"r": fit["best_val_r"], "step": fit["best_step"]}
                if journal is not None:
                    atomic_write_json(journal, {**key, "folds_done": finished})
            progress(stage, done + config.max_steps, total)
            held_r.append(finished[name]["r"])
            best_steps.append(finished[name]["step"])
        tried[float(strength)] = float(np.mean(held_r))
        stops[float(strength)] = int(np.median(best_steps))
    chosen = max(tried, key=lambda k: tried[k])
    steps = max(stops[chosen], config.eval_every)
    everything = np.arange(n)
    for k in range(len(readouts)):
        start(k, everything, chosen)
    done = len(grid) * config.folds * config.max_steps
    fit = _fit_steps(readouts, scale, feats, targets, config, steps,
                     lambda _s, d, _t: progress(stage, done + d * config.max_steps // steps, total))
    return {"penalty": penalty, "strength": chosen, "tried": {str(k): v for k, v in tried.items()},
            "folds": config.folds, "stop_steps": {str(k): v for k, v in stops.items()}, **fit}


def _fingerprint(targets: np.ndarray) -> str:
    """A short digest of the responses, so a journal is only reused for the data it was written for."""
    return sha256_bytes(np.ascontiguousarray(targets, np.float32).tobytes())[:16]


def _read_journal(journal: str | Path | None, key: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The folds a stopped cross-validation finished, when `journal` was written under `key`; else none."""
    if journal is None or not Path(journal).is_file():
        return {}
    try:
        kept = read_json(journal)
    except ArtifactError:  # a journal that cannot be read costs its folds again, never the fit
        return {}
    if not isinstance(kept, dict) or {k: kept.get(k) for k in key} != key:
        return {}
    return dict(kept.get("folds_done", {}))


#: Ridge penalties a probe's cross-validation tries, for regressors z-scored on the fitting images.
PROBE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))


def ridge_path(x: np.ndarray, y: np.ndarray,
               alphas: tuple[float, ...] = PROBE_ALPHAS) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """Ridge regressions of `y` (n x k) on `x` (n x d), z-scored on `x`, for every alpha at the cost of one SVD.

    Returns (mean, 1 / s.d. of x's columns, one d x k weight matrix per
    alpha, y's mean); the predictions for new rows x' are
    ((x' - mean) * inv_std) @ w + y_mean.
    """
    mean, inv_std = x.mean(0), 1.0 / (x.std(0) + 1e-6)
    u, sv, vt = np.linalg.svd((x - mean) * inv_std, full_matrices=False)
    y_mean = y.mean(0)
    uty = u.T @ (y - y_mean)
    return mean, inv_std, [vt.T @ ((sv / (sv ** 2 + a))[:, None] * uty) for a in alphas], y_mean


def _check_folds(n: int, folds: int) -> None:
    """Refuse, before anything is changed, a cross-validation with fewer than two images a fold."""
    if n < 2 * folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {2 * folds} images, got {n}")


def cross_validated_ridge(x: np.ndarray, z: np.ndarray, valid: np.ndarray, folds: int, seed: int,
                          alphas: tuple[float, ...] = PROBE_ALPHAS) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Ridge regressions of `z` (images x neurons) on `x`, each neuron's penalty chosen by `folds`-fold CV.

    A neuron's penalty is the one with the least held-back squared error
    over the images where `valid` (its response exists); the regression is
    then solved on every image. Returns ((mean, inv_std, weights as neurons x
    regressors, z's mean), each neuron's penalty): what `RidgeHead.set_solution` takes.
    """
    n = len(z)
    _check_folds(n, folds)
    held_out = np.array_split(np.random.default_rng(seed).permutation(n), folds)
    error = np.zeros((len(alphas), z.shape[1]))
    for held in held_out:
        rows = np.setdiff1d(np.arange(n), held)
        mean, inv_std, weights, z_mean = ridge_path(x[rows], z[rows], alphas)
        design = (x[held] - mean) * inv_std
        for i, w in enumerate(weights):
            error[i] += (((design @ w + z_mean - z[held]) ** 2) * valid[held]).sum(0)
    best = error.argmin(0)
    mean, inv_std, weights, z_mean = ridge_path(x, z, alphas)
    w = np.stack([weights[best[j]][:, j] for j in range(z.shape[1])])  # neurons x regressors
    return (mean, inv_std, w, z_mean), np.asarray(alphas)[best]


def _session_targets(teacher: Teacher, session: str, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`targets` z-scored by the session's response statistics (a missing response: 0, its mean) and where they exist."""
    scale = teacher.response_scale(session)
    z_t, valid_t = _zscore(targets, scale.mean, scale.std)
    return z_t.double().cpu().numpy(), valid_t.cpu().numpy()


def fit_probe(teacher: Teacher, session: str, images: Any, targets: np.ndarray, folds: int = 5,
              seed: int = 0, alphas: tuple[float, ...] = PROBE_ALPHAS) -> dict[str, Any]:
    """Give `session` a linear probe in every member, fitted on `images` and `targets` (images x neurons, NaN: none).

    The session's response statistics must be set (the probe predicts the
    readout's z-scores). Each member's probe is a ridge regression on that
    member's maps pooled to `heldout_probe_pool` cells a side, each neuron's
    penalty chosen by cross-validation (`cross_validated_ridge`). A missing
    response counts as the neuron's mean. Returns how it was fitted.
    """
    _check_folds(len(targets), folds)
    probes: list[PooledLinearProbe] = teacher.add_probe(session)
    z, valid = _session_targets(teacher, session, targets)
    chosen_alphas = []
    for probe, maps in zip(probes, member_features(teacher, images)):
        with torch.no_grad():
            x = probe.pooled(maps).double().cpu().numpy()
        solution, chosen = cross_validated_ridge(x, z, valid, folds, seed, alphas)
        probe.set_solution(*solution)
        chosen_alphas.append(chosen)
    return {"pool": probes[0].pool, "weight": probes[0].blend, "folds": folds,
            "median_alpha": float(np.median(np.concatenate(chosen_alphas)))}


def fit_basis(teacher: Teacher, session: str, sources: Any, images: Any, targets: np.ndarray, folds: int = 5,
              seed: int = 0, alphas: tuple[float, ...] = PROBE_ALPHAS) -> dict[str, Any]:
    """Give `session` a neuron basis over the neurons of `sources`, fitted on `images` and `targets` as `fit_probe` is.

    The regressors are the teacher's z-scored predictions of the sources'
    neurons (`Teacher.sessions_z`, in eval mode), so the sources must be
    sessions the trunk was trained on, never another held-out one.
    """
    _check_folds(len(targets), folds)
    basis = teacher.add_basis(session, sources)
    z, valid = _session_targets(teacher, session, targets)
    with torch.no_grad():
        x = teacher.read_sessions(member_features(teacher, images), basis.sources).double().cpu().numpy()
    solution, chosen = cross_validated_ridge(x, z, valid, folds, seed, alphas)
    basis.set_solution(*solution)
    return {"sources": list(basis.sources), "n_regressors": int(x.shape[1]), "weight": basis.blend, "folds": folds,
            "median_alpha": float(np.median(chosen))}
