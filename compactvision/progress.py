"""Progress reporting that works the same in a terminal, a log and the app.

Library stages accept a `Progress` callable, `progress(stage, done, total)`,
and never print. The CLI turns it into tqdm bars for people, or into
`PROGRESS <stage> <done>/<total>` lines that the app's Train page parses from a
subprocess it can cancel safely.
"""
from __future__ import annotations

import re
import sys
from typing import Protocol, TextIO


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int) -> None: ...


def silent(stage: str, done: int, total: int) -> None:
    """The default: report nothing."""


LINE = re.compile(r"^PROGRESS (?P<stage>\S+) (?P<done>\d+)/(?P<total>\d+)\s*$")


def line_reporter(stream: TextIO = sys.stdout) -> Progress:
    """Machine-readable progress lines, flushed so a parent process sees them live."""

    def report(stage: str, done: int, total: int) -> None:
        stream.write(f"PROGRESS {stage} {done}/{total}\n")
        stream.flush()

    return report


def parse_line(line: str) -> tuple[str, int, int] | None:
    """Inverse of `line_reporter`: (stage, done, total), or None for any other line."""
    m = LINE.match(line.strip())
    return (m["stage"], int(m["done"]), int(m["total"])) if m else None


def tqdm_reporter() -> Progress:
    """One tqdm bar per stage, replaced when the stage changes."""
    from tqdm.auto import tqdm

    state: dict[str, object] = {"stage": None, "bar": None}

    def report(stage: str, done: int, total: int) -> None:
        bar = state["bar"]
        if state["stage"] != stage:
            if bar is not None:
                bar.close()  # type: ignore[attr-defined]
            bar = tqdm(total=total, desc=stage, dynamic_ncols=True)
            state.update(stage=stage, bar=bar)
        bar.total = total  # type: ignore[attr-defined]
        bar.n = done  # type: ignore[attr-defined]
        bar.refresh()  # type: ignore[attr-defined]
        if done >= total:
            bar.close()  # type: ignore[attr-defined]
            state.update(stage=None, bar=None)

    return report


def reporter(fmt: str) -> Progress:
    """The Progress for a CLI `--progress` choice: "bar", "lines" or "none"."""
    return {"bar": tqdm_reporter, "lines": line_reporter, "none": lambda: silent}[fmt]()


def as_progress(progress: bool | Progress) -> Progress:
    """A Progress from a caller that still passes a flag: True is a tqdm bar, False is silence.

    The flag is the older form some stages still hand to `train.fit`; turning
    it into a Progress here keeps one reporting path inside the library.
    """
    if callable(progress):
        return progress
    return tqdm_reporter() if progress else silent
