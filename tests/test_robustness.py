"""Robustness: perturbations are what they claim, PGD grows with epsilon, VOneBlock noise switches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compactvision.interpret.robustness import (gaussian_blur, has_vone_noise, perturb, robustness_comparison,
                                                robustness_curves, vone_noise)
from compactvision.models.student import CompactStudent, StudentArch
from compactvision.models.vone import VOneBlock

SIZE = 32


def _student() -> CompactStudent:
    torch.manual_seed(0)
    m = CompactStudent(StudentArch(channels=(8, 8, 3, 4, 3), input_size=(SIZE, SIZE), n_outputs=2))
    for layer in m.layers:
        layer.bn.running_mean.normal_(0, 0.2)
        layer.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


class VOneModel(nn.Module):
    """A VOneBlock front end with a linear readout: the shape of a teacher, in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.vone = VOneBlock(n_simple=4, n_complex=4, image_size=SIZE, kernel_size=7, noise=None)
        torch.manual_seed(0)
        self.readout = nn.Linear(8 * self.vone.output_size() ** 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.vone(x).flatten(1))


def _images(n: int = 16) -> np.ndarray:
    return (np.random.default_rng(0).random((n, SIZE, SIZE, 3)) * 255).astype(np.uint8)


def test_pgd_response_change_grows_with_epsilon():
    res = robustness_curves(_student(), _images(), neuron=1, perturbation="pgd",
                            levels=[0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255])
    assert res["delta"][0] == 0.0 and res["r"][0] == pytest.approx(1.0)
    assert np.all(np.diff(res["delta"]) > 0), res["delta"]


def test_pgd_beats_random_noise_of_the_same_size():
    eps = 4 / 255
    attacked = robustness_curves(_student(), _images(), neuron=1, perturbation="pgd", levels=[eps])
    noisy = robustness_curves(_student(), _images(), neuron=1, perturbation="gaussian_noise", levels=[eps])
    assert attacked["delta"][0] > 2 * noisy["delta"][0]


def test_pgd_through_v1_noise_averages_its_gradients():
    """With V1 noise on, one noisy gradient per step is a weak attack; averaged over draws it is not hidden."""
    from compactvision.interpret.robustness import is_stochastic, pgd_attack, vone_noise

    model = VOneModel().eval()
    x = torch.as_tensor(_images(8)).permute(0, 3, 1, 2).float() / 255.0
    eps = 4 / 255
    with vone_noise(model, True):
        assert is_stochastic(model)
        torch.manual_seed(0)
        adv = pgd_attack(model, x, eps, generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= eps + 1e-6
    sign = torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(1))) * eps
    with torch.no_grad():  # judged on the noise-free response: the attack moved what the noise hides
        clean, attacked, noisy = model(x), model(adv), model((x + sign).clamp(0, 1))
    assert (attacked - clean).abs().mean() > 2 * (noisy - clean).abs().mean()
    assert not is_stochastic(model), "the noise is off again"


def test_curves_against_targets_are_seeded_and_intact_at_level_zero():
    model, imgs = _student(), _images()
    targets = np.random.default_rng(1).standard_normal((len(imgs), 2))
    a = robustness_curves(model, imgs, targets, perturbation="gaussian_noise", seed=5)
    b = robustness_curves(model, imgs, targets, perturbation="gaussian_noise", seed=5)
    np.testing.assert_array_equal(a["r"], b["r"])
    assert a["neurons"] == [0, 1] and a["delta"][0] == 0.0
    assert np.all(np.diff(a["delta"]) > 0)


@pytest.mark.parametrize("perturbation", ["blur", "contrast"])
def test_degradations_move_the_response_more_as_they_grow(perturbation):
    res = robustness_curves(_student(), _images(), perturbation=perturbation)
    assert res["delta"][0] == pytest.approx(0.0, abs=1e-7)
    assert res["delta"][-1] > res["delta"][1] > 0


def test_perturbations_keep_what_they_should():
    x = torch.rand(2, 3, SIZE, SIZE)
    flat = torch.full((1, 3, SIZE, SIZE), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    assert gaussian_blur(x, 1.0).std() < x.std()
    low = perturb(x, "contrast", 0.5)
    torch.testing.assert_close(low.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(low.std(dim=(1, 2, 3)), 0.5 * x.std(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(x, "jpeg", 0.5)


def test_vone_noise_switches_and_restores():
    model = VOneModel()
    assert has_vone_noise(model) and not has_vone_noise(_student())
    x = torch.rand(2, 3, SIZE, SIZE)
    with vone_noise(model, True):
        assert not torch.equal(model(x), model(x))
    assert model.vone.noise is None
    assert torch.equal(model(x), model(x))


def test_comparison_runs_noise_on_and_off_for_vone_models_only():
    res = robustness_comparison({"teacher": VOneModel(), "student": _student()}, _images(8), neuron=0,
                                perturbation="contrast", levels=[1.0, 0.5])
    assert set(res) == {"teacher (V1 noise off)", "teacher (V1 noise on)", "student"}
    # Clean and perturbed passes share their noise draws, so level 0 changes nothing even with noise on...
    for curves in res.values():
        assert curves["delta"][0] == pytest.approx(0.0, abs=1e-6)
    # ...while the noise does change what the perturbation does.
    assert abs(res["teacher (V1 noise on)"]["delta"][1] - res["teacher (V1 noise off)"]["delta"][1]) > 1e-4


def test_population_curves_keep_each_neuron_and_their_cis_cover_the_median():
    from compactvision.interpret.robustness import area_under_curve, population_summary, stack_neurons

    students = [_student(), _student()]
    curves = [robustness_curves(m, _images(), neuron=j, perturbation="blur", levels=[0.0, 1.0, 2.0])
              for j, m in enumerate(students)]
    both = stack_neurons(curves)
    assert both["r_per_neuron"].shape == (3, 2) and both["neurons"] == [0, 1]
    np.testing.assert_allclose(both["r"], np.median(both["r_per_neuron"], 1))
    s = population_summary(both)
    med, lo, hi = s["delta_rel"]
    assert np.all(lo <= med) and np.all(med <= hi) and s["n"] == 2
    assert area_under_curve(np.array([[0.0], [1.0], [1.0]]))[0] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="share"):
        stack_neurons([curves[0], robustness_curves(students[0], _images(), neuron=0, perturbation="contrast")])
