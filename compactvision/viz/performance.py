"""How good the models are: predicted vs measured, per-neuron accuracy, and the pruning path."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from compactvision.metrics import pearson_r
from compactvision.viz.layout import SERIES_COLOURS, counted, finish


def robust_range(*arrays: np.ndarray, low: float = 0.5, high: float = 99.5, pad: float = 0.05) -> tuple[float, float]:
    """One axis range for all `arrays`: their finite values' `low`..`high` percentiles, padded by `pad` of the span.

    A min..max range lets a single wild value squash the rest of the data into
    a corner; percentiles keep the bulk readable. Outliers stay in the data
    (plotly clips them), and callers report how many fall outside.
    """
    values = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays]) if arrays else np.empty(0)
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    span = hi - lo
    margin = pad * span if span > 0 else max(0.5, abs(lo) * pad)
    return lo - margin, hi + margin


def _n_outside(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> int:
    """Drawable points (both coordinates finite) with either coordinate outside [lo, hi]."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    out = (x < lo) | (x > hi) | (y < lo) | (y > hi)
    return int((ok & out).sum())


def _square_axes(fig: go.Figure, lo: float, hi: float, x_title: str, y_title: str, n_outside: int) -> None:
    """Equal x and y ranges on one scale (so the identity line is the diagonal); say how many points lie beyond them."""
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dash", "color": "grey"},
                             name="identity", hoverinfo="skip"))
    fig.update_xaxes(title_text=x_title, range=[lo, hi], constrain="domain")
    fig.update_yaxes(title_text=y_title, range=[lo, hi], scaleanchor="x", scaleratio=1, constrain="domain")
    if n_outside:
        fig.update_layout(title_subtitle_text=f"{counted(n_outside, 'point')} outside the axis "
                                              f"range (0.5th to 99.5th percentile) not shown")


def _finish_square(fig: go.Figure, title: str) -> go.Figure:
    """`finish`, with room above the plot for the out-of-range subtitle when there is one."""
    fig = finish(fig, title, height=480)
    if fig.layout.title.subtitle.text:
        fig.update_layout(margin_t=95)
    return fig


def predicted_vs_measured_figure(predicted: np.ndarray, measured: np.ndarray, names: Sequence[str] | None = None,
                                 units: str = "response", title: str = "Predicted vs measured",
                                 series: str = "neurons", density: bool = False) -> go.Figure:
    """Scatter of predictions against measurements, one colour per column, with the identity line.

    `predicted`, `measured`: N (one column) or N x K; `series` names what the K
    columns are ("neurons", "models") so the title reads right. The title
    gives Pearson r: each column's when K <= 3, else the median over columns.
    Both axes share one robust range (see `robust_range`), so one outlier
    cannot squash the cloud. `density` draws a 2-D histogram contour per
    column instead of markers, for sets too large to read as points.
    """
    p = np.asarray(predicted, np.float64)
    m = np.asarray(measured, np.float64)
    p, m = (p[:, None], m[:, None]) if p.ndim == 1 else (p, m)
    if p.shape != m.shape:
        raise ValueError(f"predicted {p.shape} and measured {m.shape} differ")
    k = p.shape[1]
    names = list(names) if names is not None else [f"neuron {j}" for j in range(k)]
    rs = [float(r) for r in pearson_r(p.T, m.T)]
    lo, hi = robust_range(p, m)
    fig = go.Figure()
    for j in range(k):
        colour = SERIES_COLOURS[j % len(SERIES_COLOURS)]
        label = f"{names[j]} (r = {rs[j]:.2f})"
        if density:
            # One filled contour reads best alone; several overlap, so each is drawn as lines in its own colour.
            size = (hi - lo) / 50
            fill = k == 1
            fig.add_trace(go.Histogram2dContour(
                x=m[:, j], y=p[:, j], name=label, showlegend=True, showscale=False, ncontours=12,
                xbins={"start": lo, "end": hi, "size": size}, ybins={"start": lo, "end": hi, "size": size},
                colorscale=[[0, "rgba(255,255,255,0)"], [1, colour]] if fill else [[0, colour], [1, colour]],
                contours={"coloring": "fill" if fill else "lines", "showlines": not fill},
                line={"width": 1.5} if not fill else {"width": 0.5, "color": colour},
                hovertemplate=f"{names[j]}<br>measured %{{x:.3g}}<br>predicted %{{y:.3g}}<br>"
                              f"%{{z}} points<extra></extra>"))
        else:
            fig.add_trace(go.Scattergl(x=m[:, j], y=p[:, j], mode="markers", name=label,
                                       marker={"size": 5, "opacity": 0.6, "color": colour},
                                       hovertemplate=f"{names[j]}<br>measured %{{x:.3g}}<br>predicted %{{y:.3g}}"
                                                     "<extra></extra>",
                                       showlegend=k <= 12))
    outside = sum(_n_outside(m[:, j], p[:, j], lo, hi) for j in range(k))
    _square_axes(fig, lo, hi, f"measured {units}", f"predicted {units}", outside)
    if k == 1:
        label = f"r = {rs[0]:.2f}"
    elif k <= 3:
        label = ", ".join(f"{n} r = {r:.2f}" for n, r in zip(names, rs))
    else:
        label = f"median r = {np.nanmedian(rs):.2f} over {k} {series}"
    return _finish_square(fig, f"{title} ({label})")


def teacher_student_scatter_figure(teacher_r: np.ndarray, student_r: np.ndarray, names: Sequence[str],
                                   current: str | None = None, metric: str = "r", x_name: str = "teacher",
                                   y_name: str = "compact model") -> go.Figure:
    """One point per neuron, compact model's accuracy against the teacher's, the `current` neuron picked out.

    Points below the identity line are neurons that compression cost accuracy;
    the title's median ratio (compact / teacher, over neurons where the teacher's
    score is positive) says how much on the whole. `x_name` and `y_name` name
    other pairs of models (ours against the published compact models, say).
    """
    t = np.asarray(teacher_r, np.float64).ravel()
    s = np.asarray(student_r, np.float64).ravel()
    names = [str(n) for n in names]
    if not (t.shape == s.shape and len(names) == t.size):
        raise ValueError(f"teacher {t.shape}, student {s.shape} and {len(names)} names differ")
    ok = np.isfinite(t) & np.isfinite(s)
    lo, hi = robust_range(t[ok], s[ok])
    hover = (f"%{{customdata}}<br>{x_name} {metric} %{{x:.3f}}<br>{y_name} {metric} %{{y:.3f}}"
             "<extra></extra>")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t, y=s, customdata=names, mode="markers", name="neurons", hovertemplate=hover,
                             marker={"size": 8, "opacity": 0.75, "color": SERIES_COLOURS[0]}))
    if current is not None and current in names:
        j = names.index(current)
        fig.add_trace(go.Scatter(x=[t[j]], y=[s[j]], customdata=[current], mode="markers+text", text=[current],
                                 textposition="top center", name=f"{current} (current)", hovertemplate=hover,
                                 marker={"size": 16, "color": SERIES_COLOURS[3], "symbol": "diamond",
                                         "line": {"width": 1.5, "color": "black"}}))
    _square_axes(fig, lo, hi, f"{x_name} {metric}", f"{y_name} {metric}", _n_outside(t, s, lo, hi))
    n = int(ok.sum())
    pos = ok & (t > 0)
    parts = [counted(n, "neuron")]
    if pos.any():
        ratio = "compact/teacher" if (x_name, y_name) == ("teacher", "compact model") else f"{y_name}/{x_name}"
        parts.append(f"median {ratio} ratio {np.median(s[pos] / t[pos]):.2f}")
    return _finish_square(fig, f"{y_name[:1].upper() + y_name[1:]} vs {x_name}, per neuron ({'; '.join(parts)})")


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
