"""Teacher vs student: how much prediction accuracy each neuron's compression cost."""
from __future__ import annotations

import numpy as np
import streamlit as st

from compactvision.errors import CompactVisionError
from compactvision.interpret.attribution import response
from compactvision.runs import prune_history
from compactvision.viz.performance import (accuracy_by_neuron_figure, predicted_vs_measured_figure, pruning_path_figure,
                                          teacher_student_scatter_figure)
from app_support.caches import (current_neuron, model_lock, neuron_data, require_run, student, student_ids,
                                teacher_for)
from app_support.entry import run_through_app
from app_support.widgets import show_figure

run_through_app()  # a deep link on a fresh server starts a page alone: lay it out through app.py

st.title("Teacher vs student")
run = require_run()
neuron_id = current_neuron(run)
data = neuron_data(run, neuron_id)


@st.cache_data(show_spinner="Predicting the held-out images…", max_entries=64)
def _predictions(path: str, fingerprint: str, neuron_id: str) -> dict[str, np.ndarray]:
    """Both models' predictions for one neuron on its held-out images (a few hundred forward passes).

    Each model predicts under its lock: the Robustness page switches the shared
    teacher's V1 noise on under that lock, and a noisy prediction cached here
    would stay for good.
    """
    compact = student(run, neuron_id)
    with model_lock(run, compact):
        out = {"compact model": response(compact, data.images)[:, 0]}
    big, j = teacher_for(run, neuron_id)
    if big is not None:
        with model_lock(run, big):
            out["teacher"] = response(big, data.images)[:, j]
    return out


# ------------------------------------------------------------ one neuron
st.subheader(f"Neuron {neuron_id}: predicted vs measured")
if data is None:
    st.info("This run has no held-out data to compare predictions with.")
else:
    targets = {"measured (trial-averaged)": data.responses}
    if data.truth is not None:
        targets["twin's noise-free rate"] = data.truth
    against = st.radio("Compare with", list(targets), horizontal=True, key="tvs_target")
    preds = _predictions(str(run.path), run.fingerprint, neuron_id)
    measured = targets[against]
    density = st.toggle("Density", value=len(measured) * len(preds) > 2000, key="tvs_density",
                        help="Contours of how many points fall where, instead of one marker per image and model "
                             "(on by default above 2,000 points, where markers pile up).")
    show_figure(predicted_vs_measured_figure(np.stack(list(preds.values()), 1),
                                                 np.repeat(measured[:, None], len(preds), 1), names=list(preds),
                                                 title=f"Neuron {neuron_id}, held-out images: predicted vs {against}",
                                                 series="models", density=density),
                    key="tvs_scatter", width="stretch")

# ------------------------------------------------------------ all neurons
st.subheader("Every neuron")
ids = student_ids(run)
records = {i: prune_history(run, i) for i in ids}


metric_names = {"r_heldout": "r vs measured (held-out)", "r_truth": "r vs the twin's noise-free rates"}
available = [k for k in metric_names if any((r or {}).get("metrics", {}).get(k) is not None for r in records.values())]
if available:
    metric = st.selectbox("Accuracy", available, format_func=metric_names.get, key="tvs_metric")
    scores = {"compact model": np.array([(records[i] or {}).get("metrics", {}).get(metric, np.nan) for i in ids], float)}
    teacher_scores = run.teacher_scores()[metric]
    if teacher_scores:
        scores["teacher"] = np.array([teacher_scores.get(i, np.nan) for i in ids], float)
    show_figure(accuracy_by_neuron_figure(scores, names=ids, metric=metric_names[metric]),
                    key="tvs_per_neuron", width="stretch")
    if "teacher" in scores:
        show_figure(teacher_student_scatter_figure(scores["teacher"], scores["compact model"], names=ids,
                                                       current=neuron_id, metric=metric_names[metric]),
                        key="tvs_neuron_scatter", width="stretch")
        st.caption(f"Each point is one neuron; neuron {neuron_id} (picked in the sidebar) is the large marker. "
                   "Points below the dashed line lost accuracy in compression.")

# ------------------------------------------------------------ pruning path
st.subheader(f"Neuron {neuron_id}: accuracy vs parameters while pruning")
history = records.get(neuron_id)
if history and history.get("path"):
    show_figure(pruning_path_figure(history["path"]), key="tvs_path", width="stretch")
    st.caption("Each point is the network after pruning one more layer (last layer first), then fine-tuning; "
               "accuracy is r against the teacher on validation images.")
else:
    st.info("No pruning path recorded for this neuron (e.g. imported published models).")

# ------------------------------------------------------------ your data
with st.expander("Score the compact model on your own data (.npz)"):
    from compactvision.inputs import fit_images
    from compactvision.uploads import read_dataset_upload

    up = st.file_uploader("A dataset .npz in compactvision's layout (see `compactvision data twin --out`)",
                          type=["npz"], key="tvs_upload")
    if up is not None:
        try:
            ds = read_dataset_upload(up.getvalue(), up.name)
            session = next((s for s in ds.sessions if neuron_id in s.neuron_ids), None)
            if session is None:
                st.warning(f"{up.name} has no neuron {neuron_id}; its neurons are "
                           f"{[n for s in ds.sessions for n in s.neuron_ids][:10]}…")
            else:
                compact = student(run, neuron_id)
                pred = response(compact, fit_images(session.images, compact.arch.input_size[0]))[:, 0]
                measured = session.mean_responses()[session.neuron_ids.index(neuron_id)]
                show_figure(predicted_vs_measured_figure(pred, measured, names=["compact model"],
                                                             title=f"Neuron {neuron_id} on {up.name}"),
                                key="tvs_upload_scatter", width="stretch")
        except CompactVisionError as e:
            st.error(f"This upload cannot be used: {e}")
