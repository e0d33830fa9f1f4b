"""The one dataset type every stage consumes: sessions of images and repeated responses.

A recording is a list of sessions. Each session has its own images (uint8,
N x H x W x C) and responses (neurons x images x repeats, NaN where a repeat is
missing). Keeping the repeats, rather than only their mean, is what lets the
metrics correct for trial noise. The loaders (`npz`, `cowley_release`, `nwb`)
all produce this type, and `formats.load_dataset` picks one by what a path is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compactvision.errors import DataError
from compactvision.metrics import split_half_reliability

#: Session metadata naming the images a recording holds out for scoring: the usual system-identification
#: design shows each training image once and a test set many times (its repeats give the noise ceiling).
#: With it, that test set is the test split; without it, a seeded random tenth is (`split_images`).
TEST_INDICES = "test_indices"


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
    designated_test(s, src)


def designated_test(s: Session, source: str | None = None) -> np.ndarray | None:
    """The session's own test images (`TEST_INDICES` in its metadata), sorted; None where it names none.

    Refused with a DataError: indices that are not whole numbers, out of range or repeated, an empty set,
    or one that leaves fewer than two images to train and validate on.
    """
    named = s.metadata.get(TEST_INDICES)
    if named is None:
        return None
    where = f"session {s.session_id}: metadata {TEST_INDICES!r}"
    idx = np.asarray(named)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise DataError(f"{where} must be a non-empty list of image indices, got {str(named)[:80]}", source)
    if idx.min() < 0 or idx.max() >= s.n_images:
        raise DataError(f"{where} must lie in [0, {s.n_images}), got {int(idx.min())}..{int(idx.max())}", source)
    if len(np.unique(idx)) != len(idx):
        raise DataError(f"{where} names an image twice", source)
    if s.n_images - len(idx) < 2:
        raise DataError(f"{where} leaves {s.n_images - len(idx)} image(s) to train and validate on; need 2", source)
    return np.sort(idx.astype(np.int64))


# ------------------------------------------------------------------- splits
def split_images(n_images: int, seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, test: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Deterministic random train/val/test image indices (each sorted, together a partition).

    `test`, a recording's own test set (`designated_test`), is taken as the test
    split as it is; `val_fraction` of the other images then validate.
    """
    if n_images < 1:
        raise ValueError(f"need at least one image, got {n_images}")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"fractions must be >= 0 and leave some training images, got val={val_fraction}, test={test_fraction}")
    rng = np.random.default_rng(seed)
    if test is not None:
        rest = rng.permutation(np.setdiff1d(np.arange(n_images), test))
        n_val = min(max(1, int(round(val_fraction * len(rest)))), len(rest) - 1)
        return {"train": np.sort(rest[n_val:]), "val": np.sort(rest[:n_val]), "test": np.sort(np.asarray(test))}
    order = rng.permutation(n_images)
    n_test, n_val = int(round(test_fraction * n_images)), int(round(val_fraction * n_images))
    return {"train": np.sort(order[n_test + n_val:]), "val": np.sort(order[n_test:n_test + n_val]),
            "test": np.sort(order[:n_test])}


# ------------------------------------------------------------- for loaders
def require_file(path: Path) -> None:
    """Refuse a missing or empty file before any loader opens it."""
    if not path.is_file():
        raise DataError("file not found", path)
    if path.stat().st_size == 0:
        raise DataError("empty file", path)


def as_responses(arr: np.ndarray, path: Path) -> np.ndarray:
    """Spike counts may come as integers; anything else that is not real-valued is refused."""
    if arr.dtype.kind in "iu":
        return arr.astype(np.float64)
    if arr.dtype.kind != "f":
        raise DataError(f"responses must be numeric (float or integer), got dtype {arr.dtype}", path)
    return arr


# ------------------------------------------------------------- summary
def describe(dataset: NeuralDataset) -> dict[str, Any]:
    """Per-session counts and the median split-half reliability (where there are repeats), JSON-ready."""
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
