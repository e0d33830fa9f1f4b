"""Attribution: every method runs on students and plain CNNs, IG is complete, maps compare by rank."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compactvision.interpret.attribution import (METHODS, attribute, attribute_raw, default_layer,
                                                 filter_contributions, map_similarity, response)
from compactvision.models.student import CompactStudent, StudentArch

SIZE = 32


def _student(seed: int = 0) -> CompactStudent:
    torch.manual_seed(seed)
    m = CompactStudent(StudentArch(channels=(8, 8, 3, 4, 3), input_size=(SIZE, SIZE), n_outputs=2))
    for layer in m.layers:  # trained-looking BN statistics
        layer.bn.running_mean.normal_(0, 0.2)
        layer.bn.running_var.uniform_(0.5, 2.0)
    return m.train()  # attribute must switch to eval itself and restore this


class TinyCNN(nn.Module):
    """A model that is not a student: conv, ReLU, pooled linear readout for 2 neurons."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(3, 6, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x - 0.5))))
        return self.head(nn.functional.adaptive_avg_pool2d(x, 8).flatten(1))


def _images(n: int = 2, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, SIZE, SIZE, 3)) * 255).astype(np.uint8)


def _gain(model: nn.Module, images: np.ndarray, neuron: int) -> np.ndarray:
    grey = np.full((1, SIZE, SIZE, 3), 0.5, np.float32)
    return response(model, images)[:, neuron] - response(model, grey)[0, neuron]


@pytest.mark.parametrize("model_fn", [_student, TinyCNN])
def test_integrated_gradients_is_complete(model_fn):
    model, imgs = model_fn(), _images(3)
    maps = attribute(model, imgs, 1, "integrated_gradients", n_steps=64)
    gain = _gain(model, imgs, 1)
    np.testing.assert_allclose(maps.reshape(3, -1).sum(1), gain, rtol=0.05, atol=0.05 * np.abs(gain).max())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_gives_finite_maps_at_image_size(method):
    model, imgs = _student(), _images(2)
    opts = {"channel": 1} if method == "neuron_conductance" else {}
    maps = attribute(model, imgs, 0, method, **opts)
    assert maps.shape == (2, SIZE, SIZE)
    assert np.isfinite(maps).all() and np.abs(maps).sum() > 0
    assert model.training, "the caller's train/eval mode must be restored"


def test_generic_model_uses_its_last_conv_for_layer_methods():
    model = TinyCNN()
    assert default_layer(model) is model.conv2
    by_default = attribute(model, _images(1), 0, "layer_gradcam")
    by_name = attribute(model, _images(1), 0, "layer_gradcam", layer="conv2")
    np.testing.assert_allclose(by_default, by_name)
    other = attribute(model, _images(1), 0, "layer_gradcam", layer="conv1")
    assert not np.allclose(by_default, other)


def test_filter_contributions_add_up_and_route_through_their_filter():
    model, imgs = _student(), _images(2)
    per_filter = filter_contributions(model, imgs, 1, layer=2, n_steps=64)
    assert per_filter.shape == (2, 3)
    gain = _gain(model, imgs, 1)
    np.testing.assert_allclose(per_filter.sum(1), gain, rtol=0.05, atol=0.05 * np.abs(gain).max())
    # Each filter's pixel map (filter conductance) sums to that filter's layer conductance.
    for c in range(3):
        pix = attribute(model, imgs, 1, "neuron_conductance", layer=2, channel=c, n_steps=64).reshape(2, -1).sum(1)
        np.testing.assert_allclose(pix, per_filter[:, c], atol=0.05 * np.abs(per_filter).max())
    # Without a named filter it routes through the one carrying most of the response (the app's default).
    strongest = int(np.abs(per_filter).mean(0).argmax())
    default = attribute(model, imgs, 1, "neuron_conductance", layer=2, n_steps=64)
    np.testing.assert_allclose(default, attribute(model, imgs, 1, "neuron_conductance", layer=2, channel=strongest,
                                                  n_steps=64), atol=1e-6)


def test_noise_methods_are_seeded_and_scaled_to_the_image_range():
    model, imgs = _student(), _images(1)
    a = attribute(model, imgs, 0, "smoothgrad", seed=3)
    b = attribute(model, imgs, 0, "smoothgrad", seed=3)
    c = attribute(model, imgs, 0, "smoothgrad", seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # At ~15% noise SmoothGrad still resembles the plain gradient; at Captum's 1.0 it would not.
    plain = attribute(model, imgs, 0, "saliency")
    assert map_similarity(plain[0], a[0]) > 0.3


def test_raw_attributions_keep_channels():
    raw = attribute_raw(_student(), _images(2), 0, "integrated_gradients")
    assert raw.shape == (2, 3, SIZE, SIZE)
    cond = attribute_raw(_student(), _images(2), 0, "layer_conductance", layer=3)
    assert cond.shape == (2, 4, SIZE // 4, SIZE // 4)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribute(_student(), _images(1), 0, "lime")


def test_map_similarity_is_a_rank_correlation():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((16, 16))
    assert map_similarity(a, a) == pytest.approx(1.0)
    assert map_similarity(a, -a) == pytest.approx(-1.0)
    assert map_similarity(a, np.exp(a)) == pytest.approx(1.0)  # monotone rescaling does not matter
    assert abs(map_similarity(a, rng.standard_normal((16, 16)))) < 0.3
    assert map_similarity(a, np.kron(a, np.ones((2, 2)))) > 0.8  # a finer map is resized first


def test_captum_option_names_are_honoured_and_unknown_options_refused():
    model, imgs = _student(), _images(2)
    black = attribute(model, imgs, 0, "integrated_gradients", baseline=0.0, n_steps=16)
    grey = attribute(model, imgs, 0, "integrated_gradients", n_steps=16)
    assert not np.allclose(black, grey), "the baseline matters"
    np.testing.assert_array_equal(attribute(model, imgs, 0, "integrated_gradients", baselines=0.0, n_steps=16), black)
    # Completeness against the chosen (black) baseline, through Captum's name.
    maps = attribute(model, imgs, 0, "integrated_gradients", baselines=0.0, n_steps=64)
    gain = response(model, imgs)[:, 0] - response(model, np.zeros_like(imgs))[0, 0]
    np.testing.assert_allclose(maps.reshape(2, -1).sum(1), gain, rtol=0.05, atol=0.05 * np.abs(gain).max())
    with pytest.raises(ValueError, match="unknown attribution option 'baselne'"):
        attribute(model, imgs, 0, "integrated_gradients", baselne=0.0)
    with pytest.raises(ValueError, match="given twice"):
        attribute(model, imgs, 0, "integrated_gradients", baseline=0.0, baselines=0.5)
