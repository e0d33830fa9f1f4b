"""Readout output stages: what a softplus output can express that a linear sum cannot, and that it is kept."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from compactvision.artifacts import write_manifest
from compactvision.models.readouts import FactorisedReadout, GaussianReadout
from compactvision.models.teacher import PRESETS, TeacherConfig, build_teacher, load_teacher, save_teacher


def _fit(readout: torch.nn.Module, x: torch.Tensor, z: torch.Tensor, steps: int = 800) -> float:
    """Full-batch Adam on MSE; returns the r of the fitted readout's predictions with `z`."""
    opt = torch.optim.Adam(readout.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        ((readout(x)[:, 0] - z) ** 2).mean().backward()
        opt.step()
    with torch.no_grad():
        return float(np.corrcoef(readout(x)[:, 0].numpy(), z.numpy())[0, 1])


def test_a_softplus_output_fits_a_thresholded_difference_that_a_linear_sum_cannot() -> None:
    """A centre minus its suppression, rectified (an end-stopped or centre-surround cell) from rectified features.

    Both readouts see the same two non-negative channels at the same place;
    the target fires only where the first beats the second. No weighting of
    the two is zero where the target is and tracks it where it fires, so the
    linear sum stays well short; a thresholded one can be exact.
    """
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2000, 2, 3, 3))
    z = torch.relu(x[:, 0, 1, 1] - x[:, 1, 1, 1] - 0.2)
    z = (z - z.mean()) / z.std()
    torch.manual_seed(1)
    linear = _fit(FactorisedReadout(2, 3, 3, 1, mask_l1=0, feature_l1=0), x, z)
    torch.manual_seed(1)
    softplus = _fit(FactorisedReadout(2, 3, 3, 1, mask_l1=0, feature_l1=0, output="softplus"), x, z)
    assert softplus > 0.97, softplus
    assert softplus - linear > 0.07, (linear, softplus)  # 0.89 against 0.99 here, on three seeds alike


def test_a_fresh_softplus_readout_starts_where_a_linear_one_does() -> None:
    """Zero drive predicts the z-scores' mean, and a warm start fits nearly as well as the linear regression's."""
    readout = FactorisedReadout(4, 5, 5, 3, output="softplus")
    assert torch.equal(readout.respond(torch.zeros(2, 3)), torch.zeros(2, 3))

    torch.manual_seed(0)
    x = torch.randn(400, 4, 5, 7)
    z = 0.3 * (x[:, 1, 2, 3] - x[:, 0, 2, 3])[:, None] + 0.05 * torch.randn(400, 1)
    z = (z - z.mean(0)) / z.std(0)
    valid = torch.ones_like(z, dtype=torch.bool)
    outs = []
    for output in ("linear", "softplus"):
        r = GaussianReadout(4, 5, 7, 1, output=output)
        r.warm_start(x, z, valid)
        with torch.no_grad():
            outs.append(r.eval()(x)[:, 0])
    r = [float(np.corrcoef(o.numpy(), z[:, 0].numpy())[0, 1]) for o in outs]
    assert r[0] > 0.9 and r[1] > 0.9 * r[0], r
    assert outs[1].std() == pytest.approx(float(outs[0].std()), rel=0.3), "the same scale, not half of it"


def test_an_unknown_output_is_refused() -> None:
    with pytest.raises(ValueError, match="readout_output must be one of"):
        TeacherConfig(readout_output="relu")
    with pytest.raises(ValueError, match="output must be one of"):
        FactorisedReadout(2, 3, 3, 1, output="exp")


def test_a_softplus_teacher_saves_and_loads_its_floors(tmp_path: Path) -> None:
    t = build_teacher(replace(PRESETS["tiny"], image_size=32, readout_output="softplus"), {"s": 3}, seed=0)
    with torch.no_grad():
        for r in t.readouts_of("s"):
            r.floor.copy_(torch.tensor([-0.1, 0.2, -0.3]))
    save_teacher(t, tmp_path)
    write_manifest(tmp_path, kind="teacher", config={})
    loaded = load_teacher(tmp_path)
    assert torch.equal(loaded.readouts_of("s")[0].floor, torch.tensor([-0.1, 0.2, -0.3]))
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(loaded(x), t.eval()(x), rtol=0, atol=0)


def test_the_cli_trains_a_teacher_with_softplus_outputs(tmp_path: Path) -> None:
    from compactvision.cli import main

    out = tmp_path / "run"
    assert main(["teacher", "--data", "twin", "--preset", "tiny", "--out", str(out), "--neurons", "8",
                 "--images", "600", "--repeats", "2", "--readout-output", "softplus", "--progress", "none"]) == 0
    teacher = load_teacher(out)
    assert teacher.config.readout_output == "softplus"
    floors = torch.stack([r.floor for r in teacher.readouts_of("twin")])
    assert not torch.allclose(floors, torch.full_like(floors, -np.log(2.0))), "the floors are learnt"
