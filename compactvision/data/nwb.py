"""Neurodata Without Borders files: images as a stimulus template, responses as a trials table or a time series.

pynwb is an optional dependency (`pip install compactvision[nwb]`), imported only when an NWB file is read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compactvision.data.dataset import NeuralDataset, Session, as_responses, require_file, validate_session
from compactvision.errors import DataError


def load_nwb(path: str | Path, images_name: str | None = None, responses_name: str = "responses") -> NeuralDataset:
    """One session from an NWB file (needs pynwb: `pip install compactvision[nwb]`).

    Accepted shape:

    * images: in ``stimulus_template``, an ``ImageSeries`` with uint8 data
      (N, H, W) or (N, H, W, 3), or an ``Images`` container of grayscale/RGB
      images (in ``order_of_images`` when set). Give `images_name` when the
      file holds several templates.
    * presentations and responses, either

      a. the ``trials`` table with an integer column ``image_index`` (into the
         template) and a column ``responses`` holding one value per neuron; or
      b. an ``IndexSeries`` in ``stimulus`` (template index per presentation)
         and a ``TimeSeries`` named `responses_name` in ``acquisition`` or a
         processing module, data (presentations, neurons).

    Presentations of the same image become its repeats (NaN-padded to the
    most-repeated image). Images never presented are dropped; the template
    index of each kept image is in the session metadata.
    """
    path = Path(path)
    require_file(path)
    try:
        from pynwb import NWBHDF5IO
    except ImportError:  # pragma: no cover - optional dependency
        raise DataError("reading NWB needs pynwb (pip install 'compactvision[nwb]')", path) from None
    try:
        io = NWBHDF5IO(str(path), mode="r")
        nwb = io.read()
    except Exception as e:  # h5py and hdmf raise many types for a file that is not NWB
        raise DataError(f"not a readable NWB file ({type(e).__name__}: {e})", path) from None
    with io:
        images = _nwb_images(nwb, images_name, path)
        index, responses = _nwb_presentations(nwb, responses_name, path)
        sid = str(nwb.session_id or path.stem)
    responses = as_responses(responses, path)
    if responses.ndim != 2 or responses.shape[0] != index.shape[0]:
        raise DataError(f"responses must be presentations x neurons with one row per presentation ({index.shape[0]}), "
                        f"got shape {responses.shape}", path)
    if index.size and (index.min() < 0 or index.max() >= len(images)):
        raise DataError(f"image indices must lie in [0, {len(images)}), got [{index.min()}, {index.max()}]", path)
    shown = np.unique(index)
    counts = np.bincount(index, minlength=len(images))
    out = np.full((responses.shape[1], len(shown), int(counts.max(initial=1))), np.nan)
    slot = np.searchsorted(shown, index)
    seen = np.zeros(len(shown), int)
    for p, k in enumerate(slot):
        out[:, k, seen[k]] = responses[p]
        seen[k] += 1
    s = Session(sid, images[shown], out, [f"{sid}_unit{k}" for k in range(out.shape[0])],
                {"source": str(path), "template_index": shown.tolist()})
    validate_session(s, str(path))
    return NeuralDataset([s], {"source": str(path), "layout": "nwb"})


def _nwb_images(nwb: Any, name: str | None, path: Path) -> np.ndarray:
    templates = dict(nwb.stimulus_template)
    if not templates:
        raise DataError("no stimulus_template: the images must be stored there", path)
    if name is None:
        if len(templates) > 1:
            raise DataError(f"several stimulus templates {sorted(templates)}; pass images_name", path)
        name = next(iter(templates))
    if name not in templates:
        raise DataError(f"no stimulus template {name!r}; have {sorted(templates)}", path)
    t = templates[name]
    if hasattr(t, "images"):  # an Images container
        order = [img.name for img in t.order_of_images.data] if getattr(t, "order_of_images", None) is not None else list(t.images)
        frames = [np.asarray(t.images[k].data) for k in order]
        if len({f.shape for f in frames}) != 1:
            raise DataError(f"images in template {name!r} differ in shape", path)
        data = np.stack(frames)
    else:
        data = np.asarray(t.data)
    if data.dtype != np.uint8:
        raise DataError(f"images must be uint8, got {data.dtype}", path)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4 or data.shape[-1] not in (1, 3):
        raise DataError(f"images must be N x H x W or N x H x W x 3, got shape {data.shape}", path)
    return data


def _nwb_presentations(nwb: Any, responses_name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    trials = nwb.trials
    if trials is not None and "image_index" in trials.colnames and "responses" in trials.colnames:
        index, responses = np.asarray(trials["image_index"].data), np.asarray(trials["responses"].data)
    else:
        series = nwb.acquisition.get(responses_name)
        if series is None:
            for module in nwb.processing.values():
                if responses_name in module.data_interfaces:
                    series = module.data_interfaces[responses_name]
                    break
        index_series = [s for s in nwb.stimulus.values() if type(s).__name__ == "IndexSeries"]
        if series is None or len(index_series) != 1:
            raise DataError("no presentations found: need a trials table with image_index and responses columns, "
                            f"or one IndexSeries in stimulus plus a TimeSeries named {responses_name!r}", path)
        index, responses = np.asarray(index_series[0].data), np.asarray(series.data)
    if index.dtype.kind not in "iu" or index.ndim != 1:
        raise DataError(f"image indices must be a 1-D integer array, got {index.dtype} with shape {index.shape}", path)
    if responses.ndim == 1:
        responses = responses[:, None]
    return index.astype(np.int64), responses
