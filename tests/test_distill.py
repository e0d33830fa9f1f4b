"""The label cache: teacher labels written chunk by chunk, resumed after an interruption."""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Callable

import numpy as np
import pytest
import torch

from compactvision.distill import LabelCache, StreamConfig, stream_chunk
from compactvision.errors import ArtifactError
from compactvision.inputs import as_model_input


class Stop(Exception):
    """Stands for Ctrl-C arriving between two chunks."""


def stop_after_first(stage: str, done: int, total: int) -> None:
    """A progress callback that interrupts the build once its first chunk is on disk."""
    if done == 1:
        raise Stop


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))


def test_an_interrupted_cache_resumes_equals_an_uninterrupted_one_and_sums_its_seconds(tmp_path) -> None:
    config = StreamConfig(n_images=48, image_size=16, chunk=16)
    with pytest.raises(Stop):
        LabelCache.build(tmp_path / "a", _teacher(), ["x", "y"], config, device="cpu", progress=stop_after_first)
    with pytest.raises(ArtifactError, match="incomplete"):
        LabelCache(tmp_path / "a")
    labelled: list[int] = []
    resumed = LabelCache.build(tmp_path / "a", _teacher(), ["x", "y"], config, device="cpu",
                               progress=lambda stage, done, total: labelled.append(done))
    assert labelled == [2, 3], "the chunk already on disk is not labelled again"
    whole = LabelCache.build(tmp_path / "b", _teacher(), ["x", "y"], config, device="cpu")
    assert np.array_equal(resumed.images, whole.images) and np.array_equal(resumed.labels, whole.labels)
    # Each chunk's time is recorded with it, so the resumed cache's total covers all three chunks.
    assert resumed.seconds is not None and resumed.seconds > 0
    assert LabelCache(tmp_path / "a").seconds == resumed.seconds


def _as_an_older_version_left_it(root, config: StreamConfig, forget: Callable[[dict], None]) -> None:
    """Label `config`'s first chunk into `root`, stop, and drop from its record what `forget` drops."""
    with pytest.raises(Stop):
        LabelCache.build(root, _teacher(), ["x", "y"], config, device="cpu", progress=stop_after_first)
    meta_path = root / "cache.json"
    meta = json.loads(meta_path.read_text())
    forget(meta)
    meta_path.write_text(json.dumps(meta))


def test_a_cache_begun_before_its_time_was_recorded_reports_no_time_rather_than_part_of_it(tmp_path) -> None:
    config = StreamConfig(n_images=32, image_size=16, chunk=16)
    _as_an_older_version_left_it(tmp_path, config, lambda meta: meta.pop("seconds"))
    assert LabelCache.build(tmp_path, _teacher(), ["x", "y"], config, device="cpu").seconds is None


def test_a_cache_begun_before_a_stream_setting_existed_resumes_and_another_setting_starts_afresh(tmp_path) -> None:
    config = StreamConfig(n_images=48, image_size=16, chunk=16)
    _as_an_older_version_left_it(tmp_path, config, lambda meta: meta["stream"].pop("own_zoom"))
    labelled: list[int] = []
    LabelCache.build(tmp_path, _teacher(), ["x", "y"], config, device="cpu", progress=lambda s, d, t: labelled.append(d))
    assert labelled == [2, 3], "the chunk already on disk is not labelled again"
    labelled.clear()
    LabelCache.build(tmp_path, _teacher(), ["x", "y"], replace(config, own_zoom=0.2), device="cpu",
                     progress=lambda s, d, t: labelled.append(d))
    assert labelled == [1, 2, 3], "a cache of another stream is never reused"


def test_labels_are_the_teachers_own_responses_to_the_stored_images(tmp_path) -> None:
    """Labelling runs the teacher on channels-last tensors for speed: the function must not change with it."""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                  torch.nn.Conv2d(4, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    cache = LabelCache.build(tmp_path, teacher, ["x", "y"], StreamConfig(n_images=32, image_size=16, chunk=16),
                             device="cpu")
    with torch.no_grad():
        plain = teacher.to(memory_format=torch.contiguous_format)(as_model_input(np.array(cache.images)).contiguous())
    assert np.allclose(cache.labels, plain.numpy(), atol=1e-5)


def test_a_stream_with_own_zoom_shows_new_views_of_the_own_images_reproducibly() -> None:
    own = (np.random.default_rng(0).random((5, 32, 32, 3)) * 255).astype(np.uint8)
    plain = StreamConfig(n_images=64, image_size=32, chunk=64, natural_fraction=0.0, synthetic_fraction=0.0)
    zoomed = replace(plain, own_zoom=0.3)
    a, b = stream_chunk(plain, 0, own), stream_chunk(zoomed, 0, own)
    originals = {x.tobytes() for x in own} | {x[:, ::-1].tobytes() for x in own}
    assert all(x.tobytes() in originals for x in a)  # without zoom: the images and their mirror images
    assert sum(x.tobytes() not in originals for x in b) > 0.9 * len(b)  # with it: views no image repeats
    assert np.array_equal(b, stream_chunk(zoomed, 0, own))
    with pytest.raises(ValueError, match="own_zoom"):
        replace(plain, own_zoom=1.0)
