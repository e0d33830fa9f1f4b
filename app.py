"""compactvision's app: open a run, pick a neuron, see how its compact model computes.

`streamlit run app.py` (or `make run`). This file only lays out the pages and
the sidebar every page shares (which run, which neuron); each page in `pages/`
is a short script over the library, and what the pages share lives in
`app_support/`.
"""
from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="compactvision", page_icon=":eye:", layout="wide")

from app_support.entry import inside_app  # noqa: E402  (after set_page_config)
from app_support.sidebar import neuron_sidebar, run_sidebar  # noqa: E402
from compactvision.errors import CompactVisionError  # noqa: E402

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/gallery.py", title="Gallery", icon=":material/view_module:"),
    st.Page("pages/profile.py", title="Profile", icon=":material/person:"),
    st.Page("pages/gabor_bank.py", title="Gabor bank", icon=":material/blur_on:"),
    st.Page("pages/layer_weights.py", title="Layer weights", icon=":material/grid_on:"),
    st.Page("pages/attributions.py", title="Attributions", icon=":material/highlight:"),
    st.Page("pages/neuron_graph.py", title="Neuron graph", icon=":material/account_tree:"),
    st.Page("pages/teacher_vs_student.py", title="Teacher vs student", icon=":material/compare:"),
    st.Page("pages/preferred_stimuli.py", title="Preferred stimuli", icon=":material/star:"),
    st.Page("pages/robustness.py", title="Robustness", icon=":material/shield:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
]
#: Pages that show one neuron at a time get the neuron picker in the sidebar.
NEURON_PAGES = {"Profile", "Attributions", "Neuron graph", "Preferred stimuli", "Robustness", "Layer weights", "Teacher vs student"}

page = st.navigation(PAGES)
run_sidebar()
if page.title in NEURON_PAGES:
    neuron_sidebar()
try:
    with inside_app():
        page.run()
except CompactVisionError as e:
    # A run whose files do not load (tampered, truncated, from an incompatible version) is
    # explained, and the sidebar stays usable to pick another.
    st.error(f"This run cannot be shown: {e}")
