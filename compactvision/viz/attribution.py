"""Attribution maps beside the image they explain, on one shared signed scale per map."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from compactvision.viz.layout import finish, image_trace, signed_heatmap


def attribution_figure(image: np.ndarray, maps: Mapping[str, np.ndarray], similarity: float | None = None,
                       title: str = "Attribution") -> go.Figure:
    """The image, then one heatmap per named map (e.g. {"teacher": ..., "student": ...}), H x W each.

    Red pixels raise the neuron's response, blue ones lower it; each map has
    its own symmetric scale (models differ in output scale). `similarity`
    (e.g. `map_similarity` of two maps) is shown in the title.
    """
    names = list(maps)
    fig = make_subplots(rows=1, cols=1 + len(names), subplot_titles=["image"] + names, horizontal_spacing=0.09)
    fig.add_trace(image_trace(image), row=1, col=1)
    for k, name in enumerate(names):
        z = np.asarray(maps[name], np.float64)
        right = fig.get_subplot(1, k + 2).xaxis.domain[1]
        fig.add_trace(signed_heatmap(z, name, "attribution",
                                     hovertemplate=f"{name}<br>x %{{x}}, y %{{y}}<br>attribution %{{z:.3g}}<extra></extra>",
                                     colorbar={"title": {"text": "attribution", "side": "right"}, "len": 0.8,
                                               "x": right + 0.005, "xanchor": "left", "thickness": 10}),
                      row=1, col=k + 2)
    for col in range(1, len(names) + 2):
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{col if col > 1 else ''}", showticklabels=False,
                         showgrid=False, zeroline=False, row=1, col=col)
        fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, row=1, col=col)
    if similarity is not None:
        title = f"{title} (rank correlation of the maps: {similarity:.2f})"
    return finish(fig, title, height=380)
