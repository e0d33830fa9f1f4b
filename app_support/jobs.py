"""Commands the app runs in the background, and the progress lines they print.

A job is a command (the pipeline, a V4 import) in its own process whose
output goes to a log file. The app re-reads that file on each rerun instead
of keeping a reader thread, so a browser session holds nothing but the job
handle, and cancelling is a SIGINT the pipeline answers by leaving a
consistent checkpoint. Progress arrives as ``PROGRESS <stage> <done>/<total>``
lines, which `compactvision pipeline --progress-format lines` prints.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from compactvision.errors import ArtifactError
from compactvision.progress import parse_line

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


#: A run name is one folder name: no separators, no leading dot or symbol, at most 64 characters.
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
