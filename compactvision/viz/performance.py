"""How good the models are: predicted vs measured, per-neuron accuracy, and the pruning path."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from compactvision.metrics import pearson_r
from compactvision.viz.layout import SERIES_COLOURS, finish


def predicted_vs_measured_figure(predicted: np.ndarray, measured: np.ndarray, names: Sequence[str] | None = None,
                                 units: str = "response", title: str = "Predicted vs measured") -> go.Figure:
    """Scatter of predictions against measurements, one colour per neuron, with the identity line.

    `predicted`, `measured`: N (one neuron) or N x K (K neurons). The title
    gives Pearson r (the median over neurons when there are several).
    """
    p = np.asarray(predicted, np.float64)
    m = np.asarray(measured, np.float64)
    p, m = (p[:, None], m[:, None]) if p.ndim == 1 else (p, m)
    if p.shape != m.shape:
        raise ValueError(f"predicted {p.shape} and measured {m.shape} differ")
    k = p.shape[1]
    names = list(names) if names is not None else [f"neuron {j}" for j in range(k)]
    rs = [float(r) for r in pearson_r(p.T, m.T)]
    fig = go.Figure()
    for j in range(k):
        fig.add_trace(go.Scattergl(x=m[:, j], y=p[:, j], mode="markers", name=f"{names[j]} (r = {rs[j]:.2f})",
                                   marker={"size": 5, "opacity": 0.6, "color": SERIES_COLOURS[j % len(SERIES_COLOURS)]},
                                   hovertemplate=f"{names[j]}<br>measured %{{x:.3g}}<br>predicted %{{y:.3g}}<extra></extra>",
                                   showlegend=k <= 12))
    lo, hi = float(min(p.min(), m.min())), float(max(p.max(), m.max()))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dash", "color": "grey"},
                             name="identity", hoverinfo="skip"))
    fig.update_xaxes(title_text=f"measured {units}")
    fig.update_yaxes(title_text=f"predicted {units}", scaleanchor="x")
    label = f"r = {rs[0]:.2f}" if k == 1 else f"median r = {np.nanmedian(rs):.2f} over {k} neurons"
    return finish(fig, f"{title} ({label})", height=480)


def accuracy_by_neuron_figure(scores: Mapping[str, np.ndarray], names: Sequence[str] | None = None,
                              metric: str = "Pearson r") -> go.Figure:
    """Per-neuron accuracy of several models (e.g. {"teacher": r, "student": r}), neurons sorted by the first model."""
    models = list(scores)
    first = np.asarray(scores[models[0]], np.float64)
    order = np.argsort(-first, kind="stable")
    names = [f"neuron {j}" for j in range(len(first))] if names is None else list(names)
    labels = [names[j] for j in order]
    fig = go.Figure()
    for k, model in enumerate(models):
        v = np.asarray(scores[model], np.float64)[order]
        fig.add_trace(go.Bar(x=labels, y=v, name=f"{model} (median {np.nanmedian(v):.2f})",
                             marker_color=SERIES_COLOURS[k % len(SERIES_COLOURS)],
                             hovertemplate=f"{model}<br>%{{x}}: {metric} %{{y:.3f}}<extra></extra>"))
    fig.update_xaxes(title_text="neuron (sorted by " + models[0] + ")")
    fig.update_yaxes(title_text=metric)
    fig.update_layout(barmode="group")
    return finish(fig, f"Accuracy per neuron ({metric})", height=420)


def _step(step: Any) -> dict[str, Any]:
    return step.to_dict() if hasattr(step, "to_dict") else dict(step)


def pruning_path_figure(paths: Mapping[str, Sequence[Any]] | Sequence[Any], metric: str = "accuracy (r)") -> go.Figure:
    """Accuracy against parameter count as each layer is pruned, last layer first.

    `paths`: one pruning path (a list of `prune.PruneStep` or their dicts, as
    saved in history/) or a mapping neuron name -> path. The first point is
    the unpruned student; each later point is labelled with the layer cut.
    """
    if not isinstance(paths, Mapping):
        paths = {"neuron": paths}
    fig = go.Figure()
    for k, (name, path) in enumerate(paths.items()):
        steps = [_step(s) for s in path]
        x = [s["n_parameters"] for s in steps]
        y = [np.nan if s.get("accuracy") is None else s["accuracy"] for s in steps]
        labels = ["start" if s.get("layer") is None else f"layer {s['layer']}" for s in steps]
        hover = [f"{name}<br>{lab}: {n:,} parameters<br>filters {s['channels']}<br>{metric} %{{y:.3f}}"
                 for lab, n, s in zip(labels, x, steps)]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers+text", text=labels if len(paths) == 1 else None,
                                 textposition="top center", name=name, hovertemplate=[h + "<extra></extra>" for h in hover],
                                 line_color=SERIES_COLOURS[k % len(SERIES_COLOURS)]))
    fig.update_xaxes(title_text="parameters (log scale)", type="log", autorange="reversed")
    fig.update_yaxes(title_text=metric)
    return finish(fig, "Pruning path: accuracy vs parameters (pruning runs right to left)", height=440)
