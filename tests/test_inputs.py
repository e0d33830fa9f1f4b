"""The one layout rule for model input, and the one grey->RGB / resize helper."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compactvision import train
from compactvision.inputs import as_model_input, as_rgb, crop_resize, fit_images
from compactvision.interpret import attribution


def test_arrays_are_channels_last_whatever_their_dtype():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    x = as_model_input(stored)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.from_numpy(stored).permute(0, 3, 1, 2).float() / 255)
    floats = stored.astype(np.float32) / 255  # the same images as floats: the same layout, the same tensor
    torch.testing.assert_close(as_model_input(floats), x)
    assert as_model_input(stored[0]).shape == (1, 3, 5, 7)
    assert as_model_input(np.zeros((5, 7), np.uint8)).shape == (1, 1, 5, 7)


def test_float_tensors_are_already_model_layout_and_uint8_tensors_are_stored_images():
    t = torch.rand(2, 3, 5, 7)
    assert as_model_input(t) is not None and torch.equal(as_model_input(t), t)
    assert as_model_input(t[0]).shape == (1, 3, 5, 7)
    stored = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    torch.testing.assert_close(as_model_input(stored), as_model_input(stored.numpy()))


def test_training_and_interpretation_share_the_one_conversion():
    assert train.as_model_input is attribution.as_model_input is as_model_input
    with pytest.raises(ValueError, match="N x H x W x C"):
        as_model_input(np.zeros((1, 2, 3, 4, 5)))


def test_grey_becomes_rgb_and_sizes_are_fitted_by_centre_crop():
    grey = np.arange(4 * 6, dtype=np.uint8).reshape(1, 4, 6, 1)
    rgb = as_rgb(grey)
    assert rgb.shape == (1, 4, 6, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert as_rgb(np.zeros((2, 2, 4), np.uint8)).shape == (2, 2, 3)
    with pytest.raises(ValueError):
        as_rgb(np.zeros((2, 2, 5)))
    ramp = np.tile(np.linspace(0, 255, 300).astype(np.uint8)[None, :, None], (200, 1, 3))
    out = crop_resize(ramp, (112, 112))
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    assert 20 < int(out[56, 0, 0]) < 70 and 185 < int(out[56, -1, 0]) < 235  # the centre 200 x 200 of 300
    batch = fit_images(np.repeat(grey, 3, axis=0), 8)
    assert batch.shape == (3, 8, 8, 3)
    same = np.zeros((2, 8, 8, 3), np.uint8)
    assert fit_images(same, 8) is same
