"""Shared look of every figure: colour scales, image traces and kernel mosaics.

Signed quantities (weights, attributions, contributions) always use the same
diverging scale centred on zero, red for positive and blue for negative, so
a reader learns the convention once.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go

#: Red = positive, blue = negative, white = zero (for weights, attributions, contributions).
DIVERGING = "RdBu_r"
POSITIVE_COLOUR = "#c0392b"
NEGATIVE_COLOUR = "#2e6da4"
#: Qualitative colours for several models/conditions on one axis.
SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
TEMPLATE = "plotly_white"


def counted(n: int, noun: str) -> str:
    """"1 filter", "3 filters": figure labels read the count, and a pruned layer can keep a single filter."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def symmetric_limit(z: np.ndarray) -> float:
    """Largest |value| (ignoring NaN), never zero, for a colour scale centred on 0."""
    finite = np.abs(np.asarray(z, np.float64))
    finite = finite[np.isfinite(finite)]
    m = float(finite.max()) if finite.size else 0.0
    return m if m > 0 else 1.0


def as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """H x W (x 1 or 3) image, uint8 or float in [0, 1] -> uint8 H x W x 3."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return img


def image_trace(image: np.ndarray, name: str = "image") -> go.Image:
    return go.Image(z=as_uint8_rgb(image), name=name, hovertemplate="x %{x}, y %{y}<br>RGB %{z}<extra></extra>")


def signed_heatmap(z: np.ndarray, name: str, colorbar_title: str | None = None, limit: float | None = None,
                   showscale: bool = True, **kw: object) -> go.Heatmap:
    """A heatmap on the diverging scale, symmetric about zero."""
    lim = symmetric_limit(z) if limit is None else limit
    kw.setdefault("colorbar", {"title": {"text": colorbar_title or ""}})
    return go.Heatmap(z=np.asarray(z, np.float64), name=name, colorscale=DIVERGING, zmin=-lim, zmax=lim,
                      showscale=showscale, **kw)


def mosaic(tiles: np.ndarray, n_cols: int, gap: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Tile T x h x w arrays into one grid with NaN gaps; also each pixel's tile index (-1 in gaps).

    One heatmap of the whole grid draws far faster than one subplot per tile,
    and the index lets hover text name the tile under the cursor.
    """
    t, h, w = tiles.shape
    n_cols = max(1, min(n_cols, t))
    n_rows = -(-t // n_cols)
    grid = np.full((n_rows * (h + gap) - gap, n_cols * (w + gap) - gap), np.nan)
    index = np.full(grid.shape, -1, np.int64)
    for k in range(t):
        r, c = divmod(k, n_cols)
        grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[k]
        index[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = k
    return grid, index


def png_data_uri(image: np.ndarray) -> str:
    """A small uint8 image as a PNG data URI, for layout images (graph thumbnails)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(as_uint8_rgb(image)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def signed_to_rgb(z: np.ndarray, limit: float | None = None) -> np.ndarray:
    """Signed map -> uint8 RGB on the red/white/blue convention (for thumbnails)."""
    z = np.asarray(z, np.float64)
    lim = symmetric_limit(z) if limit is None else limit
    t = np.clip(z / lim, -1.0, 1.0)[..., None]
    white = np.ones(3)
    pos = np.array([0xC0, 0x39, 0x2B]) / 255.0
    neg = np.array([0x2E, 0x6D, 0xA4]) / 255.0
    rgb = np.where(t >= 0, white + t * (pos - white), white - t * (neg - white))
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def finish(fig: go.Figure, title: str, height: int | None = None) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01, "xanchor": "left"}, template=TEMPLATE,
                      margin={"l": 60, "r": 30, "t": 70, "b": 50})
    if height:
        fig.update_layout(height=height)
    return fig
