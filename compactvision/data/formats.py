"""One door to every dataset: `load_dataset` picks the loader by what a path is.

The dataset type lives in `dataset`; the loaders in `npz` (compactvision's own
layout), `cowley_release` (the public V4 release) and `nwb`; the built-in
simulated population in `twin`. The names below are the ones callers import
from here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compactvision.data.cowley_release import cowley_sessions, load_cowley, read_jpeg_zip
from compactvision.data.dataset import NeuralDataset, Session, describe, split_images, validate_session
from compactvision.data.npz import NPZ_FORMAT, NPZ_VERSION, load_npy, load_npz, save_npz
from compactvision.data.nwb import load_nwb
from compactvision.data.twin import make_twin_dataset
from compactvision.errors import DataError

__all__ = ["NPZ_FORMAT", "NPZ_VERSION", "TWIN_DEFAULTS", "NeuralDataset", "Session", "cowley_sessions", "describe",
           "load_cowley", "load_dataset", "load_npy", "load_npz", "load_nwb", "read_jpeg_zip", "save_npz",
           "split_images", "validate_session"]

#: Defaults for `load_dataset("twin")`.
TWIN_DEFAULTS = {"n_neurons": 32, "n_images": 1000, "n_repeats": 4, "seed": 0, "image_size": 112}


def load_dataset(path: str | Path, **kwargs: Any) -> NeuralDataset:
    """Load whatever `path` is: "twin" (built-in simulated data; kwargs as `make_twin_dataset`),
    a Cowley et al. V4 release folder (kwargs: sessions), an .npz written by `save_npz`, or an
    .nwb file (kwargs as `load_nwb`)."""
    if str(path) == "twin":
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
