"""A neuron's computation graph as a layered diagram the app can click on.

Columns are the image's colour channels, the student's layers and the
response. Each surviving filter is a node with a thumbnail (its activation
map when an image was given, else its kernel) framed in the colour of its
contribution to the response. Edges are coloured by sign (red excitatory,
blue inhibitory) and drawn wider for larger gains; faint edges below
`edge_threshold` of the strongest in their layer are left out for
legibility. Every filter is one point of the "filters" trace with
customdata [layer, channel], so a plotly selection event names the filter.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from compactvision.interpret.graph import INPUT_CHANNELS, INPUT_LAYER, GraphNode, NeuronGraph, NodeId
from compactvision.viz.layout import (DIVERGING, NEGATIVE_COLOUR, POSITIVE_COLOUR, counted, finish, png_data_uri,
                                      signed_heatmap, signed_to_rgb, symmetric_limit)

_WIDTHS = (0.6, 1.4, 2.6, 4.2)


def _positions(graph: NeuronGraph) -> dict[tuple[int, int], tuple[float, float]]:
    """x = column (image channels at 0), y spread evenly in [0, 1] within a column, top to bottom."""
    columns: dict[int, list[int]] = {INPUT_LAYER: list(range(len(INPUT_CHANNELS))), graph.n_layers: [0]}
    for layer in range(graph.n_layers):
        columns[layer] = [n.channel for n in graph.layer_nodes(layer)]
    pos = {}
    for layer, chans in columns.items():
        for k, c in enumerate(chans):
            pos[(layer, c)] = (layer + 1.0, 1.0 - (k + 0.5) / len(chans))
    return pos


def _node_text(n: GraphNode) -> str:
    parts = [f"<b>layer {n.layer}, filter {n.channel}</b>", f"bias {n.bias:.3g}"]
    if n.pointwise is not None:
        parts.append(f"inputs {int(np.count_nonzero(n.pointwise))}, |pointwise| sum {np.abs(n.pointwise).sum():.3g}")
    if n.activation is not None:
        parts.append(f"activation mean {n.activation.mean():.3g}, max {n.activation.max():.3g}")
    if n.contribution is not None:
        parts.append(f"contribution to response {n.contribution:+.3g}")
    if n.ablation_delta is not None:
        parts.append(f"response change if ablated {n.ablation_delta:+.3g}")
    return "<br>".join(parts)


def _thumbnail(n: GraphNode) -> np.ndarray:
    if n.activation is not None:
        return signed_to_rgb(n.activation)
    if n.layer == 0:  # a colour kernel: show it in colour, grey = 0
        k = n.kernel / max(np.abs(n.kernel).max(), 1e-12)
        return np.clip(np.rint((0.5 + 0.5 * np.moveaxis(k, 0, -1)) * 255), 0, 255).astype(np.uint8)
    return signed_to_rgb(n.kernel.sum(0))


def _kept_edges(graph: NeuronGraph, edge_threshold: float) -> tuple[list, dict[int, float]]:
    """Edges at least `edge_threshold` of the strongest into their layer, and that strongest per layer."""
    strongest: dict[int, float] = {}
    for e in graph.edges:
        strongest[e.dst[0]] = max(strongest.get(e.dst[0], 0.0), e.strength)
    kept = [e for e in graph.edges if e.strength >= edge_threshold * strongest[e.dst[0]] and e.strength > 0]
    return kept, strongest


def _edge_traces(graph: NeuronGraph, kept: list, strongest: dict[int, float],
                 pos: dict[tuple[int, int], tuple[float, float]]) -> list[go.Scatter]:
    """Edges bucketed by sign and width (one trace per bucket keeps thousands of edges fast), plus hover points."""
    traces: list[go.Scatter] = []
    buckets: dict[tuple[int, int], list] = {}
    for e in kept:
        rel = e.strength / strongest[e.dst[0]]
        w = min(int(rel * len(_WIDTHS)), len(_WIDTHS) - 1)
        buckets.setdefault((e.sign >= 0, w), []).append(e)
    for (positive, w), edges in sorted(buckets.items()):
        xs, ys = [], []
        for e in edges:
            (x0, y0), (x1, y1) = pos[e.src], pos[e.dst]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        traces.append(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"width": _WIDTHS[w], "color": POSITIVE_COLOUR if positive else NEGATIVE_COLOUR},
                                 opacity=0.35 + 0.15 * w, name=f"{'excitatory' if positive else 'inhibitory'} edges"))
    if kept:
        # Plotly lines carry no hover text, so an invisible marker at each edge's midpoint does.
        mid = np.array([[(pos[e.src][0] + pos[e.dst][0]) / 2, (pos[e.src][1] + pos[e.dst][1]) / 2] for e in kept])
        text = [f"{_label(e.src, graph)} -> {_label(e.dst, graph)}<br>gain {e.weight:+.3g}<br>strength {e.strength:.3g}"
                + (f"<br>pointwise weight {e.pointwise:+.3g}" if e.pointwise is not None else "") for e in kept]
        traces.append(go.Scatter(x=mid[:, 0], y=mid[:, 1], mode="markers", marker={"size": 5, "opacity": 0.0},
                                 text=text, hovertemplate="%{text}<extra>edge</extra>", showlegend=False, name="edges"))
    return traces


def _ends_trace(graph: NeuronGraph, pos: dict[tuple[int, int], tuple[float, float]]) -> go.Scatter:
    """The image channels and the response, the graph's two ends."""
    ends = [(INPUT_LAYER, c) for c in range(len(INPUT_CHANNELS))] + [graph.output_id]
    end_text = [f"image channel {name}" for name in INPUT_CHANNELS]
    end_text.append("<b>response</b>" + (f" {graph.response:.3g}" if graph.response is not None else "")
                    + f"<br>readout bias {graph.readout_bias:.3g}")
    return go.Scatter(x=[pos[i][0] for i in ends], y=[pos[i][1] for i in ends], mode="markers+text",
                      text=list(INPUT_CHANNELS) + ["response"],
                      textposition=["middle left"] * len(INPUT_CHANNELS) + ["bottom center"],
                      marker={"size": 18, "color": ["#d62728", "#2ca02c", "#1f77b4", "#333333"], "symbol": "circle"},
                      hovertext=end_text, hovertemplate="%{hovertext}<extra></extra>", showlegend=False,
                      customdata=[list(i) for i in ends], name="inputs and response")


def _filters_trace(graph: NeuronGraph, pos: dict[tuple[int, int], tuple[float, float]], node_px: float,
                   thumbnails: bool) -> go.Scatter:
    """Every filter as one point of the selectable "filters" trace, customdata [layer, channel]."""
    nodes = graph.nodes
    contrib = np.array([np.nan if n.contribution is None else n.contribution for n in nodes], np.float64)
    has_contrib = np.isfinite(contrib).any()
    lim = symmetric_limit(contrib) if has_contrib else 1.0
    # With thumbnails the marker is an open frame just outside the picture, coloured by contribution.
    marker = {"size": node_px + 4, "symbol": "square-open" if thumbnails else "square", "line": {"width": 3}}
    if has_contrib:
        marker.update(color=np.nan_to_num(contrib), colorscale=DIVERGING, cmin=-lim, cmax=lim, showscale=True,
                      colorbar={"title": {"text": "contribution", "side": "right"}, "thickness": 12})
    else:
        marker.update(color="#555555")
    return go.Scatter(x=[pos[n.id][0] for n in nodes], y=[pos[n.id][1] for n in nodes], mode="markers",
                      marker=marker, customdata=[[n.layer, n.channel] for n in nodes],
                      hovertext=[_node_text(n) for n in nodes], hovertemplate="%{hovertext}<extra></extra>",
                      showlegend=False, name="filters")


def neuron_graph_figure(graph: NeuronGraph, edge_threshold: float = 0.05, thumbnails: bool = True,
                        width: int = 1000, ablated: Sequence[NodeId] = (), hidden: tuple[int, int] | None = None,
                        height: int | None = None, selected: NodeId | None = None) -> go.Figure:
    """The layered graph of `graph` (from `interpret.graph.neuron_graph`), ready for selection events.

    `ablated` filters are crossed out and the `selected` one is ringed in gold. `hidden` = (nodes, edges) left out of
    `graph` by `interpret.graph.important_paths`, which the title reports.
    """
    pos = _positions(graph)
    biggest = max([len(graph.layer_nodes(i)) for i in range(graph.n_layers)] + [3])
    height = height or int(min(max(520, 16 * biggest + 160), 1400))
    # The plot area is the height less the two-line title and the two-line layer ticks; nodes keep a gap.
    plot_h = height - 210
    node_px = float(np.clip(0.7 * plot_h / biggest, 8, 72))
    kept, strongest = _kept_edges(graph, edge_threshold)
    # The selectable "filters" trace stays last; the marks around it go first (layout images cover traces,
    # so marks are drawn larger than a thumbnail to show around it).
    traces = _edge_traces(graph, kept, strongest, pos) + [_ends_trace(graph, pos)]
    off = [n for n in ablated if n in pos]
    if off:
        traces.append(go.Scatter(x=[pos[n][0] for n in off], y=[pos[n][1] for n in off], mode="markers",
                                 marker={"symbol": "x-thin", "size": node_px + 16, "line": {"width": 5, "color": "#111111"}},
                                 hoverinfo="skip", showlegend=False, name="ablated"))
    if selected in pos:
        traces.append(go.Scatter(x=[pos[selected][0]], y=[pos[selected][1]], mode="markers", hoverinfo="skip",
                                 marker={"symbol": "square-open", "size": node_px + 14, "line": {"width": 4, "color": "#f1c40f"}},
                                 showlegend=False, name="selected"))
    traces.append(_filters_trace(graph, pos, node_px, thumbnails))
    fig = go.Figure(traces)

    if thumbnails:
        plot_w = width - 140
        sx = node_px / plot_w * (graph.n_layers + 2.0) * 0.9
        sy = node_px / plot_h * 1.1 * 0.9
        fig.update_layout(images=[{"source": png_data_uri(_thumbnail(n)), "xref": "x", "yref": "y",
                                   "x": pos[n.id][0], "y": pos[n.id][1], "sizex": sx, "sizey": sy,
                                   "xanchor": "center", "yanchor": "middle", "sizing": "stretch", "layer": "above",
                                   "opacity": 0.3 if n.id in off else 1.0}
                                  for n in graph.nodes])
    ticks = (["image"] + [f"layer {i}<br>{counted(len(graph.layer_nodes(i)), 'filter')}" for i in range(graph.n_layers)]
             + ["response"])
    fig.update_xaxes(tickvals=list(range(graph.n_layers + 2)), ticktext=ticks, range=[-0.5, graph.n_layers + 1.5],
                     showgrid=False, zeroline=False)
    fig.update_yaxes(visible=False, range=[-0.05, 1.05])
    # Pan, not box-select, as the drag mode: Streamlit disables click-to-select under a
    # selection drag mode, and a click on a filter is how the app picks it.
    fig.update_layout(hovermode="closest", dragmode="pan", clickmode="event+select", width=width)
    title = f"Computation graph: {counted(len(graph.nodes), 'filter')}, {counted(len(graph.edges), 'connection')}"
    if graph.response is not None:
        title += f"; response {graph.response:.3g}"
    notes = []
    if hidden is not None and any(hidden):
        notes.append(f"important paths only: {counted(hidden[0], 'filter')} and {counted(hidden[1], 'connection')} "
                     "hidden")
    if len(kept) < len(graph.edges):
        weak = len(graph.edges) - len(kept)
        notes.append(f"{counted(weak, 'edge')} weaker than {edge_threshold:.0%} of their layer's strongest "
                     "hidden")
    if off:
        notes.append(f"{counted(len(off), 'filter')} switched off (✕)")
    notes.append("red excitatory, blue inhibitory, width = gain")
    title += "<br><sup>" + "; ".join(notes) + "</sup>"
    return finish(fig, title, height=height)


def _label(node: tuple[int, int], graph: NeuronGraph) -> str:
    layer, channel = node
    if layer == INPUT_LAYER:
        return f"image {INPUT_CHANNELS[channel]}"
    if layer == graph.n_layers:
        return "response"
    return f"L{layer}:{channel}"


def node_detail_figure(graph: NeuronGraph, layer: int, channel: int) -> go.Figure:
    """One filter up close: its incoming gains, its kernel, its activation map and (last layer) its readout map.

    Every map has its own colour bar with units; panels sit in one row with
    room for their titles, so the figure reads at full page width.
    """
    n = graph.node(layer, channel)
    panels = ["incoming gains", "kernel (sum over inputs)"]
    if n.activation is not None:
        panels.append("activation for this image")
    if n.readout_map is not None:
        panels.append("readout weights")
    gap = 0.1
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=gap)
    incoming = [e for e in graph.edges_into(layer) if e.dst == n.id]
    fig.add_trace(go.Bar(x=[_label(e.src, graph) for e in incoming], y=[e.weight for e in incoming],
                         marker_color=[POSITIVE_COLOUR if e.weight >= 0 else NEGATIVE_COLOUR for e in incoming],
                         hovertemplate="%{x}: gain %{y:+.3g}<extra></extra>", name="incoming gains"), row=1, col=1)
    fig.update_yaxes(title_text="gain (a.u. per unit input)", row=1, col=1)
    maps = [(n.kernel.sum(0), "kernel", "weight", True)]
    if n.activation is not None:
        maps.append((n.activation, "activation", "activation (a.u.)", False))
    if n.readout_map is not None:
        maps.append((n.readout_map, "readout", "readout weight", True))
    width = (1.0 - gap * (len(panels) - 1)) / len(panels)
    for col, (z, name, unit, signed) in enumerate(maps, start=2):
        bar = {"title": {"text": unit, "side": "right"}, "thickness": 10, "len": 0.75,
               "x": (col - 1) * (width + gap) + width + 0.01}
        hover = f"x %{{x}}, y %{{y}}<br>{unit} %{{z:.3g}}<extra></extra>"
        trace = (signed_heatmap(z, name, colorbar=bar, hovertemplate=hover) if signed else
                 go.Heatmap(z=z, colorscale="Viridis", name=name, colorbar=bar, hovertemplate=hover))
        fig.add_trace(trace, row=1, col=col)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{col}", row=1, col=col)
    title = f"Layer {layer}, filter {channel}"
    if n.contribution is not None:
        title += f": contribution {n.contribution:+.3g}"
    if n.ablation_delta is not None:
        title += f", response change if ablated {n.ablation_delta:+.3g}"
    fig = finish(fig, title, height=380)
    fig.update_annotations(font_size=12)
    fig.update_layout(margin={"t": 90})
    return fig
