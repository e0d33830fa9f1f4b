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


#: The run the app tests open: the bundled default, or the one named by COMPACTVISION_RUN (as the app does).
APP_RUN = Path(os.environ.get("COMPACTVISION_RUN", ROOT / "assets" / "default_run"))


@pytest.fixture
def open_page(monkeypatch):
    """`open_page(name)`: a fresh AppTest session of the app on `APP_RUN`, switched to `pages/<name>.py`."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("COMPACTVISION_RUN", str(APP_RUN))

    def _open(name: str) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        at.switch_page(f"pages/{name}.py").run()
        assert not at.exception, [e.message for e in at.exception]
        return at

    return _open


@pytest.fixture(scope="session")
def cowley_dir() -> Path:
    if not (COWLEY_DIR / "responses_repeat_averaged").is_dir():
        pytest.skip("Cowley et al. V4 release not present")
    return COWLEY_DIR


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One end-to-end `tiny` pipeline run (twin -> teacher -> compact models), shared by tests.

    Tests must not modify it; copy it first (`copy_run`).
    """
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("runs") / "tiny"
    # Through the command line, as a user runs it: its worker processes then start from
    # the CLI, not from whatever `__main__` earlier tests (e.g. Streamlit's AppTest) left.
    cmd = [sys.executable, "-m", "compactvision.cli", "pipeline", "--preset", "tiny", "--out", str(out),
           "--workers", "2", "--progress-format", "none"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def copy_run(src: Path, dst: Path) -> Path:
    """A private copy of a run, cache included, for tests that change it."""
    import shutil

    shutil.copytree(src, dst)
    return dst


def load_benchmark(name: str):
    """A script of `benchmarks/`, imported as a module so a test can call its functions and its `main`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
