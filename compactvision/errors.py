"""The two error types users see.

Every malformed input raises one of these with the file and the problem in
the message, so the CLI and the app can show it verbatim and carry on.
"""
from __future__ import annotations

from pathlib import Path


class CompactVisionError(Exception):
    """Base class: an input the library refuses, with a message fit for a user."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class DataError(CompactVisionError):
    """Images or responses that cannot be used as given (bad file, shape, dtype, NaNs...)."""


class ArtifactError(CompactVisionError):
    """A run directory or model file that is missing, corrupt, tampered with or of an unknown schema."""
