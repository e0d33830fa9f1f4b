"""Robustness: how teacher and compact model predictions hold up under noise, blur, contrast and attack."""
from __future__ import annotations

import contextlib

import streamlit as st

from compactvision.interpret.robustness import PERTURBATIONS, population_robustness, robustness_comparison
from compactvision.runs import find_runs
from compactvision.viz.robustness import robustness_figure
from app_support.caches import heldout, model_lock, open_run, student, student_ids, teacher
from app_support.entry import run_through_app
from app_support.locations import BUNDLED_RUN, RUNS_DIR
from app_support.long_work import cached_result, long_work
from app_support.widgets import neuron_page, show_figure

run_through_app()  # a deep link on a fresh server starts a page alone: lay it out through app.py

#: The first answer comes from this many images and the models that need no noise averaging; then it is refined.
QUICK_IMAGES = 16

run, neuron_id, compact, big, t_index, data = neuron_page("Robustness")
if data is None:
    st.info("This run has no held-out images to perturb.")
    st.stop()

st.markdown("Each held-out image is perturbed at increasing strength. **Left**: how well each model's predictions "
            "still correlate with the measured responses (higher is better). **Right**: how far the predictions "
            "moved from their clean values, in s.d.s of the clean responses (lower is more robust). PGD is an "
            "attack: it searches, within an L∞ budget ε of the pixel range, for the change that moves the "
            "predicted response most.")
c1, c2, c3 = st.columns(3)
perturbation = c1.selectbox("Perturbation", list(PERTURBATIONS), key="rb_perturbation",
                            format_func=lambda p: PERTURBATIONS[p]["label"])
n_images = c2.slider("Images", QUICK_IMAGES, len(data.images), min(64, len(data.images)), key="rb_images")
noise = c3.multiselect("Teacher V1 noise", ["off", "on"], default=["off", "on"], key="rb_noise",
                       disabled=big is None or big.vone is None,
                       help="The VOneBlock's Poisson-like noise; with it on, PGD averages its gradient over noise "
                            "draws, so noise cannot hide the gradient.")
noise = [] if big is None else noise


def _curves(n: int, settings: list[str], progress) -> dict:
    """The compact model's and the teacher's curves (each chosen V1 noise setting) on the first `n` images."""
    images, targets = data.images[:n], data.responses[:n]
    with model_lock(run, compact):
        curves = robustness_comparison({"compact model": compact}, images, targets, 0, perturbation, progress=progress)
    if settings:
        with model_lock(run, big):  # the V1 noise switch changes the shared teacher while it runs
            curves.update(robustness_comparison({"teacher": big}, images, targets, t_index, perturbation,
                                                noise_settings=[s == "on" for s in settings], progress=progress))
    return curves


# A first answer in seconds: few images, and no noisy teacher (its attack averages 8 noise draws a step).
quick_n = min(QUICK_IMAGES, n_images)
quick = [s for s in noise if s == "off"]
full_key = ("robustness", neuron_id, perturbation, n_images, tuple(noise))
quick_key = ("robustness", neuron_id, perturbation, quick_n, tuple(quick))
first = long_work(run, "rb_quick", quick_key, f"First answer on {quick_n} images",
                  lambda p: _curves(quick_n, quick, p), button="Run")
if first is not None:
    chart = st.empty()  # the first answer stays drawn while the refinement runs below it

    def _draw(curves: dict, n: int, key: str) -> None:
        show_figure(robustness_figure(curves, title=f"Neuron {neuron_id}: robustness to "
                                                    f"{perturbation.replace('_', ' ')} ({n} images)"), key, where=chart)

    if full_key != quick_key and cached_result(run, full_key) is None:
        _draw(first, quick_n, "rb_chart_first")
    full = first if full_key == quick_key else long_work(
        run, "rb_full", full_key, f"Refining on {n_images} images" + (" with V1 noise" if "on" in noise else ""),
        lambda p: _curves(n_images, noise, p), button="Refine", autostart=True)
    if full is not None:
        _draw(full, n_images, "rb_chart")

# ------------------------------------------------------------ across neurons
st.subheader("Across neurons: the V1 front end against a standard-CNN control")
st.markdown("The claim to test: a teacher with a fixed VOneBlock front end is harder to break than the same "
            "network with a learned first convolution (`compactvision teacher --front-end conv`), and its compact "
            "models inherit that. Pick a control run trained on the same data; each curve is the median over "
            "neurons, with bootstrap 95% CIs.")
others = [c for c in find_runs(BUNDLED_RUN, RUNS_DIR) if str(c.path) != str(run.path)]
d1, d2 = st.columns(2)
control = d1.selectbox("Compare with", [None, *others], key="rb_control",
                       format_func=lambda c: "(this run alone)" if c is None else c.label)
n_pop = d2.slider("Images per neuron", QUICK_IMAGES, len(data.images), min(32, len(data.images)), key="rb_pop_images")
ids = student_ids(run)
if control is not None:
    other = open_run(control.path)
    shared = [i for i in ids if i in set(student_ids(other))]
    if not shared:
        st.warning("That run has no compact models of this run's neurons, so the two cannot be compared.")
        st.stop()
    ids = shared


def _population(progress) -> dict:
    """Teacher and compact-model population curves of this run (and of the control run)."""
    sources = [("", run)] + ([(" (control)", open_run(control.path))] if control is not None else [])
    out = {}
    for suffix, r in sources:
        big_r = teacher(r) if r.has_teacher else None
        with model_lock(r, big_r) if big_r is not None else contextlib.nullcontext():
            curves = population_robustness(heldout(r), ids, lambda n, r=r: student(r, n), big_r, perturbation, n_pop,
                                           progress=progress)
        out.update({f"{name}{suffix}": c for name, c in curves.items()})
    return out


pop_key = ("population", perturbation, n_pop, None if control is None else str(control.path), tuple(ids))
population = long_work(run, "rb_population", pop_key, f"{len(ids)} neurons, {n_pop} images each", _population,
                       button="Compare")
if population is not None:
    show_figure(robustness_figure(population, title=f"Robustness to {perturbation.replace('_', ' ')} across "
                                                        f"{len(ids)} neurons"), key="rb_population_chart",
                    width="stretch")
