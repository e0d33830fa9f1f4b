"""Tuning curves from in-silico stimuli: orientation x spatial frequency, dot size, bar length, curvature."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from compactvision.interpret.stimuli import Tuning
from compactvision.viz.layout import SERIES_COLOURS, finish

#: Axis titles for the stimulus parameters `Tuning.axes` uses.
AXIS_TITLES = {
    "orientation_deg": "orientation (deg)",
    "sf_cpp": "spatial frequency (cycles/px)",
    "diameter_px": "dot diameter (px)",
    "length_px": "bar length (px)",
    "curvature_per_px": "curvature (1/px)",
}
_LOG_AXES = {"sf_cpp", "diameter_px", "length_px"}
_POLARITY = {1: "white", -1: "black"}


def _blank_line(fig: go.Figure, tuning: Tuning, row: int, col: int) -> None:
    fig.add_hline(y=tuning.blank, line_dash="dot", line_color="grey", row=row, col=col,
                  annotation_text="grey screen", annotation_position="bottom right")


def _grid_figure(tuning: Tuning, title: str) -> go.Figure:
    """A 2-D stimulus space: heatmap, plus one slice through the peak along each axis."""
    (ya, y), (xa, x) = list(tuning.axes.items())
    r = tuning.response
    iy, ix = np.unravel_index(int(np.argmax(r)), r.shape)
    fig = make_subplots(rows=1, cols=3, column_widths=[0.4, 0.3, 0.3], horizontal_spacing=0.1,
                        subplot_titles=["response map", f"at {AXIS_TITLES[xa]} = {x[ix]:.3g}",
                                        f"at {AXIS_TITLES[ya]} = {y[iy]:.3g}"])
    fig.add_trace(go.Heatmap(z=r, x=[f"{v:.3g}" for v in x], y=[f"{v:.3g}" for v in y], colorscale="Viridis",
                             colorbar={"title": {"text": "response"}, "x": 0.36, "thickness": 10},
                             hovertemplate=f"{AXIS_TITLES[ya]} %{{y}}<br>{AXIS_TITLES[xa]} %{{x}}<br>response %{{z:.3g}}<extra></extra>",
                             name="response map"), row=1, col=1)
    fig.add_trace(go.Scatter(x=y, y=r[:, ix], mode="lines+markers", name=AXIS_TITLES[ya], line_color=SERIES_COLOURS[0],
                             showlegend=False), row=1, col=2)
    fig.add_trace(go.Scatter(x=x, y=r[iy], mode="lines+markers", name=AXIS_TITLES[xa], line_color=SERIES_COLOURS[1],
                             showlegend=False), row=1, col=3)
    fig.update_xaxes(title_text=AXIS_TITLES[xa], row=1, col=1)
    fig.update_yaxes(title_text=AXIS_TITLES[ya], row=1, col=1)
    fig.update_xaxes(title_text=AXIS_TITLES[ya], type="log" if ya in _LOG_AXES else "linear", row=1, col=2)
    fig.update_xaxes(title_text=AXIS_TITLES[xa], type="log" if xa in _LOG_AXES else "linear", row=1, col=3)
    fig.update_yaxes(title_text="response", row=1, col=2)
    for col in (2, 3):
        _blank_line(fig, tuning, 1, col)
    return finish(fig, title, height=400)


def _polarity_figure(tuning: Tuning, title: str) -> go.Figure:
    """Response vs one stimulus size, one line per contrast polarity."""
    (_, pol), (xa, x) = list(tuning.axes.items())
    fig = go.Figure()
    for k, p in enumerate(pol):
        fig.add_trace(go.Scatter(x=x, y=tuning.response[k], mode="lines+markers", name=f"{_POLARITY.get(int(p), p)} on grey",
                                 line_color=SERIES_COLOURS[k],
                                 hovertemplate=f"{AXIS_TITLES[xa]} %{{x:.3g}}<br>response %{{y:.3g}}<extra></extra>"))
    _blank_line(fig, tuning, None, None)
    fig.update_xaxes(title_text=AXIS_TITLES[xa], type="log")
    fig.update_yaxes(title_text="response")
    return finish(fig, title, height=380)


def tuning_figure(tuning: Tuning) -> go.Figure:
    """The figure for any `Tuning` from `compactvision.interpret.stimuli`, preferred values in the title."""
    pref, n = tuning.preferred, tuning.neuron
    if tuning.stimulus == "orientation_sf":
        return _grid_figure(tuning, f"Gratings, neuron {n}: prefers {pref['orientation_deg']:.0f} deg, "
                                    f"{pref['sf_cpp']:.3g} cycles/px (orientation selectivity "
                                    f"{pref['orientation_selectivity']:.2f})")
    if tuning.stimulus == "curvature":
        return _grid_figure(tuning, f"Curved arcs, neuron {n}: prefers curvature {pref['curvature_per_px']:.3g}/px "
                                    f"at {pref['orientation_deg']:.0f} deg")
    if tuning.stimulus == "dot_size":
        return _polarity_figure(tuning, f"Dots at the RF centre, neuron {n}: prefers {pref['diameter_px']:.3g} px "
                                        f"{_POLARITY.get(int(pref['polarity']), '')} dots")
    if tuning.stimulus == "bar_length":
        return _polarity_figure(tuning, f"Bars at {pref['orientation_deg']:.0f} deg, neuron {n}: prefers "
                                        f"{pref['length_px']:.3g} px (end-stopping index "
                                        f"{pref['end_stopping_index']:.2f})")
    raise ValueError(f"no figure for stimulus {tuning.stimulus!r}")
