"""NumPy files without pickle: single `.npy` arrays and compactvision's `.npz` dataset layout.

Every member's header is read before any array is allocated: a few hundred
bytes can declare a terabyte-sized array, and `np.load` would try to allocate
it before finding the data missing. A header whose array is larger than the
bytes that hold it is refused as malformed, so what a file may claim in
memory is bounded by its (declared, uncompressed) size.
"""
from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from compactvision.artifacts import _json_default, atomic_write_bytes
from compactvision.data.dataset import NeuralDataset, Session, require_file, validate_session
from compactvision.errors import DataError

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(6)


def _human(n: int) -> str:
    for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def read_npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length in bytes) of the .npy at `stream`'s position; ValueError if it is not one."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy version {version[0]}.{version[1]}")
    return tuple(int(n) for n in shape), dtype, stream.tell()


def check_npy_header(stream: BinaryIO, stored_bytes: int, what: str, path: Path) -> None:
    """Read an .npy header from `stream` and refuse an array larger than the `stored_bytes` that hold it.

    `np.load` allocates the declared array before it reads the data, so a
    header is the one place where a lying size can be caught for free.
    """
    try:
        shape, dtype, header_bytes = read_npy_header(stream)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{what} has no readable .npy header ({e})", path) from None
    if dtype.hasobject:
        raise DataError(f"{what} holds Python objects that need pickle to load; refusing to unpickle a data file", path)
    count = 1
    for n in shape:
        count *= int(n)
    declared = count * dtype.itemsize
    if declared > stored_bytes - header_bytes:
        raise DataError(f"{what} declares a {shape} {dtype} array ({_human(declared)}) but holds only "
                        f"{_human(max(stored_bytes - header_bytes, 0))} of data; refused before allocating it", path)


def check_npz_headers(path: Path) -> None:
    """`check_npy_header` for every array in an .npz, before `np.load` touches any of them."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as member:
                    check_npy_header(member, info.file_size, f"entry {info.filename[:-4]!r}", path)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise DataError(f"not an .npz archive, or truncated ({e})", path) from None


def np_load(path: Path, what: str) -> Any:
    """np.load without pickle (an array, or an open .npz); every failure is a DataError naming the file."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):
            raise DataError("holds Python objects that need pickle to load; refusing to unpickle a data file", path) from None
        raise DataError(f"not {what} ({e})", path) from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"not {what}, or truncated ({e})", path) from None


def load_npy(path: Path) -> np.ndarray:
    """np.load without pickle; every failure is a DataError naming the file."""
    require_file(path)
    if not _magic(path).startswith(_NPY_MAGIC):
        raise DataError("not an .npy array (no NumPy header); pickles and other formats are refused", path)
    with open(path, "rb") as f:
        check_npy_header(f, path.stat().st_size, "the array", path)
    arr = np_load(path, "a readable .npy array")
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
    path = Path(path)
    require_file(path)
    if not _magic(path).startswith(_ZIP_MAGIC):
        raise DataError("not an .npz archive (no zip header)", path)
    check_npz_headers(path)
    archive = np_load(path, "an .npz archive")
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
