"""Robustness: how teacher and compact model predictions hold up under noise, blur, contrast and attack."""
from __future__ import annotations

import streamlit as st

from compactvision.interpret.robustness import PERTURBATIONS, robustness_comparison
from compactvision.viz.robustness import robustness_figure
from app_support.caches import model_lock
from app_support.widgets import neuron_page
from app_support.entry import run_through_app

run_through_app()  # a deep link on a fresh server starts a page alone: lay it out through app.py

run, neuron_id, compact, big, t_index, data = neuron_page("Robustness")
if data is None:
    st.info("This run has no held-out images to perturb.")
    st.stop()

st.markdown("Each held-out image is perturbed at increasing strength; the curves show how well each model's "
            "predictions still correlate with the measured responses, and how far they moved. The teacher runs "
            "with its VOneBlock's Poisson-like V1 noise off and on.")
c1, c2, c3 = st.columns(3)
perturbation = c1.selectbox("Perturbation", list(PERTURBATIONS), key="rb_perturbation",
                            format_func=lambda p: PERTURBATIONS[p]["label"])
n_images = c2.slider("Images", 16, len(data.images), min(64, len(data.images)), key="rb_images")
noise = c3.multiselect("Teacher V1 noise", ["off", "on"], default=["off", "on"], key="rb_noise",
                       disabled=big is None or big.vone is None)
inputs = (run.fingerprint, neuron_id, perturbation, n_images, tuple(noise))
if st.button("Run", key="rb_run", type="primary"):
    images, targets = data.images[:n_images], data.responses[:n_images]
    with st.spinner("Perturbing and predicting…" + (" (PGD attacks take longest)" if perturbation == "pgd" else "")):
        with model_lock(run, compact):
            curves = robustness_comparison({"compact model": compact}, images, targets, 0, perturbation)
        if big is not None and noise:
            with model_lock(run, big):  # the V1 noise switch changes the shared teacher while it runs
                curves.update(robustness_comparison({"teacher": big}, images, targets, t_index, perturbation,
                                                    noise_settings=[n == "on" for n in noise]))
    st.session_state["rb_result"] = {"inputs": inputs, "curves": curves}

result = st.session_state.get("rb_result")
if result and result["inputs"] == inputs:
    st.plotly_chart(robustness_figure(result["curves"]), key="rb_chart", width="stretch")
else:
    st.info("Choose a perturbation and press **Run**.")
