"""The sidebar every page shares (run and neuron pickers) and the caches behind it.

Not a page: `app.py` lists the pages explicitly. (The folder is not called `pages/`: Streamlit
would then also build its own page list from it, bypassing `app.py`.) Per-browser state lives only in
`st.session_state` (which run, which neuron, which jobs this session started);
the caches hold read-only models and data keyed by run path + manifest hash, so
two sessions share memory but never each other's choices, and a rewritten run
is a new cache entry.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import streamlit as st

from compactvision.errors import CompactVisionError
from compactvision.runs import (PROJECT_ROOT, RUNS_DIR, NeuronData, PipelineJob, Run, find_runs, is_run_dir,
                                run_fingerprint, teacher_view)
from compactvision.runs import neuron_data as _neuron_data

#: Where the public V4 release is looked for by default (the same place the tests look).
COWLEY_DEFAULT = Path(os.environ.get("COMPACTVISION_COWLEY_DIR", PROJECT_ROOT.parent / "shared" / "data" / "cowley_v4"))


# ------------------------------------------------------------------ caches
@st.cache_resource(show_spinner="Checking the run's files…", max_entries=8)
def _open_run(path: str, fingerprint: str) -> Run:
    """Verified once per manifest content: every file's sha256 against the manifest."""
    return Run.open(path, verify=True)


@st.cache_resource(show_spinner="Loading the teacher…", max_entries=2)
def _teacher(path: str, fingerprint: str):  # -> Teacher
    return _open_run(path, fingerprint).load_teacher()


@st.cache_resource(show_spinner=False, max_entries=64)
def _student(path: str, fingerprint: str, neuron_id: str):  # -> CompactStudent
    return _open_run(path, fingerprint).load_student(neuron_id)


@st.cache_data(show_spinner=False, max_entries=16)
def _student_ids(path: str, fingerprint: str) -> list[str]:
    return _open_run(path, fingerprint).student_ids()


@st.cache_resource(show_spinner="Loading the held-out images…", max_entries=4)
def _heldout(path: str, fingerprint: str) -> dict | None:
    return _open_run(path, fingerprint).heldout()


@st.cache_resource(show_spinner=False, max_entries=4)
def _ground_truth(path: str, fingerprint: str) -> list[dict] | None:
    return _open_run(path, fingerprint).ground_truth()


@st.cache_resource(max_entries=16)
def _lock(path: str, fingerprint: str, model: str) -> threading.Lock:
    return threading.Lock()


def current_run() -> Run | None:
    """The run picked in the sidebar, opened (and verified) through the cache."""
    path = st.session_state.get("run_path")
    if not path or not is_run_dir(path):
        return None
    return _open_run(path, run_fingerprint(path))


def require_run() -> Run:
    """The current run, or an explanation and a stop when there is none or it is broken."""
    try:
        run = current_run()
    except CompactVisionError as e:
        st.error(f"This run cannot be opened: {e}")
        st.stop()
    if run is None:
        st.info("No run is open. Pick one in the sidebar, or make one on the **Train** page.")
        st.stop()
    return run


def teacher(run: Run):
    return _teacher(str(run.path), run.fingerprint)


def student(run: Run, neuron_id: str):
    return _student(str(run.path), run.fingerprint, neuron_id)


def student_ids(run: Run) -> list[str]:
    return _student_ids(str(run.path), run.fingerprint)


def heldout(run: Run) -> dict | None:
    return _heldout(str(run.path), run.fingerprint)


def neuron_data(run: Run, neuron_id: str) -> NeuronData | None:
    """The neuron's held-out images and responses (and the twin's truth), or None."""
    return _neuron_data(heldout(run), neuron_id, _ground_truth(str(run.path), run.fingerprint))


def model_lock(run: Run, model) -> threading.Lock:
    """Held while a computation hooks or switches a cached model (Captum hooks, V1 noise on/off).

    Cached models are shared by every browser session; without this, one
    session's hooks could leak into another's forward pass. A teacher's
    session view shares the teacher's lock.
    """
    base = getattr(model, "teacher", model)
    return _lock(str(run.path), run.fingerprint, f"{type(base).__name__}:{id(base)}")


@st.cache_resource(show_spinner=False, max_entries=4)
def _twin(path: str, fingerprint: str, image_size: int):
    from compactvision.data.twin import twin_from_ground_truth

    records = _ground_truth(path, fingerprint)
    return None if records is None else twin_from_ground_truth(records, image_size=image_size)


def twin(run: Run, neuron_id: str):
    """(the digital twin, neuron index) when the run's data is the twin and knows this neuron, else (None, None)."""
    data = neuron_data(run, neuron_id)
    if data is None or data.ground_truth is None:
        return None, None
    model = _twin(str(run.path), run.fingerprint, int(data.images.shape[1]))
    ids = [str(r.get("neuron_id")) for r in model.ground_truth()]
    return (model, ids.index(neuron_id)) if neuron_id in ids else (None, None)


def teacher_for(run: Run, neuron_id: str):
    """(teacher model, output index) for `neuron_id`, or (None, None) when the run has no teacher."""
    if not run.has_teacher:
        return None, None
    return teacher_view(teacher(run), neuron_id)


def neuron_page(title: str):
    """A per-neuron page's common start: title, run, neuron, its compact model, teacher (and index), data.

    Returns (run, neuron_id, compact model, teacher or None, teacher output index or None, NeuronData or None).
    """
    st.title(title)
    run = require_run()
    neuron_id = current_neuron(run)
    compact = student(run, neuron_id)
    big, t_index = teacher_for(run, neuron_id)
    return run, neuron_id, compact, big, t_index, neuron_data(run, neuron_id)


# ------------------------------------------------------------------ sidebar
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
    argv = [sys.executable, "-m", "compactvision.cli", "import-cowley", str(weights), "--out", str(out)]
    st.session_state.pop("import_error", None)
    st.session_state["import_job"] = PipelineJob.start(argv, out)


def run_sidebar() -> None:
    """Run picker: the bundle, runs under runs/ (Train page, imports), and typed-in directories.

    `COMPACTVISION_RUN=path streamlit run app.py` opens the app on that run.
    """
    sb = st.sidebar
    preferred = os.environ.get("COMPACTVISION_RUN")
    choices = find_runs(extra=[*([preferred] if preferred else []), *st.session_state.get("extra_runs", [])])
    paths = [str(c.path) for c in choices]
    labels = dict(zip(paths, (c.label for c in choices)))
    if st.session_state.get("run_path") not in paths:
        first = str(Path(preferred).expanduser()) if preferred and str(Path(preferred).expanduser()) in paths else None
        st.session_state["run_path"] = first or (paths[0] if paths else None)
    if paths:
        sb.selectbox("Run", paths, key="run_path", format_func=labels.get,
                     help="The bundled default, runs made on the Train page, imported published models, "
                          "or any run directory opened below.")
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
        if job is not None and job.status == "running":
            st.caption("Importing… it appears in the Run list when done.")
        elif st.button("Import", key="cowley_import", disabled=not release):
            _start_import(release)
            st.rerun()
        if job is not None and job.status == "failed":
            st.error("Import failed:\n\n" + "\n".join(job.progress().last_lines(5)))
        if err := st.session_state.get("import_error"):
            st.error(err)


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
    st.sidebar.selectbox("Neuron", ids, key="neuron", help="Each neuron has its own compact model.")
    st.session_state["neuron_kept"] = st.session_state["neuron"]


def current_run_or_none() -> Run | None:
    try:
        return current_run()
    except CompactVisionError:
        return None


def current_neuron(run: Run) -> str:
    ids = student_ids(run)
    if not ids:
        st.info("This run has no compact models yet.")
        st.stop()
    n = st.session_state.get("neuron")
    return n if n in ids else ids[0]


# ------------------------------------------------------------------ images
def image_picker(images: np.ndarray, key: str, size: int) -> np.ndarray | None:
    """One image from `images` (uint8 N x H x W x C) by index, or an uploaded PNG/JPEG.

    Returns uint8 H x W x 3 at the model's size, or None after showing why an
    upload was refused.
    """
    from compactvision.uploads import crop_resize, read_image_upload

    source = st.radio("Image", ["dataset", "upload"], horizontal=True, key=f"{key}_source")
    if source == "upload":
        up = st.file_uploader("PNG or JPEG", type=["png", "jpg", "jpeg"], key=f"{key}_upload")
        if up is None:
            st.caption("Upload an image, or switch back to the dataset.")
            return None
        try:
            return read_image_upload(up.getvalue(), up.name, size=size)
        except CompactVisionError as e:
            st.error(f"This upload cannot be used: {e}")
            return None
    idx = st.slider("Held-out image", 0, len(images) - 1, 0, key=f"{key}_index")
    img = images[idx]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img if img.shape[:2] == (size, size) else crop_resize(img, (size, size))
