"""VOneBlock: Gabor tuning, V1 parameter statistics, clean gradients, noise determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from compactvision.data.images import gratings
from compactvision.models.vone import GaborFilterBank, VOneBlock, sample_v1_params, v1_distributions


def _grating_batch(oris, sf_cpp, phases=(0.0, math.pi / 2)) -> torch.Tensor:
    return torch.as_tensor(gratings(oris, sf_cpp, phases=list(phases))).permute(0, 3, 1, 2).float() / 255.0


def _energy_at_centre(bank: GaborFilterBank, images: torch.Tensor, n_phases: int) -> torch.Tensor:
    q0, q1 = bank(images * 2.0 - 1.0)
    c = q0.shape[-1] // 2
    e = q0[:, :, c, c] ** 2 + q1[:, :, c, c] ** 2
    return e.view(-1, n_phases, e.shape[1]).mean(1)  # stimuli x filters


@pytest.mark.parametrize("theta", [0.0, 37.0, 90.0, 151.0])
def test_gabor_prefers_its_orientation_and_frequency(theta: float) -> None:
    sf_cpd = 3.0
    params = {"orientation_deg": np.array([theta]), "sf_cpd": np.array([sf_cpd]), "phase_deg": np.array([0.0]),
              "nx": np.array([0.8]), "ny": np.array([0.8])}
    bank = GaborFilterBank(params, np.array([True]), kernel_size=41)
    oris = np.arange(0.0, 180.0, 1.0)
    e = _energy_at_centre(bank, _grating_batch(oris, sf_cpd / bank.ppd), 2)[:, 0]
    best = oris[int(e.argmax())]
    assert min(abs(best - theta), 180 - abs(best - theta)) <= 5.0

    sfs = np.geomspace(0.5, 10.0, 80)
    e = _energy_at_centre(bank, _grating_batch([theta], sfs / bank.ppd), 2)[:, 0]
    assert abs(math.log(sfs[int(e.argmax())] / sf_cpd)) < math.log(1.15)


def _chi2_p(observed_counts: np.ndarray, reference_counts: np.ndarray) -> float:
    ref = np.asarray(reference_counts, float).ravel()
    obs = np.asarray(observed_counts, float).ravel()
    keep = ref > 0
    if obs[~keep].sum() > 0:
        return 0.0  # samples where the reference has no cells: rejected outright
    expected = ref[keep] / ref[keep].sum() * obs.sum()
    return float(stats.chisquare(obs[keep], expected).pvalue)


def _histogram_p_values(p: dict[str, np.ndarray]) -> dict[str, float]:
    d = v1_distributions()
    ori = np.where(p["orientation_deg"] >= 157.5, p["orientation_deg"] - 180.0, p["orientation_deg"])
    edges = d["envelope_nx_ny_joint"]["bins_log10_edges"]
    joint, _, _ = np.histogram2d(np.log10(p["nx"]), np.log10(p["ny"]), bins=[edges, edges])
    return {
        "orientation": _chi2_p(np.histogram(ori, d["orientation_deg"]["bins"])[0], d["orientation_deg"]["counts"]),
        "sf": _chi2_p(np.histogram(p["sf_cpd"], d["peak_spatial_frequency_cpd"]["bins"])[0],
                      d["peak_spatial_frequency_cpd"]["counts"]),
        "nx_ny": _chi2_p(joint, d["envelope_nx_ny_joint"]["counts"]),
    }


def test_v1_sampler_matches_reference_histograms() -> None:
    p = sample_v1_params(10_000, seed=0)
    for name, pv in _histogram_p_values(p).items():
        assert pv >= 0.01, f"{name}: chi-square rejects the reference histogram (p={pv:.3g})"
    assert np.all((p["phase_deg"] >= 0) & (p["phase_deg"] < 360))
    # The copula ties envelope size to frequency (Spearman on ranks, so bins don't matter).
    assert stats.spearmanr(p["nx"], p["sf_cpd"]).statistic > 0.4


def test_uniform_sampler_is_rejected_by_the_same_test() -> None:
    p = sample_v1_params(10_000, seed=0, sampler="uniform")
    for name, pv in _histogram_p_values(p).items():
        assert pv < 0.01, f"{name}: the test has no power against a flat prior (p={pv:.3g})"


def test_single_grouped_conv_equals_two_dense_convolutions() -> None:
    block = VOneBlock(n_simple=7, n_complex=5, kernel_size=15, seed=3)
    bank = block.bank
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    q0, q1 = bank(x)
    dense = torch.zeros(bank.n_filters, 3, 15, 15)
    dense_q = torch.zeros(bank.n_filters, 3, 15, 15)
    ch = bank.channel.numpy()
    dense[np.arange(bank.n_filters), ch] = torch.as_tensor(bank.kernels())
    dense_q[np.arange(bank.n_filters), ch] = torch.as_tensor(bank.kernels(quadrature_phase=True))
    ref0 = F.conv2d(x, dense, stride=4, padding=7)
    ref1 = F.conv2d(x, dense_q, stride=4, padding=7)[:, bank.quadrature]
    torch.testing.assert_close(q0, ref0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(q1, ref1, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("image", ["random", "black", "grey"])
def test_fast_forward_equals_the_two_convolution_reference(image: str) -> None:
    """`VOneBlock.forward` (folded gain, one gather, addcmul) is the production path: it must equal VOneNet's cells."""
    torch.manual_seed(0)
    x = {"random": torch.rand(2, 3, 64, 64), "black": torch.zeros(2, 3, 64, 64),
         "grey": torch.full((2, 1, 64, 64), 0.5)}[image]
    block = VOneBlock(n_simple=9, n_complex=7, image_size=64, kernel_size=15, seed=5)
    fast, ref = block(x), block.reference_forward(x)
    assert fast.shape == ref.shape == (2, 16, 16, 16)
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
    # ... and so must its gradient, which Captum follows.
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    (block(xs[0]) * torch.linspace(-1, 1, 16).view(1, -1, 1, 1)).sum().backward()
    (block.reference_forward(xs[1]) * torch.linspace(-1, 1, 16).view(1, -1, 1, 1)).sum().backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, atol=1e-4, rtol=1e-3)


def test_fast_forward_with_noise_equals_the_reference_with_the_same_draw() -> None:
    x = torch.rand(2, 3, 64, 64)
    block = VOneBlock(n_simple=9, n_complex=7, image_size=64, kernel_size=15, noise="poisson", noise_seed=4)
    draw = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(block(x), block.reference_forward(x, noise=draw), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("image", ["black", "random", "grey"])
def test_gradients_are_finite(image: str) -> None:
    torch.manual_seed(0)
    x = {"black": torch.zeros(2, 3, 112, 112), "random": torch.rand(2, 3, 112, 112),
         "grey": torch.full((2, 1, 112, 112), 0.5)}[image].requires_grad_(True)
    block = VOneBlock(n_simple=16, n_complex=16, noise=None)
    block(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_noise_off_and_seeded_noise_are_deterministic() -> None:
    x = torch.rand(3, 3, 112, 112)
    quiet = VOneBlock(8, 8, noise=None)
    assert torch.equal(quiet(x), quiet(x))
    seeded = VOneBlock(8, 8, noise="poisson", noise_seed=11)
    a, b = seeded(x), seeded(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, quiet(x))  # the noise is really there
    free = VOneBlock(8, 8, noise="poisson")
    assert not torch.equal(free(x), free(x))


def test_tables_and_kernels_for_display() -> None:
    block = VOneBlock(n_simple=6, n_complex=4, kernel_size=21)
    table = block.parameters_table()
    assert set(table) >= {"orientation_deg", "sf_cpd", "phase_deg", "nx", "ny", "cell_type", "channel"}
    assert all(len(v) == 10 for v in table.values())
    assert list(table["cell_type"]).count("complex") == 4
    assert block.kernels().shape == (10, 21, 21)
    assert block(torch.rand(1, 3, 112, 112)).shape == (1, 10, 28, 28)
