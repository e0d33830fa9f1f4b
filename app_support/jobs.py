"""Commands the app runs in the background, and the progress lines they print.

A job is a command (the pipeline, a V4 import) in its own process whose
output goes to a log file. The app re-reads that file on each rerun instead
of keeping a reader thread, so a browser session holds nothing but the job
handle, and cancelling is a SIGINT the pipeline answers by leaving a
consistent checkpoint. Progress arrives as ``PROGRESS <stage> <done>/<total>``
lines, which `compactvision pipeline --progress-format lines` prints.

Train-page jobs outlive a browser tab and a server: a `JobRegistry` (one per
server, in the page's `st.cache_resource`) holds every job started there, and
each job leaves `runs/NAME.job.json` (its command, preset, start time) so a
run left incomplete by a cancel, a crash or a restart can be listed and
resumed with the same command; the pipeline continues from its checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from compactvision.artifacts import atomic_write_json
from compactvision.errors import ArtifactError
from compactvision.progress import parse_line
from compactvision.runs import FINISHED_KINDS, JOB_RECORD_SUFFIX, is_run_dir, manifest_kind

from app_support.locations import PROJECT_ROOT, RUNS_DIR

@dataclass(frozen=True)
class ProgressLine:
    """One ``PROGRESS <stage> <done>/<total>`` line, parsed."""

    stage: str
    done: int
    total: int


def parse_progress_line(line: str) -> ProgressLine | None:
    """``PROGRESS <stage> <done>/<total>`` (the format of `progress.line_reporter`) -> ProgressLine.

    Lines that are not progress, or whose counts make no sense (done > total,
    total 0), give None so a display never shows more than 100%.
    """
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


def resume_command(argv: Sequence[str]) -> list[str]:
    """The command that continues a run: the same one, minus `--force` (which would delete what is there)."""
    return [a for a in argv if a != "--force"]


#: A run name is one folder name: no separators, no leading dot or symbol, at most 64 characters.
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def log_path_of(out_dir: Path) -> Path:
    """`runs/NAME.log`: beside the run, not in it, so the run's manifest never has to know about it."""
    return out_dir.with_name(out_dir.name + ".log")


def record_path_of(out_dir: Path) -> Path:
    """`runs/NAME.job.json` (the suffix is `compactvision.runs`'s, so the run picker sees it too)."""
    return out_dir.with_name(out_dir.name + JOB_RECORD_SUFFIX)


@dataclass(frozen=True)
class JobRecord:
    """`runs/NAME.job.json`: enough to list a run after a server restart and rerun its command."""

    out_dir: Path
    argv: list[str]
    preset: str | None
    started: float
    pid: int | None = None

    @property
    def name(self) -> str:
        return self.out_dir.name

    @property
    def log_path(self) -> Path:
        return log_path_of(self.out_dir)

    def write(self) -> Path:
        """Atomically, so a record is whole or absent even when the server dies mid-write."""
        return atomic_write_json(record_path_of(self.out_dir), {
            "argv": self.argv, "preset": self.preset, "started": self.started, "pid": self.pid,
            "out": str(self.out_dir)})

    @classmethod
    def read(cls, path: Path) -> "JobRecord | None":
        """The record at `path`, or None when it is not one (a stray or hand-edited file is ignored, not fatal)."""
        try:
            d = json.loads(path.read_text())
            argv, started, pid = d["argv"], float(d["started"]), d.get("pid")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            return None
        preset = d.get("preset")
        return cls(path.with_name(path.name[:-len(JOB_RECORD_SUFFIX)]), argv,
                   preset if isinstance(preset, str) else None, started, pid if isinstance(pid, int) else None)

    def process_alive(self) -> bool:
        """Whether the process this record started still runs: it outlives a server restart (its own session).

        On Linux the process's command line must match, so a recycled pid is
        not mistaken for the job.
        """
        if self.pid is None:
            return False
        cmdline = Path(f"/proc/{self.pid}/cmdline")
        if Path("/proc/self/cmdline").exists():
            try:
                return cmdline.read_bytes().split(b"\0")[:-1] == [a.encode() for a in self.argv]
            except OSError:
                return False
        try:
            os.kill(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def cancel(self) -> None:
        """SIGINT to the job's process group (a job is its own session, so its pid names the group)."""
        if self.pid is not None and self.process_alive():
            try:
                os.killpg(self.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def run_state(out_dir: Path) -> str:
    """What a run name holds: "free", "finished", "running", "incomplete" (resumable) or "other".

    "other" is a folder this app did not start (no job record), so it cannot
    know the command that would continue it.
    """
    record = JobRecord.read(record_path_of(out_dir)) if record_path_of(out_dir).is_file() else None
    if is_run_dir(out_dir) and manifest_kind(out_dir) in FINISHED_KINDS:
        return "finished"
    if record is not None:
        return "running" if record.process_alive() else "incomplete"
    return "other" if out_dir.exists() or record_path_of(out_dir).exists() else "free"


class RunNameTaken(ArtifactError):
    """A run name already in use, explained by what the folder holds (`state`, as `run_state` gives)."""

    def __init__(self, out_dir: Path, state: str) -> None:
        where = f"{out_dir.parent.name}/{out_dir.name}"
        message = {
            "finished": f"{where} already holds a finished run; pick another name.",
            "running": f"{where} is being built right now; pick another name.",
            "incomplete": f"{where} holds an incomplete run started here. Resume it to continue from its last "
                          "checkpoint, or pick another name.",
        }.get(state, f"{where} already exists but was not started here; pick another name.")
        super().__init__(message)
        self.out_dir, self.state = out_dir, state

    @property
    def resumable(self) -> bool:
        return self.state == "incomplete"


def new_run_dir(name: str, runs_dir: Path = RUNS_DIR) -> Path:
    """`runs_dir/name`, refusing names that could escape the folder or clobber a run (`RunNameTaken` says which)."""
    if not _RUN_NAME.match(name):
        raise ArtifactError(f"run name {name!r} must be 1-64 letters, digits, '_', '-' or '.', not starting with a symbol")
    out = runs_dir / name
    state = run_state(out)
    if state != "free":
        raise RunNameTaken(out, state)
    return out


def unique_run_name(runs_dir: Path = RUNS_DIR, stem: str | None = None) -> str:
    """A default name nothing under `runs_dir` uses yet (folder, record or log): `run-<time>`, then -2, -3..."""
    stem = stem or time.strftime("run-%Y%m%d-%H%M%S")
    name, n = stem, 1
    while any(p.exists() for out in [runs_dir / name] for p in (out, record_path_of(out), log_path_of(out))):
        n += 1
        name = f"{stem}-{n}"
    return name


@dataclass
class PipelineJob:
    """A command running in its own process group, its output captured in `log_path`.

    `log_offset` is where this job's output starts in the log: a resumed job
    appends to its run's log, and its progress is its own.
    """

    argv: list[str]
    out_dir: Path
    log_path: Path
    process: subprocess.Popen
    cancelled: bool = False
    started: float = field(default_factory=time.time)
    log_offset: int = 0

    @classmethod
    def start(cls, argv: Sequence[str], out_dir: str | Path, log_path: str | Path | None = None,
              cwd: str | Path = PROJECT_ROOT, append: bool = False) -> "PipelineJob":
        out_dir = Path(out_dir)
        log_path = Path(log_path) if log_path else log_path_of(out_dir)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        started = time.time()
        with open(log_path, "ab" if append else "wb") as log:
            if append:
                log.write(f"--- resumed {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(argv)}\n".encode())
                log.flush()
            offset = log.tell()
            # A new session: SIGINT reaches the pipeline and its workers, never the app. The child starts
            # with SIGINT blocked, which it inherits through exec: a cancel sent while it starts (between
            # fork and exec a signal would be lost) waits until the CLI has its handler and unblocks it.
            with _sigint_blocked():
                proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=str(cwd), env=env, start_new_session=True)
        return cls(list(argv), out_dir, log_path, proc, started=started, log_offset=offset)

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def elapsed(self) -> float:
        """Seconds since the start: shown before the first progress line, so a slow start still looks alive."""
        return time.time() - self.started

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
        """This job's output (from `log_offset` on)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
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


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread for the block (children forked here inherit the mask)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ------------------------------------------------------- the server's jobs
class JobRegistry:
    """Every Train-page job this server started, by run name, for every browser session.

    The page keeps one per runs folder in `st.cache_resource`, so a reload
    or a second tab shows the same jobs; `rediscovered` adds incomplete runs
    whose records outlived an earlier server. A lock keeps two sessions from
    starting or resuming the same name at once.
    """

    def __init__(self, runs_dir: Path = RUNS_DIR) -> None:
        self.runs_dir = Path(runs_dir)
        self._jobs: dict[str, PipelineJob] = {}
        self._lock = threading.Lock()

    def jobs(self) -> dict[str, PipelineJob]:
        """A copy, oldest first (a resumed job counts from its resume)."""
        with self._lock:
            return dict(self._jobs)

    def building(self) -> set[str]:
        """Names of the runs a job of this server is writing now (the run picker marks them)."""
        with self._lock:
            return {name for name, job in self._jobs.items() if job.status == "running"}

    def start(self, preset: str, name: str) -> PipelineJob:
        """A new run `name` on `preset`; its record is written before the process starts, so the name is taken."""
        with self._lock:
            out = new_run_dir(name, self.runs_dir)
            argv = pipeline_command(preset, out)
            record = JobRecord(out, argv, preset, time.time())
            record.write()
            job = PipelineJob.start(argv, out)
            JobRecord(out, argv, preset, record.started, job.process.pid).write()
            self._jobs[name] = job
            return job

    def resume(self, name: str) -> PipelineJob:
        """Rerun `name`'s command (no --force) into the same folder, appending to its log.

        The command is the registry's job's, or after a restart the record's;
        it must still write to this folder (a renamed folder's record would
        point elsewhere).
        """
        with self._lock:
            out = self.runs_dir / name
            record = JobRecord.read(record_path_of(out)) if record_path_of(out).is_file() else None
            old = self._jobs.get(name)
            running = old.status == "running" if old is not None else record is not None and record.process_alive()
            if running:
                raise ArtifactError(f"{self.runs_dir.name}/{name} is still running; it cannot be resumed twice.")
            if old is None and record is None:
                raise ArtifactError(f"{self.runs_dir.name}/{name} has no job record, so its command is unknown.")
            argv = resume_command(old.argv if old is not None else record.argv)
            if "--out" in argv and Path(argv[argv.index("--out") + 1]) != out:
                raise ArtifactError(f"this run's command writes to {argv[argv.index('--out') + 1]}, not {out}; "
                                    "start a new run instead.")
            job = PipelineJob.start(argv, out, append=True)
            preset = record.preset if record is not None else _option(argv, "--preset")
            started = record.started if record is not None else job.started
            JobRecord(out, argv, preset, started, job.process.pid).write()
            self._jobs.pop(name, None)
            self._jobs[name] = job  # newest last
            return job

    def rediscovered(self) -> list[JobRecord]:
        """Runs with a record on disk, not finished and not this server's: newest first."""
        with self._lock:
            known = set(self._jobs)
        found = []
        if self.runs_dir.is_dir():
            for path in self.runs_dir.glob("*" + JOB_RECORD_SUFFIX):
                record = JobRecord.read(path)
                if record is not None and record.name not in known and run_state(record.out_dir) != "finished":
                    found.append(record)
        return sorted(found, key=lambda r: r.started, reverse=True)


def _option(argv: Sequence[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None
