"""What several pages draw the same way: a per-neuron page's opening and the image picker."""
from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from compactvision.errors import CompactVisionError
from compactvision.models.student import CompactStudent
from compactvision.runs import NeuronData, Run
from compactvision.inputs import fit_images
from compactvision.uploads import read_image_upload

from app_support.caches import current_neuron, neuron_data, require_run, student, teacher_for


def neuron_page(title: str) -> tuple[Run, str, CompactStudent, torch.nn.Module | None, int | None, NeuronData | None]:
    """A per-neuron page's common start: title, run, neuron, its compact model, teacher (and index), data.

    Returns (run, neuron_id, compact model, teacher or None, teacher output index or None, NeuronData or None).
    """
    st.title(title)
    run = require_run()
    neuron_id = current_neuron(run)
    compact = student(run, neuron_id)
    big, t_index = teacher_for(run, neuron_id)
    return run, neuron_id, compact, big, t_index, neuron_data(run, neuron_id)


def image_picker(images: np.ndarray, key: str, size: int) -> np.ndarray | None:
    """One image from `images` (uint8 N x H x W x C) by index, or an uploaded PNG/JPEG.

    Returns uint8 H x W x 3 at the model's size, or None after showing why an
    upload was refused.
    """
    source = st.radio("Image", ["dataset", "upload"], horizontal=True, key=f"{key}_source")
    if source == "upload":
        up = st.file_uploader("PNG or JPEG", type=["png", "jpg", "jpeg"], key=f"{key}_upload")
        if up is None:
            st.caption("Upload an image, or switch back to the dataset.")
            return None
        try:
            return read_image_upload(up.getvalue(), up.name, size=size)
        except CompactVisionError as e:
            st.error(f"This upload cannot be used: {e}")
            return None
    # The default is the image with the most contrast: image #0 of a held-out set can be a near-blank patch.
    default = int(np.argmax(np.asarray(images, np.float32).reshape(len(images), -1).std(1))) if len(images) else 0
    idx = st.slider("Held-out image", 0, len(images) - 1, default, key=f"{key}_index")
    return fit_images(images[idx], size)


def show_figure(fig, key: str, where=None, **kwargs):
    """`st.plotly_chart` with the toolbar's camera button saving PNG or SVG (the sidebar's choice), named `key`.

    `where`: a container or column to draw in (default: the page). Returns
    what `plotly_chart` returns (the selection event, with `on_select`).
    """
    kwargs.setdefault("width", "stretch")
    fmt = str(st.session_state.get("figure_format", "png")).lower()
    kwargs["config"] = {"toImageButtonOptions": {"format": fmt, "filename": key, "scale": 2 if fmt == "png" else 1},
                        "displaylogo": False}
    return (where or st).plotly_chart(fig, key=key, **kwargs)
