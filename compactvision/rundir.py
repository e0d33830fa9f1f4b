"""Where each stage keeps its files inside a run directory, and the readers every stage shares.

A run is one folder (see `artifacts` for the manifest and hashes). Stages write
into it in pipeline order, and later stages and the app read what earlier ones
left. Keeping the layout here, in a module of its own, means no stage imports
a later one just to find a path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compactvision.artifacts import read_json
from compactvision.metrics import split_half_reliability
from compactvision.models.teacher import ARCHITECTURE, TEACHER_DIR

CACHE_DIR = ".cache"          # large, regenerable intermediates; never hashed, never bundled
SHARED_STUDENT = "distill/shared_student.safetensors"
HELDOUT = "data/heldout.npz"  # the test split: images + measured responses (+ twin truth)
TRAIN_IMAGES = f"{CACHE_DIR}/train_images.npy"  # the dataset's own training images, for the distillation stream
HISTORY_DIR = "history"


def neuron_ids_of(run_dir: str | Path) -> list[str]:
    """Every neuron of the run's teacher, sessions in order."""
    arch = read_json(Path(run_dir) / TEACHER_DIR / ARCHITECTURE)
    return [i for ids in arch["sessions"].values() for i in ids]


def teacher_image_size(run_dir: str | Path) -> int:
    """The image size the run's teacher was fitted on: every later stage works at it."""
    return int(read_json(Path(run_dir) / TEACHER_DIR / ARCHITECTURE)["config"]["image_size"])


def history_path(run_dir: str | Path, neuron_id: str) -> Path:
    """A neuron's pruning record; its presence marks the neuron's compression as done."""
    return Path(run_dir) / HISTORY_DIR / f"prune_{neuron_id}.json"


def training_images(run_dir: str | Path) -> np.ndarray | None:
    """The dataset's own training images, stored by the teacher stage when it has them."""
    path = Path(run_dir) / TRAIN_IMAGES
    return np.load(path, mmap_mode="r") if path.exists() else None


def heldout_data(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's held-out images and repeat-averaged responses, from `data/heldout.npz`.

    For the digital twin the file also carries the ground truth, from which the
    noise-free rates on the same images are recomputed (`truth`), so a model
    can be scored against what the neuron really computes.
    """
    from compactvision.data.formats import load_npz
    from compactvision.data.twin import twin_from_ground_truth

    path = Path(run_dir) / HELDOUT
    if not path.exists():
        return None
    ds = load_npz(path)
    sessions = {s.session_id: {"images": s.images, "responses": s.mean_responses(), "neuron_ids": list(s.neuron_ids)}
                for s in ds.sessions}
    for s in ds.sessions:
        if s.n_repeats > 1:
            # The best r any model can reach against these repeat averages: sqrt of their split-half reliability.
            sessions[s.session_id]["ceiling"] = np.sqrt(np.clip(split_half_reliability(s.responses), 0.0, 1.0))
    if ds.ground_truth is not None and len(ds.sessions) == 1:
        s = ds.sessions[0]
        twin = twin_from_ground_truth(ds.ground_truth, image_size=s.images.shape[1])
        sessions[s.session_id]["truth"] = twin.rates(s.images)
    return {"sessions": sessions}
