"""Long computations on a page: a start button, `st.progress` with an estimate, Cancel, and a shared result cache.

Streamlit stops a running script at its next call into Streamlit when the
user presses any widget, so a Cancel button drawn beside the progress bar
needs no thread: its click interrupts the work at the next progress update,
and the rerun that follows finds the job flagged as started but not finished
and says it was stopped. Finished results are kept per run (keyed by the
run's fingerprint and the caller's key: neuron and settings), shared by every
browser session, so a result is computed once and a revisit draws it at once.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Hashable, TypeVar

import streamlit as st

from compactvision.progress import Progress
from compactvision.runs import Run

T = TypeVar("T")
#: Results kept per run; the oldest are dropped first.
MAX_RESULTS = 256


@st.cache_resource(show_spinner=False, max_entries=8)
def _results(path: str, fingerprint: str) -> "OrderedDict[Hashable, Any]":
    return OrderedDict()


def cached_result(run: Run, key: Hashable) -> Any | None:
    """A finished result of this run under `key`, or None."""
    store = _results(str(run.path), run.fingerprint)
    if key in store:
        store.move_to_end(key)
        return store[key]
    return None


def _keep(run: Run, key: Hashable, value: Any) -> None:
    store = _results(str(run.path), run.fingerprint)
    store[key] = value
    while len(store) > MAX_RESULTS:
        store.popitem(last=False)


def eta_text(label: str, done: int, total: int, elapsed: float) -> str:
    """'label: 3/10 · about 7 s left' (no estimate before the first step is done)."""
    text = f"{label}: {done}/{total}"
    if 0 < done < total:
        left = elapsed / done * (total - done)
        text += f" · about {left:.0f} s left" if left < 120 else f" · about {left / 60:.1f} min left"
    return text


#: Seconds between redraws of a progress bar. Redrawing at every step (75 a second in a synthesis) rebuilds the
#: page under the pointer so often that a click on Cancel can be lost; a redraw is also where a click stops the work.
REDRAW_S = 0.25


def progress_bar(label: str) -> tuple[Progress, Callable[[], None]]:
    """A `Progress` callback drawing one `st.progress` bar with an estimate, and a function that removes it."""
    bar = st.progress(0.0, text=f"{label}: starting…")
    start = time.monotonic()
    last = [float("-inf")]

    def report(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < REDRAW_S and done < total:
            return
        last[0] = now
        bar.progress(min(1.0, done / total) if total else 0.0,
                     text=eta_text(f"{label} ({stage})" if stage else label, done, total, now - start))

    return report, bar.empty


def long_work(run: Run, name: str, key: Hashable, label: str, compute: Callable[[Progress], T],
              button: str = "Run", autostart: bool = False) -> T | None:
    """`compute(progress)`'s result for `key`: from the cache, or computed now with progress and Cancel.

    Draws the start button (`button`) while there is no result; `autostart`
    starts without a click. Returns None until a result exists; a stopped
    job leaves a note saying so. `name` keeps this page's widgets apart.
    """
    done = cached_result(run, key)
    if done is not None:
        return done
    started_key, stopped = f"{name}__started", None
    if st.session_state.get(started_key) is not None:  # set by a run that never reached its end
        stopped = st.session_state.pop(started_key)
    # An automatic start is not repeated after a stop: the user's Cancel must hold.
    slot = st.empty()  # the start button goes once the work starts, so a finished page shows no stale button
    go = (autostart and stopped != key) or slot.button(button, key=f"{name}__start", type="primary")
    if not go:
        if stopped == key:
            st.warning(f"{label} was stopped before it finished (cancelled, or a setting changed). "
                       f"Press **{button}** to start again.")
        return None
    st.session_state[started_key] = key
    # Cancel takes the start button's place. Emptied instead, the slot can keep showing the clicked (focused)
    # button until the first click elsewhere blurs it, and the page then moves up under the pointer between
    # that click's press and release: Chromium delivers no click to Cancel, and the work goes on.
    slot.button("Cancel", key=f"{name}__cancel", help="Stops the computation; nothing is kept from it.")
    report, clear = progress_bar(label)
    result = compute(report)
    clear()
    slot.empty()
    _keep(run, key, result)
    st.session_state.pop(started_key, None)
    return result
