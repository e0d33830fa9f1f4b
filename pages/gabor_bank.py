"""Gabor bank: the teacher's fixed V1 front end, its filters, their statistics, and its response to an image."""
from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from compactvision.models.vone import PARAMETER_NAMES
from compactvision.viz.filters import gabor_bank_figure, gabor_parameter_histograms, response_maps_figure
from app_support.caches import heldout, model_lock, require_run, teacher
from app_support.widgets import image_picker, show_figure
from app_support.entry import run_through_app

run_through_app()  # a deep link on a fresh server starts a page alone: lay it out through app.py

st.title("Gabor bank")
run = require_run()
if not run.has_teacher:
    st.info(f"{run.no_teacher_reason} So there is no VOneBlock to show.")
    st.stop()
big = teacher(run)
vone = big.vone
if vone is None:
    how = ("a learned convolution (the standard-CNN control); its filters are on **Layer weights**"
           if big.front is not None else "the stem of a pretrained ResNet checkpoint")
    st.info(f"This teacher sees pixels through {how}, not through a VOneBlock, so it has no Gabor bank to show.")
    st.stop()
params = vone.parameters_table()
kernels = vone.kernels()
st.markdown(f"The teacher sees the image through **{len(kernels)} fixed Gabor filters** "
            f"({vone.n_simple} simple and {vone.n_complex} complex cells) whose orientation, spatial frequency, "
            "phase and envelope are drawn from macaque V1 recordings (Dapello et al. 2020). Nothing here is trained.")

c1, c2 = st.columns(2)
shown = c1.slider("Filters shown", 8, len(kernels), min(64, len(kernels)), step=8 if len(kernels) >= 16 else 1,
                  key="gb_shown")
order = c2.selectbox("Ordered by", PARAMETER_NAMES, key="gb_order")
show_figure(gabor_bank_figure(kernels, params, max_filters=shown, sort_by=order), key="gb_bank", width="stretch")

show_figure(gabor_parameter_histograms(params), key="gb_hist", width="stretch")

st.subheader("The bank's response to an image")
held = heldout(run)
images = next(iter(held["sessions"].values()))["images"] if held else np.full((1, 64, 64, 3), 128, np.uint8)
size = vone.bank.image_size
image = image_picker(images, key="gb_image", size=size)
if image is not None:
    cells = st.radio("Cells", ["simple", "complex"], horizontal=True, key="gb_cells")
    with torch.no_grad(), model_lock(run, big):  # another session may be switching V1 noise on it
        maps = vone(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0)[0].numpy()
    maps = maps[: vone.n_simple] if cells == "simple" else maps[vone.n_simple:]
    strongest = np.argsort(-maps.reshape(len(maps), -1).mean(1))[:32]
    c1, c2 = st.columns([1, 3])
    c1.image(image, caption="input", width="stretch")
    offset = 0 if cells == "simple" else vone.n_simple
    show_figure(response_maps_figure(maps[strongest], [f"{cells} cell {offset + i}" for i in strongest],
                                         title=f"The 32 most active {cells} cells' response maps",
                                         border=-(-vone.bank.padding // vone.bank.stride)),
                    "gb_maps", where=c2)
