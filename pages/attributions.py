"""Attributions: which pixels drive the neuron, according to the teacher and to its compact model."""
from __future__ import annotations

import numpy as np
import streamlit as st

from compactvision.hashing import sha256_bytes
from compactvision.interpret.attribution import METHODS, attribute, map_similarity
from compactvision.viz.attribution import attribution_figure
from app_support.caches import model_lock
from app_support.widgets import image_picker, neuron_page, show_figure
from app_support.entry import run_through_app

run_through_app()  # a deep link on a fresh server starts a page alone: lay it out through app.py

run, neuron_id, compact, big, t_index, data = neuron_page("Attributions")
size = compact.arch.input_size[0]

with st.sidebar:
    image = image_picker(data.images if data is not None else np.full((1, size, size, 3), 128, np.uint8),
                         key="attr_image", size=size)
method = st.selectbox("Method", list(METHODS), index=list(METHODS).index("saliency"), key="attr_method",
                      format_func=lambda m: METHODS[m].label)
st.caption(METHODS[method].description)
if image is None:
    st.stop()


@st.cache_data(show_spinner=False, max_entries=256)
def _maps(path: str, fingerprint: str, neuron_id: str, method: str, image_digest: str, _image: np.ndarray) -> dict:
    """Both models' maps for one (neuron, method, image), shared by every session that asks again."""
    maps = {}
    with model_lock(run, compact):
        maps["compact model"] = attribute(compact, _image[None], 0, method)[0]
    if big is not None:
        with model_lock(run, big):
            maps["teacher"] = attribute(big, _image[None], t_index, method)[0]
    return {"maps": maps, "similarity": map_similarity(maps["teacher"], maps["compact model"]) if "teacher" in maps else None}


inputs = (str(run.path), run.fingerprint, neuron_id, method, sha256_bytes(image.tobytes()))
# Saliency-type maps take milliseconds and are drawn at once; the rest wait for the button.
cheap = method in ("saliency", "input_x_gradient", "layer_gradcam")
done: set = st.session_state.setdefault("attr_done", set())
if st.button("Compute attributions", key="attr_compute", type="primary") or cheap:
    done.add(inputs)
if inputs not in done:
    st.info("Press **Compute attributions** to run this method on the image.")
    st.stop()
with st.spinner(f"{METHODS[method].label}…"):
    result = _maps(*inputs, image)

if result["similarity"] is not None:
    st.metric("Teacher–student map similarity (Spearman rank correlation)", f"{result['similarity']:.2f}",
              help="1: both models rank the pixels the same way; 0: unrelated maps")
show_figure(attribution_figure(image, result["maps"], similarity=result["similarity"],
                                   title=f"{METHODS[method].label}, neuron {neuron_id}"),
                key="attr_chart", width="stretch")
