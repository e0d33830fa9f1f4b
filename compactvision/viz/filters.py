"""Filters as pictures: the VOneBlock's Gabor bank, its V1 statistics, and any layer's weights.

Kernels are drawn as one mosaic heatmap (fast with hundreds of filters) and
each filter's numbers come from an invisible marker at its tile's centre, so
hovering anywhere on a tile shows that filter's parameters.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from compactvision.viz.layout import SERIES_COLOURS, counted, finish, mosaic, signed_heatmap

# Bank parameter -> (key in the V1 reference, axis title). nx / ny come from Ringach's joint histogram.
_REFERENCE_KEYS = {
    "orientation_deg": ("orientation_deg", "preferred orientation (deg)"),
    "sf_cpd": ("peak_spatial_frequency_cpd", "peak spatial frequency (cycles/deg)"),
    "nx": ("envelope_nx_ny_joint", "nx = sigma_x x SF (cycles)"),
    "ny": ("envelope_nx_ny_joint", "ny = sigma_y x SF (cycles)"),
    "phase_deg": ("phase_deg", "phase (deg)"),
}


def _tile_markers(n: int, n_cols: int, h: int, w: int, gap: int, text: list[str], customdata: np.ndarray) -> go.Scatter:
    k = np.arange(n)
    r, c = np.divmod(k, max(1, min(n_cols, n)))
    return go.Scatter(x=c * (w + gap) + (w - 1) / 2, y=r * (h + gap) + (h - 1) / 2, mode="markers",
                      marker={"size": max(h, 6), "opacity": 0.0}, text=text, customdata=customdata,
                      hovertemplate="%{text}<extra></extra>", showlegend=False, name="filters")


def _mosaic_figure(tiles: np.ndarray, text: list[str], n_cols: int, title: str, colorbar: str,
                   signed: bool = True) -> go.Figure:
    gap = 1
    grid, _ = mosaic(tiles, n_cols, gap)
    heat = (signed_heatmap(grid, "kernels", colorbar, limit=1.0, hoverinfo="skip") if signed else
            go.Heatmap(z=grid, colorscale="Viridis", zmin=0.0, zmax=1.0, hoverinfo="skip", name="maps",
                       colorbar={"title": {"text": colorbar}}))
    fig = go.Figure([heat,
                     _tile_markers(len(tiles), n_cols, tiles.shape[1], tiles.shape[2], gap, text, np.arange(len(tiles)))])
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showticklabels=False, showgrid=False, zeroline=False)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(hovermode="closest", hoverdistance=-1)
    return finish(fig, title, height=int(140 + 560 * grid.shape[0] / max(grid.shape[1], 1)))


def _normalise_each(tiles: np.ndarray) -> np.ndarray:
    peak = np.abs(tiles).reshape(len(tiles), -1).max(1)
    return tiles / np.where(peak > 0, peak, 1.0)[:, None, None]


def gabor_bank_figure(kernels: np.ndarray, params: Mapping[str, np.ndarray] | None = None, max_filters: int = 64,
                      n_cols: int = 8, sort_by: str | None = "orientation_deg") -> go.Figure:
    """The Gabor filters (F x k x k), each scaled to its own peak, with each filter's parameters on hover.

    `params` is a bank's `parameters_table()` (orientation_deg, sf_cpd, phase_deg,
    nx, ny, cell_type, ...). The first `max_filters` are shown, ordered by
    `sort_by` when that parameter is given.
    """
    kernels = np.asarray(kernels, np.float64)
    order = np.arange(len(kernels))
    if params is not None and sort_by in params:
        order = np.argsort(np.asarray(params[sort_by]), kind="stable")
    order = order[:max_filters]
    text = []
    for i in order:
        parts = [f"filter {i}"]
        if params is not None:
            for key, fmt in (("cell_type", "{}"), ("orientation_deg", "{:.0f} deg"), ("sf_cpd", "{:.2f} cyc/deg"),
                             ("phase_deg", "phase {:.0f} deg"), ("nx", "nx {:.2f}"), ("ny", "ny {:.2f}"),
                             ("channel", "colour channel {}")):
                if key in params:
                    parts.append(fmt.format(params[key][i]))
        text.append("<br>".join(parts))
    fig = _mosaic_figure(_normalise_each(kernels[order]), text, n_cols,
                         f"Gabor filter bank: {len(order)} of {len(kernels)} filters"
                         + (f", ordered by {sort_by}" if params is not None and sort_by in params else ""),
                         "weight / peak")
    fig.data[1].customdata = order
    return fig


def _reference_histogram(name: str, reference: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges and cell fractions of the V1 reference for one bank parameter."""
    entry = reference[_REFERENCE_KEYS[name][0]]
    if name in ("nx", "ny"):
        counts = np.asarray(entry["counts"], np.float64)
        counts = counts.sum(1) if name == "nx" else counts.sum(0)
        edges = 10.0 ** np.asarray(entry["bins_log10_edges"], np.float64)
    else:
        counts = np.asarray(entry["counts"], np.float64)
        edges = np.asarray(entry["bins"], np.float64)
        if len(counts) == 1:  # a uniform reference (phase): split it so the bank's shape shows
            edges = np.linspace(edges[0], edges[-1], 9)
            counts = np.ones(8)
    return edges, counts / counts.sum()


def gabor_parameter_histograms(params: Mapping[str, np.ndarray], reference: Mapping[str, Any] | None = None) -> go.Figure:
    """The bank's parameter distributions (bars) against the macaque V1 reference (bars), per parameter.

    Both are fractions of cells per reference bin; each panel's title gives
    their total-variation distance (0 = same distribution, 1 = disjoint).
    `reference` defaults to the shipped V1 histograms.
    """
    if reference is None:
        from compactvision.models.vone import v1_distributions

        reference = v1_distributions()
    names = [n for n in _REFERENCE_KEYS if n in params and _REFERENCE_KEYS[n][0] in reference]
    if not names:
        raise ValueError(f"no parameter of {sorted(params)} has a V1 reference; known: {sorted(_REFERENCE_KEYS)}")
    stats = []
    for name in names:
        edges, ref = _reference_histogram(name, reference)
        values = np.asarray(params[name], np.float64)
        if name == "orientation_deg":  # orientation is 180-periodic; the reference bins start at -22.5
            values = (values - edges[0]) % 180.0 + edges[0]
        counts, _ = np.histogram(np.clip(values, edges[0], np.nextafter(edges[-1], -np.inf)), bins=edges)
        bank = counts / max(counts.sum(), 1)
        stats.append((name, edges, ref, bank, 0.5 * float(np.abs(ref - bank).sum())))
    n_cols = min(3, len(names))
    n_rows = -(-len(names) // n_cols)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[f"{_REFERENCE_KEYS[n][1]}<br>TV distance {tv:.2f}"
                                                                  for n, _, _, _, tv in stats],
                        vertical_spacing=0.22, horizontal_spacing=0.08)
    for k, (name, edges, ref, bank, _) in enumerate(stats):
        r, c = divmod(k, n_cols)
        labels = [f"{a:.3g}-{b:.3g}" for a, b in zip(edges[:-1], edges[1:])]
        fig.add_trace(go.Bar(x=labels, y=bank, name="this bank", marker_color=SERIES_COLOURS[0], showlegend=k == 0,
                             legendgroup="bank", hovertemplate="%{x}: %{y:.1%} of filters<extra>bank</extra>"),
                      row=r + 1, col=c + 1)
        fig.add_trace(go.Bar(x=labels, y=ref, name="macaque V1", marker_color=SERIES_COLOURS[7], showlegend=k == 0,
                             legendgroup="v1", hovertemplate="%{x}: %{y:.1%} of cells<extra>V1</extra>"),
                      row=r + 1, col=c + 1)
        fig.update_yaxes(title_text="fraction" if c == 0 else None, tickformat=".0%", row=r + 1, col=c + 1)
    fig.update_layout(barmode="group", legend={"orientation": "h", "y": -0.12})
    finish(fig, "Gabor parameters: filter bank vs macaque V1", height=320 * n_rows + 140)
    fig.update_layout(margin={"t": 120})
    return fig


def kernel_grid_figure(weights: np.ndarray, title: str = "Convolution kernels", max_filters: int = 64,
                       n_cols: int = 8) -> go.Figure:
    """Kernels of a full convolution (O x I x k x k): one tile per output filter.

    Filters on 3 input channels (RGB) are drawn as colour images (grey = 0);
    otherwise each tile is the kernel summed over its input channels.
    """
    w = np.asarray(weights, np.float64)[:max_filters]
    if w.shape[1] == 3:
        lim = np.abs(w).reshape(len(w), -1).max(1)
        rgb = 0.5 + 0.5 * w / np.where(lim > 0, lim, 1.0)[:, None, None, None]
        tiles = np.moveaxis(rgb, 1, -1)
        gap = 1
        h, k = tiles.shape[1], tiles.shape[2]
        cols = max(1, min(n_cols, len(tiles)))
        rows = -(-len(tiles) // cols)
        grid = np.full((rows * (h + gap) - gap, cols * (k + gap) - gap, 3), 1.0)
        for i, t in enumerate(tiles):
            r, c = divmod(i, cols)
            grid[r * (h + gap):r * (h + gap) + h, c * (k + gap):c * (k + gap) + k] = t
        text = [f"filter {i}<br>peak |w| {np.abs(w[i]).max():.3g}<br>sum R,G,B {w[i, 0].sum():.3g}, "
                f"{w[i, 1].sum():.3g}, {w[i, 2].sum():.3g}" for i in range(len(w))]
        fig = go.Figure([go.Image(z=np.rint(grid * 255).astype(np.uint8), hoverinfo="skip", name="kernels"),
                         _tile_markers(len(w), cols, h, k, gap, text, np.arange(len(w)))])
        fig.update_yaxes(autorange="reversed", scaleanchor="x", showticklabels=False, showgrid=False)
        fig.update_xaxes(showticklabels=False, showgrid=False)
        fig.update_layout(hovermode="closest", hoverdistance=-1)
        return finish(fig, f"{title}: {counted(len(w), 'filter')} (RGB; grey = 0, each scaled to its peak)",
                      height=int(140 + 560 * grid.shape[0] / grid.shape[1]))
    if w.shape[2:] == (1, 1):
        # 1x1 kernels have no spatial pattern: they are a channel-mixing matrix, and are drawn as one.
        fig = go.Figure(signed_heatmap(w[:, :, 0, 0], "weights", "weight",
                                       hovertemplate="output %{y}, input %{x}<br>weight %{z:.3g}<extra></extra>"))
        fig.update_yaxes(autorange="reversed", title_text="output filter")
        fig.update_xaxes(title_text="input channel")
        return finish(fig, f"{title}: 1x1 convolution, {w.shape[0]} outputs x {w.shape[1]} inputs", height=480)
    tiles = w.sum(1)
    text = [f"filter {i}<br>peak |w| {np.abs(w[i]).max():.3g}" for i in range(len(w))]
    return _mosaic_figure(_normalise_each(tiles), text, n_cols,
                          f"{title}: {counted(len(w), 'filter')} (summed over {counted(w.shape[1], 'input')})",
                          "weight / peak")


def separable_layer_figure(depthwise: np.ndarray, pointwise: np.ndarray, title: str = "Separable layer",
                           bias: np.ndarray | None = None, n_cols: int = 8) -> go.Figure:
    """A depthwise-separable layer as its two parts: spatial kernels per input, and the channel-mixing matrix.

    `depthwise`: C_in x k x k (one spatial filter per input channel, on one
    shared colour scale); `pointwise`: C_out x C_in weights.
    """
    dw = np.asarray(depthwise, np.float64)
    pw = np.asarray(pointwise, np.float64).reshape(pointwise.shape[0], -1)
    grid, _ = mosaic(dw, n_cols)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], horizontal_spacing=0.12,
                        subplot_titles=[f"depthwise: {len(dw)} spatial kernels ({dw.shape[1]}x{dw.shape[2]})",
                                        f"pointwise: {pw.shape[0]} outputs x {pw.shape[1]} inputs"])
    fig.add_trace(signed_heatmap(grid, "depthwise", showscale=False, hoverinfo="skip"), row=1, col=1)
    gap = 1
    h, w = dw.shape[1], dw.shape[2]
    text = [f"input {i}<br>sum {dw[i].sum():.3g}<br>peak |w| {np.abs(dw[i]).max():.3g}" for i in range(len(dw))]
    markers = _tile_markers(len(dw), n_cols, h, w, gap, text, np.arange(len(dw)))
    fig.add_trace(markers, row=1, col=1)
    hover = "output %{y}, input %{x}<br>weight %{z:.3g}"
    if bias is not None:
        hover += "<br>output bias %{customdata:.3g}"
    fig.add_trace(signed_heatmap(pw, "pointwise", "weight", hovertemplate=hover + "<extra></extra>",
                                 customdata=None if bias is None else np.repeat(np.asarray(bias, np.float64)[:, None], pw.shape[1], 1),
                                 colorbar={"title": {"text": "weight"}, "x": 1.02}), row=1, col=2)
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showticklabels=False, showgrid=False, row=1, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, row=1, col=1)
    fig.update_yaxes(autorange="reversed", title_text="output filter", dtick=1 if pw.shape[0] <= 20 else None, row=1, col=2)
    fig.update_xaxes(title_text="input filter", dtick=1 if pw.shape[1] <= 20 else None, row=1, col=2)
    fig.update_layout(hovermode="closest")
    return finish(fig, title, height=480)


def student_layer_figure(student: Any, layer: int) -> go.Figure:
    """Weights of one layer of a compact student, BatchNorm folded in (the weights it runs with)."""
    fused = student.fused()
    lay = fused.layers[layer]
    title = f"Student layer {layer} ({counted(lay.out_channels, 'filter')}, BN folded)"
    pw = lay.pointwise.weight.detach().cpu().numpy()
    if lay.depthwise is None:
        return kernel_grid_figure(pw, title)
    dw = lay.depthwise.weight.detach().cpu().numpy()[:, 0]
    return separable_layer_figure(dw, pw[:, :, 0, 0], title, bias=lay.pointwise.bias.detach().cpu().numpy())


def response_maps_figure(maps: np.ndarray, names: Sequence[str], title: str, border: int = 0,
                         n_cols: int = 8) -> go.Figure:
    """Feature maps (F x h x w, non-negative responses), each scaled to its own peak.

    `border` px are cropped from every edge: there the filters overhang the
    zero-padded image, and the maps show the padding rather than the image.
    """
    m = np.asarray(maps, np.float64)
    if border and min(m.shape[1:]) > 2 * border + 1:
        m = m[:, border:-border, border:-border]
    peak = m.reshape(len(m), -1).max(1)
    tiles = m / np.where(peak > 0, peak, 1.0)[:, None, None]
    text = [f"{n}<br>peak response {p:.3g}" for n, p in zip(names, peak)]
    return _mosaic_figure(tiles, text, n_cols, title, "response / its peak", signed=False)


def readout_map_figure(weight_map: np.ndarray, image_size: int, title: str = "Receptive field (readout map)") -> go.Figure:
    """Where the neuron's response comes from: |readout weight| summed over filters, on image coordinates.

    The readout grid is coarser than the image (stride 4 in the compact
    models), so its axes are drawn in image pixels for reading against stimuli.
    """
    z = np.asarray(weight_map, np.float64)
    step = image_size / z.shape[1]
    centres = (np.arange(z.shape[1]) + 0.5) * step
    fig = go.Figure(go.Heatmap(z=z, x=centres, y=(np.arange(z.shape[0]) + 0.5) * step, colorscale="Viridis",
                               colorbar={"title": {"text": "|readout weight|<br>(sum over filters)", "side": "right"}},
                               hovertemplate="x %{x:.0f} px, y %{y:.0f} px<br>weight %{z:.3g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", title_text="y (px)", range=[image_size, 0])
    fig.update_xaxes(title_text="x (px)", range=[0, image_size])
    return finish(fig, title, height=360)
