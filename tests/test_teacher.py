"""The teacher: structure, ensembles, artifacts, frozen-trunk readout fits, and learning the twin."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compactvision.artifacts import read_manifest, write_manifest
from compactvision.cli import main
from compactvision.compute import model_macs
from compactvision.errors import ArtifactError
from compactvision.models.teacher import PRESETS, TeacherConfig, build_teacher, load_teacher, save_teacher
from compactvision.train import TrainConfig, fit

SMALL = TeacherConfig(n_simple=8, n_complex=8, kernel_size=9, image_size=48, width=8, n_blocks=1, ensemble=3)


def test_sessions_shapes_and_ensemble_average() -> None:
    t = build_teacher(SMALL, {"a": 5, "b": ["n1", "n2"]}, seed=0).eval()
    x = torch.rand(4, 3, 48, 48)
    assert t(x).shape == (4, 5) and t(x, "b").shape == (4, 2)
    assert t.sessions["b"] == ["n1", "n2"] and t.neuron_ids[:2] == ["a_0", "a_1"]
    t.set_response_stats("b", np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    v1 = t.vone(x)
    z = torch.stack([m(v1, "b") for m in t.members]).mean(0)
    torch.testing.assert_close(t(x, "b"), z * torch.tensor([3.0, 4.0]) + torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(t.predict_all_sessions(x), torch.cat([t(x, "a"), t(x, "b")], 1))
    with pytest.raises(KeyError):
        t(x, "c")


def test_members_differ_and_the_build_is_seeded() -> None:
    a, b = build_teacher(SMALL, {"s": 3}, seed=1), build_teacher(SMALL, {"s": 3}, seed=1)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    w = [m.back_end.bottleneck[0].weight for m in a.members]
    assert not torch.equal(w[0], w[1])


def test_input_gradients_are_finite_on_black_and_grey_images() -> None:
    t = build_teacher(SMALL, {"s": 3}, seed=0).eval()
    for x in (torch.zeros(2, 3, 48, 48), torch.full((2, 1, 48, 48), 0.5)):
        x.requires_grad_(True)
        t(x).sum().backward()
        assert torch.isfinite(x.grad).all()


def test_save_load_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    t = build_teacher(SMALL, {"s": 4}, seed=2)
    t.set_response_stats("s", np.arange(4.0), np.ones(4) * 2)
    save_teacher(t, tmp_path)
    write_manifest(tmp_path, kind="teacher", config={})
    loaded = load_teacher(tmp_path)
    x = torch.rand(3, 3, 48, 48)
    assert not loaded.training
    torch.testing.assert_close(loaded(x), t.eval()(x), rtol=0, atol=0)
    weights = tmp_path / "teacher" / "teacher.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_teacher(tmp_path)


def test_readouts_that_see_the_front_end_read_its_pooled_maps_beside_the_back_end(tmp_path: Path) -> None:
    config = TeacherConfig(**{**SMALL.to_dict(), "readout_sees_front_end": True})
    t = build_teacher(config, {"s": 3}, seed=0)
    t.set_response_stats("s", np.zeros(3), np.ones(3))
    data = {"s": (np.random.default_rng(1).integers(0, 256, (32, 48, 48, 3), dtype=np.uint8),
                  np.random.default_rng(2).normal(size=(32, 3)).astype(np.float32))}
    fit(t, data, data, TrainConfig(epochs=1, batch_size=16, device="cpu"), progress=False)
    t.eval()
    x = torch.rand(2, 3, 48, 48)
    v1 = t.vone(x)
    for m, readout in zip(t.members, t.readouts_of("s")):
        out = m.back_end(v1)
        assert out.shape[1] == SMALL.width + v1.shape[1] == readout.in_channels
        pooled = m.back_end.shortcut_norm(torch.nn.functional.adaptive_avg_pool2d(v1, out.shape[-2:]))
        torch.testing.assert_close(out[:, SMALL.width:], pooled)
        assert m.back_end.shortcut_norm.num_batches_tracked > 0, "its normalisation learns with the trunk"
    save_teacher(t, tmp_path)
    write_manifest(tmp_path, kind="teacher", config={})
    torch.testing.assert_close(load_teacher(tmp_path)(x), t(x), rtol=0, atol=0)


def test_its_compute_is_counted_where_it_lives() -> None:
    """A teacher trained on a GPU is counted (and saved) there: the probe image follows the model's device.

    The meta device stands in for a GPU on a CPU-only machine; a probe made on the CPU fails on either.
    """
    t = build_teacher(SMALL, {"s": 4}, seed=2)
    on_cpu = model_macs(t, 48)
    assert on_cpu > 0
    assert model_macs(t.to("meta"), 48) == on_cpu


def test_frozen_trunk_fits_only_the_new_readout() -> None:
    rng = np.random.default_rng(0)
    t = build_teacher(SMALL, {"train": 3}, seed=0)
    trunk_before = {k: v.clone() for k, v in t.state_dict().items() if ".back_end." in k}
    t.freeze_trunk()
    t.add_session("new", ["x", "y"])
    images = rng.integers(0, 256, (64, 48, 48, 3), dtype=np.uint8)
    targets = rng.normal(size=(64, 2)).astype(np.float32)
    fit(t, {"new": (images[:48], targets[:48])}, {"new": (images[48:], targets[48:])},
        TrainConfig(epochs=2, batch_size=16, device="cpu"), progress=False)
    after = t.state_dict()
    for k, v in trunk_before.items():
        assert torch.equal(v, after[k]), f"{k} changed although the trunk was frozen"
    assert all(not p.requires_grad for p in t.trunk_parameters())


def test_paper_preset_has_about_60m_parameters() -> None:
    # The eight Cowley training sessions hold about 370 neurons.
    t = build_teacher("paper", {"s": 370}, seed=0)
    assert 50e6 <= t.n_parameters() <= 70e6
    assert len(t.members) == PRESETS["paper"].ensemble == 25


@pytest.mark.slow
def test_tiny_preset_learns_the_twin_via_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["teacher", "--data", "twin", "--preset", "tiny", "--out", str(out), "--neurons", "16",
                 "--images", "1000", "--repeats", "4", "--progress", "none"])
    assert code == 0
    manifest = read_manifest(out)  # verifies every recorded hash
    metrics = manifest["metrics"]["teacher"]
    assert metrics["r"]["median"] >= 0.5, metrics
    assert metrics["r_noise_free"]["median"] >= metrics["r"]["median"]  # trial noise only hides accuracy
    assert {"r2_er", "feve"} <= set(metrics)
    data = json.loads((out / "data.json").read_text())
    split = data["sessions"]["twin"]["split"]
    assert not set(split["train"]) & set(split["test"])
    assert (out / "history" / "teacher_metrics.json").is_file()
    assert not (out / "checkpoints").exists()
    teacher = load_teacher(out)
    assert teacher.sessions["twin"] == data["sessions"]["twin"]["neuron_ids"]


@pytest.mark.parametrize("front_end", ["vone", "conv", "vone+noise", "vone+ensemble"])
def test_the_control_front_end_trains_on_the_twin_like_the_vone_block(tmp_path: Path, front_end: str) -> None:
    """The standard-CNN control: a learned conv where the VOneBlock stands, everything else the same.

    And a VOneBlock teacher with V1 noise in training, which still learns and keeps its noise level.
    """
    out = tmp_path / front_end
    noise = {"vone+noise": ["--v1-noise", "0.5"], "vone+ensemble": ["--ensemble", "2"]}.get(front_end, [])
    code = main(["teacher", "--data", "twin", "--preset", "tiny", "--out", str(out), "--neurons", "8",
                 "--images", "600", "--repeats", "4", "--progress", "none",
                 "--front-end", front_end.split("+")[0], *noise])
    assert code == 0
    assert read_manifest(out)["metrics"]["teacher"]["r"]["median"] >= 0.3
    teacher = load_teacher(out)
    if front_end == "vone+noise":
        assert teacher.vone.noise == "poisson" and teacher.vone.noise_level == 0.5 and teacher.vone.noise_seed is None
    assert len(teacher.members) == (2 if front_end == "vone+ensemble" else 1)
    assert (teacher.vone is None) == (front_end == "conv") and (teacher.front is None) == (front_end != "conv")
    if front_end == "conv":
        assert teacher.front.conv.weight.requires_grad and teacher.front.out_channels == teacher.config.n_simple * 2
        size = teacher.config.image_size
        assert teacher.features(torch.rand(1, 3, size, size)).shape[-1] == teacher.front.output_size()


def test_a_noise_free_teacher_is_deterministic() -> None:
    teacher = build_teacher(SMALL, {"s": ["a", "b"]}).eval()
    x = torch.rand(4, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(teacher(x), teacher(x))
    with pytest.raises(ValueError, match="front_end"):
        TeacherConfig(front_end="resnet")
    with pytest.raises(ValueError, match="at least one member"):
        TeacherConfig(ensemble=0)


def test_v1_noise_is_drawn_afresh_and_a_seeded_caller_reproduces_it() -> None:
    """Noise trained in must be noise: a frozen draw would be a fixed perturbation the back end learns away."""
    from dataclasses import replace

    noisy = build_teacher(replace(SMALL, noise="poisson", noise_level=1.0), {"s": ["a", "b"]}).eval()
    quiet = build_teacher(replace(SMALL, noise="poisson", noise_level=0.0), {"s": ["a", "b"]}).eval()
    clean = build_teacher(SMALL, {"s": ["a", "b"]}).eval()
    x = torch.rand(4, 3, 48, 48)
    with torch.no_grad():
        assert not torch.equal(noisy(x), noisy(x)), "two passes draw two noises"
        torch.manual_seed(3)
        a = noisy(x)
        torch.manual_seed(3)
        assert torch.equal(a, noisy(x)), "seeded, the noise is reproducible"
        torch.testing.assert_close(quiet(x), clean(x))  # level 0 is the noise-free teacher
    assert noisy.vone.config()["noise_level"] == 1.0 and noisy.vone.noise_seed is None
    with pytest.raises(ValueError, match="noise_level"):
        build_teacher(replace(SMALL, noise="poisson", noise_level=-1.0), {"s": ["a"]})


@pytest.mark.parametrize("front_end", ["vone", "conv"])
def test_the_v1_stride_sets_the_front_end_grid_and_everything_after_it(front_end: str) -> None:
    """A finer V1 grid must reach the back end and the readouts, or the phase it samples is lost again."""
    from dataclasses import replace

    coarse = build_teacher(replace(SMALL, front_end=front_end), {"s": 3}).eval()
    fine = build_teacher(replace(SMALL, front_end=front_end, vone_stride=2), {"s": 3}).eval()
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert fine.features(x).shape[-1] == 2 * coarse.features(x).shape[-1] == 24
        assert fine.map_hw == (12, 12) and coarse.map_hw == (6, 6)
        assert fine(x).shape == coarse(x).shape == (2, 3)
    with pytest.raises(ValueError, match="vone_stride"):
        TeacherConfig(vone_stride=0)


def test_the_cli_trains_a_teacher_on_a_finer_v1_grid_and_it_loads_as_trained(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["teacher", "--data", "twin", "--preset", "tiny", "--out", str(out), "--neurons", "4",
                 "--images", "300", "--repeats", "2", "--v1-stride", "2", "--epochs", "1", "--progress", "none"]) == 0
    teacher = load_teacher(out).eval()
    assert teacher.config.vone_stride == 2 and teacher.vone.bank.stride == 2
    size = teacher.config.image_size
    assert teacher.vone(torch.zeros(1, 3, size, size)).shape[-1] == (size + 1) // 2
