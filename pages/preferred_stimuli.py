"""Preferred stimuli: the images that drive the neuron most, images made to drive it, tuning curves."""
from __future__ import annotations

import numpy as np
import streamlit as st

from compactvision.interpret.stimuli import (SYNTHESIS_OPTIMISERS, bar_length_tuning, curvature_tuning,
                                             dot_size_tuning, orientation_sf_tuning, synthesise_preferred,
                                             top_images)
from compactvision.interpret.profile import ground_truth_facts
from compactvision.viz.tuning import tuning_figure, tuning_overlay_figure
from app_support.caches import model_lock, twin
from app_support.long_work import long_work
from app_support.widgets import neuron_page, show_figure
from app_support.entry import run_through_app

run_through_app()  # a deep link on a fresh server starts a page alone: lay it out through app.py

run, neuron_id, compact, big, t_index, data = neuron_page("Preferred stimuli")
truth_model, truth_index = twin(run, neuron_id)
size = compact.arch.input_size[0]

# Every model this page compares, as (label, model, output index).
models = [("compact model", compact, 0)]
if big is not None:
    models.append(("teacher", big, t_index))
if truth_model is not None:
    models.append(("ground truth (twin)", truth_model, truth_index))

if data is not None and data.ground_truth is not None:
    gt = data.ground_truth
    facts = [f"cell type **{gt['cell_type']}**", *ground_truth_facts(gt)]
    st.info("This neuron is simulated, so its true computation is known: " + ", ".join(facts) + ".")

# ------------------------------------------------------------ top images
st.subheader("Held-out images that drive it most")
if data is None:
    st.caption("This run has no held-out images.")
else:
    k = st.slider("How many", 3, 12, 6, key="ps_k")

    @st.cache_data(show_spinner=False, max_entries=64)
    def _top(path: str, fingerprint: str, neuron_id: str, label: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        model, j = next((m, j) for name, m, j in models if name == label)
        with model_lock(run, model):
            return top_images(model, data.images, j, k)

    for label, _, _ in models:
        idx, r = _top(str(run.path), run.fingerprint, neuron_id, label, k)
        st.markdown(f"**{label}**")
        st.image([data.images[i] for i in idx], caption=[f"#{i}: {v:.2f}" for i, v in zip(idx, r)], width=96)

# ------------------------------------------------------------ synthesis
st.subheader("Synthesised preferred images")
st.caption("Gradient ascent on the predicted response from four faint-noise starts side by side, kept natural by "
           "jitter, blur and a contrast bound; the highest image any ascent showed is kept. Seeded: the same settings "
           "give the same image.")
ASCENTS = {"normalised": "whole-gradient steps", "adam": "Adam, pixel by pixel"}
c1, c2, c3 = st.columns(3)
steps = c1.slider("Steps", 32, 256, 96, step=32, key="ps_steps")
seed = c2.number_input("Seed", 0, 10_000, 0, key="ps_seed")
ascent = c3.selectbox("Ascent", SYNTHESIS_OPTIMISERS, format_func=ASCENTS.get, key="ps_ascent",
                      help="Adam scales each pixel's step by that pixel's own gradient history, so pixels the neuron "
                           "barely sees move as fast as the rest and pattern fills the image; whole-gradient steps "
                           "move each pixel in proportion to how much the neuron sees it.")


def _synthesise_all(progress) -> dict:
    """Every model's synthesised image; one progress count over all of their steps."""
    images = {}
    for k, (label, model, j) in enumerate(models):
        with model_lock(run, model):
            images[label] = synthesise_preferred(model, j, size=size, steps=steps, seed=int(seed), optimizer=ascent,
                                                 progress=lambda _s, d, _t, k=k: progress("", k * steps + d,
                                                                                          len(models) * steps))
    return images


synth = long_work(run, "ps_synth", ("synthesis", neuron_id, steps, int(seed), ascent), "Ascending the gradient",
                  _synthesise_all, button="Synthesise")
if synth is not None:
    st.image(list(synth.values()), caption=list(synth), width=160)

# ------------------------------------------------------------ tuning
st.subheader("Tuning curves")
TUNINGS = {"orientation_sf": ("Gratings: orientation × spatial frequency", orientation_sf_tuning),
           "dot_size": ("Dots: size and polarity", dot_size_tuning),
           "bar_length": ("Bars: length (end-stopping)", bar_length_tuning),
           "curvature": ("Arcs: curvature × orientation", curvature_tuning)}
kind = st.selectbox("Stimulus", list(TUNINGS), format_func=lambda t: TUNINGS[t][0], key="ps_tuning")
# Stimuli go to the true receptive-field centre when the twin knows it, else each model estimates its own.
center = tuple(data.ground_truth["rf_center"]) if data is not None and data.ground_truth else None


def _tune_all(progress) -> dict:
    """Every model's tuning to the chosen stimuli, one model at a time."""
    curves = {}
    for k, (label, model, j) in enumerate(models):
        with model_lock(run, model):
            curves[label] = TUNINGS[kind][1](model, j, size=size, center=center)
        progress("", k + 1, len(models))
    return curves


curves = long_work(run, "ps_tuning_job", ("tuning", neuron_id, kind), "Showing the stimuli to each model",
                   _tune_all, button="Measure tuning")
if curves is not None:
    show_figure(tuning_overlay_figure(curves), key="ps_tuning_overlay", width="stretch")
    with st.expander("Each model's full response map"):
        for label, tuning in curves.items():
            st.markdown(f"**{label}**")
            show_figure(tuning_figure(tuning), key=f"ps_tuning_{label}", width="stretch")
