"""The one dataset type every stage consumes, and the loaders that produce it.

A recording is a list of sessions. Each session has its own images (uint8,
N x H x W x C) and responses (neurons x images x repeats, NaN where a repeat is
missing). Keeping the repeats, rather than only their mean, is what lets the
metrics correct for trial noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
