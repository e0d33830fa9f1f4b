"""Images with no download: photos bundled in installed wheels, crops, and synthetic probes.

Natural images are the photographs that ship inside scikit-image's and
scikit-learn's wheels, so the twin, distillation and the app work offline.
Synthetic families (1/f noise, dead leaves, gratings, dots, bars, arcs,
corners) probe tuning and widen the image distribution for distillation.

Every function returns uint8 images, N x H x W x C (C = 3 unless a grey
option is asked for), deterministic in its seed.

Geometry conventions, shared with the digital twin's ground truth:

* a position is (x, y) = (column, row) in pixels from the top-left corner;
  the centre of a `size` x `size` image is ((size - 1) / 2, (size - 1) / 2);
* an orientation is in degrees counter-clockwise *as seen on screen* from
  horizontal, and is the orientation of the bars (stripes, edges), not of the
  wave vector: 0 deg = horizontal bars, 90 deg = vertical bars;
* spatial frequency is in cycles per pixel ("cpp"); with the Cowley et al.
  112 px images spanning roughly 5.6 deg of visual angle, 1 cpp ~ 20 cycles
  per degree, but nothing here assumes a viewing distance;
* curvature is 1 / radius in 1/px; positive curvature bends counter-clockwise
  (to the left of the direction `orientation_deg` points along).
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from compactvision.inputs import as_rgb

#: Default share of each family in `image_stream` (the distillation diet).
DEFAULT_MIX: Mapping[str, float] = {
    "natural": 0.7,
    "pink_noise": 0.1,
    "dead_leaves": 0.1,
    "gratings": 0.05,
    "dots": 0.05,
}
_LEAVES_PER_CHUNK = 256

# Photographs inside scikit-image's wheel that load without network access
# (the others in `skimage.data` are fetched on demand and fail offline).
_SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field",
                   "coins", "brick", "grass", "gravel", "moon")


def _as_rgb(img: np.ndarray) -> np.ndarray:
    """A bundled photo (grey H x W, RGB or RGBA) as uint8 RGB."""
    img = np.asarray(img)
    return np.ascontiguousarray(as_rgb(img[:, :, None] if img.ndim == 2 else img).astype(np.uint8))


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    photos = [_as_rgb(getattr(skdata, name)()) for name in _SKIMAGE_PHOTOS]
    left, right, _disparity = skdata.stereo_motorcycle()
    photos += [_as_rgb(left), _as_rgb(right)]
    photos += [_as_rgb(im) for im in load_sample_images().images]
    for p in photos:
        p.setflags(write=False)
    return tuple(photos)


@functools.lru_cache(maxsize=1)
def _photo_pil() -> tuple[Image.Image, ...]:
    return tuple(Image.fromarray(p) for p in _photos())


def natural_photos() -> list[np.ndarray]:
    """The bundled photographs as read-only uint8 RGB arrays (H x W x 3), cached per process.

    Grey photos (camera, coins, brick, grass, gravel, moon) are replicated to
    three channels so every photo has the same layout.
    """
    return list(_photos())


def to_grayscale(images: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of uint8 N x H x W x 3 images, as N x H x W x 1 uint8."""
    lum = images[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(lum), 0, 255).astype(np.uint8)[..., None]


def natural_crops(n: int, size: int = 112, seed: int = 0, grayscale: bool = False,
                  augment: bool = True) -> np.ndarray:
    """`n` random square crops of the bundled photos, resized to `size` x `size`.

    Each crop takes a square window at a random position in a random photo
    and resamples it (antialiased) to `size`. The window side is twice `size`
    (clipped to the photo), which keeps whole objects in view as the
    downsampled ImageNet-style images of the reference data do.

    With `augment`, the window side is also scaled by a log-uniform factor in
    [0.6, 1.6] (random scale), its position is sub-pixel (small shifts), half
    the crops are mirrored left-right, and contrast (x0.6-x1.4 about the crop
    mean) and brightness (+-20 grey levels) are jittered.

    Returns uint8 N x size x size x 3 (x 1 with `grayscale`).
    """
    if n < 0 or size < 1:
        raise ValueError(f"need n >= 0 and size >= 1, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    photos = _photo_pil()
    # Draw every random number up front so the sequence does not depend on branches.
    which = rng.integers(len(photos), size=n)
    scale = np.exp(rng.uniform(np.log(0.6), np.log(1.6), size=n))
    pos = rng.uniform(0.0, 1.0, size=(n, 2))
    flip = rng.random(n) < 0.5
    contrast = np.exp(rng.uniform(np.log(0.6), np.log(1.4), size=n))
    brightness = rng.uniform(-20.0, 20.0, size=n)

    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        photo = photos[which[k]]
        w, h = photo.size
        side = min(2.0 * size * (scale[k] if augment else 1.0), float(min(w, h)))
        x0, y0 = pos[k, 0] * (w - side), pos[k, 1] * (h - side)
        if not augment:
            x0, y0 = math.floor(x0), math.floor(y0)
        crop = photo.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
        arr = np.asarray(crop)
        if augment:
            if flip[k]:
                arr = arr[:, ::-1]
            f = arr.astype(np.float32)
            mean = f.mean()
            arr = np.clip(np.rint(mean + contrast[k] * (f - mean) + brightness[k]), 0, 255)
        out[k] = arr
    return to_grayscale(out) if grayscale else out


def zoom_crops(images: np.ndarray, max_zoom: float, rng: np.random.Generator) -> np.ndarray:
    """Each image resampled from a random square window inside it: new views of the same scenes.

    The window's side is the image's times a log-uniform factor in
    [1 - `max_zoom`, 1], at a uniformly random (sub-pixel) position, and is
    resized (bilinear) back to the image's size. So a scene is seen shifted
    and magnified by up to `max_zoom`, as a fixating animal sees it from one
    glance to the next; a teacher's labels of these views pin down a
    student's function at more inputs than the scenes alone do. `max_zoom` 0
    returns the images unchanged, and draws nothing from `rng`.
    """
    if not 0.0 <= max_zoom < 1.0:
        raise ValueError(f"max_zoom must be in [0, 1), got {max_zoom}")
    if max_zoom == 0.0 or len(images) == 0:
        return images
    n, h, w = images.shape[:3]
    side = np.exp(rng.uniform(np.log(1.0 - max_zoom), 0.0, size=n))
    pos = rng.uniform(0.0, 1.0, size=(n, 2))
    out = np.empty_like(images)
    for k in range(n):
        sw, sh = side[k] * w, side[k] * h
        x0, y0 = pos[k, 0] * (w - sw), pos[k, 1] * (h - sh)
        view = Image.fromarray(images[k]).resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + sw, y0 + sh))
        out[k] = np.asarray(view).reshape(out[k].shape)
    return out


# ----------------------------------------------------------------- synthetic
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Column (x) and row (y) coordinate grids, float32."""
    r = np.arange(size, dtype=np.float32)
    return np.meshgrid(r, r, indexing="xy")


def _centre(size: int, center: Sequence[float] | None) -> tuple[float, float]:
    c = (size - 1) / 2.0
    return (c, c) if center is None else (float(center[0]), float(center[1]))


def _to_uint8(v: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8)


def _grey_to_rgb(v: np.ndarray) -> np.ndarray:
    """Luminance in [0, 1], N x H x W -> uint8 N x H x W x 3."""
    return as_rgb(_to_uint8(v)[..., None])


def pink_noise(n: int, size: int = 112, seed: int = 0, exponent: float = 1.0, color: bool = True) -> np.ndarray:
    """1/f noise: amplitude spectrum falling as 1/f**`exponent` (1 = natural-image statistics).

    Each image is scaled to mean grey with a random RMS contrast (0.15-0.3 of
    the range). With `color`, two weaker 1/f chromatic components are added
    to the luminance one, as in natural scenes where most variance is
    luminance.
    """
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    amp = np.zeros_like(f)
    amp[f > 0] = f[f > 0] ** -exponent
    n_comp = 3 if color else 1
    white = rng.standard_normal((n, n_comp, size, size))
    field = np.fft.irfft2(np.fft.rfft2(white) * amp, s=(size, size))
    field -= field.mean(axis=(-2, -1), keepdims=True)
    field /= field.std(axis=(-2, -1), keepdims=True) + 1e-12
    rms = rng.uniform(0.15, 0.3, size=(n, 1, 1))
    lum = field[:, 0]
    if not color:
        return _grey_to_rgb(0.5 + rms * lum)
    # Opponent axes (red-green, blue-yellow) at 20% of the luminance contrast.
    rg, by = 0.2 * field[:, 1], 0.2 * field[:, 2]
    rgb = np.stack([lum + rg - 0.5 * by, lum - rg - 0.5 * by, lum + by], axis=-1)
    return _to_uint8(0.5 + rms[..., None] * rgb)


def dead_leaves(n: int, size: int = 112, seed: int = 0, r_min: float = 1.5, r_max: float | None = None) -> np.ndarray:
    """Dead-leaves images: opaque discs with radii ~ r**-3 occluding each other.

    The r**-3 law makes the images scale-invariant with natural-like edge and
    occlusion statistics. Discs are laid front to back until every pixel is
    covered. Each disc has a random grey level plus a weaker random colour.
    """
    rng = np.random.default_rng(seed)
    r_max = size / 3.0 if r_max is None else r_max
    x, y = _grid(size)
    flat_x, flat_y = x.ravel(), y.ravel()
    a, b = r_min**-2, r_max**-2
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        img = np.zeros((size * size, 3), np.float32)
        covered = np.zeros(size * size, bool)
        while not covered.all():
            # A chunk of discs, front first; each pixel takes the first disc that covers it.
            r = (a - rng.random(_LEAVES_PER_CHUNK) * (a - b)) ** -0.5  # inverse CDF of p(r) ~ r**-3
            cx = rng.uniform(-r, size - 1 + r)
            cy = rng.uniform(-r, size - 1 + r)
            colour = np.clip(rng.random(_LEAVES_PER_CHUNK)[:, None] + 0.15 * rng.standard_normal((_LEAVES_PER_CHUNK, 3)), 0, 1)
            todo = np.flatnonzero(~covered)
            inside = (flat_x[todo][None] - cx[:, None]) ** 2 + (flat_y[todo][None] - cy[:, None]) ** 2 <= (r * r)[:, None]
            hit = inside.any(axis=0)
            first = inside.argmax(axis=0)[hit]
            img[todo[hit]] = colour[first]
            covered[todo[hit]] = True
        out[k] = _to_uint8(img.reshape(size, size, 3))
    return out


def _aperture(x: np.ndarray, y: np.ndarray, cx: float, cy: float, radius: float | None) -> np.ndarray:
    if radius is None:
        return np.ones_like(x)
    return np.clip(radius + 0.5 - np.hypot(x - cx, y - cy), 0.0, 1.0)


def gratings(orientations_deg: float | Sequence[float], sf_cpp: float | Sequence[float],
             phases: float | Sequence[float] = 0.0, size: int = 112, contrast: float = 1.0,
             center: Sequence[float] | None = None, radius: float | None = None) -> np.ndarray:
    """Sinusoidal gratings, one per combination of orientation x frequency x phase (in that nesting order).

    `orientations_deg`: bar orientation, degrees counter-clockwise from horizontal.
    `sf_cpp`: spatial frequency in cycles per pixel (e.g. 0.1 = a 10 px period).
    `phases`: radians; phase 0 puts a bright bar's centre through `center`.
    `contrast`: Michelson contrast in [0, 1] about mean grey.
    `center`, `radius`: an optional circular aperture (px, soft edge) on grey.
    Returns uint8 N x size x size x 3 with N = len(orientations) * len(sf) * len(phases).
    """
    x, y = _grid(size)
    cx, cy = _centre(size, center)
    win = _aperture(x, y, cx, cy, radius)
    out = []
    for ori, sf, ph in itertools.product(np.atleast_1d(orientations_deg), np.atleast_1d(sf_cpp), np.atleast_1d(phases)):
        t = math.radians(float(ori))
        # Distance across the bars: the bars run along (cos t, -sin t) in (column, row).
        across = (x - cx) * math.sin(t) + (y - cy) * math.cos(t)
        out.append(0.5 + 0.5 * contrast * win * np.cos(2 * math.pi * float(sf) * across + float(ph)))
    return _grey_to_rgb(np.stack(out))


def dots(sizes_px: float | Sequence[float], positions: Sequence[Sequence[float]] | None = None, size: int = 112,
         polarity: int = 1, color: Sequence[float] | None = None) -> np.ndarray:
    """Discs on mean grey, one per combination of diameter x position (in that nesting order).

    `sizes_px`: disc diameters in pixels. `positions`: (x, y) centres; default
    the image centre. `polarity` +1 = white disc, -1 = black disc; `color`, an
    RGB triple in [0, 1], overrides it (for colour-opponent cells).
    """
    x, y = _grid(size)
    positions = [_centre(size, None)] if positions is None else [tuple(map(float, p)) for p in positions]
    fg = np.asarray(color, np.float32) if color is not None else np.full(3, 1.0 if polarity > 0 else 0.0, np.float32)
    out = []
    for d, (px, py) in itertools.product(np.atleast_1d(sizes_px), positions):
        alpha = np.clip(float(d) / 2 + 0.5 - np.hypot(x - px, y - py), 0.0, 1.0)[..., None]
        out.append(0.5 + alpha * (fg - 0.5))
    return _to_uint8(np.stack(out))


def bars(lengths_px: float | Sequence[float], width_px: float, orientation_deg: float,
         center: Sequence[float] | None = None, size: int = 112, polarity: int = 1) -> np.ndarray:
    """Bars of each length on mean grey (for end-stopping), centred on `center`, long axis at `orientation_deg`."""
    x, y = _grid(size)
    cx, cy = _centre(size, center)
    t = math.radians(orientation_deg)
    along = (x - cx) * math.cos(t) - (y - cy) * math.sin(t)
    across = (x - cx) * math.sin(t) + (y - cy) * math.cos(t)
    w = np.clip(width_px / 2 + 0.5 - np.abs(across), 0.0, 1.0)
    out = [0.5 + 0.5 * polarity * w * np.clip(float(L) / 2 + 0.5 - np.abs(along), 0.0, 1.0)
           for L in np.atleast_1d(lengths_px)]
    return _grey_to_rgb(np.stack(out))


def arc_points(curvature: float, center: Sequence[float], orientation_deg: float,
               arc_length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of a circular arc through `center` with tangent `orientation_deg` there.

    Returns ((x, y) positions, N x 2, and tangent orientations in degrees) at
    signed arc lengths `arc_length` (px). Curvature 0 gives a straight line.
    Shared by the arc stimuli and the twin's curvature cells so the two agree.
    """
    s = np.asarray(arc_length, np.float64)
    t = math.radians(orientation_deg)
    k = float(curvature)
    if abs(k) < 1e-9:
        along, side = s, np.zeros_like(s)
    else:
        along, side = np.sin(k * s) / k, (1 - np.cos(k * s)) / k
    # Screen-up frame: tangent (cos t, sin t), left normal (-sin t, cos t); rows grow downwards.
    ux = along * math.cos(t) - side * math.sin(t)
    uy = along * math.sin(t) + side * math.cos(t)
    pts = np.stack([center[0] + ux, center[1] - uy], axis=-1)
    return pts, orientation_deg + np.degrees(k * s)


def _draw_polyline(pts: np.ndarray, width_px: float, size: int) -> np.ndarray:
    """Anti-aliased stroke through densely sampled points; only the bounding box is searched."""
    out = np.zeros((size, size), np.float32)
    pad = width_px / 2 + 1
    x0, y0 = (max(int(np.floor(v - pad)), 0) for v in pts.min(axis=0))
    x1, y1 = (min(int(np.ceil(v + pad)) + 1, size) for v in pts.max(axis=0))
    if x0 >= x1 or y0 >= y1:
        return out
    x, y = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32), indexing="xy")
    grid = np.stack([x.ravel(), y.ravel()], axis=1)
    d2 = ((grid[:, None, :] - pts[None, :, :].astype(np.float32)) ** 2).sum(-1).min(axis=1)
    out[y0:y1, x0:x1] = np.clip(width_px / 2 + 0.5 - np.sqrt(d2), 0.0, 1.0).reshape(y1 - y0, x1 - x0)
    return out


def curved_arcs(curvatures: float | Sequence[float], size: int = 112, center: Sequence[float] | None = None,
                orientation_deg: float = 0.0, length_px: float | None = None, width_px: float = 2.0,
                polarity: int = 1) -> np.ndarray:
    """Arcs of constant curvature (1/px; 0 = straight), one per curvature, on mean grey.

    Each arc has length `length_px` (default size / 3), is centred on
    `center` and has tangent `orientation_deg` there; see `arc_points`.
    """
    cx, cy = _centre(size, center)
    length = size / 3.0 if length_px is None else float(length_px)
    s = np.linspace(-length / 2, length / 2, max(int(length * 4), 2))
    out = []
    for k in np.atleast_1d(curvatures):
        pts, _ = arc_points(float(k), (cx, cy), orientation_deg, s)
        out.append(0.5 + 0.5 * polarity * _draw_polyline(pts, width_px, size))
    return _grey_to_rgb(np.stack(out))


def corners(angles_deg: float | Sequence[float], size: int = 112, center: Sequence[float] | None = None,
            orientation_deg: float = 90.0, arm_length_px: float | None = None, width_px: float = 2.0,
            polarity: int = 1) -> np.ndarray:
    """Corners (two arms from a vertex at `center`), one per opening angle in degrees.

    The bisector of the opening points along `orientation_deg`; 180 deg is a
    straight line through the vertex, small angles are sharp points.
    """
    cx, cy = _centre(size, center)
    arm = size / 6.0 if arm_length_px is None else float(arm_length_px)
    s = np.linspace(0.0, arm, max(int(arm * 4), 2))
    out = []
    for a in np.atleast_1d(angles_deg):
        pts = []
        for sign in (-1.0, 1.0):
            t = math.radians(orientation_deg + sign * float(a) / 2)
            pts.append(np.stack([cx + s * math.cos(t), cy - s * math.sin(t)], axis=-1))
        out.append(0.5 + 0.5 * polarity * _draw_polyline(np.concatenate(pts), width_px, size))
    return _grey_to_rgb(np.stack(out))


# ------------------------------------------------------------ random probes
def random_gratings(n: int, size: int = 112, seed: int = 0) -> np.ndarray:
    """Gratings with random orientation, frequency (0.02-0.25 cpp), phase, contrast and aperture."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        radius = None if rng.random() < 0.5 else rng.uniform(0.1, 0.5) * size
        center = rng.uniform(0.3, 0.7, size=2) * (size - 1)
        out[k] = gratings(rng.uniform(0, 180), np.exp(rng.uniform(np.log(0.02), np.log(0.25))),
                          rng.uniform(0, 2 * np.pi), size, contrast=rng.uniform(0.2, 1.0),
                          center=center, radius=radius)[0]
    return out


def random_dots(n: int, size: int = 112, seed: int = 0) -> np.ndarray:
    """1-8 discs per image with random diameters (2-30 px), positions and colours, on grey."""
    rng = np.random.default_rng(seed)
    x, y = _grid(size)
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        img = np.full((size, size, 3), 0.5, np.float32)
        for _ in range(rng.integers(1, 9)):
            d = np.exp(rng.uniform(np.log(2.0), np.log(30.0)))
            px, py = rng.uniform(0, size - 1, size=2)
            colour = rng.random(3) if rng.random() < 0.3 else np.full(3, float(rng.random() < 0.5))
            alpha = np.clip(d / 2 + 0.5 - np.hypot(x - px, y - py), 0.0, 1.0)[..., None]
            img = img + alpha * (colour - img)
        out[k] = _to_uint8(img)
    return out


_FAMILIES: dict[str, Callable[[int, int, int], np.ndarray]] = {
    "natural": lambda n, size, seed: natural_crops(n, size, seed),
    "pink_noise": lambda n, size, seed: pink_noise(n, size, seed),
    "dead_leaves": lambda n, size, seed: dead_leaves(n, size, seed),
    "gratings": random_gratings,
    "dots": random_dots,
}


def mixed_images(n: int, size: int = 112, seed: int = 0, mix: Mapping[str, float] | None = None) -> tuple[np.ndarray, list[str]]:
    """`n` images drawn from the families in `mix` (shares, normalised), shuffled; also each image's family."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = set(mix) - set(_FAMILIES)
    if unknown:
        raise ValueError(f"unknown image families {sorted(unknown)}; known: {sorted(_FAMILIES)}")
    names = [k for k, v in mix.items() if v > 0]
    if not names:
        raise ValueError("mix gives every family a zero share")
    p = np.array([mix[k] for k in names], np.float64)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, p / p.sum())
    seeds = rng.integers(2**62, size=len(names))
    images = np.concatenate([_FAMILIES[k](int(c), size, int(s)) for k, c, s in zip(names, counts, seeds) if c > 0])
    family = np.repeat(np.array(names), counts)
    order = rng.permutation(n)
    return images[order], family[order].tolist()


def image_stream(batch_size: int, size: int = 112, seed: int = 0,
                 mix: Mapping[str, float] | None = None) -> Iterator[np.ndarray]:
    """An endless, deterministic stream of uint8 batches mixing natural crops and synthetic families.

    Batch k depends only on (seed, k), so a resumed distillation can rebuild
    exactly the batches it would have seen. `mix` maps family names
    ("natural", "pink_noise", "dead_leaves", "gratings", "dots") to shares;
    the default is `DEFAULT_MIX`.
    """
    for k in itertools.count():
        yield mixed_images(batch_size, size, int(np.random.default_rng([seed, k]).integers(2**62)), mix)[0]
