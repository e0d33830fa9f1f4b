"""What the app needs from run directories, with no streamlit in sight.

Three things live here:

* finding runs (the bundled default, runs the Train page made, any directory a
  user names) and opening one as a `Run`, a read-only facade over its manifest,
  data description, teacher, students and histories;
* the pipeline's machine-readable progress lines, ``PROGRESS <stage> <done>/<total>``,
  which `compactvision pipeline --progress-format lines` prints to stdout;
* `PipelineJob`, a pipeline running in a background process whose output goes
  to a log file. The app re-reads that file on each rerun instead of keeping a
  reader thread, so a browser session holds nothing but the job handle, and
  cancelling is a SIGINT the pipeline answers by leaving a consistent checkpoint.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from compactvision.artifacts import MANIFEST, read_json, read_manifest
from compactvision.errors import ArtifactError

#: Where the project keeps its bundled default run and the Train page's runs.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_RUN = PROJECT_ROOT / "assets" / "default_run"
RUNS_DIR = PROJECT_ROOT / "runs"

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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


def find_runs(bundled: Path = BUNDLED_RUN, runs_dir: Path = RUNS_DIR, extra: Sequence[str | Path] = ()) -> list[RunChoice]:
    """The bundle first, then every run under `runs_dir` (newest first), then `extra` paths."""
    out: list[RunChoice] = []
    if is_run_dir(bundled):
        out.append(RunChoice("bundled default run", bundled, manifest_kind(bundled)))
    if runs_dir.is_dir():
        made = [p for p in runs_dir.iterdir() if p.is_dir() and is_run_dir(p)]
        for p in sorted(made, key=lambda p: (p / MANIFEST).stat().st_mtime, reverse=True):
            kind = manifest_kind(p)
            label = f"{p.name} (published V4 models)" if kind == "imported-cowley" else p.name
            out.append(RunChoice(label, p, kind))
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
        return hashlib.sha256(p.read_bytes()).hexdigest()
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

    @property
    def has_teacher(self) -> bool:
        return (self.path / "teacher").is_dir() and any((self.path / "teacher").glob("*.safetensors"))

    def student_ids(self) -> list[str]:
        from compactvision.artifacts import list_students

        return list_students(self.path)

    def load_student(self, neuron_id: str):  # -> CompactStudent
        from compactvision.artifacts import load_student

        return load_student(self.path, neuron_id)

    def load_teacher(self):  # -> Teacher
        from compactvision.models.teacher import load_teacher

        if not self.has_teacher:
            raise ArtifactError("this run has no teacher (e.g. imported published models)", self.path / "teacher")
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
        from compactvision.rundir import heldout_data

        return heldout_data(self.path)

    def ground_truth(self) -> list[dict[str, Any]] | None:
        """The twin's per-neuron ground-truth records (cell type, preferred orientation, ...), or None."""
        from compactvision.rundir import HELDOUT
        from compactvision.data.formats import load_npz

        p = self.path / HELDOUT
        return load_npz(p).ground_truth if p.is_file() else None


# --------------------------------------------------------- progress lines
@dataclass(frozen=True)
class ProgressLine:
    stage: str
    done: int
    total: int


def parse_progress_line(line: str) -> ProgressLine | None:
    """``PROGRESS <stage> <done>/<total>`` (the format of `progress.line_reporter`) -> ProgressLine.

    Lines that are not progress, or whose counts make no sense (done > total,
    total 0), give None so a display never shows more than 100%.
    """
    from compactvision.progress import parse_line

    parsed = parse_line(line)
    if parsed is None:
        return None
    stage, done, total = parsed
    if total <= 0 or done > total:
        return None
    return ProgressLine(stage, done, total)


@dataclass
class PipelineProgress:
    """Everything a progress display needs, read from the pipeline's output so far."""

    stages: dict[str, tuple[int, int]] = field(default_factory=dict)  # in the order they started
    current: str | None = None
    other_lines: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """How far the current stage is, 0..1 (0 before the first progress line)."""
        if self.current is None:
            return 0.0
        done, total = self.stages[self.current]
        return done / total

    def last_lines(self, n: int = 10) -> list[str]:
        return self.other_lines[-n:]


def read_progress(text: str) -> PipelineProgress:
    """Fold a pipeline's stdout into the latest (done, total) of every stage."""
    prog = PipelineProgress()
    for line in text.splitlines():
        p = parse_progress_line(line)
        if p is None:
            if line.strip():
                prog.other_lines.append(line.rstrip())
            continue
        prog.stages[p.stage] = (p.done, p.total)
        prog.current = p.stage
    return prog


# ---------------------------------------------------------- background jobs
def pipeline_command(preset: str, out_dir: str | Path, python: str = sys.executable) -> list[str]:
    """The exact command the Train page runs."""
    return [python, "-m", "compactvision.cli", "pipeline", "--preset", preset, "--out", str(out_dir),
            "--progress-format", "lines"]


def new_run_dir(name: str, runs_dir: Path = RUNS_DIR) -> Path:
    """`runs_dir/name`, refusing names that could escape the folder or clobber a run."""
    if not _RUN_NAME.match(name):
        raise ArtifactError(f"run name {name!r} must be 1-64 letters, digits, '_', '-' or '.', not starting with a symbol")
    out = runs_dir / name
    if out.exists():
        raise ArtifactError("a run with this name already exists; pick another name", out)
    return out


@dataclass
class PipelineJob:
    """A command running in its own process group, its output captured in `log_path`."""

    argv: list[str]
    out_dir: Path
    log_path: Path
    process: subprocess.Popen
    cancelled: bool = False

    @classmethod
    def start(cls, argv: Sequence[str], out_dir: str | Path, log_path: str | Path | None = None,
              cwd: str | Path = PROJECT_ROOT) -> "PipelineJob":
        out_dir = Path(out_dir)
        log_path = Path(log_path) if log_path else out_dir.with_name(out_dir.name + ".log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log:
            # A new session: SIGINT reaches the pipeline and its workers, never the app.
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=str(cwd), env=env, start_new_session=True)
        return cls(list(argv), out_dir, log_path, proc)

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def status(self) -> str:
        """"running", "finished", "cancelled" or "failed"."""
        rc = self.returncode
        if rc is None:
            return "running"
        if rc == 0:
            return "finished"
        return "cancelled" if self.cancelled else "failed"

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def progress(self) -> PipelineProgress:
        return read_progress(self.output())

    def cancel(self) -> None:
        """Ask the pipeline to stop (SIGINT, like Ctrl-C): it finishes its checkpoint and exits."""
        if self.returncode is None:
            self.cancelled = True
            try:
                os.killpg(self.process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)


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
            return NeuronData(neuron_id, sid, j, s["images"], s["responses"][j], truth, record)
    return None


# ---------------------------------------------------------------- summaries
def student_record(run: Run, neuron_id: str) -> dict[str, Any]:
    """A student's sidecar JSON: architecture, n_parameters, macs, metrics."""
    from compactvision.artifacts import student_paths

    _, sidecar = student_paths(run.path, neuron_id)
    return read_json(sidecar)


def prune_history(run: Run, neuron_id: str) -> dict[str, Any] | None:
    """`history/prune_<id>.json`: the neuron's metrics and its pruning path, or None (e.g. imported models)."""
    return run.history(f"prune_{neuron_id}.json")


def run_summary(run: Run, teacher_macs: int | None = None) -> dict[str, Any]:
    """The Home page's numbers: neurons, sizes, compression, compute and accuracy.

    Read from files only (sidecars, the teacher's architecture, the manifest's
    metrics), so the summary costs milliseconds. The teacher's MACs are
    recorded in its architecture file when it is saved; `teacher_macs` (from
    `compute.model_macs` on the loaded teacher) fills in for older runs.
    """
    import numpy as np

    from compactvision.artifacts import student_paths

    ids = run.student_ids()
    records = [student_record(run, i) for i in ids]
    params = np.array([r["n_parameters"] for r in records], float)
    macs = np.array([r["macs"] for r in records], float)
    sizes = np.array([student_paths(run.path, i)[0].stat().st_size for i in ids], float)
    out: dict[str, Any] = {"kind": run.kind, "n_students": len(ids)}
    if len(ids):
        out["student"] = {"n_parameters": float(np.median(params)), "n_parameters_range": [float(params.min()), float(params.max())],
                          "macs": float(np.median(macs)), "file_bytes": float(np.median(sizes))}
    arch_path = run.path / "teacher" / "architecture.json"
    if run.has_teacher and arch_path.is_file():
        arch = read_json(arch_path)
        n_teacher = int(arch.get("n_parameters", 0))
        files = sum(p.stat().st_size for p in (run.path / "teacher").iterdir() if p.is_file())
        out["teacher"] = {"n_parameters": n_teacher, "file_bytes": files,
                          "n_neurons": sum(len(v) for v in arch.get("sessions", {}).values())}
        macs_t = arch.get("macs", teacher_macs)
        if macs_t is not None:
            out["teacher"]["macs"] = int(macs_t)
        if len(ids) and n_teacher:
            out["compression"] = n_teacher / out["student"]["n_parameters"]
    out["accuracy"] = accuracy_table(run)
    return out


#: Accuracy entries the Home page reports, in order, with what each means.
ACCURACY_KEYS = {
    "r_heldout": "compact models vs measured responses (held-out images)",
    "r_truth": "compact models vs the twin's noise-free rates",
    "r_teacher": "compact models vs the teacher (distillation fidelity)",
}


def accuracy_table(run: Run) -> list[dict[str, Any]]:
    """Median r with its bootstrap CI for each accuracy the run recorded."""
    rows = []
    teacher_r = (run.metrics.get("teacher") or {}).get("r")
    if isinstance(teacher_r, dict) and "median" in teacher_r:
        rows.append(_accuracy_row("teacher vs measured responses (held-out images)", teacher_r))
    comp = run.metrics.get("compression") or {}
    for key, what in ACCURACY_KEYS.items():
        v = comp.get(key)
        if isinstance(v, dict) and "median" in v:
            rows.append(_accuracy_row(what, v))
    return rows


def _accuracy_row(what: str, v: dict[str, Any]) -> dict[str, Any]:
    """`metrics.summarise` entries carry ci_low/ci_high; older ones a "ci" pair."""
    lo, hi = v.get("ci_low"), v.get("ci_high")
    if lo is None and isinstance(v.get("ci"), (list, tuple)):
        lo, hi = v["ci"]
    return {"metric": what, "median r": v["median"], "ci_low": lo, "ci_high": hi, "neurons": v.get("n")}


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
