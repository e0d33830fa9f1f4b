"""Run directories as the library reads them: finding runs, opening one, one neuron's share of it.

A `Run` is a read-only facade over a run directory's manifest, data
description, teacher, students and histories. Nothing here knows where the
project keeps its runs or how the app starts jobs; that is the app's business
(`app_support`), which passes folders in.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np
import torch

from compactvision.artifacts import MANIFEST, list_students, load_student, read_json, read_manifest, student_paths
from compactvision.data.formats import load_npz
from compactvision.errors import ArtifactError
from compactvision.hashing import sha256_file
from compactvision.models.student import CompactStudent
from compactvision.models.bank import BANK_FORMAT
from compactvision.models.teacher import ARCHITECTURE, TEACHER_DIR, Teacher, load_teacher
from compactvision.models.teacher import FORMAT as TEACHER_FORMAT
from compactvision.models.truth import TRUTH_FORMAT
from compactvision.rundir import HELDOUT, heldout_data

# ------------------------------------------------------------ finding runs
@dataclass(frozen=True)
class RunChoice:
    """One entry of the run picker."""

    label: str
    path: Path
    kind: str


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def manifest_kind(path: str | Path) -> str:
    """The manifest's `kind` ("pipeline", "imported-cowley", ...), or "unknown"."""
    try:
        m = read_json(Path(path) / MANIFEST)
    except ArtifactError:
        return "unknown"
    return str(m.get("kind", "unknown")) if isinstance(m, dict) else "unknown"


#: Kinds of a run that is complete as it stands: a pipeline's end, a compression, imported published models.
FINISHED_KINDS = frozenset({"pipeline", "compressed", "imported-cowley"})
#: Kinds one stage's own command finishes with: complete when made by that command (`compactvision teacher`),
#: only a part when a launcher is building a whole pipeline into the folder.
STAGE_KINDS = frozenset({"teacher"})
#: `NAME.job.json` beside a run folder `NAME`: a launcher (the app's Train page) writes it when it starts
#: building the run, so a run left incomplete by a kill or a restart can be told from a finished one.
JOB_RECORD_SUFFIX = ".job.json"


def _made_run_label(p: Path, kind: str, building: Collection[str]) -> str:
    """A run under runs/ as the picker names it: an unfinished one says so, so nobody studies half a run.

    Any other kind ("recompress", a pipeline's "teacher" stage, an unreadable
    manifest) is a run some command has not finished yet.
    """
    if p.name in building:
        return f"{p.name} (being built)"
    if kind in FINISHED_KINDS:
        return f"{p.name} (published V4 models)" if kind == "imported-cowley" else p.name
    if kind in STAGE_KINDS and not p.with_name(p.name + JOB_RECORD_SUFFIX).is_file():
        return p.name
    return f"{p.name} (incomplete)"


def find_runs(bundled: Path, runs_dir: Path, extra: Sequence[str | Path] = (),
              building: Collection[str] = ()) -> list[RunChoice]:
    """The bundle first, then every run under `runs_dir` (newest first), then `extra` paths.

    `building` names runs under `runs_dir` that a job is writing right now
    (the caller knows its jobs; this module does not).
    """
    out: list[RunChoice] = []
    if is_run_dir(bundled):
        out.append(RunChoice("bundled default run", bundled, manifest_kind(bundled)))
    if runs_dir.is_dir():
        made = [p for p in runs_dir.iterdir() if p.is_dir() and is_run_dir(p)]
        for p in sorted(made, key=lambda p: (p / MANIFEST).stat().st_mtime, reverse=True):
            kind = manifest_kind(p)
            out.append(RunChoice(_made_run_label(p, kind, building), p, kind))
    seen = {c.path.resolve() for c in out}
    for e in extra:
        p = Path(e).expanduser()
        if is_run_dir(p) and p.resolve() not in seen:
            out.append(RunChoice(str(p), p, manifest_kind(p)))
            seen.add(p.resolve())
    return out


def run_fingerprint(path: str | Path) -> str:
    """sha256 of the manifest, which itself hashes every file: a cache key for the run's content."""
    p = Path(path) / MANIFEST
    try:
        return sha256_file(p)
    except FileNotFoundError:
        raise ArtifactError("not a run directory (no manifest.json)", path) from None


# ----------------------------------------------------------------- a run
@dataclass
class Run:
    """A run directory opened for reading: manifest verified, everything else on demand."""

    path: Path
    manifest: dict[str, Any]
    fingerprint: str

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "Run":
        """Read the manifest and (with `verify`) check every file's hash against it."""
        path = Path(path).expanduser()
        if not is_run_dir(path):
            raise ArtifactError("not a run directory (no manifest.json)", path)
        return cls(path, read_manifest(path, verify=verify), run_fingerprint(path))

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "unknown"))

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest.get("config") or {})

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics") or {})

    @functools.cached_property
    def data_info(self) -> dict[str, Any]:
        """`data.json`: dataset source, sessions, neuron ids, splits ({} when the run has none)."""
        p = self.path / "data.json"
        return read_json(p) if p.is_file() else {}

    @functools.cached_property
    def teacher_format(self) -> str | None:
        """The format tag of the run's `teacher/`: a fitted teacher, a bank of published models, the twin's truth."""
        p = self.path / TEACHER_DIR / ARCHITECTURE
        if not p.is_file() or not any((self.path / TEACHER_DIR).glob("*.safetensors")):
            return None
        arch = read_json(p)
        return str(arch.get("format")) if isinstance(arch, dict) else None

    @property
    def has_teacher(self) -> bool:
        """Whether the run has a fitted teacher network: what the teacher's views (V1 bank, layers, ...) browse."""
        return self.teacher_format == TEACHER_FORMAT

    @property
    def no_teacher_reason(self) -> str:
        """Why the run has no fitted teacher to show, in a sentence."""
        if self.teacher_format == TRUTH_FORMAT:
            return ("This run's compact models were distilled from the digital twin itself "
                    "(`compactvision compress-truth`), not from a fitted teacher.")
        if self.teacher_format == BANK_FORMAT:
            return "This run's teacher is a bank of published compact models, not a fitted teacher network."
        return "This run has no teacher (imported published models are students only)."

    def student_ids(self) -> list[str]:
        return list_students(self.path)

    def load_student(self, neuron_id: str) -> CompactStudent:
        return load_student(self.path, neuron_id)

    def load_teacher(self) -> Teacher:
        if not self.has_teacher:
            raise ArtifactError(self.no_teacher_reason, self.path / TEACHER_DIR)
        return load_teacher(self.path)

    def history(self, name: str) -> Any:
        """A JSON file under `history/` (e.g. a neuron's pruning path), or None when absent."""
        p = self.path / "history" / name
        return read_json(p) if p.is_file() else None

    def teacher_scores(self) -> dict[str, dict[str, float]]:
        """The teacher's per-neuron r on the held-out split, as the teacher stage recorded it.

        Keys mirror the students' metrics: "r_heldout" (vs measured responses)
        and, for the twin, "r_truth" (vs its noise-free rates). Empty when the
        run has no trained teacher (e.g. imported published models).
        """
        record = self.history("teacher_metrics.json") or {}
        out: dict[str, dict[str, float]] = {"r_heldout": {}, "r_truth": {}}
        for per in record.get("per_neuron", {}).values():
            for key, field_name in (("r_heldout", "r"), ("r_truth", "r_noise_free")):
                for nid, r in zip(per["neuron_ids"], per.get(field_name, [])):
                    out[key][str(nid)] = float(r)
        return out

    def history_files(self) -> list[str]:
        h = self.path / "history"
        return sorted(p.relative_to(h).as_posix() for p in h.rglob("*.json")) if h.is_dir() else []

    def file_size(self, rel: str) -> int:
        return (self.path / rel).stat().st_size

    def heldout(self) -> dict[str, Any] | None:
        """The held-out test split the run was scored on (images, measured responses, twin truth), or None."""
        return heldout_data(self.path)

    def ground_truth(self) -> list[dict[str, Any]] | None:
        """The twin's per-neuron ground-truth records (cell type, preferred orientation, ...), or None."""
        p = self.path / HELDOUT
        return load_npz(p).ground_truth if p.is_file() else None


# ------------------------------------------------------- one neuron's data
@dataclass
class NeuronData:
    """One neuron's share of the held-out split: what the app plots predictions against."""

    neuron_id: str
    session: str
    index: int                      # row in its session
    images: Any                     # uint8 N x H x W x C, the session's held-out images
    responses: Any                  # measured, repeat-averaged (N,)
    truth: Any = None               # the twin's noise-free rates (N,), twin runs only
    ground_truth: dict[str, Any] | None = None
    ceiling: float | None = None    # the best r a model can reach on these repeat averages (needs repeats)


def neuron_data(heldout: dict[str, Any] | None, neuron_id: str,
                ground_truth: Sequence[dict[str, Any]] | None = None) -> NeuronData | None:
    """Pick `neuron_id` out of `Run.heldout()` (None when the run has no held-out data for it)."""
    if heldout is None:
        return None
    for sid, s in heldout["sessions"].items():
        if neuron_id in s["neuron_ids"]:
            j = s["neuron_ids"].index(neuron_id)
            truth = s["truth"][j] if "truth" in s else None
            record = next((r for r in ground_truth or () if str(r.get("neuron_id")) == neuron_id), None)
            ceiling = float(s["ceiling"][j]) if "ceiling" in s and np.isfinite(s["ceiling"][j]) else None
            return NeuronData(neuron_id, sid, j, s["images"], s["responses"][j], truth, record, ceiling)
    return None


# ---------------------------------------------------------------- summaries
def student_record(run: Run, neuron_id: str) -> dict[str, Any]:
    """A student's sidecar JSON: architecture, n_parameters, macs, metrics."""
    _, sidecar = student_paths(run.path, neuron_id)
    return read_json(sidecar)


def prune_history(run: Run, neuron_id: str) -> dict[str, Any] | None:
    """`history/prune_<id>.json`: the neuron's metrics and its pruning path, or None (e.g. imported models)."""
    return run.history(f"prune_{neuron_id}.json")


# ------------------------------------------------------------ the teacher
def teacher_view(teacher, neuron_id: str):
    """(model, output index) giving `neuron_id`'s predicted response from a multi-session teacher.

    A teacher predicts one session at a time; interpretation code wants a plain
    model (images in, N x neurons out). For the default session that is the
    teacher itself, for any other a `SessionView` of it.
    """
    for session, ids in teacher.sessions.items():
        if neuron_id in ids:
            model = teacher if session == teacher.default_session else SessionView(teacher, session)
            return model, ids.index(neuron_id)
    raise ArtifactError(f"the teacher has no neuron {neuron_id!r}")


class SessionView(torch.nn.Module):
    """One session of a teacher as a plain model: forward(x) = teacher(x, session)."""

    def __init__(self, teacher, session: str) -> None:
        super().__init__()
        self.teacher, self.session = teacher, session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x, self.session)
