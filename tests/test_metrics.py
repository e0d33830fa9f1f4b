"""Metrics on closed-form cases and on simulations with a known answer."""
from __future__ import annotations

import json

import numpy as np
import pytest

from compactvision import metrics as m


def _prediction_with_correlation(mu: np.ndarray, rho: float, rng: np.random.Generator) -> np.ndarray:
    """Rows nu with Pearson r exactly `rho` to the matching rows of mu."""
    mu_c = mu - mu.mean(1, keepdims=True)
    e = rng.standard_normal(mu.shape)
    e -= e.mean(1, keepdims=True)
    e -= (e * mu_c).sum(1, keepdims=True) / (mu_c**2).sum(1, keepdims=True) * mu_c
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    return rho * unit(mu_c) + np.sqrt(1 - rho**2) * unit(e)


def test_pearson_r_per_neuron_and_nan_safe():
    x = np.array([[1.0, 2, 3, 4], [1, 2, 3, 4], [1, 1, 1, 1]])
    y = np.array([[2.0, 4, 6, 8], [4, 3, 2, 1], [1, 2, 3, 4]])
    assert np.allclose(m.pearson_r(x, y)[:2], [1, -1]) and np.isnan(m.pearson_r(x, y)[2])
    y_nan = np.array([[2.0, np.nan, 6, 8, 10]])
    assert m.pearson_r(np.array([[1.0, 99, 3, 4, 5]]), y_nan)[0] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 50)), rng.random((3, 50))
    assert np.allclose(m.pearson_r(a, b), [np.corrcoef(a[i], b[i])[0, 1] for i in range(3)])


def test_noise_free_repeats_give_reliability_one():
    mu = np.random.default_rng(0).random((4, 30))
    assert np.allclose(m.split_half_reliability(np.repeat(mu[..., None], 6, axis=2)), 1.0)


def test_split_half_reliability_matches_its_expected_value():
    # Signal var 1, trial noise var 4, 4 repeats: reliability of the 4-repeat mean is 1 / (1 + 4/4) = 0.5.
    rng = np.random.default_rng(1)
    mu = rng.standard_normal((100, 400))
    y = mu[..., None] + 2 * rng.standard_normal((100, 400, 4))
    assert np.median(m.split_half_reliability(y, n_splits=20)) == pytest.approx(0.5, abs=0.05)
    assert np.isnan(m.split_half_reliability(y[..., :1])).all()  # one repeat: undefined
    assert m.spearman_brown(0.5) == pytest.approx(2 / 3)


@pytest.mark.parametrize("ragged", [False, True], ids=["equal_repeats", "nan_padded_repeats"])
def test_r2_er_is_unbiased_while_naive_r2_is_biased_low(ragged):
    rng = np.random.default_rng(2)
    n_sims, n_images, n_repeats, true_r2 = 300, 200, 5, 0.6
    mu = rng.standard_normal((n_sims, n_images))
    nu = _prediction_with_correlation(mu, np.sqrt(true_r2), rng)
    y = mu[..., None] + 2.0 * rng.standard_normal((n_sims, n_images, n_repeats))
    if ragged:  # some images lost up to three of their repeats
        drop = rng.random(y.shape) < 0.3
        drop[..., :2] = False
        y[drop] = np.nan
    r2er = m.r2_er(nu, y)
    naive = m.pearson_r(nu, np.nanmean(y, axis=2)) ** 2
    assert abs(r2er.mean() - true_r2) < 0.05
    assert naive.mean() < true_r2 - 0.1


def test_r2_er_of_the_true_mean_is_one_and_feve_is_one():
    rng = np.random.default_rng(3)
    mu = 5 + rng.standard_normal((200, 300))
    y = mu[..., None] + rng.standard_normal((200, 300, 4))
    assert np.mean(m.r2_er(mu, y)) == pytest.approx(1.0, abs=0.03)
    assert np.mean(m.feve(mu, y)) == pytest.approx(1.0, abs=0.03)
    assert np.mean(m.feve(np.full_like(mu, 5.0), y)) == pytest.approx(0.0, abs=0.03)  # the mean explains nothing
    assert np.mean(m.feve(mu + 1.0, y)) < 0.5  # FEVE, unlike r, punishes an offset


def test_bootstrap_median_ci_brackets_the_median():
    v = np.random.default_rng(4).normal(0.6, 0.1, 200)
    med, lo, hi = m.bootstrap_median_ci(np.r_[v, np.nan], seed=1)
    assert lo < med < hi and med == pytest.approx(np.median(v)) and hi - lo < 0.1
    assert m.bootstrap_median_ci(v, seed=1) == m.bootstrap_median_ci(v, seed=1)
    assert all(np.isnan(m.bootstrap_median_ci(np.array([np.nan]))))


def test_summarise_is_json_ready():
    out = m.summarise({"r": np.array([0.2, 0.5, 0.7, np.nan]), "empty": np.array([np.nan])}, n_boot=200)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text)["r"]["median"] == pytest.approx(0.5) and out["r"]["n"] == 3
    assert out["empty"]["median"] is None
