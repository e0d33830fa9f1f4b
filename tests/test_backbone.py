"""The optional pretrained trunk: torchvision's layouts and names, safe checkpoint reading, and the teacher on top."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from compactvision.artifacts import read_manifest
from compactvision.cli import main
from compactvision.data.twin import make_twin_dataset
from compactvision.errors import DataError
from compactvision.models.backbone import (ResNetSpec, ResNetTrunk, StageSpec, backbone_from_checkpoint,
                                           infer_resnet_spec, load_trunk_weights, read_resnet_checkpoint)
from compactvision.models.teacher import load_teacher

# Parameter counts torchvision publishes for its ImageNet models (trunk + 1000-way fc).
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "resnet101": 44_549_160, "resnet152": 60_192_808}
SMALL = ResNetSpec("basic", 8, (StageSpec(1, 8, 8), StageSpec(1, 16, 16), StageSpec(1, 24, 24)))
SMALL_BOTTLENECK = ResNetSpec("bottleneck", 8, (StageSpec(2, 8, 32, groups=2), StageSpec(1, 16, 64, groups=2)))


def _randomised(spec: ResNetSpec, seed: int = 0) -> ResNetTrunk:
    """A trunk whose BatchNorm statistics are not the defaults, as a trained checkpoint's are."""
    torch.manual_seed(seed)
    trunk = ResNetTrunk(spec, f"layer{len(spec.stages)}", stem=True)
    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(1000)
    return trunk.eval()


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_standard_layouts_have_torchvisions_parameter_counts(name: str) -> None:
    spec = ResNetSpec.standard(name)
    trunk = ResNetTrunk(spec, "layer4", stem=True)
    fc = spec.stages[-1].out * 1000 + 1000
    assert sum(p.numel() for p in trunk.parameters()) + fc == TORCHVISION_PARAMS[name]


def test_resnet50_state_dict_uses_torchvisions_names_and_shapes() -> None:
    trunk = ResNetTrunk(ResNetSpec.standard("resnet50"), "layer4", stem=True)
    state = trunk.state_dict()
    assert len(state) == 320 - 2  # torchvision's resnet50 has 320 entries, fc.weight and fc.bias included
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer3.5.conv2.weight"].shape == (256, 256, 3, 3)
    assert state["layer4.2.bn3.running_var"].shape == (2048,)
    assert "bn1.num_batches_tracked" in state
    # Cut after conv4, as the paper does: 1024 channels at 1/16 of the input.
    cut = ResNetTrunk(ResNetSpec.standard("resnet50"), "layer3", stem=True).eval()
    assert cut.out_channels == 1024 and cut.output_size(224) == 14
    with torch.no_grad():
        assert cut(torch.rand(1, 3, 112, 112)).shape == (1, 1024, 7, 7)


@pytest.mark.parametrize("spec", [SMALL, SMALL_BOTTLENECK], ids=["basic", "bottleneck-grouped"])
def test_layout_is_read_off_the_checkpoint_and_the_weights_reproduce_the_output(tmp_path: Path, spec) -> None:
    trunk = _randomised(spec)
    state = {f"module.{k}": v for k, v in trunk.state_dict().items()}
    state.update({"module.fc.weight": torch.zeros(10, spec.stages[-1].out), "module.fc.bias": torch.zeros(10)})
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 90, "state_dict": state, "arch": "resnet"}, path)  # a typical training checkpoint

    read = read_resnet_checkpoint(path)
    assert infer_resnet_spec(read) == spec
    fresh = ResNetTrunk(infer_resnet_spec(read), f"layer{len(spec.stages)}", stem=True)
    load_trunk_weights(fresh, read, path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), trunk(x), rtol=0, atol=0)
        assert fresh(x).shape[-1] == fresh.output_size(64)

    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(plain))
    assert infer_resnet_spec(read_resnet_checkpoint(plain)) == spec


def test_checkpoints_without_batch_counters_still_load(tmp_path: Path) -> None:
    """torchvision's original ImageNet files predate BatchNorm's num_batches_tracked."""
    trunk = _randomised(SMALL)
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in trunk.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    fresh = ResNetTrunk(SMALL, "layer3")
    load_trunk_weights(fresh, read_resnet_checkpoint(path), path)
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), trunk(x), rtol=0, atol=0)


class _Payload:
    """Unpickling this would run a shell command; a weights-only reader must refuse it."""

    marker: Path

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_checkpoints_get_a_clear_error_and_run_nothing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such checkpoint"):
        read_resnet_checkpoint(tmp_path / "missing.pth")

    payload = _Payload()
    payload.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": payload}, evil)
    with pytest.raises(DataError, match="weights_only"):
        read_resnet_checkpoint(evil)
    assert not payload.marker.exists()

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(DataError, match="junk.pth"):
        read_resnet_checkpoint(junk)

    good = tmp_path / "good.pth"
    torch.save(_randomised(SMALL).state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="not a readable"):
        read_resnet_checkpoint(truncated)

    vgg = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3)}, vgg)
    with pytest.raises(DataError, match="no ResNet weights"):
        read_resnet_checkpoint(vgg)

    state = _randomised(SMALL).state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    nan = tmp_path / "nan.pth"
    torch.save(state, nan)
    with pytest.raises(DataError, match="NaN"):
        read_resnet_checkpoint(nan)

    with pytest.raises(DataError, match="cannot cut at 'layer4'"):
        backbone_from_checkpoint(good, stop_at="layer4")

    wrong = ResNetTrunk(ResNetSpec("basic", 8, (StageSpec(1, 8, 8), StageSpec(1, 32, 32))), "layer2")
    with pytest.raises(DataError, match="shapes do not fit"):
        load_trunk_weights(wrong, read_resnet_checkpoint(good), good)


@pytest.fixture(scope="module")
def twin_npz(tmp_path_factory) -> Path:
    from compactvision.data.formats import save_npz

    path = tmp_path_factory.mktemp("bb") / "twin.npz"
    save_npz(make_twin_dataset(6, 160, 2, seed=0, image_size=112), path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bb") / "resnet_small.pth"
    torch.save(_randomised(SMALL, seed=3).state_dict(), path)
    return path


def _trunk_state(teacher) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in teacher.trunk.state_dict().items()}


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory, twin_npz: Path, checkpoint: Path) -> Path:
    """A teacher on the checkpoint's own stem (the paper's arrangement), made through the CLI."""
    out = tmp_path_factory.mktemp("bb") / "run"
    code = main(["teacher", "--data", str(twin_npz), "--preset", "tiny", "--epochs", "2", "--out", str(out),
                 "--backbone", str(checkpoint), "--backbone-stage", "layer2", "--progress", "none"])
    assert code == 0
    return out


def test_pixel_stem_teacher_trains_on_a_frozen_trunk_and_reloads_without_the_checkpoint(
        pixel_run: Path, checkpoint: Path) -> None:
    out = pixel_run
    manifest = read_manifest(out)
    entry = manifest["config"]["teacher"]["backbone"]
    assert entry["stem"] == "pixels" and entry["stop_at"] == "layer2" and entry["trainable"] is False
    assert entry["source"] == {"name": checkpoint.name, "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    assert np.isfinite(manifest["metrics"]["teacher"]["r"]["median"])

    checkpoint_copy = checkpoint.with_name("gone.pth")
    checkpoint.rename(checkpoint_copy)  # a trained run must not need the checkpoint any more
    try:
        teacher = load_teacher(out)
    finally:
        checkpoint_copy.rename(checkpoint)
    assert teacher.vone is None and teacher.adapter is None and teacher.config.first_stride == 1
    original = read_resnet_checkpoint(checkpoint)
    for k, v in teacher.trunk.state_dict().items():  # frozen: weights and BatchNorm statistics as loaded
        assert torch.equal(v, original[k]), k
    assert teacher.attribution_layer is teacher.trunk
    with torch.no_grad():
        assert torch.isfinite(teacher(torch.rand(2, 3, 112, 112))).all()


def test_vone_stem_and_fine_tuning(tmp_path: Path, twin_npz: Path, checkpoint: Path) -> None:
    from compactvision.teacher_stage import train_teacher

    out = tmp_path / "vone"
    train_teacher(twin_npz, out, preset="tiny", epochs=1, progress=False, backbone=checkpoint,
                  backbone_stage="layer2", backbone_stem="vone")
    teacher = load_teacher(out)
    assert teacher.vone is not None and teacher.adapter is not None
    assert teacher.adapter[0].in_channels == teacher.vone.out_channels
    assert teacher.adapter[0].out_channels == SMALL.stem_width
    original = read_resnet_checkpoint(checkpoint)
    assert all(torch.equal(v, original[k]) for k, v in teacher.trunk.state_dict().items())

    tuned_dir = tmp_path / "tuned"
    train_teacher(twin_npz, tuned_dir, preset="tiny", epochs=1, progress=False, backbone=checkpoint,
                  backbone_stage="layer2", finetune_backbone=True)
    tuned = load_teacher(tuned_dir)
    assert tuned.backbone_trainable
    assert not torch.equal(tuned.trunk.state_dict()["layer1.0.conv1.weight"], original["layer1.0.conv1.weight"])
    # Fitting a new session's readout freezes every shared stage, the fine-tuned trunk included.
    tuned.freeze_trunk()
    assert not any(p.requires_grad for p in tuned.trunk.parameters())
    tuned.train()
    assert not tuned.trunk.training


def test_cli_reports_a_bad_backbone_without_writing_a_run(tmp_path: Path, twin_npz: Path, capsys) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 64)
    out = tmp_path / "run"
    code = main(["teacher", "--data", str(twin_npz), "--preset", "tiny", "--out", str(out), "--backbone", str(bad),
                 "--progress", "none"])
    assert code != 0
    assert "bad.pth" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


def test_app_explains_a_teacher_without_a_gabor_bank(monkeypatch, pixel_run: Path) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("COMPACTVISION_RUN", str(pixel_run))
    app = str(Path(__file__).resolve().parents[1] / "app.py")
    at = AppTest.from_file(app, default_timeout=120)
    at.switch_page("pages/gabor_bank.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("pretrained ResNet" in i.value for i in at.info)
    at = AppTest.from_file(app, default_timeout=120)
    at.switch_page("pages/home.py").run()
    assert not at.exception, [e.message for e in at.exception]
