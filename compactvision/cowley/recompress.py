"""Re-compression: each published compact model becomes the teacher of its neuron, and is compressed again.

A published model of Cowley et al. (2026) was distilled from their
ImageNet-ResNet ensemble, so on its neuron it is a faithful stand-in for that
teacher. Distilling it into a fresh wide student and pruning that student
with our criterion tests our distil-and-prune on real V4 computations,
independently of how good our own V4 teacher is. (With the `recompress`
preset, the chosen neurons share one wide student, each read out alone, and
each neuron's copy of it is pruned: so a neuron's result can depend a little
on which others were chosen with it.)

`prepare_recompress` turns an `import-cowley` run into a teacher run:

* `teacher/`: a `StudentBank` of the chosen published models (one column each);
* `data/heldout.npz`: each session's held-out second half with its measured
  responses, so every pruning step is scored on it;
* the first halves' images, and the images of the release's other sessions,
  in the run cache: the distillation stream mixes them in, as it does a
  dataset's training images. The published models were distilled on natural
  images like these, and the held-out halves are such images. (For one
  neuron's student after one epoch the pool made no clear difference: r 0.26
  against the published model on 190923's held-out half with it, 0.29 with
  the first half alone; the preset was then chosen on a stream that has it.)

`compress.compress_run` then works on it unchanged, per neuron, resumable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compactvision.artifacts import MANIFEST, load_student, read_json, read_manifest, write_manifest
from compactvision.cowley.scoring import load_session, release_root_of, split_halves
from compactvision.data.cowley_release import cowley_sessions
from compactvision.data.dataset import NeuralDataset, Session
from compactvision.errors import ArtifactError, DataError
from compactvision.models.bank import StudentBank, save_bank
from compactvision.models.teacher import ARCHITECTURE, TEACHER_DIR, WEIGHTS

IMPORTED_KIND = "imported-cowley"
KIND = "recompress"
#: At most this many images from the release's other sessions join the stream's pool (evenly over sessions),
#: so a release of dozens of sessions does not have to fit in memory at once.
MAX_OTHER_IMAGES = 16384


def choose_neurons(imported: dict[str, Any], neurons: Sequence[str] | None = None,
                   per_session: int | None = None, sessions: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Session -> neuron ids to re-compress: named ones, or the first `per_session` of each (chosen) session."""
    have = {s: list(d["neurons"]) for s, d in imported["sessions"].items()}
    if sessions:
        missing = [s for s in sessions if s not in have]
        if missing:
            raise DataError(f"sessions {missing} are not in the imported run; it has {sorted(have)}")
        have = {s: have[s] for s in sessions}
    if neurons:
        known = {i: s for s, ids in have.items() for i in ids}
        unknown = [i for i in neurons if i not in known]
        if unknown:
            raise DataError(f"neurons {unknown} are not in the imported run (ids look like {next(iter(known), '?')})")
        out: dict[str, list[str]] = {}
        for i in neurons:
            out.setdefault(known[i], []).append(i)
        return out
    if per_session is not None:
        if per_session < 1:
            raise DataError("per_session must be at least 1")
        return {s: ids[:per_session] for s, ids in have.items()}
    return have


def prepare_recompress(imported_run: str | Path, out: str | Path, neurons: Sequence[str] | None = None,
                       per_session: int | None = None, sessions: Sequence[str] | None = None,
                       release: str | Path | None = None) -> Path:
    """Write the teacher run for re-compressing published models; an existing one is reused as it is.

    The release (images and responses) is the one the import recorded, or
    `release`. Nothing is written until every input has been checked.
    """
    from compactvision.teacher_stage import write_split_data

    out = Path(out)
    if (out / MANIFEST).exists():
        manifest = read_manifest(out, verify=False)
        if manifest.get("kind") not in (KIND, "compressed"):
            raise ArtifactError(f"{out} is a {manifest.get('kind')!r} run, not a re-compression run", out / MANIFEST)
        return out
    imported_run = Path(imported_run)
    manifest = read_manifest(imported_run)
    if manifest.get("kind") != IMPORTED_KIND:
        raise ArtifactError(f"expected a run made by import-cowley, got kind {manifest.get('kind')!r}",
                            imported_run / MANIFEST)
    chosen = choose_neurons(read_json(imported_run / "data.json"), neurons, per_session, sessions)
    root = Path(release) if release else release_root_of(manifest["config"]["weights_dir"])
    if root is None or not (root / "images").is_dir():
        raise DataError("re-compression scores on the release's images and responses; pass the release folder",
                        root or manifest["config"]["weights_dir"])
    models = {i: load_student(imported_run, i) for ids in chosen.values() for i in ids}
    recorded = [_split_session(load_session(root, s), ids) for s, ids in chosen.items()]
    bank = StudentBank(models, chosen)
    halves = {s.session_id: dict(zip(("train", "test"), (np.arange(h.start, h.stop) for h in split_halves(s.n_images))))
              for s in recorded}
    others = _other_sessions(root, exclude=set(chosen))
    halves.update({s.session_id: {"train": np.arange(s.n_images)} for s in others})
    write_split_data(out, NeuralDataset(recorded, {"source": "Cowley et al. (2026) V4 release",
                                                   "image_size": bank.image_size}), recorded, recorded + others, halves)
    save_bank(bank, out / TEACHER_DIR, WEIGHTS, ARCHITECTURE, source={"imported_run": str(imported_run)})
    published = read_manifest(imported_run, verify=False)["metrics"].get("per_neuron", {})
    write_manifest(out, kind=KIND, seed=0,
                   config={"imported_run": str(imported_run), "release": str(root), "sessions": chosen,
                           "teacher": {"image_size": bank.image_size}},
                   metrics={"published": {i: {"n_parameters": models[i].n_parameters(), **published.get(i, {})}
                                          for i in models}})
    return out


def _other_sessions(root: Path, exclude: set[str]) -> list[Session]:
    """The release's sessions besides `exclude`, their images thinned evenly to `MAX_OTHER_IMAGES` in all.

    None of their images is a held-out image of a re-compressed neuron. A
    session whose images are not the published models' size is left out.
    """
    ids = [s for s in cowley_sessions(root) if s not in exclude and (root / "images" / f"images_{s}.zip").exists()]
    quota = -(-MAX_OTHER_IMAGES // max(1, len(ids)))
    out = []
    for sid in ids:
        s = load_session(root, sid)
        keep = np.linspace(0, s.n_images - 1, min(quota, s.n_images)).round().astype(int)
        out.append(Session(sid, s.images[keep], s.responses[:, keep], list(s.neuron_ids), dict(s.metadata)))
    return out


def _split_session(session: Session, neuron_ids: Sequence[str]) -> Session:
    """The session with only `neuron_ids`' rows, in that order."""
    rows = []
    for i in neuron_ids:
        if i not in session.neuron_ids:
            raise DataError(f"neuron {i} has no responses in session {session.session_id}")
        rows.append(session.neuron_ids.index(i))
    return Session(session.session_id, session.images, session.responses[rows], list(neuron_ids),
                   dict(session.metadata))
