"""Tuning curves from in-silico stimuli: orientation x spatial frequency, dot size, bar length, curvature."""
from __future__ import annotations

from typing import Mapping

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


def _normalised(tuning: Tuning) -> np.ndarray:
    """Response above the grey screen, as a fraction of the peak's: 1 at the peak, 0 at grey."""
    r = np.asarray(tuning.response, np.float64) - tuning.blank
    peak = np.abs(r).max()
    return r / peak if peak > 0 else r


def tuning_overlay_figure(tunings: Mapping[str, Tuning]) -> go.Figure:
    """Several models' tuning to one stimulus family on shared, normalised axes (model vs teacher vs truth).

    Each curve is the model's response above the grey screen divided by its
    own peak, so models with different response units read on one scale. For
    a 2-D family (gratings, arcs) each panel is the slice through that model's
    own peak; for dots and bars, solid lines are the first polarity and dashed
    the second.
    """
    first = next(iter(tunings.values()))
    axes = list(first.axes)
    two_d = first.stimulus in ("orientation_sf", "curvature")
    panels = [AXIS_TITLES[a] for a in axes] if two_d else [AXIS_TITLES[axes[1]]]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[f"response vs {p}" for p in panels],
                        horizontal_spacing=0.1)
    for k, (name, t) in enumerate(tunings.items()):
        r = _normalised(t)
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        if two_d:
            iy, ix = np.unravel_index(int(np.argmax(r)), r.shape)
            for col, (axis, curve) in enumerate(((axes[0], r[:, ix]), (axes[1], r[iy])), start=1):
                fig.add_trace(go.Scatter(x=t.axes[axis], y=curve, mode="lines+markers", name=name, legendgroup=name,
                                         showlegend=col == 1, line_color=colour,
                                         hovertemplate=f"{name}<br>{AXIS_TITLES[axis]} %{{x:.3g}}<br>"
                                                       "normalised response %{y:.2f}<extra></extra>"), row=1, col=col)
        else:
            for j, p in enumerate(t.axes[axes[0]]):
                label = _POLARITY.get(int(p), f"{p:g}")
                fig.add_trace(go.Scatter(x=t.axes[axes[1]], y=r[j], mode="lines+markers", name=f"{name} ({label})",
                                         legendgroup=name, line={"color": colour, "dash": "solid" if j == 0 else "dash"},
                                         hovertemplate=f"{name}, {label}<br>{AXIS_TITLES[axes[1]]} %{{x:.3g}}<br>"
                                                       "normalised response %{y:.2f}<extra></extra>"), row=1, col=1)
    for col, axis in enumerate(axes if two_d else axes[1:], start=1):
        fig.update_xaxes(title_text=AXIS_TITLES[axis], type="log" if axis in _LOG_AXES else "linear", row=1, col=col)
        fig.update_yaxes(title_text="response above grey / peak" if col == 1 else None, range=[-1.05, 1.05],
                         row=1, col=col)
        fig.add_hline(y=0.0, line_dash="dot", line_color="grey", row=1, col=col)
    fig.update_layout(legend={"orientation": "h", "y": -0.25})
    return finish(fig, f"{FAMILY_TITLES.get(first.stimulus, first.stimulus)}: every model on one normalised scale",
                  height=460)


FAMILY_TITLES = {"orientation_sf": "Gratings", "curvature": "Curved arcs", "dot_size": "Dots at the RF centre",
                 "bar_length": "Bars (end-stopping)"}
