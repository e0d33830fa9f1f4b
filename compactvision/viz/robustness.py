"""Robustness curves: accuracy and response change against perturbation strength, one line per model."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from compactvision.interpret.robustness import population_summary
from compactvision.viz.layout import SERIES_COLOURS, finish


def robustness_figure(curves: Mapping[str, Mapping[str, Any]], relative: bool = True,
                      title: str | None = None) -> go.Figure:
    """`curves`: model name -> `interpret.robustness.robustness_curves` output (one perturbation for all).

    Left: Pearson r against the targets; right: mean |response change|,
    in s.d.s of each model's clean responses (`relative`) so models with
    different output scales compare, or in raw response units. A curve over
    several neurons (`stack_neurons`, or a teacher's outputs) is drawn as the
    median over neurons with its bootstrap 95% CI as error bars.
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
    population = False
    for k, (name, c) in enumerate(curves.items()):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        dash = "dash" if "noise on" in name else "solid"
        many = np.ndim(c.get("r_per_neuron")) == 2 and np.shape(c["r_per_neuron"])[1] >= 2
        summary = population_summary(c) if many else None
        label = f"{name} ({summary['n']} neurons)" if summary else name
        for col, key in ((1, "r"), (2, change)):
            y, error = c[key], None
            if summary is not None and key in ("r", "delta_rel"):
                med, lo, hi = summary[key]
                y, error = med, {"type": "data", "array": hi - med, "arrayminus": med - lo, "thickness": 1.2, "width": 4}
            fig.add_trace(go.Scatter(x=c["levels"], y=y, error_y=error, mode="lines+markers", name=label,
                                     legendgroup=name, showlegend=col == 1, line={"color": colour, "dash": dash},
                                     hovertemplate=f"{name}<br>level %{{x:.3g}}<br>{key} %{{y:.3g}}<extra></extra>"),
                          row=1, col=col)
        population = population or summary is not None
    fig.update_xaxes(title_text=first["label"], row=1, col=1)
    fig.update_xaxes(title_text=first["label"], row=1, col=2)
    fig.update_yaxes(title_text="r (median over neurons, 95% CI)" if population else "r", row=1, col=1)
    fig.update_yaxes(title_text="mean |change|", row=1, col=2)
    return finish(fig, title or f"Robustness to {first['perturbation'].replace('_', ' ')}", height=440)
