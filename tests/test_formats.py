"""Loaders and the writer: round trips, every bad input as a DataError naming the file, and the real V4 data."""
from __future__ import annotations

import datetime
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compactvision.cli import main
from compactvision.data.formats import (NeuralDataset, Session, load_cowley, load_dataset, load_npz,
                                        load_nwb, save_npz, split_images)
from compactvision.data.twin import make_twin_dataset, twin_from_ground_truth
from compactvision.errors import DataError

#: Shapes from the release's README (neurons, images) per session.
COWLEY_SHAPES = {"190923": (33, 1200), "190925": (36, 1200), "190927": (31, 1200), "190928": (24, 1200),
                 "190929": (33, 1200), "201025": (89, 1200), "210224": (67, 800), "210305": (70, 400),
                 "210322": (59, 1200), "210621": (51, 1200)}


def _session(n_neurons=3, n_images=5, n_repeats=2, sid="s1", seed=0) -> Session:
    rng = np.random.default_rng(seed)
    return Session(sid, rng.integers(0, 256, (n_images, 8, 8, 3), dtype=np.uint8),
                   rng.poisson(3.0, (n_neurons, n_images, n_repeats)).astype(float),
                   [f"{sid}_n{k}" for k in range(n_neurons)], {"note": "made in a test"})


def _jpeg(rng: np.random.Generator, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _cowley(root: Path, sid: str = "000001", n_neurons: int = 4, n_images: int = 6, raw_repeats: int | None = None) -> Path:
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / "images" / f"images_{sid}.zip", "w") as z:
        for i in range(n_images):
            z.writestr(f"images_{sid}/image{i + 1:04d}.jpg", _jpeg(rng))
    (root / "responses_repeat_averaged").mkdir(exist_ok=True)
    np.save(root / "responses_repeat_averaged" / f"responses_{sid}.npy", rng.random((n_neurons, n_images)))
    if raw_repeats:
        (root / "responses_raw").mkdir(exist_ok=True)
        raw = rng.random((n_neurons, n_images, raw_repeats))
        raw[:, 0, -1] = np.nan  # image 0 had one repeat fewer
        np.save(root / "responses_raw" / f"responses_{sid}.npy", raw)
    return root


# ---------------------------------------------------------------- .npz layout
def test_npz_round_trip_keeps_everything(tmp_path):
    ds = NeuralDataset([_session(), _session(2, 4, 3, sid="s2", seed=1)], {"study": "test"})
    ds.sessions[0].responses[0, 1, 1] = np.nan
    path = save_npz(ds, tmp_path / "d.npz")
    back = load_npz(path)
    assert [s.session_id for s in back.sessions] == ["s1", "s2"] and back.metadata["study"] == "test"
    for a, b in zip(ds.sessions, back.sessions):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.responses, b.responses, equal_nan=True)
        assert a.neuron_ids == b.neuron_ids and b.metadata == a.metadata
    assert back.ground_truth is None
    with np.load(path, allow_pickle=False) as z:  # the documented layout, readable without pickle
        assert {"format", "format_version", "metadata", "session_ids", "images/s1", "responses/s2"} <= set(z.files)


def test_twin_npz_describes_and_rebuilds_itself(tmp_path):
    ds = make_twin_dataset(8, 12, 2, seed=3, image_size=48)
    back = load_npz(save_npz(ds, tmp_path / "twin.npz"))
    assert back.ground_truth == ds.ground_truth
    twin = twin_from_ground_truth(back.ground_truth, image_size=back.metadata["image_size"])
    s = back.sessions[0]
    rates = twin.rates(s.images)
    assert rates.shape == (8, 12)
    # The saved trials scatter around the rebuilt twin's rates.
    assert np.corrcoef(rates.ravel(), s.mean_responses().ravel())[0, 1] > 0.5


def test_data_twin_command_writes_what_the_loader_reads(tmp_path, capsys):
    out = tmp_path / "t.npz"
    assert main(["data", "twin", "--out", str(out), "--neurons", "8", "--images", "10", "--repeats", "3",
                 "--seed", "2", "--image-size", "48"]) == 0
    ds = load_dataset(out)
    assert ds.sessions[0].responses.shape == (8, 10, 3) and len(ds.ground_truth) == 8
    assert main(["data", "describe", str(out)]) == 0
    text = capsys.readouterr().out
    assert "twin" in text and "reliability" in text and "dot_detector" in text
    assert main(["data", "twin", "--out", str(out), "--neurons", "4", "--images", "10", "--test-images", "4",
                 "--image-size", "32"]) == 0
    assert len(load_dataset(out).sessions[0].metadata["test_indices"]) == 4


def test_split_images_is_a_deterministic_partition():
    a = split_images(100, seed=1)
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(100))
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (80, 10, 10)
    assert all(np.array_equal(a[k], split_images(100, seed=1)[k]) for k in a)
    assert not np.array_equal(a["test"], split_images(100, seed=2)["test"])



def test_a_designated_test_set_is_the_test_split():
    test = np.array([3, 50, 97])
    a = split_images(100, seed=1, test=test)
    assert np.array_equal(a["test"], test)
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(100))
    assert len(a["val"]) == 10 and not np.isin(a["val"], test).any()
    assert all(np.array_equal(a[k], split_images(100, seed=1, test=test)[k]) for k in a)


def test_a_twin_with_a_test_set_repeats_only_it_and_keeps_it_through_npz(tmp_path):
    ds = make_twin_dataset(4, 40, 3, seed=2, image_size=32, test_images=6)
    s = ds.sessions[0]
    test = np.asarray(s.metadata["test_indices"])
    shown = np.sum(~np.isnan(s.responses), axis=2)  # neurons x images: trials per image
    assert len(test) == 6 and (shown[:, test] == 3).all()
    assert (np.delete(shown, test, axis=1) == 1).all()
    assert 6 * 3 + 34 == int(shown[0].sum())  # 52 trials
    save_npz(ds, tmp_path / "t.npz")
    back = load_npz(tmp_path / "t.npz").sessions[0]
    assert back.metadata["test_indices"] == test.tolist()
    with pytest.raises(ValueError, match="test_images"):
        make_twin_dataset(4, 40, 3, test_images=39)


@pytest.mark.parametrize("named, message", [
    ([1, 1, 2], "twice"), ([0, 5], "must lie in"), ([], "non-empty"), (["a"], "non-empty"),
    ([0, 1, 2, 3], "leaves 1 image"),
])
def test_a_bad_designated_test_set_is_refused_naming_the_file(tmp_path, named, message):
    meta = np.array(json.dumps({"test_indices": named}))
    path = _bad_npz(tmp_path, "x.npz", **{"session_metadata/s1": meta})
    with pytest.raises(DataError, match=message) as e:
        load_npz(path)
    assert "x.npz" in str(e.value)


# ----------------------------------------------------------------- bad inputs
def _bad_npz(tmp_path, name, **overrides) -> Path:
    good = tmp_path / "good.npz"
    save_npz(NeuralDataset([_session()]), good)
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(overrides)
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


@pytest.mark.parametrize("case, message", [
    ("empty", "empty file"),
    ("not_zip", "not an .npz"),
    ("truncated", "npz"),
    ("float_images", "uint8"),
    ("rank2_responses", "rank"),
    ("all_nan_neuron", "only NaN"),
    ("count_mismatch", "images but responses for"),
    ("pickled_entry", "pickle"),
])
def test_bad_npz_raises_a_data_error_naming_the_file(tmp_path, case, message):
    s = _session()
    if case == "empty":
        path = tmp_path / "x.npz"
        path.write_bytes(b"")
    elif case == "not_zip":
        path = tmp_path / "x.npz"
        path.write_text("hello")
    elif case == "truncated":
        path = tmp_path / "x.npz"
        save_npz(NeuralDataset([s]), path)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "float_images":
        path = _bad_npz(tmp_path, "x.npz", **{"images/s1": s.images.astype(np.float32)})
    elif case == "rank2_responses":
        path = _bad_npz(tmp_path, "x.npz", **{"responses/s1": s.responses[..., 0]})
    elif case == "all_nan_neuron":
        r = s.responses.copy()
        r[1] = np.nan
        path = _bad_npz(tmp_path, "x.npz", **{"responses/s1": r})
    elif case == "count_mismatch":
        path = _bad_npz(tmp_path, "x.npz", **{"images/s1": s.images[:4]})
    else:
        path = _bad_npz(tmp_path, "x.npz", metadata=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(DataError, match=message) as e:
        load_npz(path)
    assert str(path) in str(e.value)


def test_invalid_dataset_is_refused_and_nothing_is_written(tmp_path):
    s = _session()
    s.responses[0] = np.nan
    with pytest.raises(DataError, match="only NaN"):
        save_npz(NeuralDataset([s]), tmp_path / "out.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case, message", [
    ("truncated_zip", "not a zip"),
    ("not_zip", "not a zip"),
    ("empty_zip_file", "empty file"),
    ("png_member", "not a JPEG"),
    ("count_mismatch", "5 images in images_000001.zip but responses for 6"),
    ("pickle_npy", "pickle"),
    ("pickle_file", "not an .npy array"),
    ("empty_npy", "empty file"),
    ("wrong_dtype", "numeric"),
    ("wrong_rank", "rank 2"),
    ("all_nan_neuron", "only NaN"),
])
def test_bad_cowley_release_raises_a_data_error_naming_the_file(tmp_path, case, message):
    root = _cowley(tmp_path / "release")
    zip_path = root / "images" / "images_000001.zip"
    npy = root / "responses_repeat_averaged" / "responses_000001.npy"
    bad = {"truncated_zip": zip_path, "not_zip": zip_path, "empty_zip_file": zip_path, "png_member": zip_path,
           "count_mismatch": npy}.get(case, npy)
    if case == "truncated_zip":
        zip_path.write_bytes(zip_path.read_bytes()[:-300])
    elif case == "not_zip":
        zip_path.write_bytes(b"\xff\xd8\xff not a zip at all")
    elif case == "empty_zip_file":
        zip_path.write_bytes(b"")
    elif case == "png_member":
        with zipfile.ZipFile(zip_path, "a") as z:
            buf = io.BytesIO()
            Image.new("RGB", (16, 16)).save(buf, format="PNG")
            z.writestr("images_000001/image0007.jpg", buf.getvalue())
    elif case == "count_mismatch":
        with zipfile.ZipFile(zip_path, "w") as z:
            for i in range(5):
                z.writestr(f"images_000001/image{i + 1:04d}.jpg", _jpeg(np.random.default_rng(i)))
    elif case == "pickle_npy":
        np.save(npy, np.array([np.zeros(6)] * 4 + [None], dtype=object), allow_pickle=True)
    elif case == "pickle_file":
        npy.write_bytes(pickle.dumps([1, 2, 3]))
    elif case == "empty_npy":
        npy.write_bytes(b"")
    elif case == "wrong_dtype":
        np.save(npy, np.array([["a"] * 6] * 4))
    elif case == "wrong_rank":
        np.save(npy, np.zeros((4, 6, 2)))
    else:
        r = np.random.default_rng(0).random((4, 6))
        r[2] = np.nan
        np.save(npy, r)
    with pytest.raises(DataError, match=message) as e:
        load_cowley(root)
    assert str(bad) in str(e.value)


def test_pickle_payload_is_never_executed(tmp_path):
    root = _cowley(tmp_path / "release")
    npy = root / "responses_repeat_averaged" / "responses_000001.npy"
    marker = tmp_path / "pwned"
    # An object array whose unpickling would create `marker`.
    payload = np.array([_Trap(str(marker))], dtype=object)
    np.save(npy, payload, allow_pickle=True)
    with pytest.raises(DataError, match="pickle"):
        load_cowley(root)
    assert not marker.exists()


class _Trap:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


# ------------------------------------------------------------- Cowley layout
def test_cowley_layout_loads_with_raw_repeats_taking_precedence(tmp_path):
    root = _cowley(tmp_path / "a", n_neurons=4, n_images=6)
    ds = load_cowley(root)
    (s,) = ds.sessions
    assert s.images.shape == (6, 16, 16, 3) and s.responses.shape == (4, 6, 1)
    assert s.neuron_ids[0] == "000001_neuron0" and s.metadata["response_kind"] == "repeat_averaged"
    raw = load_cowley(_cowley(tmp_path / "b", raw_repeats=3)).sessions[0]
    assert raw.responses.shape == (4, 6, 3) and np.isnan(raw.responses[:, 0, -1]).all()
    assert raw.metadata["response_kind"] == "raw"
    assert load_dataset(root).sessions[0].n_images == 6
    with pytest.raises(DataError, match="no responses for session"):
        load_cowley(root, sessions=["999999"])


def test_members_are_read_in_name_order(tmp_path):
    root = _cowley(tmp_path / "r", n_images=3)
    zip_path = root / "images" / "images_000001.zip"
    shades = {"image0002.jpg": 200, "image0003.jpg": 10, "image0001.jpg": 100}
    with zipfile.ZipFile(zip_path, "w") as z:  # written out of order on purpose
        for name, v in shades.items():
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(buf, format="JPEG")
            z.writestr(f"images_000001/{name}", buf.getvalue())
    means = load_cowley(root).sessions[0].images.mean(axis=(1, 2, 3))
    assert np.allclose(means, [100, 200, 10], atol=3)


# ----------------------------------------------------------------------- NWB
def _nwb(path: Path, as_trials: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.base import ImageReferences, Images
    from pynwb.image import IndexSeries, RGBImage

    nwb = NWBFile(session_description="test", identifier="t", session_id="nwb1",
                  session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc))
    imgs = np.random.default_rng(0).integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    frames = [RGBImage(name=f"img{i}", data=imgs[i]) for i in range(5)]
    template = Images(name="images", images=frames, description="stimuli",
                      order_of_images=ImageReferences(name="order_of_images", data=frames))
    nwb.add_stimulus_template(template)
    index = np.array([0, 1, 2, 3, 0, 1, 2, 0])  # image 4 never shown; image 0 three times
    resp = np.arange(8 * 3, dtype=float).reshape(8, 3)
    if as_trials:
        nwb.add_trial_column("image_index", "template index")
        nwb.add_trial_column("responses", "spike count per neuron")
        for p in range(8):
            nwb.add_trial(start_time=float(p), stop_time=p + 0.5, image_index=int(index[p]), responses=resp[p])
    else:
        nwb.add_stimulus(IndexSeries(name="presentations", data=index.astype(np.uint32), indexed_images=template,
                                     unit="N/A", timestamps=np.arange(8.0)))
        nwb.add_acquisition(TimeSeries(name="responses", data=resp, unit="spikes", timestamps=np.arange(8.0)))
    with NWBHDF5IO(str(path), "w") as f:
        f.write(nwb)
    return imgs, index, resp


@pytest.mark.parametrize("as_trials", [True, False], ids=["trials_table", "time_series"])
def test_nwb_presentations_become_repeats(tmp_path, as_trials):
    pytest.importorskip("pynwb")
    path = tmp_path / "s.nwb"
    imgs, index, resp = _nwb(path, as_trials)
    (s,) = load_dataset(path).sessions
    assert s.session_id == "nwb1" and s.images.shape == (4, 12, 12, 3) and np.array_equal(s.images, imgs[:4])
    assert s.responses.shape == (3, 4, 3)
    assert np.array_equal(s.responses[:, 0], resp[index == 0].T)
    assert np.isnan(s.responses[:, 3, 1:]).all() and s.metadata["template_index"] == [0, 1, 2, 3]


def test_unreadable_nwb_and_unknown_formats_raise(tmp_path):
    bad = tmp_path / "x.nwb"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable NWB") as e:
        load_nwb(bad)
    assert str(bad) in str(e.value)
    other = tmp_path / "x.csv"
    other.write_text("1,2")
    with pytest.raises(DataError, match="unknown dataset format"):
        load_dataset(other)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing.npz")


# ---------------------------------------------------------- the real V4 data
@pytest.fixture(scope="module")
def cowley(cowley_dir):
    return load_cowley(cowley_dir)


def test_every_real_session_loads_with_the_readme_shapes(cowley):
    assert {s.session_id: (s.n_neurons, s.n_images) for s in cowley.sessions} == COWLEY_SHAPES
    for s in cowley.sessions:
        assert s.images.shape[1:] == (112, 112, 3) and s.images.dtype == np.uint8 and s.n_repeats == 1
        assert np.isfinite(s.responses).all() and s.responses.min() >= 0


def test_describe_works_on_the_real_data(cowley_dir, capsys):
    assert main(["data", "describe", "--json", str(cowley_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {row["session"]: (row["neurons"], row["images"]) for row in summary["sessions"]} == COWLEY_SHAPES
    assert all(row["median_reliability"] is None for row in summary["sessions"])  # repeat-averaged: no repeats
