"""The paper-sized teacher really runs (not just counts), on CPU at a tiny batch."""
from __future__ import annotations

from dataclasses import replace

import torch

from compactvision.models.teacher import PRESETS, build_teacher


def test_paper_preset_runs_one_training_step_on_cpu():
    # Full paper preset (25 members, ~60M parameters); only the image is small to keep CPU time down.
    config = replace(PRESETS["paper"], image_size=64)
    teacher = build_teacher(config, {"s": 40}, seed=0)
    assert teacher.n_parameters() > 50e6
    x = torch.rand(2, 3, 64, 64)
    teacher.train()
    out = teacher(x)
    assert out.shape == (2, 40)
    loss = out.pow(2).mean()
    loss.backward()
    grads = [p.grad for p in teacher.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_channels_last_training_matches_default_layout():
    """The GPU layout option changes memory order only, not what is learned."""
    import numpy as np

    from compactvision.models.student import CompactStudent, StudentArch
    from compactvision.train import TrainConfig, fit

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 24, 24, 3), dtype=np.uint8)
    targets = rng.normal(size=(48, 1)).astype(np.float32)
    preds = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        m = CompactStudent(StudentArch(channels=(4, 4, 4, 4, 4), input_size=(24, 24)))
        fit(m, (images[:32], targets[:32]), (images[32:], targets[32:]),
            TrainConfig(epochs=2, batch_size=16, device="cpu", channels_last=channels_last), progress=False)
        with torch.no_grad():
            preds.append(m(torch.from_numpy(images[32:]).permute(0, 3, 1, 2).float() / 255).squeeze(1))
    # Same function up to float summation order (Adam amplifies the rounding of pre-BN biases a little).
    assert torch.allclose(preds[0], preds[1], rtol=1e-2, atol=1e-2)
    assert torch.corrcoef(torch.stack(preds))[0, 1] > 0.999


def test_prefetch_keeps_order_and_raises_producer_errors():
    import pytest

    from compactvision.train import prefetch

    assert list(prefetch(iter(range(100)), 3)) == list(range(100))
    assert list(prefetch(iter(range(5)), 0)) == list(range(5))

    def failing():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(failing(), 2))
    it = prefetch(iter(range(1000)), 2)  # abandoned early: the producer thread must not hang
    assert next(it) == 0
    it.close()
