"""Import of the published Cowley et al. compact models: safe loading, exact forward, accuracy."""
from __future__ import annotations

import builtins
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compactvision.artifacts import (export_compact, list_students, load_compact, load_student, read_compact_metadata,
                                     read_manifest)
from compactvision.cli import main
from compactvision.cowley import (N_ARRAYS, evaluate_published, find_published_models, import_cowley,
                                  load_published_arrays, load_published_model, published_to_student)
from compactvision.data.formats import read_jpeg_zip
from compactvision.errors import ArtifactError
from conftest import load_benchmark

MEAN_RGB = np.array([116.222, 109.270, 100.381])
STRIDES = (1, 2, 2, 1, 1)


# ------------------------------------------------ an independent Keras forward
def _same_pad(x: np.ndarray, k: int, s: int) -> tuple[np.ndarray, int]:
    """TF "same": out = ceil(n / s); the odd padding pixel goes after."""
    n = x.shape[1]
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    before = total // 2
    return np.pad(x, ((0, 0), (before, total - before), (before, total - before), (0, 0))), out


def _windows(x: np.ndarray, k: int, s: int):
    xp, out = _same_pad(x, k, s)
    for dy in range(k):
        for dx in range(k):
            yield dy, dx, xp[:, dy:dy + s * out:s, dx:dx + s * out:s, :]


def keras_forward(arrays: list[np.ndarray], images: np.ndarray) -> np.ndarray:
    """The published Keras model in float64 NumPy, NHWC, written from the release README alone."""
    x = images.astype(np.float64) - MEAN_RGB
    it = iter(a.astype(np.float64) for a in arrays)
    for layer, s in enumerate(STRIDES):
        if layer == 0:
            kernel = next(it)  # (5, 5, 3, C0)
            x = sum(np.einsum("nhwc,cd->nhwd", win, kernel[dy, dx]) for dy, dx, win in _windows(x, 5, s))
        else:
            depthwise, pointwise = next(it), next(it)  # (5, 5, C, 1), (1, 1, C, C')
            x = sum(win * depthwise[dy, dx, :, 0] for dy, dx, win in _windows(x, 5, s))
            x = np.einsum("nhwc,cd->nhwd", x, pointwise[0, 0])
        x = x + next(it)
        gamma, beta, mean, var = next(it), next(it), next(it), next(it)
        x = np.maximum(gamma * (x - mean) / np.sqrt(var + 1e-3) + beta, 0.0)
    dense, bias = next(it), next(it)
    return x.reshape(len(x), -1) @ dense[:, 0] + bias[0]


def keras_arrays(channels, seed: int = 0) -> list[np.ndarray]:
    """Random weights in the release's layout: 36 float32 arrays in Keras layer order."""
    rng = np.random.default_rng(seed)
    out, c_in = [], 3
    for i, c in enumerate(channels):
        if i == 0:
            out.append(rng.normal(0, 0.02, (5, 5, 3, c)))
        else:
            out += [rng.normal(0, 0.2, (5, 5, c_in, 1)), rng.normal(0, 0.3, (1, 1, c_in, c))]
        out += [rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                rng.normal(0, 1, c), rng.uniform(0.5, 3, c)]
        c_in = c
    out += [rng.normal(0, 0.01, (28 * 28 * c_in, 1)), rng.normal(0, 0.1, 1)]
    return [a.astype(np.float32) for a in out]


def save_release_file(path, arrays) -> None:
    """What the release did: np.save of an object array (saving pickles; we never load that way)."""
    obj = np.empty(len(arrays), dtype=object)
    obj[:] = arrays
    np.save(path, obj, allow_pickle=True)


def fake_release(root, session="100101", n_models=2, n_images=8, channels=(6, 5, 3, 3, 3)):
    """A miniature release: weights, nums_filters, a JPEG archive and responses.

    The responses are each model's own predictions on the decoded images, so a
    correct import scores r = 1 on both halves.
    """
    weights, nums = root / "compact_models" / "weights_npy", root / "compact_models" / "nums_filters"
    for d in (weights, nums, root / "images", root / "responses_repeat_averaged"):
        d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(root / "images" / f"images_{session}.zip", "w") as z:
        for i in range(n_images):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buf, "JPEG")
            z.writestr(f"images_{session}/image{i + 1:04d}.jpg", buf.getvalue())
    images = read_jpeg_zip(root / "images" / f"images_{session}.zip")
    responses = []
    for k in range(n_models):
        arrays = keras_arrays(channels, seed=k)
        save_release_file(weights / f"compact_model_{session}_neuron{k}.npy", arrays)
        np.save(nums / f"compact_model_{session}_neuron{k}.npy", np.array(channels))
        responses.append(keras_forward(arrays, images))
    np.save(root / "responses_repeat_averaged" / f"responses_{session}.npy", np.array(responses))
    return root


# ------------------------------------------------------- refusing bad pickles
class RunsCode:
    """Unpickling this object calls `func(arg)`: what a malicious weights file does."""

    def __init__(self, func, arg) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def write_npy_with_payload(path, payload: bytes) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (N_ARRAYS,)})
        f.write(payload)


@pytest.mark.parametrize("attack", ["eval", "exec", "system", "nested"])
def test_code_executing_payloads_are_refused_and_never_run(tmp_path, attack):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    if attack == "eval":
        payload = pickle.dumps(RunsCode(builtins.eval, code), protocol=3)
    elif attack == "exec":
        payload = pickle.dumps(RunsCode(builtins.exec, code), protocol=3)
    elif attack == "system":
        payload = pickle.dumps(RunsCode(os.system, f"touch {marker}"), protocol=3)
    else:  # legitimate-looking: an object array of real weights with one poisoned entry
        obj = np.empty(N_ARRAYS, dtype=object)
        obj[:] = keras_arrays((4, 4, 3, 3, 3))
        obj[5] = RunsCode(builtins.exec, code)
        payload = pickle.dumps(obj, protocol=3)
    path = tmp_path / "compact_model_1_neuron0.npy"
    write_npy_with_payload(path, payload)
    with pytest.raises(ArtifactError, match="refused to unpickle"):
        load_published_arrays(path)
    assert not marker.exists()
    if attack in ("eval", "exec", "nested"):
        # Control: the same bytes given to an unrestricted unpickler do run (so the refusal is what protects).
        pickle.loads(payload)
        assert marker.exists()


def test_well_formed_pickles_of_the_wrong_thing_are_refused(tmp_path):
    obj = np.empty(N_ARRAYS, dtype=object)
    obj[:] = keras_arrays((4, 4, 3, 3, 3))
    obj[3] = np.array(["text"])
    path = tmp_path / "m.npy"
    np.save(path, obj, allow_pickle=True)
    with pytest.raises(ArtifactError, match="entry 3 is ndarray <U4, not a float array"):
        load_published_arrays(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ArtifactError, match="unreadable pickled payload"):
        load_published_arrays(path)
    np.save(path, np.zeros(3))
    with pytest.raises(ArtifactError, match="expected an object array"):
        load_published_arrays(path)


# ------------------------------------------------------------- exact forward
def test_converted_model_matches_the_numpy_keras_forward(tmp_path):
    arrays = keras_arrays((6, 5, 3, 4, 3), seed=1)
    path = tmp_path / "m.npy"
    save_release_file(path, arrays)
    loaded = load_published_arrays(path)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, loaded))
    student = published_to_student(loaded, "x_0")
    images = np.random.default_rng(2).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    ref = keras_forward(arrays, images)
    with torch.no_grad():
        ours = student(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).numpy()[:, 0]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_shapes_that_do_not_chain_are_refused():
    arrays = keras_arrays((6, 5, 3, 4, 3))
    arrays[6] = arrays[6][:, :, :4]  # layer-1 depthwise kernel for 4 channels after a 6-channel layer
    with pytest.raises(ArtifactError, match="layer 1"):
        published_to_student(arrays)


def test_import_scores_and_exports_a_fake_release(tmp_path, capsys):
    root = fake_release(tmp_path / "release")
    run = tmp_path / "run"
    assert main(["import-cowley", str(root / "compact_models"), "--out", str(run), "--device", "cpu"]) == 0
    assert "median r 1.000 on the held-out half" in capsys.readouterr().out
    manifest = read_manifest(run)
    assert manifest["kind"] == "imported-cowley"
    assert list_students(run) == ["100101_neuron0", "100101_neuron1"]
    assert manifest["metrics"]["compression"]["r_heldout"]["median"] == pytest.approx(1.0, abs=1e-6)
    for nid in ("100101_neuron0", "100101_neuron1"):
        assert manifest["metrics"]["per_neuron"][nid]["r_heldout"] == pytest.approx(1.0, abs=1e-6)
    out = export_compact(run, "100101_neuron1", tmp_path / "n1.safetensors")
    assert read_compact_metadata(out)["metrics"]["r_heldout"] == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(load_compact(out).readout.weight, load_student(run, "100101_neuron1").readout.weight)
    with pytest.raises(ArtifactError, match="already has students"):
        import_cowley(root, run)


def test_an_import_stopped_part_way_resumes_without_converting_a_model_twice(tmp_path, monkeypatch):
    import compactvision.cowley.importing as importing

    root = fake_release(tmp_path / "release", n_models=3)
    run = tmp_path / "run"

    def stop_after_two(stage, done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_cowley(root, run, progress=stop_after_two, device="cpu")
    assert list_students(run) == ["100101_neuron0", "100101_neuron1"] and not (run / "manifest.json").exists()

    converted = []
    real = importing.load_published_model
    monkeypatch.setattr(importing, "load_published_model", lambda m: converted.append(m.neuron_id) or real(m))
    import_cowley(root, run, device="cpu")
    assert converted == ["100101_neuron2"]  # the two written before the stop were kept as they were
    assert list_students(run) == ["100101_neuron0", "100101_neuron1", "100101_neuron2"]
    # the scores kept from before the stop reach the manifest as an uninterrupted import's do
    resumed, whole = (read_manifest(r)["metrics"] for r in (run, import_cowley(root, tmp_path / "whole", device="cpu")))
    assert resumed["per_neuron"].keys() == whole["per_neuron"].keys()
    for nid, scores in whole["per_neuron"].items():
        np.testing.assert_allclose([resumed["per_neuron"][nid][k] for k in sorted(scores)],
                                   [scores[k] for k in sorted(scores)], equal_nan=True)
    assert resumed["compression"]["n_students"] == 3 and resumed["sessions"] == whole["sessions"]


def test_an_unfinished_import_of_other_models_is_not_mixed_into_a_new_one(tmp_path):
    root = fake_release(tmp_path / "release", n_models=3)
    run = tmp_path / "run"
    import_cowley(root, run, evaluate=False)
    (run / "manifest.json").unlink()  # as if stopped before the end
    with pytest.raises(ArtifactError, match="unfinished import of other models"):
        import_cowley(root, run, evaluate=False, per_session=1)


def test_a_session_without_images_is_imported_and_says_why_it_has_no_score(tmp_path, capsys):
    root = fake_release(tmp_path / "release")
    (root / "images" / "images_100101.zip").unlink()
    run = tmp_path / "run"
    assert main(["import-cowley", str(root / "compact_models"), "--out", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "session 100101: imported without a score" in out and "images_100101.zip is missing" in out
    assert list_students(run) == ["100101_neuron0", "100101_neuron1"]
    assert "images_100101.zip is missing" in read_manifest(run)["metrics"]["not_scored"]["100101"]


def test_cowley_benchmark_says_which_session_it_skips_and_why(tmp_path, capsys):
    bench = load_benchmark("cowley")
    root = fake_release(tmp_path / "release")
    (root / "images" / "images_100101.zip").unlink()
    assert bench.main(["--release", str(root), "--sessions", "100101"]) == 1
    err = capsys.readouterr().err
    assert "session 100101 skipped" in err and "images_100101.zip" in err


def test_nums_filters_that_disagree_are_refused(tmp_path):
    root = fake_release(tmp_path / "release", n_models=1)
    np.save(root / "compact_models" / "nums_filters" / "compact_model_100101_neuron0.npy", np.array([6, 5, 3, 3, 4]))
    with pytest.raises(ArtifactError, match=r"nums_filters records \[6, 5, 3, 3, 4\]"):
        import_cowley(root, tmp_path / "run", evaluate=False)


# ------------------------------------------------------ the real release
@pytest.fixture(scope="module")
def published(cowley_dir):
    return find_published_models(cowley_dir)


def test_every_published_model_loads_and_agrees_with_nums_filters(published):
    assert len(published) == 33 + 89
    params = [load_published_model(m).n_parameters() for m in published]
    assert 5_225 <= min(params) and max(params) <= 25_038


def test_published_models_match_the_numpy_keras_forward(cowley_dir, published):
    images = read_jpeg_zip(cowley_dir / "images" / "images_190923.zip")[[0, 700, 1199]]
    by_size = sorted(published, key=lambda m: load_published_model(m).n_parameters())
    for m in (by_size[0], by_size[len(by_size) // 2], by_size[-1]):
        ref = keras_forward(load_published_arrays(m.weights), images)
        with torch.no_grad():
            ours = load_published_model(m)(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).numpy()[:, 0]
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.slow
@pytest.mark.parametrize("session, published_median_r", [("190923", 0.636), ("201025", 0.688)])
def test_imported_models_reach_the_published_accuracy(cowley_dir, session, published_median_r):
    if not os.environ.get("COMPACTVISION_FULL_COWLEY"):
        pytest.skip("CPU-minutes: set COMPACTVISION_FULL_COWLEY=1 to score every published model")
    result = evaluate_published(cowley_dir, session, first_half=False)
    assert result["median_r_heldout"] == pytest.approx(published_median_r, abs=0.01)
