"""Robustness curves: accuracy and response change against perturbation strength, one line per model."""
from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from compactvision.viz.layout import SERIES_COLOURS, finish


def robustness_figure(curves: Mapping[str, Mapping[str, Any]], relative: bool = True) -> go.Figure:
    """`curves`: model name -> `interpret.robustness.robustness_curves` output (one perturbation for all).

    Left: Pearson r against the targets; right: mean |response change|,
    in s.d.s of each model's clean responses (`relative`) so models with
    different output scales compare, or in raw response units.
    """
    if not curves:
        raise ValueError("no curves to plot")
    first = next(iter(curves.values()))
    kinds = {c["perturbation"] for c in curves.values()}
    if len(kinds) > 1:
        raise ValueError(f"curves mix perturbations {sorted(kinds)}; plot one at a time")
    change = "delta_rel" if relative else "delta"
    change_title = "|response change| (s.d. of clean responses)" if relative else "|response change| (response units)"
    fig = make_subplots(rows=1, cols=2, subplot_titles=["accuracy (Pearson r)", change_title], horizontal_spacing=0.12)
    for k, (name, c) in enumerate(curves.items()):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        dash = "dash" if "noise on" in name else "solid"
        for col, key in ((1, "r"), (2, change)):
            fig.add_trace(go.Scatter(x=c["levels"], y=c[key], mode="lines+markers", name=name, legendgroup=name,
                                     showlegend=col == 1, line={"color": colour, "dash": dash},
                                     hovertemplate=f"{name}<br>level %{{x:.3g}}<br>{key} %{{y:.3g}}<extra></extra>"),
                          row=1, col=col)
        fig.update_xaxes(title_text=first["label"], row=1, col=1)
        fig.update_xaxes(title_text=first["label"], row=1, col=2)
    fig.update_yaxes(title_text="r", row=1, col=1)
    fig.update_yaxes(title_text="mean |change|", row=1, col=2)
    return finish(fig, f"Robustness to {first['perturbation'].replace('_', ' ')}", height=420)
