"""How good a model is, per neuron: Pearson r, noise-corrected r^2 and FEVE, reliability, CIs.

Conventions: predictions are neurons x images; responses are neurons x
images x repeats with NaN for a missing repeat (the `Session.responses`
layout). A NaN repeat is simply absent: each image's mean is over the
repeats it has, and each noise correction uses that image's own repeat count.
Neurons without enough data get NaN rather than an error, so one silent
neuron cannot stop a whole report.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def _2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[None] if a.ndim == 1 else a


def _3d(responses: np.ndarray) -> np.ndarray:
    r = np.asarray(responses, dtype=np.float64)
    if r.ndim == 2:
        r = r[..., None]
    if r.ndim != 3:
        raise ValueError(f"responses must be neurons x images x repeats, got shape {r.shape}")
    return r


def pearson_r(pred: np.ndarray, resp: np.ndarray) -> np.ndarray:
    """Per-neuron Pearson r between two neurons x images arrays (1-D = one neuron).

    Images where either value is NaN are skipped for that neuron; a neuron
    with fewer than 3 usable images or zero variance gets NaN.
    """
    x, y = np.broadcast_arrays(_2d(pred), _2d(resp))
    ok = np.isfinite(x) & np.isfinite(y)
    n = ok.sum(axis=1)
    x, y = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = x.sum(1) / n, y.sum(1) / n
        dx, dy = np.where(ok, x - mx[:, None], 0.0), np.where(ok, y - my[:, None], 0.0)
        r = (dx * dy).sum(1) / np.sqrt((dx * dx).sum(1) * (dy * dy).sum(1))
    r[n < 3] = np.nan
    return np.clip(r, -1.0, 1.0)


def spearman_brown(r: np.ndarray | float, factor: float = 2.0) -> np.ndarray:
    """Reliability of a `factor`-times longer test from the reliability `r` of one part."""
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return factor * r / (1.0 + (factor - 1.0) * r)


def split_half_reliability(responses_nir: np.ndarray, seed: int = 0, n_splits: int = 100) -> np.ndarray:
    """Split-half reliability with the Spearman-Brown correction, per neuron.

    For each of `n_splits` random splits, every image's available repeats
    are shuffled and divided into two halves (the odd one out goes to the
    second half); the correlation across images of the two half-means is
    averaged over splits and then corrected to the full repeat count with
    Spearman-Brown. Images with fewer than two repeats are left out; a
    neuron with no such images, or only one repeat per image, gets NaN.
    The split is the same for all neurons of a session (they share trials).
    """
    r = _3d(responses_nir)
    n_neurons, n_images, n_rep = r.shape
    if n_rep < 2:
        return np.full(n_neurons, np.nan)
    rng = np.random.default_rng(seed)
    present = ~np.isnan(r)
    count = present.sum(axis=2)
    half = count // 2
    usable = half >= 1
    total = np.zeros(n_neurons)
    for _ in range(n_splits):
        keys = np.where(present, rng.random((1, n_images, n_rep)), np.inf)  # missing repeats sort last
        rank = keys.argsort(axis=2).argsort(axis=2)
        first = present & (rank < half[..., None])
        second = present & ~first
        with np.errstate(invalid="ignore", divide="ignore"):
            m1 = np.where(first, r, 0.0).sum(2) / first.sum(2)
            m2 = np.where(second, r, 0.0).sum(2) / second.sum(2)
        m1[~usable], m2[~usable] = np.nan, np.nan
        total += pearson_r(m1, m2)
    return spearman_brown(total / n_splits)


def _repeat_stats(responses_nir: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: mean over available repeats, repeat count, and the pooled trial variance per neuron."""
    r = _3d(responses_nir)
    count = (~np.isnan(r)).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(r, axis=2) / count
        ss = np.nansum((r - mean[..., None]) ** 2, axis=2)
        noise_var = ss.sum(1) / np.maximum(count - 1, 0).sum(1)  # pooled over images, unbiased
    mean[count == 0] = np.nan
    return mean, count, noise_var


def r2_er(pred: np.ndarray, responses_nir: np.ndarray) -> np.ndarray:
    """The unbiased noise-corrected r^2_ER of Pospisil & Bair (2021), per neuron.

    It estimates the squared correlation between the prediction nu and the
    neuron's *expected* response mu (what infinitely many repeats would give)
    by removing the trial-noise terms from numerator and denominator of the
    naive r^2 between nu and the repeat-averaged response Y::

        num = (sum (nu - nu_bar)(Y - Y_bar))^2 - s2 * sum (nu - nu_bar)^2 / n_i
        den = sum (nu - nu_bar)^2 * [ sum (Y - Y_bar)^2 - s2 * (1 - 1/m) * sum 1/n_i ]
        r2_er = num / den

    with m images, n_i the number of (non-NaN) repeats of image i, and s2
    the trial variance pooled over images. With equal n this is the
    published estimator ((m - 1) s2 / n in the denominator); the 1/n_i terms
    are the exact expectations when repeats are unequal (NaN-padded). Like
    the original it assumes the trial variance does not depend on the image;
    for Poisson-like counts, apply a variance-stabilising square root to
    responses and predictions first if that matters. Values can fall
    outside [0, 1] because of noise; they are not clipped, so averages
    stay unbiased. Images without repeats or prediction are skipped;
    neurons with no repeated image get NaN.
    """
    mean, count, s2 = _repeat_stats(responses_nir)
    nu = np.broadcast_to(_2d(pred), mean.shape)
    ok = np.isfinite(nu) & (count > 0)
    m = ok.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv_n = np.where(ok, 1.0 / np.maximum(count, 1), 0.0)
        nu_c = np.where(ok, nu - np.where(ok, nu, 0).sum(1, keepdims=True) / m[:, None], 0.0)
        y_c = np.where(ok, mean - np.where(ok, mean, 0).sum(1, keepdims=True) / m[:, None], 0.0)
        ss_nu = (nu_c**2).sum(1)
        num = (nu_c * y_c).sum(1) ** 2 - s2 * (nu_c**2 * inv_n).sum(1)
        den = ss_nu * ((y_c**2).sum(1) - s2 * (1.0 - 1.0 / m) * inv_n.sum(1))
        return num / den


def feve(pred: np.ndarray, responses_nir: np.ndarray) -> np.ndarray:
    """Fraction of explainable variance explained (Cadena et al. 2019), per neuron.

    FEVE = 1 - (MSE - s2) / (Var(y) - s2), over every available trial y,
    with s2 the trial-noise variance pooled over images. Unlike r^2 it
    depends on the prediction's scale and offset: predict in response units.
    """
    r = _3d(responses_nir)
    _, _, s2 = _repeat_stats(r)
    nu = np.broadcast_to(_2d(pred), r.shape[:2])[..., None]
    ok = ~np.isnan(r) & np.isfinite(nu)
    with np.errstate(invalid="ignore", divide="ignore"):
        mse = np.where(ok, (r - nu) ** 2, 0.0).sum((1, 2)) / ok.sum((1, 2))
        y_mean = np.where(ok, r, 0.0).sum((1, 2)) / ok.sum((1, 2))
        var_y = np.where(ok, (r - y_mean[:, None, None]) ** 2, 0.0).sum((1, 2)) / (ok.sum((1, 2)) - 1)
        return 1.0 - (mse - s2) / (var_y - s2)


def bootstrap_median_ci(values: np.ndarray, n_boot: int = 2000, ci: float = 0.95,
                        seed: int = 0) -> tuple[float, float, float]:
    """Median over neurons and its percentile-bootstrap confidence interval (NaNs ignored)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    medians = np.median(v[rng.integers(0, v.size, size=(n_boot, v.size))], axis=1)
    lo, hi = np.quantile(medians, [(1 - ci) / 2, (1 + ci) / 2])
    return float(np.median(v)), float(lo), float(hi)


def summarise(per_neuron: Mapping[str, np.ndarray], n_boot: int = 2000, ci: float = 0.95,
              seed: int = 0) -> dict[str, dict[str, Any]]:
    """{metric: {median, ci_low, ci_high, n}} for JSON (NaN becomes None, n counts finite values)."""
    out = {}
    for name, values in per_neuron.items():
        med, lo, hi = bootstrap_median_ci(values, n_boot, ci, seed)
        finite = np.isfinite(np.asarray(values, dtype=np.float64))
        out[name] = {"median": _json_float(med), "ci_low": _json_float(lo), "ci_high": _json_float(hi),
                     "n": int(finite.sum()), "ci": ci}
    return out


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
