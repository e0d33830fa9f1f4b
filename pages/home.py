"""Home: what this run is, how small its per-neuron models are, and how well they predict."""
from __future__ import annotations

import streamlit as st

from compactvision.compute import model_macs
from compactvision.artifacts import read_json
from compactvision.cowley.compare import compare_with_published, comparison_table, on_cowley_protocol
from compactvision.errors import CompactVisionError
from compactvision.viz.performance import teacher_student_scatter_figure
from app_support.long_work import long_work
from app_support.summary import run_summary
from app_support.widgets import show_figure
from app_support.caches import model_lock, require_run, teacher
from app_support.entry import run_through_app

run_through_app()  # a deep link on a fresh server starts a page alone: lay it out through app.py

st.title("compactvision")
st.markdown(
    """
**What am I looking at?** A big *teacher* network was fitted to the responses of visual-cortex neurons
(here, by default, a simulated population whose computations we know: the *digital twin*). Its knowledge was
then *distilled* into small *student* networks and *pruned* per neuron, until each neuron has its own
compact model of a few thousand parameters: small enough to read whole.

- **Neuron graph** shows one neuron's model as a graph of filters; click a filter to see what it does.
- **Attributions** and **Preferred stimuli** show which pixels and which images drive a neuron.
- **Teacher vs student** shows what the compression cost; **Robustness** how each model holds up.
- **Gabor bank** and **Layer weights** show the filters themselves; **Train** makes a new run.
""")

run = require_run()


@st.cache_data(show_spinner="Counting the teacher's multiply-accumulates…", max_entries=8)
def _summary(path: str, fingerprint: str) -> dict:
    macs = None
    if run.has_teacher and "macs" not in read_json(run.path / "teacher" / "architecture.json"):
        t = teacher(run)
        with model_lock(run, t):  # counting hooks the shared teacher
            macs = model_macs(t, t.config.image_size)
    return run_summary(run, teacher_macs=macs)


summary = _summary(str(run.path), run.fingerprint)
st.subheader(f"This run: {run.path.name}")
st.caption(f"kind: {summary['kind']} · created {run.manifest.get('created', '?')}")

stu, tea = summary.get("student"), summary.get("teacher")
cols = st.columns(4)
cols[0].metric("Neurons with a compact model", summary["n_students"])
if tea:
    cols[1].metric("Teacher parameters", f"{tea['n_parameters']:,}")
if stu:
    lo, hi = stu["n_parameters_range"]
    cols[2].metric("Compact model parameters (median)", f"{stu['n_parameters']:,.0f}", help=f"range {lo:,.0f}–{hi:,.0f}")
if "compression" in summary:
    cols[3].metric("Compression", f"{summary['compression']:,.0f}×", help="teacher parameters / median compact-model parameters")

if stu:
    cols = st.columns(4)
    cols[0].metric("Compact model file", f"{stu['file_bytes'] / 1024:.0f} KB",
                   help="one neuron's safetensors file: small enough to e-mail")
    cols[1].metric("Multiply-accumulates per prediction (compact)", f"{stu['macs'] / 1e6:.2f} M")
    if tea:
        cols[2].metric("Teacher file", f"{tea['file_bytes'] / 2**20:.1f} MB")
        if "macs" in tea:
            cols[3].metric("Multiply-accumulates per prediction (teacher)", f"{tea['macs'] / 1e6:.0f} M",
                           help="the teacher predicts all its neurons in one pass")

if not tea and run.teacher_format:
    st.caption(run.no_teacher_reason)

st.subheader("Accuracy")
if summary["accuracy"]:
    st.dataframe(summary["accuracy"], hide_index=True, column_config={
        "median r": st.column_config.NumberColumn(format="%.3f"),
        "ci_low": st.column_config.NumberColumn("95% CI low", format="%.3f"),
        "ci_high": st.column_config.NumberColumn("95% CI high", format="%.3f")})
    st.caption("Pearson r per neuron on held-out images; median over neurons with a bootstrap 95% confidence interval.")
else:
    st.info("This run records no accuracy yet.")

if run.kind in ("pipeline", "compressed") and on_cowley_protocol(run.path):
    st.subheader("Against the published compact models")
    st.caption("Our compact models and the authors' published ones for the same neurons, scored on the same "
               "held-out images (each test session's second half) against the same responses; our teacher's r "
               "on those images is the ceiling our compact models are distilled towards.")

    def _compare(progress) -> dict:
        try:
            return compare_with_published(run.path, progress=progress)
        except CompactVisionError as e:
            return {"error": str(e)}

    compared = long_work(run, "home_published", ("published",), "Scoring both models", _compare, button="Compare")
    if compared is not None and "error" in compared:
        st.info(f"No comparison: {compared['error']}")
    elif compared is not None:
        st.dataframe(comparison_table(compared), hide_index=True)
        rows = compared["rows"]
        show_figure(teacher_student_scatter_figure([r["published_r"] for r in rows], [r["ours_r"] for r in rows],
                                                   [r["neuron"] for r in rows], x_name="published",
                                                   y_name="ours"), key="home_published_scatter")

with st.expander("Run details (manifest)"):
    st.json({k: run.manifest.get(k) for k in ("kind", "created", "seed", "config", "versions")}, expanded=False)
