"""Shared fixtures. Real V4 data is used when present and skipped cleanly when not."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
#: The public Cowley et al. V4 release, looked up beside the project (or via env).
COWLEY_DIR = Path(os.environ.get("COMPACTVISION_COWLEY_DIR", ROOT.parent / "shared" / "data" / "cowley_v4"))

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def cowley_dir() -> Path:
    if not (COWLEY_DIR / "responses_repeat_averaged").is_dir():
        pytest.skip("Cowley et al. V4 release not present")
    return COWLEY_DIR
