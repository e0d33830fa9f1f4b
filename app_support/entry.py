"""Every page runs through `app.py`, even when Streamlit starts the page on its own.

Streamlit treats a `pages/` folder beside the entry script as an old-style
multipage app until the first `st.navigation` call. On a fresh server whose
first request is a deep link (`/robustness`), it therefore runs
`pages/robustness.py` by itself: no page config, no sidebar, no error
handler. Each page calls `run_through_app()` first; when the page is not
inside `app.py`'s navigation, it runs `app.py` in its place (which lays out the
pages, draws the sidebar and runs this same page inside them) and stops the
stray run. From then on `st.navigation` has been called and Streamlit runs
`app.py` itself.
"""
from __future__ import annotations

import contextlib
import runpy
import threading
from typing import Iterator

import streamlit as st

from app_support.locations import APP_SCRIPT

# Each script run has its own thread, so the flag is per run, not per process.
_state = threading.local()


@contextlib.contextmanager
def inside_app() -> Iterator[None]:
    """Wraps `app.py`'s `page.run()`: pages run within it are laid out by the app."""
    previous = getattr(_state, "inside", False)
    _state.inside = True
    try:
        yield
    finally:
        _state.inside = previous


def run_through_app() -> None:
    """The first line of every page: run `app.py` instead when Streamlit started this page directly."""
    if getattr(_state, "inside", False):
        return
    runpy.run_path(str(APP_SCRIPT), run_name="__main__")
    st.stop()
