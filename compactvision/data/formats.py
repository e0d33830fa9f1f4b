"""The one dataset type every stage consumes, and the loaders that produce it.

A recording is a list of sessions. Each session has its own images (uint8,
N x H x W x C) and responses (neurons x images x repeats, NaN where a repeat is
missing). Keeping the repeats, rather than only their mean, is what lets the
metrics correct for trial noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compactvision.errors import DataError


@dataclass
class Session:
    """One recording session: the images shown and every neuron's responses to them."""

    session_id: str
    images: np.ndarray          # uint8, (n_images, H, W, C), C in {1, 3}
    responses: np.ndarray       # float, (n_neurons, n_images, n_repeats); NaN = missing repeat
    neuron_ids: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_neurons(self) -> int:
        return int(self.responses.shape[0])

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_repeats(self) -> int:
        return int(self.responses.shape[2])

    def mean_responses(self) -> np.ndarray:
        """Repeat-averaged responses (neurons x images), ignoring missing repeats."""
        with np.errstate(invalid="ignore"):
            return np.nanmean(self.responses, axis=2)

    def validate(self, source: str | None = None) -> "Session":
        """Raise DataError naming `source` for any shape, dtype or NaN problem."""
        validate_session(self, source)
        return self


@dataclass
class NeuralDataset:
    """Sessions plus dataset-level metadata (and, for the twin, its ground truth)."""

    sessions: list[Session]
    metadata: dict[str, Any] = field(default_factory=dict)
    ground_truth: list[dict[str, Any]] | None = None  # one record per neuron, twin only

    def session(self, session_id: str) -> Session:
        for s in self.sessions:
            if s.session_id == session_id:
                return s
        raise KeyError(f"no session {session_id!r}; have {[s.session_id for s in self.sessions]}")

    @property
    def n_neurons(self) -> int:
        return sum(s.n_neurons for s in self.sessions)


def validate_session(s: Session, source: str | None = None) -> None:
    """The checks every loader shares; errors name the file and the problem."""
    src = source or s.metadata.get("source")
    if not isinstance(s.images, np.ndarray) or s.images.dtype != np.uint8:
        raise DataError(f"session {s.session_id}: images must be uint8, got {getattr(s.images, 'dtype', type(s.images))}", src)
    if s.images.ndim != 4 or s.images.shape[-1] not in (1, 3):
        raise DataError(f"session {s.session_id}: images must be N x H x W x C with C in (1, 3), got shape {s.images.shape}", src)
    if s.images.shape[0] == 0:
        raise DataError(f"session {s.session_id}: no images", src)
    r = s.responses
    if not isinstance(r, np.ndarray) or not np.issubdtype(r.dtype, np.floating):
        raise DataError(f"session {s.session_id}: responses must be floating point, got {getattr(r, 'dtype', type(r))}", src)
    if r.ndim != 3:
        raise DataError(f"session {s.session_id}: responses must be neurons x images x repeats (rank 3), got rank {r.ndim}", src)
    if r.shape[0] == 0:
        raise DataError(f"session {s.session_id}: no neurons", src)
    if r.shape[1] != s.images.shape[0]:
        raise DataError(f"session {s.session_id}: {s.images.shape[0]} images but responses for {r.shape[1]}", src)
    if len(s.neuron_ids) != r.shape[0]:
        raise DataError(f"session {s.session_id}: {len(s.neuron_ids)} neuron ids for {r.shape[0]} neurons", src)
    if np.isinf(r).any():
        raise DataError(f"session {s.session_id}: responses contain infinities", src)
    all_nan = np.isnan(r).all(axis=(1, 2))
    if all_nan.any():
        bad = [s.neuron_ids[i] for i in np.flatnonzero(all_nan)[:5]]
        raise DataError(f"session {s.session_id}: neuron(s) {bad} have only NaN responses", src)
    no_data_image = np.isnan(r).all(axis=(0, 2))
    if no_data_image.any():
        raise DataError(f"session {s.session_id}: {int(no_data_image.sum())} image(s) have no response from any neuron", src)


# ------------------------------------------------------------------- splits
def split_images(n_images: int, seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """Deterministic random train/val/test image indices (each sorted, together a partition)."""
    if n_images < 1:
        raise ValueError(f"need at least one image, got {n_images}")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"fractions must be >= 0 and leave some training images, got val={val_fraction}, test={test_fraction}")
    order = np.random.default_rng(seed).permutation(n_images)
    n_test, n_val = int(round(test_fraction * n_images)), int(round(val_fraction * n_images))
    return {"train": np.sort(order[n_test + n_val:]), "val": np.sort(order[n_test:n_test + n_val]),
            "test": np.sort(order[:n_test])}


# ------------------------------------------------------------------ helpers
def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError("file not found", path)
    if path.stat().st_size == 0:
        raise DataError("empty file", path)


def _as_responses(arr: np.ndarray, path: Path) -> np.ndarray:
    """Spike counts may come as integers; anything else that is not real-valued is refused."""
    if arr.dtype.kind in "iu":
        return arr.astype(np.float64)
    if arr.dtype.kind != "f":
        raise DataError(f"responses must be numeric (float or integer), got dtype {arr.dtype}", path)
    return arr


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(6)


def _np_load(path: Path, what: str) -> Any:
    """np.load without pickle (an array, or an open .npz); every failure is a DataError naming the file."""
    import zipfile

    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):
            raise DataError("holds Python objects that need pickle to load; refusing to unpickle a data file", path) from None
        raise DataError(f"not {what} ({e})", path) from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"not {what}, or truncated ({e})", path) from None


def _load_npy(path: Path) -> np.ndarray:
    """np.load without pickle; every failure is a DataError naming the file."""
    _require_file(path)
    if not _magic(path).startswith(_NPY_MAGIC):
        raise DataError("not an .npy array (no NumPy header); pickles and other formats are refused", path)
    arr = _np_load(path, "a readable .npy array")
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise DataError("is an .npz archive, expected a single .npy array", path)
    return arr


# --------------------------------------------------------------- .npz layout
#: Layout written by `save_npz` (version 1). Every entry is a plain array: no pickled objects.
#:
#:   format                     str   "compactvision-dataset"
#:   format_version             int   1
#:   metadata                   str   JSON object (dataset level)
#:   ground_truth               str   (n_neurons,) one JSON object per neuron; only for the twin
#:   session_ids                str   (n_sessions,)
#:   images/<session>           uint8 (n_images, H, W, C), C in {1, 3}
#:   responses/<session>        float (n_neurons, n_images, n_repeats), NaN = missing repeat
#:   neuron_ids/<session>       str   (n_neurons,)
#:   session_metadata/<session> str   JSON object
NPZ_FORMAT = "compactvision-dataset"
NPZ_VERSION = 1


def save_npz(dataset: NeuralDataset, path: str | Path, compress: bool = True) -> Path:
    """Validate `dataset` and write it atomically in the documented .npz layout."""
    import io
    import json

    from compactvision.artifacts import _json_default, atomic_write_bytes

    path = Path(path)
    for s in dataset.sessions:
        validate_session(s, str(path))
    arrays: dict[str, np.ndarray] = {
        "format": np.array(NPZ_FORMAT), "format_version": np.array(NPZ_VERSION),
        "metadata": np.array(json.dumps(dataset.metadata, default=_json_default)),
        "session_ids": np.array([s.session_id for s in dataset.sessions], dtype=str),
    }
    if dataset.ground_truth is not None:
        arrays["ground_truth"] = np.array([json.dumps(r, default=_json_default) for r in dataset.ground_truth], dtype=str)
    for s in dataset.sessions:
        arrays[f"images/{s.session_id}"] = s.images
        arrays[f"responses/{s.session_id}"] = s.responses
        arrays[f"neuron_ids/{s.session_id}"] = np.array(s.neuron_ids, dtype=str)
        arrays[f"session_metadata/{s.session_id}"] = np.array(json.dumps(s.metadata, default=_json_default))
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | Path) -> NeuralDataset:
    """Read a dataset written by `save_npz`; any malformed content raises DataError naming the file."""
    import json
    import zipfile
    import zlib

    path = Path(path)
    _require_file(path)
    if not _magic(path).startswith(_ZIP_MAGIC):
        raise DataError("not an .npz archive (no zip header)", path)
    archive = _np_load(path, "an .npz archive")
    if isinstance(archive, np.ndarray):
        raise DataError("is a single .npy array, not a compactvision .npz dataset", path)

    def get(key: str) -> np.ndarray:
        if key not in archive.files:
            raise DataError(f"missing entry {key!r}; not a compactvision .npz dataset (see formats.save_npz)", path)
        try:
            return archive[key]
        except ValueError as e:
            if "pickle" in str(e):
                raise DataError(f"entry {key!r} needs pickle to load; refusing to unpickle a data file", path) from None
            raise DataError(f"entry {key!r} is unreadable ({e})", path) from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f"entry {key!r} is truncated or corrupt ({e})", path) from None

    def get_json(key: str) -> Any:
        try:
            return json.loads(str(get(key)))
        except json.JSONDecodeError as e:
            raise DataError(f"entry {key!r} is not valid JSON ({e})", path) from None

    with archive:
        if str(get("format")) != NPZ_FORMAT:
            raise DataError(f"format is {str(get('format'))!r}, expected {NPZ_FORMAT!r}", path)
        if int(get("format_version")) > NPZ_VERSION:
            raise DataError(f"format version {int(get('format_version'))} is newer than this library ({NPZ_VERSION})", path)
        sessions = []
        for sid in get("session_ids").tolist():
            s = Session(sid, get(f"images/{sid}"), get(f"responses/{sid}"), [str(n) for n in get(f"neuron_ids/{sid}").tolist()],
                        get_json(f"session_metadata/{sid}"))
            validate_session(s, str(path))
            sessions.append(s)
        if not sessions:
            raise DataError("holds no sessions", path)
        ground_truth = None
        if "ground_truth" in archive.files:
            try:
                ground_truth = [json.loads(r) for r in get("ground_truth").tolist()]
            except json.JSONDecodeError as e:
                raise DataError(f"ground_truth is not valid JSON ({e})", path) from None
            n = sum(s.n_neurons for s in sessions)
            if len(ground_truth) != n:
                raise DataError(f"{len(ground_truth)} ground-truth records for {n} neurons", path)
        metadata = get_json("metadata")
    metadata["source"] = str(path)
    return NeuralDataset(sessions, metadata, ground_truth)


# ------------------------------------------------------ Cowley et al. V4 layout
def read_jpeg_zip(path: str | Path) -> np.ndarray:
    """All JPEG members of a zip, in name order, as uint8 N x H x W x 3 (RGB as PIL decodes them)."""
    import io
    import zipfile
    import zlib

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _require_file(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"not a zip archive, or truncated ({e})", path) from None
    with archive:
        names = sorted(n for n in archive.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/"))
        if not names:
            raise DataError("the archive holds no images", path)
        out: np.ndarray | None = None
        for i, name in enumerate(names):
            try:
                data = archive.read(name)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                raise DataError(f"member {name!r} is truncated or corrupt ({e})", path) from None
            if not data.startswith(b"\xff\xd8\xff"):
                raise DataError(f"member {name!r} is not a JPEG", path)
            try:
                img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise DataError(f"member {name!r} is a corrupt JPEG ({e})", path) from None
            if out is None:
                out = np.empty((len(names),) + img.shape, np.uint8)
            elif img.shape != out.shape[1:]:
                raise DataError(f"member {name!r} is {img.shape[1]}x{img.shape[0]}, the others {out.shape[2]}x{out.shape[1]}", path)
            out[i] = img
    return out


def cowley_sessions(root: str | Path) -> list[str]:
    """Session ids with responses under `root` (repeat-averaged or raw)."""
    root = Path(root)
    return sorted({p.stem[len("responses_"):] for d in ("responses_repeat_averaged", "responses_raw")
                   if (root / d).is_dir() for p in (root / d).glob("responses_*.npy")})


def load_cowley(root: str | Path, sessions: Sequence[str] | None = None) -> NeuralDataset:
    """The public Cowley et al. V4 release layout::

        images/images_<session>.zip                   JPEGs in name order; image i = member i
        responses_repeat_averaged/responses_<session>.npy   (neurons, images)
        responses_raw/responses_<session>.npy         (neurons, images, repeats), NaN-padded

    Raw repeats, where present, take precedence; repeat-averaged responses
    become a repeats axis of length 1. Neuron k of a session is named
    "<session>_neuron<k>" (k from 0), as the published compact models are.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("not a directory (expected the Cowley et al. V4 release layout)", root)
    found = cowley_sessions(root)
    if not found:
        raise DataError("no responses_repeat_averaged/ or responses_raw/ responses_<session>.npy files: "
                        "not the Cowley et al. V4 release layout", root)
    wanted = found if sessions is None else [str(s) for s in sessions]
    missing = [s for s in wanted if s not in found]
    if missing:
        raise DataError(f"no responses for session(s) {missing}; found {found}", root)
    out = []
    for sid in wanted:
        raw = root / "responses_raw" / f"responses_{sid}.npy"
        resp_path = raw if raw.is_file() else root / "responses_repeat_averaged" / f"responses_{sid}.npy"
        resp = _as_responses(_load_npy(resp_path), resp_path)
        expected = 3 if resp_path == raw else 2
        if resp.ndim != expected:
            raise DataError(f"responses must have rank {expected} ({'neurons x images x repeats' if expected == 3 else 'neurons x images'}), "
                            f"got shape {resp.shape}", resp_path)
        if expected == 2:
            resp = resp[:, :, None]
        zip_path = root / "images" / f"images_{sid}.zip"
        images = read_jpeg_zip(zip_path)
        if len(images) != resp.shape[1]:
            raise DataError(f"{len(images)} images in {zip_path.name} but responses for {resp.shape[1]} images", resp_path)
        s = Session(sid, images, resp, [f"{sid}_neuron{k}" for k in range(resp.shape[0])],
                    {"source": str(resp_path), "images_file": str(zip_path),
                     "response_kind": "raw" if expected == 3 else "repeat_averaged"})
        validate_session(s, str(resp_path))
        out.append(s)
    return NeuralDataset(out, {"source": str(root), "layout": "cowley_v4"})


# ---------------------------------------------------------------------- NWB
def load_nwb(path: str | Path, images_name: str | None = None, responses_name: str = "responses") -> NeuralDataset:
    """One session from an NWB file (needs pynwb: `pip install compactvision[nwb]`).

    Accepted shape:

    * images: in ``stimulus_template``, an ``ImageSeries`` with uint8 data
      (N, H, W) or (N, H, W, 3), or an ``Images`` container of grayscale/RGB
      images (in ``order_of_images`` when set). Give `images_name` when the
      file holds several templates.
    * presentations and responses, either

      a. the ``trials`` table with an integer column ``image_index`` (into the
         template) and a column ``responses`` holding one value per neuron; or
      b. an ``IndexSeries`` in ``stimulus`` (template index per presentation)
         and a ``TimeSeries`` named `responses_name` in ``acquisition`` or a
         processing module, data (presentations, neurons).

    Presentations of the same image become its repeats (NaN-padded to the
    most-repeated image). Images never presented are dropped; the template
    index of each kept image is in the session metadata.
    """
    path = Path(path)
    _require_file(path)
    try:
        from pynwb import NWBHDF5IO
    except ImportError:  # pragma: no cover - optional dependency
        raise DataError("reading NWB needs pynwb (pip install 'compactvision[nwb]')", path) from None
    try:
        io = NWBHDF5IO(str(path), mode="r")
        nwb = io.read()
    except Exception as e:  # h5py and hdmf raise many types for a file that is not NWB
        raise DataError(f"not a readable NWB file ({type(e).__name__}: {e})", path) from None
    with io:
        images = _nwb_images(nwb, images_name, path)
        index, responses = _nwb_presentations(nwb, responses_name, path)
        sid = str(nwb.session_id or path.stem)
    responses = _as_responses(responses, path)
    if responses.ndim != 2 or responses.shape[0] != index.shape[0]:
        raise DataError(f"responses must be presentations x neurons with one row per presentation ({index.shape[0]}), "
                        f"got shape {responses.shape}", path)
    if index.size and (index.min() < 0 or index.max() >= len(images)):
        raise DataError(f"image indices must lie in [0, {len(images)}), got [{index.min()}, {index.max()}]", path)
    shown = np.unique(index)
    counts = np.bincount(index, minlength=len(images))
    out = np.full((responses.shape[1], len(shown), int(counts.max(initial=1))), np.nan)
    slot = np.searchsorted(shown, index)
    seen = np.zeros(len(shown), int)
    for p, k in enumerate(slot):
        out[:, k, seen[k]] = responses[p]
        seen[k] += 1
    s = Session(sid, images[shown], out, [f"{sid}_unit{k}" for k in range(out.shape[0])],
                {"source": str(path), "template_index": shown.tolist()})
    validate_session(s, str(path))
    return NeuralDataset([s], {"source": str(path), "layout": "nwb"})


def _nwb_images(nwb: Any, name: str | None, path: Path) -> np.ndarray:
    templates = dict(nwb.stimulus_template)
    if not templates:
        raise DataError("no stimulus_template: the images must be stored there", path)
    if name is None:
        if len(templates) > 1:
            raise DataError(f"several stimulus templates {sorted(templates)}; pass images_name", path)
        name = next(iter(templates))
    if name not in templates:
        raise DataError(f"no stimulus template {name!r}; have {sorted(templates)}", path)
    t = templates[name]
    if hasattr(t, "images"):  # an Images container
        order = [img.name for img in t.order_of_images.data] if getattr(t, "order_of_images", None) is not None else list(t.images)
        frames = [np.asarray(t.images[k].data) for k in order]
        if len({f.shape for f in frames}) != 1:
            raise DataError(f"images in template {name!r} differ in shape", path)
        data = np.stack(frames)
    else:
        data = np.asarray(t.data)
    if data.dtype != np.uint8:
        raise DataError(f"images must be uint8, got {data.dtype}", path)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4 or data.shape[-1] not in (1, 3):
        raise DataError(f"images must be N x H x W or N x H x W x 3, got shape {data.shape}", path)
    return data


def _nwb_presentations(nwb: Any, responses_name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    trials = nwb.trials
    if trials is not None and "image_index" in trials.colnames and "responses" in trials.colnames:
        index, responses = np.asarray(trials["image_index"].data), np.asarray(trials["responses"].data)
    else:
        series = nwb.acquisition.get(responses_name)
        if series is None:
            for module in nwb.processing.values():
                if responses_name in module.data_interfaces:
                    series = module.data_interfaces[responses_name]
                    break
        index_series = [s for s in nwb.stimulus.values() if type(s).__name__ == "IndexSeries"]
        if series is None or len(index_series) != 1:
            raise DataError("no presentations found: need a trials table with image_index and responses columns, "
                            f"or one IndexSeries in stimulus plus a TimeSeries named {responses_name!r}", path)
        index, responses = np.asarray(index_series[0].data), np.asarray(series.data)
    if index.dtype.kind not in "iu" or index.ndim != 1:
        raise DataError(f"image indices must be a 1-D integer array, got {index.dtype} with shape {index.shape}", path)
    if responses.ndim == 1:
        responses = responses[:, None]
    return index.astype(np.int64), responses


# -------------------------------------------------------------- one entry point
#: Defaults for `load_dataset("twin")`.
TWIN_DEFAULTS = {"n_neurons": 32, "n_images": 1000, "n_repeats": 4, "seed": 0, "image_size": 112}


def load_dataset(path: str | Path, **kwargs: Any) -> NeuralDataset:
    """Load whatever `path` is: "twin" (built-in simulated data; kwargs as `make_twin_dataset`),
    a Cowley et al. V4 release folder (kwargs: sessions), an .npz written by `save_npz`, or an
    .nwb file (kwargs as `load_nwb`)."""
    if str(path) == "twin":
        from compactvision.data.twin import make_twin_dataset

        return make_twin_dataset(**{**TWIN_DEFAULTS, **kwargs})
    path = Path(path)
    if path.is_dir():
        return load_cowley(path, **kwargs)
    if not path.exists():
        raise DataError("no such file or folder (give a .npz, an .nwb, a Cowley et al. release folder, or 'twin')", path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_npz(path)
    if suffix == ".nwb":
        return load_nwb(path, **kwargs)
    raise DataError(f"unknown dataset format {suffix or '(no suffix)'!r}; expected .npz, .nwb, a Cowley et al. folder or 'twin'", path)


def describe(dataset: NeuralDataset) -> dict[str, Any]:
    """Per-session counts and the median split-half reliability (where there are repeats), JSON-ready."""
    from compactvision.metrics import split_half_reliability

    rows = []
    for s in dataset.sessions:
        repeats = np.sum(~np.isnan(s.responses), axis=2)
        row: dict[str, Any] = {"session": s.session_id, "neurons": s.n_neurons, "images": s.n_images,
                               "image_shape": list(s.images.shape[1:]), "repeats_max": s.n_repeats,
                               "repeats_median": float(np.median(repeats)), "median_reliability": None}
        if s.n_repeats > 1:
            rel = split_half_reliability(s.responses)
            if np.isfinite(rel).any():
                row["median_reliability"] = float(np.nanmedian(rel))
        rows.append(row)
    out: dict[str, Any] = {"source": dataset.metadata.get("source"), "sessions": rows,
                           "neurons": dataset.n_neurons, "images": sum(s.n_images for s in dataset.sessions)}
    if dataset.ground_truth is not None:
        types: dict[str, int] = {}
        for r in dataset.ground_truth:
            types[r["cell_type"]] = types.get(r["cell_type"], 0) + 1
        out["cell_types"] = types
    return out
