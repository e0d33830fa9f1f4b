"""Train: run the whole pipeline on a preset in a background process, with live progress."""
from __future__ import annotations

import time

import streamlit as st

from compactvision.errors import CompactVisionError
from app_support.caches import job_registry
from app_support.jobs import (JobRecord, PipelineJob, PipelineProgress, RunNameTaken, read_progress,
                              unique_run_name)
from app_support.entry import run_through_app
from app_support.locations import RUNS_DIR

run_through_app()  # a deep link on a fresh server starts a page alone: lay it out through app.py

st.title("Train a run")
st.markdown(
    "Runs `compactvision pipeline`: simulate the digital-twin population, train the teacher, distil it into "
    "students and prune one compact model per neuron. It runs in its own process, so this app stays usable; "
    "**Cancel** stops it like Ctrl-C, leaving its last checkpoint intact, and **Resume** continues from there. "
    "A finished run appears in the sidebar's run picker.")

PRESETS = {"tiny": "8 neurons, about 8 minutes on 2 CPU cores: a smoke test",
           "demo": "the bundled default's recipe (16 neurons, a 4-member teacher): over an hour on 2 CPU cores"}


registry = job_registry(str(RUNS_DIR))
st.session_state["train_jobs"] = registry.jobs()  # what this page shows, for anyone inspecting the session


def _clock(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    return f"{s // 60} min {s % 60:02d} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60:02d} min"


def _resume(name: str) -> None:
    """Button callback: before the rerun, so the rerun already draws the resumed job."""
    st.session_state.pop("train_clash", None)
    try:
        registry.resume(name)
    except CompactVisionError as e:
        st.session_state[f"resume_error_{name}"] = str(e)


def _progress(prog: PipelineProgress, status: str, elapsed: float) -> None:
    """A bar from the first second: before the first progress line the process is importing its libraries."""
    if prog.current is not None:
        done, total = prog.stages[prog.current]
        st.progress(1.0 if status == "finished" else prog.fraction,
                    text=f"{prog.current}: {done}/{total} · {_clock(elapsed)}")
        st.caption(" → ".join(f"{s} {d}/{t}" for s, (d, t) in prog.stages.items()))
    elif status == "running":
        st.progress(0.0, text=f"starting: loading libraries… {_clock(elapsed)}")


def _job_view(name: str, job: PipelineJob) -> None:
    status = job.status
    prog = job.progress()
    st.subheader(f"{name}: {status}")
    _progress(prog, status, job.elapsed)
    if status == "running" and job.cancelled:
        # A SIGINT that lands while Python is importing can be swallowed; a second one gets through.
        st.info("Stopping: the pipeline saves its checkpoint first. If nothing changes, cancel again.")
        st.button("Cancel again", key=f"cancel_{name}", on_click=job.cancel)
    elif status == "running":
        st.button("Cancel", key=f"cancel_{name}", on_click=job.cancel)
    elif status == "finished":
        st.success("Done: pick it in the sidebar's run list.")
        if not st.session_state.get(f"announced_{name}"):
            st.session_state[f"announced_{name}"] = True
            st.rerun(scope="app")  # refresh the sidebar's run list
    else:
        if status == "cancelled":
            st.warning("Cancelled. The run folder holds the last consistent checkpoint.")
        else:
            st.error(f"The pipeline stopped with exit code {job.returncode}.")
        st.button("Resume", key=f"resume_{name}", on_click=_resume, args=(name,), type="primary",
                  help="Rerun the same command into the same folder: it continues from the last checkpoint.")
    with st.expander("Output"):
        st.code("\n".join(prog.last_lines(20)) or "(nothing yet)")


def _record_view(record: JobRecord) -> None:
    """A run started before this server did: still running on its own, or incomplete and resumable."""
    alive = record.process_alive()
    prog = read_progress(record.output())
    st.subheader(f"{record.name}: {'running' if alive else 'incomplete'}")
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.started))
    _progress(prog, "running" if alive else "incomplete", time.time() - record.started)
    if alive:
        st.caption(f"Started {started} before this server did; still running as process {record.pid}.")
        st.button("Cancel", key=f"cancel_{record.name}", on_click=record.cancel)
    else:
        st.warning(f"Started {started} ({record.preset or 'custom'} preset) and never finished.")
        st.button("Resume", key=f"resume_{record.name}", on_click=_resume, args=(record.name,), type="primary",
                  help="Rerun the same command into the same folder: it continues from the last checkpoint.")
    with st.expander("Output"):
        st.code("\n".join(prog.last_lines(20)) or "(nothing yet)")


@st.fragment(run_every=1.0)
def run_panel(name: str) -> None:
    """Redrawn every second on its own, so the rest of the page is not rerun; looks the job up each time,
    so a resume from another tab shows here too."""
    job = registry.jobs().get(name)
    if job is not None:
        _job_view(name, job)
    else:
        record = next((r for r in registry.rediscovered() if r.name == name), None)
        if record is None:
            return
        _record_view(record)
    if err := st.session_state.pop(f"resume_error_{name}", None):
        st.error(err)


# A started run takes its name: the box offers a fresh one (set before the widget exists, as Streamlit requires).
if "train_name_next" in st.session_state:
    st.session_state["train_name"] = st.session_state.pop("train_name_next")
elif "train_name" not in st.session_state:
    st.session_state["train_name"] = unique_run_name(RUNS_DIR)

with st.form("train_form"):
    preset = st.radio("Preset", list(PRESETS), format_func=lambda p: f"{p}: {PRESETS[p]}", key="train_preset")
    name = st.text_input("Run name", key="train_name", help="A folder of that name is made under runs/.")
    if st.form_submit_button("Start training", type="primary"):
        st.session_state.pop("train_clash", None)
        try:
            registry.start(preset, name.strip())
            st.session_state["train_name_next"] = unique_run_name(RUNS_DIR)
            st.rerun()  # draw the new job's panel, and the fresh name in the box
        except RunNameTaken as e:
            st.session_state["train_clash"] = (str(e), e.out_dir.name if e.resumable else None)
        except CompactVisionError as e:
            st.error(str(e))

if clash := st.session_state.get("train_clash"):
    message, resumable = clash
    if resumable:
        st.warning(message)
        st.button(f"Resume {resumable}", key="train_clash_resume", on_click=_resume, args=(resumable,), type="primary")
    else:
        st.error(message)

for job_name in reversed(list(registry.jobs())):
    run_panel(job_name)
for rec in registry.rediscovered():
    run_panel(rec.name)
