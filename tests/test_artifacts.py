"""Run-directory students and single-file exports: exact round trips, tampering caught."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import compactvision
from compactvision.artifacts import (export_compact, list_students, load_compact, load_student, read_compact_metadata,
                                     save_student, write_manifest)
from compactvision.cli import main
from compactvision.errors import ArtifactError
from compactvision.models.student import CompactStudent, StudentArch

#: The published models' median filters per layer (Cowley et al. 2026).
MEDIAN_CHANNELS = (47, 57, 3, 7, 3)


def trained_looking_student(channels=MEDIAN_CHANNELS, seed: int = 0) -> CompactStudent:
    """A student whose BN statistics and masks are not the defaults, so a lost buffer shows."""
    g = torch.Generator().manual_seed(seed)
    m = CompactStudent(StudentArch(channels=channels, output_names=("n7",)))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for layer in m.layers:
            layer.bn.running_mean.copy_(torch.randn(layer.bn.running_mean.shape, generator=g))
            layer.bn.running_var.copy_(torch.rand(layer.bn.running_var.shape, generator=g) + 0.5)
            layer.bn.num_batches_tracked.fill_(1234)
        m.layers[1].mask[0] = 0.0
    return m.eval()


@pytest.fixture()
def run_with_student(tmp_path):
    model = trained_looking_student()
    run = tmp_path / "run"
    save_student(model, run, "s1_7", extra={"metrics": {"r_heldout": 0.61}})
    save_student(trained_looking_student((4, 4, 3, 3, 3), seed=1), run, "s1_10")
    save_student(trained_looking_student((4, 4, 3, 3, 3), seed=2), run, "s1_2")
    write_manifest(run, kind="test", config={}, metrics={"per_neuron": {"s1_7": {"r_first_half": 0.7}}})
    return run, model


def assert_same_model(a: CompactStudent, b: CompactStudent) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_student_round_trip_and_natural_order(run_with_student):
    run, model = run_with_student
    assert list_students(run) == ["s1_2", "s1_7", "s1_10"]
    loaded = load_student(run, "s1_7")
    assert not loaded.training
    assert loaded.arch == model.arch
    assert_same_model(model, loaded)
    sidecar = json.loads((run / "students" / "neuron_s1_7.json").read_text())
    assert sidecar["architecture"]["channels"] == list(MEDIAN_CHANNELS)
    assert sidecar["n_parameters"] == model.n_parameters()
    assert sidecar["metrics"] == {"r_heldout": 0.61}


def test_load_student_checks_the_manifest_hash(run_with_student):
    run, _ = run_with_student
    path = run / "students" / "neuron_s1_7.safetensors"
    tensors = load_file(path)
    tensors["readout.bias"] = tensors["readout.bias"] + 1.0  # a well-formed file with different weights
    save_file(tensors, path, metadata={"architecture": StudentArch(channels=MEDIAN_CHANNELS).to_json()})
    with pytest.raises(ArtifactError, match="sha256 does not match the manifest"):
        load_student(run, "s1_7")


def test_neuron_ids_that_are_not_file_names_are_refused(tmp_path):
    with pytest.raises(ArtifactError, match="names a file"):
        save_student(trained_looking_student(), tmp_path, "../escape")


def test_export_then_load_is_bit_exact_small_and_self_describing(run_with_student, tmp_path):
    run, model = run_with_student
    out = export_compact(run, "s1_7", tmp_path / "n7.safetensors")
    assert out.stat().st_size < 100_000
    loaded = compactvision.load_compact(out)
    assert_same_model(model, loaded)
    meta = read_compact_metadata(out)
    assert meta["neuron_id"] == "s1_7"
    assert meta["architecture"] == model.arch.to_dict()
    assert meta["source_run"]["run"] == "run" and meta["source_run"]["kind"] == "test"
    assert meta["metrics"] == {"r_heldout": 0.61, "r_first_half": 0.7}
    assert int(meta["n_parameters"]) == model.n_parameters()


def test_tampered_weights_are_rejected(run_with_student, tmp_path):
    run, _ = run_with_student
    out = export_compact(run, "s1_7", tmp_path / "n7.safetensors")
    data = bytearray(out.read_bytes())
    data[-10] ^= 0x01  # one bit of the last tensor's payload
    out.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the one recorded in the file"):
        load_compact(out)


def test_tampered_metadata_is_rejected(run_with_student, tmp_path):
    run, _ = run_with_student
    out = export_compact(run, "s1_7", tmp_path / "n7.safetensors")
    tensors = load_file(out)
    meta = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in read_compact_metadata(out).items()}
    meta["metrics"] = json.dumps({"r_heldout": 0.99})  # a better score than the model earned
    save_file(tensors, out, metadata=meta)
    with pytest.raises(ArtifactError, match="does not match the one recorded in the file"):
        load_compact(out)


def test_truncated_export_is_rejected(run_with_student, tmp_path):
    run, _ = run_with_student
    out = export_compact(run, "s1_7", tmp_path / "n7.safetensors")
    out.write_bytes(out.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_compact(out)


def test_a_run_student_file_is_not_an_export(run_with_student):
    run, _ = run_with_student
    with pytest.raises(ArtifactError, match="not a compactvision compact model"):
        load_compact(run / "students" / "neuron_s1_7.safetensors")


def test_export_command(run_with_student, tmp_path, capsys):
    run, model = run_with_student
    out = tmp_path / "cli.safetensors"
    assert main(["export", str(run), "--neuron", "s1_7", "--out", str(out)]) == 0
    assert_same_model(model, load_compact(out))
    assert str(out) in capsys.readouterr().out
    assert main(["export", str(run), "--neuron", "nope", "--out", str(out)]) == 2
    assert "weights file not found" in capsys.readouterr().err
