"""Train: run the whole pipeline on a preset in a background process, with live progress."""
from __future__ import annotations

import time

import streamlit as st

from compactvision.errors import CompactVisionError
from app_support.jobs import PipelineJob, new_run_dir, pipeline_command
from app_support.entry import run_through_app

run_through_app()  # a deep link on a fresh server starts a page alone: lay it out through app.py

st.title("Train a run")
st.markdown(
    "Runs `compactvision pipeline`: simulate the digital-twin population, train the teacher, distil it into "
    "students and prune one compact model per neuron. It runs in its own process, so this app stays usable; "
    "**Cancel** stops it like Ctrl-C, leaving its last checkpoint intact. A finished run appears in the sidebar's "
    "run picker.")

PRESETS = {"tiny": "8 neurons, about 8 minutes on 2 CPU cores: a smoke test",
           "demo": "the bundled default's recipe (16 neurons, a 4-member teacher): over an hour on 2 CPU cores"}
jobs: dict[str, PipelineJob] = st.session_state.setdefault("train_jobs", {})

with st.form("train_form"):
    preset = st.radio("Preset", list(PRESETS), format_func=lambda p: f"{p}: {PRESETS[p]}", key="train_preset")
    name = st.text_input("Run name", value=time.strftime("run-%Y%m%d-%H%M%S"), key="train_name",
                         help="A folder of that name is made under runs/.")
    if st.form_submit_button("Start training", type="primary"):
        try:
            out = new_run_dir(name.strip())
            jobs[out.name] = PipelineJob.start(pipeline_command(preset, out), out)
        except CompactVisionError as e:
            st.error(str(e))


@st.fragment(run_every=1.0)
def job_panel(name: str, job: PipelineJob) -> None:
    """Redrawn every second on its own, so the rest of the page is not rerun."""
    status = job.status
    prog = job.progress()
    st.subheader(f"{name}: {status}")
    if prog.current is not None:
        done, total = prog.stages[prog.current]
        st.progress(prog.fraction if status == "running" else 1.0 if status == "finished" else prog.fraction,
                    text=f"{prog.current}: {done}/{total}")
        st.caption(" → ".join(f"{s} {d}/{t}" for s, (d, t) in prog.stages.items()))
    elif status == "running":
        st.progress(0.0, text="starting…")
    if status == "running":
        if st.button("Cancel", key=f"cancel_{name}"):
            job.cancel()
    elif status == "finished":
        st.success("Done: pick it in the sidebar's run list.")
        if not st.session_state.get(f"announced_{name}"):
            st.session_state[f"announced_{name}"] = True
            st.rerun(scope="app")  # refresh the sidebar's run list
    elif status == "cancelled":
        st.warning("Cancelled. The run folder holds the last consistent checkpoint.")
    else:
        st.error(f"The pipeline stopped with exit code {job.returncode}.")
    with st.expander("Output"):
        st.code("\n".join(prog.last_lines(20)) or "(nothing yet)")


for job_name, job in reversed(list(jobs.items())):
    job_panel(job_name, job)
