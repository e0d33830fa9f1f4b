"""Neuron graph: one neuron's compact model as filters (nodes) and weights (edges); click a filter."""
from __future__ import annotations

import numpy as np
import streamlit as st

from compactvision.hashing import sha256_bytes
from compactvision.interpret.graph import ablate, important_paths, most_important, neuron_graph
from compactvision.viz.graph import neuron_graph_figure, node_detail_figure
from app_support.caches import current_neuron, neuron_data, require_run, student
from app_support.widgets import image_picker, show_figure
from app_support.entry import run_through_app

run_through_app()  # a deep link on a fresh server starts a page alone: lay it out through app.py

st.title("Neuron graph")
run = require_run()
neuron_id = current_neuron(run)
model = student(run, neuron_id)
data = neuron_data(run, neuron_id)
size = model.arch.input_size[0]

with st.sidebar:
    image = image_picker(data.images if data is not None else np.full((1, size, size, 3), 128, np.uint8),
                         key="graph_image", size=size)
if image is None:
    st.stop()


@st.cache_data(show_spinner=False, max_entries=64)
def _graph(path: str, fingerprint: str, neuron_id: str, image_digest: str, _image: np.ndarray):
    """Nodes, edges, activations and single-filter ablations for one image: milliseconds, cached per image.

    `neuron_graph` and `ablate` work on copies of the model, so no lock is needed.
    """
    return neuron_graph(model, _image)


digest = sha256_bytes(image.tobytes())
graph = _graph(str(run.path), run.fingerprint, neuron_id, digest, image)
node_ids = [n.id for n in graph.nodes]
st.caption(f"Neuron **{neuron_id}** · filters per layer {list(model.arch.channels)} · "
           f"{model.n_parameters():,} parameters · predicted response to this image **{graph.response:.3f}**")

# Ablations belong to one neuron: a new neuron starts with every filter on.
if st.session_state.get("graph_ablate_neuron") != neuron_id:
    st.session_state["graph_ablate_neuron"] = neuron_id
    st.session_state["graph_ablate"] = []
    st.session_state.pop("graph_node", None)
off = [tuple(n) for n in st.session_state.get("graph_ablate", []) if tuple(n) in node_ids]

full = st.toggle("Show the full graph", key="graph_full",
                 help="By default only the filters that carry 90% of each layer's effect on the response, "
                      "and their strongest connections, are drawn.")
view = None if full else important_paths(graph)
if st.session_state.get("graph_node") not in node_ids:
    from_url = st.session_state.pop("graph_node_url", None)
    wanted = tuple(int(v) for v in from_url.split("-")) if from_url and from_url.count("-") == 1 else None
    st.session_state["graph_node"] = wanted if wanted in node_ids else most_important(graph)
shown = graph if view is None else view.graph
figure = neuron_graph_figure(shown, ablated=off, hidden=None if view is None else (view.hidden_nodes, view.hidden_edges),
                             selected=st.session_state["graph_node"])
filters_trace = next(i for i, t in enumerate(figure.data) if t.name == "filters")
event = show_figure(figure, key="graph_chart", on_select="rerun", selection_mode="points", width="stretch")
# A click on a node selects it; the selectbox below is the keyboard / fallback way and follows the click.
points = event.get("selection", {}).get("points", []) if event else []
clicked = next((tuple(int(v) for v in p["customdata"][:2]) for p in points
                if p.get("curve_number") == filters_trace and p.get("customdata") is not None), None)
if clicked in node_ids and clicked != st.session_state.get("graph_last_click"):
    st.session_state["graph_last_click"] = clicked
    st.session_state["graph_node"] = clicked
    st.rerun()  # redraw the graph with the new filter ringed

left, right = st.columns([2, 1])
with left:
    picked = st.selectbox("Filter", node_ids, key="graph_node",
                          format_func=lambda n: f"layer {n[0]}, filter {n[1]}",
                          help="The most important filter is selected first; click a node in the graph to pick another.")
    st.query_params["filter"] = f"{picked[0]}-{picked[1]}"
    node = graph.node(*picked)
with right:
    st.metric("Response change when this filter is off", f"{node.ablation_delta:+.4f}",
              help="exact: the model rerun with this filter's output set to zero")
    st.metric("Contribution (gradient × activation)", f"{node.contribution:+.4f}")
show_figure(node_detail_figure(graph, *picked), key="node_detail", width="stretch")

st.markdown("**Ablate several filters** (crossed out in the graph)")
off = st.multiselect("Filters switched off", node_ids, key="graph_ablate", format_func=lambda n: f"L{n[0]}·f{n[1]}")
if off:
    r = ablate(model, image, off)
    st.metric("Response with these filters off", f"{r:.4f}", delta=f"{r - graph.response:+.4f}")
else:
    st.metric("Response", f"{graph.response:.4f}")
