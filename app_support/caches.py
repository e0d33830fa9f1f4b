"""The models and data every browser session shares, and the locks that guard them.

Per-browser state lives only in `st.session_state` (which run, which neuron,
which jobs this session started); the caches hold read-only models and data
keyed by run path + manifest hash, so two sessions share memory but never
each other's choices, and a rewritten run is a new cache entry.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from compactvision.data.twin import DigitalTwin, twin_from_ground_truth
from compactvision.errors import CompactVisionError
from compactvision.interpret.profile import cell_label, neuron_card
from compactvision.interpret.stimuli import synthesise_preferred
from compactvision.models.student import CompactStudent
from compactvision.models.teacher import Teacher
from compactvision.runs import NeuronData, Run, is_run_dir, run_fingerprint, teacher_view
from compactvision.runs import neuron_data as _neuron_data
from app_support.jobs import JobRegistry


@st.cache_resource(show_spinner=False)
def job_registry(runs_dir: str) -> JobRegistry:
    """One registry per server and runs folder, not per browser session: a reload or a new tab sees every job."""
    return JobRegistry(Path(runs_dir))


@st.cache_resource(show_spinner="Checking the run's files…", max_entries=8)
def _open_run(path: str, fingerprint: str) -> Run:
    """Verified once per manifest content: every file's sha256 against the manifest."""
    return Run.open(path, verify=True)


@st.cache_resource(show_spinner="Loading the teacher…", max_entries=2)
def _teacher(path: str, fingerprint: str) -> Teacher:
    return _open_run(path, fingerprint).load_teacher()


@st.cache_resource(show_spinner=False, max_entries=64)
def _student(path: str, fingerprint: str, neuron_id: str) -> CompactStudent:
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


def open_run(path: str | Path) -> Run:
    """Any run directory, opened (and verified) once per manifest content."""
    return _open_run(str(path), run_fingerprint(path))


def current_run() -> Run | None:
    """The run picked in the sidebar, opened (and verified) through the cache."""
    path = st.session_state.get("run_path")
    if not path or not is_run_dir(path):
        return None
    return open_run(path)


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


def teacher(run: Run) -> Teacher:
    return _teacher(str(run.path), run.fingerprint)


def student(run: Run, neuron_id: str) -> CompactStudent:
    return _student(str(run.path), run.fingerprint, neuron_id)


def student_ids(run: Run) -> list[str]:
    return _student_ids(str(run.path), run.fingerprint)


def heldout(run: Run) -> dict | None:
    return _heldout(str(run.path), run.fingerprint)


def neuron_data(run: Run, neuron_id: str) -> NeuronData | None:
    """The neuron's held-out images and responses (and the twin's truth), or None."""
    return _neuron_data(heldout(run), neuron_id, _ground_truth(str(run.path), run.fingerprint))


def model_lock(run: Run, model: torch.nn.Module) -> threading.Lock:
    """Held while a computation hooks or switches a cached model (Captum hooks, V1 noise on/off).

    Cached models are shared by every browser session; without this, one
    session's hooks could leak into another's forward pass. A teacher's
    session view shares the teacher's lock.
    """
    base = getattr(model, "teacher", model)
    return _lock(str(run.path), run.fingerprint, f"{type(base).__name__}:{id(base)}")


@st.cache_resource(show_spinner=False, max_entries=4)
def _twin(path: str, fingerprint: str, image_size: int) -> DigitalTwin | None:
    records = _ground_truth(path, fingerprint)
    return None if records is None else twin_from_ground_truth(records, image_size=image_size)


def twin(run: Run, neuron_id: str) -> tuple[DigitalTwin | None, int | None]:
    """(the digital twin, neuron index) when the run's data is the twin and knows this neuron, else (None, None)."""
    data = neuron_data(run, neuron_id)
    if data is None or data.ground_truth is None:
        return None, None
    model = _twin(str(run.path), run.fingerprint, int(data.images.shape[1]))
    ids = [str(r.get("neuron_id")) for r in model.ground_truth()]
    return (model, ids.index(neuron_id)) if neuron_id in ids else (None, None)


def teacher_for(run: Run, neuron_id: str) -> tuple[torch.nn.Module | None, int | None]:
    """(teacher model, output index) for `neuron_id`, or (None, None) when the run has no teacher."""
    if not run.has_teacher:
        return None, None
    return teacher_view(teacher(run), neuron_id)


def current_run_or_none() -> Run | None:
    """The current run, or None when there is none or it does not open (the sidebar still draws)."""
    try:
        return current_run()
    except CompactVisionError:
        return None


def current_neuron(run: Run) -> str:
    """The neuron picked in the sidebar, or the run's first; a stop with a note when the run has none."""
    ids = student_ids(run)
    if not ids:
        st.info("This run has no compact models yet.")
        st.stop()
    n = st.session_state.get("neuron")
    return n if n in ids else ids[0]


@st.cache_data(show_spinner=False, max_entries=512)
def _synthesised(path: str, fingerprint: str, neuron_id: str, steps: int, seed: int) -> np.ndarray:
    model = _student(path, fingerprint, neuron_id)
    with _lock(path, fingerprint, f"{type(model).__name__}:{id(model)}"):
        return synthesise_preferred(model, 0, size=model.arch.input_size[0], steps=steps, seed=seed)


def synthesised(run: Run, neuron_id: str, steps: int = 96, seed: int = 0) -> np.ndarray:
    """The compact model's synthesised preferred image, computed once per run, neuron and settings."""
    return _synthesised(str(run.path), run.fingerprint, neuron_id, steps, seed)


@st.cache_data(show_spinner=False, max_entries=512)
def _card(path: str, fingerprint: str, neuron_id: str) -> dict:
    run = _open_run(path, fingerprint)
    data = _neuron_data(_heldout(path, fingerprint), neuron_id, _ground_truth(path, fingerprint))
    kw = {} if data is None else dict(images=data.images, responses=data.responses, truth=data.truth,
                                      ceiling=data.ceiling, label=cell_label(neuron_id, data.ground_truth, data.session))
    r_teacher = run.teacher_scores().get("r_heldout", {}).get(neuron_id)
    return neuron_card(neuron_id, _student(path, fingerprint, neuron_id), r_teacher=r_teacher, **kw).to_dict()


def profile_card(run: Run, neuron_id: str) -> dict:
    """One neuron's card (`interpret.profile.NeuronCard` as a dict), computed once per run and neuron."""
    return _card(str(run.path), run.fingerprint, neuron_id)


@st.cache_data(show_spinner="Profiling every neuron…", max_entries=8)
def _cards(path: str, fingerprint: str) -> list[dict]:
    return [_card(path, fingerprint, nid) for nid in _student_ids(path, fingerprint)]


def cards(run: Run) -> list[dict]:
    """Every neuron's card, in the run's neuron order."""
    return _cards(str(run.path), run.fingerprint)


@st.cache_data(show_spinner=False, max_entries=8)
def _labels(path: str, fingerprint: str) -> dict[str, str]:
    truth = {str(r.get("neuron_id")): r for r in _ground_truth(path, fingerprint) or ()}
    sessions = _open_run(path, fingerprint).data_info.get("sessions", {})
    of_session = {str(n): s for s, d in sessions.items() for n in (d.get("neurons") or d.get("neuron_ids") or [])}
    return {nid: cell_label(nid, truth.get(nid), of_session.get(nid)) for nid in _student_ids(path, fingerprint)}


def neuron_label(run: Run, neuron_id: str) -> str:
    """The neuron as the picker shows it: id and cell type (twin) or session (recordings); from files only."""
    label = _labels(str(run.path), run.fingerprint).get(neuron_id, "")
    return f"{neuron_id} · {label}" if label else neuron_id


@st.cache_data(show_spinner=False, max_entries=64)
def _compact_file(path: str, fingerprint: str, neuron_id: str) -> bytes:
    import tempfile

    from compactvision.artifacts import export_compact

    with tempfile.TemporaryDirectory() as tmp:
        return export_compact(path, neuron_id, Path(tmp) / f"{neuron_id}.safetensors").read_bytes()


def compact_file(run: Run, neuron_id: str) -> bytes:
    """The neuron's exported `.safetensors` file, made once per run and neuron (not on every page render)."""
    return _compact_file(str(run.path), run.fingerprint, neuron_id)
