"""Bundled photos, crops and synthetic families: shapes, determinism and the geometry conventions."""
from __future__ import annotations

import numpy as np
import pytest

from compactvision.data import images as im


def test_bundled_photos_load_offline_as_rgb():
    photos = im.natural_photos()
    assert len(photos) >= 15
    for p in photos:
        assert p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) >= 112


def test_crops_are_deterministic_by_seed_and_sized():
    a = im.natural_crops(6, size=64, seed=3)
    assert a.shape == (6, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, im.natural_crops(6, size=64, seed=3))
    assert not np.array_equal(a, im.natural_crops(6, size=64, seed=4))
    assert im.natural_crops(3, size=32, seed=0, grayscale=True).shape == (3, 32, 32, 1)


def test_augmentation_changes_crops_but_not_their_source():
    plain = im.natural_crops(8, seed=1, augment=False)
    augmented = im.natural_crops(8, seed=1, augment=True)
    assert not np.array_equal(plain, augmented)
    assert plain.std() > 10 and augmented.std() > 10  # real image content, not blank frames


def test_zoom_crops_are_shifted_magnified_windows_of_each_image():
    # A ramp whose value is its column: a window of the image is a ramp over a sub-range of columns.
    ramp = np.broadcast_to(np.arange(100, dtype=np.uint8)[None, :, None], (100, 100, 3))
    images = np.stack([ramp] * 32)
    views = im.zoom_crops(images, 0.4, np.random.default_rng(0))
    assert views.shape == images.shape and views.dtype == np.uint8
    rows = views[:, 50, :, 0].astype(int)
    assert (np.diff(rows, axis=1) >= 0).all()  # still a left-to-right ramp, never mirrored or scrambled
    spans = rows[:, -1] - rows[:, 0]
    assert spans.min() >= 0.6 * 99 - 2 and spans.max() <= 99  # window sides within [1 - 0.4, 1] of the image
    assert len(np.unique(rows[:, 0])) > 8  # at varied positions
    assert np.array_equal(views, im.zoom_crops(images, 0.4, np.random.default_rng(0)))


def test_zoom_crops_without_zoom_change_nothing_and_draw_nothing():
    images = im.natural_crops(3, size=32, seed=0)
    rng = np.random.default_rng(5)
    assert im.zoom_crops(images, 0.0, rng) is images
    assert rng.random() == np.random.default_rng(5).random()
    with pytest.raises(ValueError, match="max_zoom"):
        im.zoom_crops(images, 1.0, rng)


def test_grating_orientation_and_frequency_conventions():
    horizontal, vertical = im.gratings([0.0, 90.0], 0.125, size=64)[..., 0].astype(float)
    # 0 deg = horizontal bars: constant along each row; 90 deg = vertical bars: constant down each column.
    assert horizontal.std(axis=1).max() < 1 and horizontal.std(axis=0).min() > 50
    assert vertical.std(axis=0).max() < 1
    spectrum = np.abs(np.fft.rfft(horizontal[:, 0] - horizontal[:, 0].mean()))
    assert np.argmax(spectrum) == 0.125 * 64  # 8 cycles over 64 px
    oblique = im.gratings(45.0, 0.1, size=64)[0, ..., 0].astype(float)
    # 45 deg bars rise to the right on screen: constant along (col + 1, row - 1).
    assert np.abs(oblique[10:50, 10:50] - oblique[9:49, 11:51]).max() <= 1


def test_dots_bars_arcs_corners_follow_their_parameters():
    disc = im.dots([20.0], [(20.0, 40.0)], size=64)[0, ..., 0].astype(float)
    assert abs((disc > 191).sum() - np.pi * 100) < 20  # area of a 20 px diameter disc
    rows, cols = np.nonzero(disc > 191)
    assert abs(cols.mean() - 20) < 0.5 and abs(rows.mean() - 40) < 0.5
    dark = im.dots([10.0], size=64, polarity=-1)[0]
    assert dark.min() == 0 and dark[0, 0, 0] == 128
    short, long = im.bars([10.0, 40.0], 2.0, 0.0, size=64)[..., 0]
    assert (short > 191).sum() * 3 < (long > 191).sum()
    straight, up = im.curved_arcs([0.0, 0.08], size=64, length_px=30)[..., 0]
    r_straight, _ = np.nonzero(straight > 191)
    r_up, c_up = np.nonzero(up > 191)
    assert r_straight.std() < 1.5
    assert r_up[np.abs(c_up - 31.5) > 10].mean() < 31.5 - 2  # positive curvature bends upwards (counter-clockwise)
    sharp, flat = im.corners([60.0, 180.0], size=64)[..., 0]
    assert np.ptp(np.nonzero(flat > 191)[0]) < 4 and np.ptp(np.nonzero(sharp > 191)[0]) > 6


def test_pink_noise_has_a_one_over_f_spectrum():
    x = im.pink_noise(8, size=64, seed=0, color=False)[..., 0].astype(float)
    amp = np.abs(np.fft.fft2(x - x.mean(axis=(1, 2), keepdims=True))).mean(0)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64)))
    band = (f > 0.03) & (f < 0.3)
    slope = np.polyfit(np.log(f[band]), np.log(amp[band]), 1)[0]
    assert -1.3 < slope < -0.7


def test_dead_leaves_cover_every_pixel_deterministically():
    a = im.dead_leaves(2, size=48, seed=5)
    assert a.shape == (2, 48, 48, 3)
    assert np.array_equal(a, im.dead_leaves(2, size=48, seed=5))
    assert len(np.unique(a[0].reshape(-1, 3), axis=0)) > 20  # many occluding leaves


def test_image_stream_is_endless_and_reproducible():
    first = im.image_stream(10, size=32, seed=2, mix={"natural": 1, "gratings": 1})
    second = im.image_stream(10, size=32, seed=2, mix={"natural": 1, "gratings": 1})
    for _ in range(3):
        a, b = next(first), next(second)
        assert a.shape == (10, 32, 32, 3) and np.array_equal(a, b)
    assert not np.array_equal(next(first), a)
    with pytest.raises(ValueError, match="unknown image families"):
        next(im.image_stream(4, mix={"sunsets": 1.0}))
