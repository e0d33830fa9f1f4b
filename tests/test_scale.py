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
