"""One progress convention: every stage calls `progress(stage, done, total)`, and a flag becomes one of those."""
from __future__ import annotations

import io

import numpy as np
import torch

from compactvision.distill import LabelCache, StreamConfig
from compactvision.progress import as_progress, line_reporter, parse_line, silent
from compactvision.train import TrainConfig, fit


def test_a_flag_becomes_a_progress_callable() -> None:
    def mine(stage: str, done: int, total: int) -> None: ...

    assert as_progress(mine) is mine
    assert as_progress(False) is silent
    assert as_progress(True) is not silent and callable(as_progress(True))


def test_line_reporter_output_parses_back() -> None:
    out = io.StringIO()
    line_reporter(out)("label", 3, 7)
    assert parse_line(out.getvalue()) == ("label", 3, 7)


def test_fit_reports_each_epoch_as_the_train_stage() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(40, 8, 8, 3), dtype=np.uint8)
    targets = rng.normal(size=(40, 2)).astype(np.float32)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    calls: list[tuple[str, int, int]] = []
    fit(model, (images[:32], targets[:32]), (images[32:], targets[32:]),
        TrainConfig(epochs=3, batch_size=8, patience=10, device="cpu", prefetch=0),
        progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert calls == [("train", 1, 3), ("train", 2, 3), ("train", 3, 3)]


def test_label_cache_reports_each_chunk_as_the_label_stage(tmp_path) -> None:
    teacher = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
    calls: list[tuple[str, int, int]] = []
    LabelCache.build(tmp_path, teacher, ["a", "b"], StreamConfig(n_images=32, image_size=16, chunk=16),
                     device="cpu", progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert calls == [("label", 1, 2), ("label", 2, 2)]
