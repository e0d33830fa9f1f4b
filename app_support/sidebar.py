"""The sidebar every page shares: which run (bundled, made here, imported, typed in) and which neuron."""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import streamlit as st

from compactvision.runs import find_runs, is_run_dir

from app_support.caches import current_run_or_none, job_registry, neuron_label, student_ids
from app_support.jobs import PipelineJob
from app_support.long_work import eta_text
from app_support.locations import BUNDLED_RUN, COWLEY_DEFAULT, RUNS_DIR


def _open_typed_dir() -> None:
    """Callback of the "open a run directory" box: add the path to this session's picker."""
    typed = st.session_state.get("run_dir_input", "").strip()
    st.session_state.pop("run_dir_error", None)
    if not typed:
        return
    p = Path(typed).expanduser()
    if not is_run_dir(p):
        st.session_state["run_dir_error"] = f"{p} is not a run directory (it has no manifest.json)."
        return
    extra = st.session_state.setdefault("extra_runs", [])
    if str(p) not in extra:
        extra.append(str(p))
    st.session_state["run_path"] = str(p)


def _start_import(release: str) -> None:
    weights = Path(release).expanduser() / "compact_models"
    if not weights.is_dir():
        st.session_state["import_error"] = f"{weights} not found: point at the release folder that holds compact_models/."
        return
    out = RUNS_DIR / "cowley-v4"
    if is_run_dir(out):
        st.session_state["import_error"] = f"{out} already holds an import; it is in the Run list."
        return
    if out.is_dir():  # a cancelled import of ours (no manifest yet): it starts again from scratch
        shutil.rmtree(out)
    argv = [sys.executable, "-m", "compactvision.cli", "import-cowley", str(weights), "--out", str(out),
            "--progress-format", "lines"]
    st.session_state.pop("import_error", None)
    st.session_state["import_job"] = PipelineJob.start(argv, out)
    st.session_state["import_started"] = time.monotonic()


def _import_panel() -> None:
    """The import's progress, redrawn every second on its own while it runs, and its outcome after.

    Only a running import ticks: an idle fragment rerunning every second on every page would cost every
    visitor a rerun a second for nothing.
    """
    job: PipelineJob | None = st.session_state.get("import_job")
    if job is not None:
        ticking = job.status == "running"
        st.fragment(run_every=1.0 if ticking else None)(_draw_import)(job, ticking)


def _draw_import(job: PipelineJob, ticking: bool) -> None:
    status = job.status
    if ticking and status != "running":
        st.rerun(scope="app")  # stop ticking; a new run joins the Run list
    prog = job.progress()
    if status == "running":
        done, total = prog.stages.get("import-cowley", (0, 0))
        elapsed = time.monotonic() - st.session_state.get("import_started", time.monotonic())
        st.progress(done / total if total else 0.0,
                    text=eta_text("Importing published models", done, total, elapsed) if total
                    else f"Importing: starting… {elapsed:.0f} s")
        if st.button("Cancel import", key="cowley_import_cancel"):
            job.cancel()
    elif status == "finished":
        st.success("Imported: pick it in the Run list.")
    elif status == "cancelled":
        st.warning("Import cancelled. Press **Import** to start it again.")
    else:
        st.error("Import failed:\n\n" + "\n".join(prog.last_lines(5)))


def _listed(paths: list[str], folder: str) -> str | None:
    """How `paths` names `folder`, however `folder` is written (relative, with ~); None if it is not listed."""
    target = Path(folder).expanduser().resolve()
    return next((q for q in paths if Path(q).resolve() == target), None)


def run_sidebar() -> None:
    """Run picker: the bundle, runs under runs/ (Train page, imports), and typed-in directories.

    `COMPACTVISION_RUN=path streamlit run app.py` opens the app on that run.
    """
    sb = st.sidebar
    preferred = os.environ.get("COMPACTVISION_RUN")
    _state_from_url()
    import_job: PipelineJob | None = st.session_state.get("import_job")
    building = job_registry(str(RUNS_DIR)).building() | (
        {import_job.out_dir.name} if import_job is not None and import_job.status == "running" else set())
    choices = find_runs(BUNDLED_RUN, RUNS_DIR, extra=[*([preferred] if preferred else []), *st.session_state.get("extra_runs", [])],
                        building=building)
    paths = [str(c.path) for c in choices]
    labels = dict(zip(paths, (c.label for c in choices)))
    wanted = st.session_state.get("run_path")
    if wanted and wanted not in paths:  # the same folder named another way (a URL's relative path)
        st.session_state["run_path"] = _listed(paths, wanted) or wanted
    if st.session_state.get("run_path") not in paths:
        # The preferred run may be named relatively (`COMPACTVISION_RUN=runs/v4`) while the list holds it absolute.
        first = _listed(paths, preferred) if preferred else None
        st.session_state["run_path"] = first or (paths[0] if paths else None)
    if paths:
        sb.selectbox("Run", paths, key="run_path", format_func=labels.get,
                     help="The bundled default, runs made on the Train page, imported published models, "
                          "or any run directory opened below.")
        st.query_params["run"] = _url_path(st.session_state["run_path"])
        if st.session_state.get("neuron_kept"):
            st.query_params["neuron"] = st.session_state["neuron_kept"]
    else:
        sb.info("No run found yet.")
    with sb.expander("Open another run"):
        st.text_input("Run directory", key="run_dir_input", on_change=_open_typed_dir,
                      placeholder="path/to/run (holds manifest.json)")
        if err := st.session_state.get("run_dir_error"):
            st.error(err)
        st.markdown("**Published V4 models** (Cowley et al. 2026)")
        release = st.text_input("V4 release folder", value=str(COWLEY_DEFAULT) if COWLEY_DEFAULT.is_dir() else "",
                                key="cowley_release")
        job: PipelineJob | None = st.session_state.get("import_job")
        if (job is None or job.status != "running") and st.button("Import", key="cowley_import", disabled=not release):
            _start_import(release)
        _import_panel()
        if err := st.session_state.get("import_error"):
            st.error(err)
    sb.radio("Chart downloads", ["PNG", "SVG"], key="figure_format", horizontal=True,
             help="What the camera button in each chart's toolbar saves. Every table downloads as CSV from its "
                  "own toolbar.")


def neuron_sidebar() -> None:
    """Neuron picker, remembered across pages that do not show it."""
    run = current_run_or_none()
    if run is None:
        return
    ids = student_ids(run)
    if not ids:
        return
    # Streamlit forgets a widget's value on pages that do not draw it, so the
    # choice is also kept under a key no widget owns.
    if st.session_state.get("neuron") not in ids:
        kept = st.session_state.get("neuron_kept")
        st.session_state["neuron"] = kept if kept in ids else ids[0]
    st.sidebar.selectbox("Neuron", ids, key="neuron", format_func=lambda n: neuron_label(run, n),
                         help="Each neuron has its own compact model: its cell type (digital twin) or session.")
    st.session_state["neuron_kept"] = st.session_state["neuron"]
    st.query_params["neuron"] = st.session_state["neuron"]


def _url_path(path: str) -> str:
    """A run as the URL names it: relative to the app's folder when inside it, so links travel."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _state_from_url() -> None:
    """Once per browser session: the run, neuron and graph filter a shared link or a reload names.

    Afterwards the widgets own the state and write it back to the URL, so a
    reload or a copied link opens the same view.
    """
    if st.session_state.get("url_read"):
        return
    st.session_state["url_read"] = True
    params = st.query_params
    if run := params.get("run"):
        p = Path(run).expanduser()
        if is_run_dir(p):
            extra = st.session_state.setdefault("extra_runs", [])
            if str(p) not in extra:
                extra.append(str(p))
            st.session_state["run_path"] = str(p)
    if neuron := params.get("neuron"):
        st.session_state["neuron_kept"] = neuron
    if node := params.get("filter"):
        st.session_state["graph_node_url"] = node
