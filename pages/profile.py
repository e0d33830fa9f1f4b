"""Profile: one neuron on one screen: what it is, where it looks, what drives it, how well it is predicted."""
from __future__ import annotations

import numpy as np
import streamlit as st

from compactvision.interpret.graph import important_paths, neuron_graph
from compactvision.interpret.profile import ground_truth_facts, readout_map
from compactvision.interpret.stimuli import orientation_sf_tuning
from compactvision.viz.filters import readout_map_figure
from compactvision.viz.graph import neuron_graph_figure
from app_support.caches import compact_file, model_lock, profile_card, synthesised
from app_support.entry import run_through_app
from app_support.widgets import neuron_page, show_figure

run_through_app()  # a deep link on a fresh server starts a page alone: lay it out through app.py

run, neuron_id, compact, big, t_index, data = neuron_page("Profile")
card = profile_card(run, neuron_id)
size = compact.arch.input_size[0]
gt = data.ground_truth if data is not None else None

st.markdown(f"### {neuron_id}" + (f" · {card['label']}" if card["label"] else ""))
consolidated = " (consolidated)" if card["consolidated"] else ""
st.caption(f"Filters per layer {' · '.join(map(str, card['channels']))}{consolidated}: "
           f"{card['total_filters']} filters, {card['n_parameters']:,} parameters.")
if gt:
    facts = [f"a simulated **{card['label']}** cell", *ground_truth_facts(gt)]
    st.caption("Ground truth (digital twin): " + ", ".join(facts) + ".")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


m = st.columns(5)
m[0].metric("Parameters", f"{card['n_parameters']:,}", help="filters per layer: " + " · ".join(map(str, card["channels"])))
m[1].metric("r, compact model", _fmt(card["r_student"]), help="against the measured held-out responses")
m[2].metric("r, teacher", _fmt(card["r_teacher"]))
m[3].metric("Noise ceiling", _fmt(card["ceiling"]), help="the best r the repeats allow (split-half reliability)")
m[4].metric("r vs truth" if card["r_truth"] is not None else "r / ceiling",
            _fmt(card["r_truth"] if card["r_truth"] is not None else card["normalised"]),
            help="against the twin's noise-free rates" if card["r_truth"] is not None else "Brain-Score style")

left, right = st.columns(2)
with left:
    show_figure(readout_map_figure(readout_map(compact), size), key="profile_rf", width="stretch")
with right:
    st.markdown("**Preferred stimuli**")
    images, captions = [], []
    if data is not None and card["top_image"] is not None:
        images.append(data.images[card["top_image"]])
        captions.append(f"top held-out image (#{card['top_image']})")
    with st.spinner("Synthesising the preferred image…"):
        images.append(synthesised(run, neuron_id))
    captions.append("synthesised (96 steps)")
    st.image(images, caption=captions, width=180)

    @st.cache_data(show_spinner="Measuring orientation tuning…", max_entries=64)
    def _orientation(path: str, fingerprint: str, neuron_id: str) -> dict:
        with model_lock(run, compact):
            t = orientation_sf_tuning(compact, 0, size=size, center=tuple(gt["rf_center"]) if gt else None)
        return t.preferred

    tuning = _orientation(str(run.path), run.fingerprint, neuron_id)
    line = (f"Tuning (gratings): preferred orientation **{tuning['orientation_deg']:.0f}°**, "
            f"selectivity {tuning['orientation_selectivity']:.2f}, spatial frequency {tuning['sf_cpp']:.3f} c/px")
    if gt and gt.get("preferred_orientation_deg") is not None:
        line += f" (truth {gt['preferred_orientation_deg']:.0f}°)"
    st.markdown(line + ". Full curves: **Preferred stimuli**.")

st.markdown("**Its computation, in miniature** (strongest connections; the full view is on **Neuron graph**)")
image = data.images[card["top_image"]] if data is not None and card["top_image"] is not None else \
    np.full((size, size, 3), 128, np.uint8)
view = important_paths(neuron_graph(compact, image))
show_figure(neuron_graph_figure(view.graph, thumbnails=False, width=900, height=420,
                                    hidden=(view.hidden_nodes, view.hidden_edges)),
                key="profile_graph", width="stretch")

st.download_button("Download this compact model (.safetensors)", compact_file(run, neuron_id), file_name=f"{neuron_id}.safetensors",
                   mime="application/octet-stream", key="profile_download",
                   help="One self-describing file: weights, architecture and metrics; `compactvision.artifacts.load_compact` reads it.")
