"""A truth run: a digital-twin run's data with the twin itself as the teacher, ready to compress.

`prepare_truth_run(twin_run, out)` writes a teacher run whose teacher is a
`models.truth.TruthTeacher`; `compress.compress_run` then distils and prunes
every neuron of it unchanged, resumably. Compared neuron by neuron with the
twin run's own compact models (distilled from the fitted teacher), it separates
what a compact model's size owes to the neuron's computation from what it owes
to the teacher's errors (`benchmarks/truth.py`).

The truth run carries:

* `data.json` and `data/heldout.npz` of the twin run, so every pruning step is
  scored on the same held-out images and noise-free rates;
* the dataset's own training images in the run cache, for the distillation
  stream: copied from the twin run's cache, or, where the twin run no longer
  has them (the bundle ships without its cache), made again from the twin's
  recorded design and checked against the held-out images. The stream is then
  the one the twin run's own students were distilled on.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from compactvision.artifacts import MANIFEST, atomic_write_npy, read_json, read_manifest, write_manifest
from compactvision.data.formats import load_npz
from compactvision.data.twin import make_twin_dataset
from compactvision.errors import ArtifactError, DataError
from compactvision.models.teacher import ARCHITECTURE, TEACHER_DIR, WEIGHTS
from compactvision.models.truth import TruthTeacher, save_truth
from compactvision.rundir import HELDOUT, TRAIN_IMAGES

KIND = "truth-teacher"


def prepare_truth_run(twin_run: str | Path, out: str | Path) -> Path:
    """Write the truth run for `twin_run` into `out`; an existing truth run of the same twin run is reused.

    Nothing is written until the twin run has been checked: it must hold the
    twin's ground truth (`data/heldout.npz`) and its `data.json`.
    """
    twin_run, out = Path(twin_run), Path(out)
    if (out / MANIFEST).exists():
        manifest = read_manifest(out, verify=False)
        source = (manifest.get("config") or {}).get("twin_run")
        if manifest.get("kind") not in (KIND, "compressed") or source is None:
            raise ArtifactError(f"{out} is a {manifest.get('kind')!r} run, not a truth run", out / MANIFEST)
        if Path(source).resolve() != twin_run.resolve():
            raise ArtifactError(f"{out} is the truth run of {source}, not of {twin_run}", out / MANIFEST)
        return out
    source_manifest = read_manifest(twin_run)  # every file as its manifest records it
    held = load_npz(twin_run / HELDOUT)
    if not held.ground_truth:
        raise DataError("the run's data has no ground truth: only a digital-twin run has a truth to distil from",
                        twin_run / HELDOUT)
    if len(held.sessions) != 1:
        raise DataError(f"a twin run has one session, this one {len(held.sessions)}", twin_run / HELDOUT)
    session = held.sessions[0]
    data = read_json(twin_run / "data.json")
    teacher = TruthTeacher(held.ground_truth, int(session.images.shape[1]), session.session_id)
    if teacher.neuron_ids != list(session.neuron_ids):
        raise DataError("the ground truth's neurons are not the held-out session's", twin_run / HELDOUT)
    train, own = _training_images(twin_run, data, session.session_id, session.images)

    (out / "data").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(twin_run / "data.json", out / "data.json")
    shutil.copyfile(twin_run / HELDOUT, out / HELDOUT)
    if train is not None:
        atomic_write_npy(out / TRAIN_IMAGES, train)
    save_truth(teacher, out / TEACHER_DIR, WEIGHTS, ARCHITECTURE)
    write_manifest(out, kind=KIND, seed=source_manifest.get("seed"),
                   config={"twin_run": str(twin_run), "own_images": own, "teacher": {"image_size": teacher.image_size}},
                   metrics={})
    return out


def _training_images(twin_run: Path, data: dict[str, Any], session_id: str,
                     heldout_images: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The twin run's own training images and how they were found: "copied", "made again" or "none"."""
    cached = twin_run / TRAIN_IMAGES
    if cached.is_file():
        return np.load(cached), "copied"
    meta = data.get("dataset_metadata") or {}
    info = (data.get("sessions") or {}).get(session_id) or {}
    split = info.get("split") or {}
    if meta.get("source") != "twin" or "train" not in split or "test" not in split:
        return None, "none"
    remade = make_twin_dataset(len(info.get("neuron_ids", [])), int(info["n_images"]), int(info["n_repeats"]),
                               seed=int(meta["seed"]), image_size=int(meta["image_size"]),
                               test_images=meta.get("test_images"))
    images = remade.sessions[0].images
    if not np.array_equal(images[np.asarray(split["test"], int)], heldout_images):
        return None, "none (the twin's images could not be made again exactly)"
    return images[np.asarray(split["train"], int)], "made again"
