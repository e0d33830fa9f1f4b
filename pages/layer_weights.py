"""Layer weights: the filters of any layer of the teacher or of the neuron's compact model."""
from __future__ import annotations

import streamlit as st

from compactvision.viz.filters import kernel_grid_figure, student_layer_figure
from app_support.caches import current_neuron, require_run, student, teacher
from app_support.entry import run_through_app
from app_support.widgets import show_figure

run_through_app()  # a deep link on a fresh server starts a page alone: lay it out through app.py

st.title("Layer weights")
run = require_run()
neuron_id = current_neuron(run)
models = ["compact model"] + (["teacher"] if run.has_teacher else [])
which = st.radio("Model", models, horizontal=True, key="lw_model")

if which == "compact model":
    compact = student(run, neuron_id)
    # The label names the layer only: a count in it would go stale when the neuron (and its model) changes.
    layer = st.selectbox("Layer", range(len(compact.layers)), key="lw_student_layer",
                         format_func=lambda i: f"layer {i}" + (" (5x5 conv)" if i == 0 else " (separable: depthwise + pointwise)"))
    st.caption(f"Neuron {neuron_id}'s own model, layer {layer}: **{compact.arch.channels[layer]} filters** "
               f"(filters per layer {list(compact.arch.channels)}); BatchNorm folded into the weights it multiplies by.")
    show_figure(student_layer_figure(compact, layer), key="lw_chart", width="stretch")
else:
    big = teacher(run)
    convs = {name: m for name, m in big.named_modules() if hasattr(m, "weight") and getattr(m, "weight", None) is not None
             and m.weight.ndim == 4}
    name = st.selectbox("Layer", list(convs), key="lw_teacher_layer",
                        format_func=lambda n: f"{n}  ({tuple(convs[n].weight.shape)})")
    max_filters = st.slider("Filters shown", 8, 128, 64, step=8, key="lw_max_filters")
    show_figure(kernel_grid_figure(convs[name].weight.detach().cpu().numpy(), title=f"Teacher {name}",
                                       max_filters=max_filters), key="lw_chart", width="stretch")
