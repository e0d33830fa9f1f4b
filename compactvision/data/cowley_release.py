"""The public Cowley et al. (2026) V4 release layout: JPEG zips per session and response arrays."""
from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from compactvision.data.dataset import NeuralDataset, Session, as_responses, require_file, validate_session
from compactvision.data.npz import load_npy
from compactvision.errors import DataError


def read_jpeg_zip(path: str | Path) -> np.ndarray:
    """All JPEG members of a zip, in name order, as uint8 N x H x W x 3 (RGB as PIL decodes them)."""
    path = Path(path)
    require_file(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"not a zip archive, or truncated ({e})", path) from None
    with archive:
        names = sorted(n for n in archive.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/"))
        if not names:
            raise DataError("the archive holds no images", path)
        out: np.ndarray | None = None
        for i, name in enumerate(names):
            try:
                data = archive.read(name)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                raise DataError(f"member {name!r} is truncated or corrupt ({e})", path) from None
            if not data.startswith(b"\xff\xd8\xff"):
                raise DataError(f"member {name!r} is not a JPEG", path)
            try:
                img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise DataError(f"member {name!r} is a corrupt JPEG ({e})", path) from None
            if out is None:
                out = np.empty((len(names),) + img.shape, np.uint8)
            elif img.shape != out.shape[1:]:
                raise DataError(f"member {name!r} is {img.shape[1]}x{img.shape[0]}, the others {out.shape[2]}x{out.shape[1]}", path)
            out[i] = img
    return out


def cowley_sessions(root: str | Path) -> list[str]:
    """Session ids with responses under `root` (repeat-averaged or raw)."""
    root = Path(root)
    return sorted({p.stem[len("responses_"):] for d in ("responses_repeat_averaged", "responses_raw")
                   if (root / d).is_dir() for p in (root / d).glob("responses_*.npy")})


def load_cowley(root: str | Path, sessions: Sequence[str] | None = None) -> NeuralDataset:
    """The public Cowley et al. V4 release layout::

        images/images_<session>.zip                   JPEGs in name order; image i = member i
        responses_repeat_averaged/responses_<session>.npy   (neurons, images)
        responses_raw/responses_<session>.npy         (neurons, images, repeats), NaN-padded

    Raw repeats, where present, take precedence; repeat-averaged responses
    become a repeats axis of length 1. Neuron k of a session is named
    "<session>_neuron<k>" (k from 0), as the published compact models are.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("not a directory (expected the Cowley et al. V4 release layout)", root)
    found = cowley_sessions(root)
    if not found:
        raise DataError("no responses_repeat_averaged/ or responses_raw/ responses_<session>.npy files: "
                        "not the Cowley et al. V4 release layout", root)
    wanted = found if sessions is None else [str(s) for s in sessions]
    missing = [s for s in wanted if s not in found]
    if missing:
        raise DataError(f"no responses for session(s) {missing}; found {found}", root)
    out = []
    for sid in wanted:
        raw = root / "responses_raw" / f"responses_{sid}.npy"
        resp_path = raw if raw.is_file() else root / "responses_repeat_averaged" / f"responses_{sid}.npy"
        resp = as_responses(load_npy(resp_path), resp_path)
        expected = 3 if resp_path == raw else 2
        if resp.ndim != expected:
            raise DataError(f"responses must have rank {expected} ({'neurons x images x repeats' if expected == 3 else 'neurons x images'}), "
                            f"got shape {resp.shape}", resp_path)
        if expected == 2:
            resp = resp[:, :, None]
        zip_path = root / "images" / f"images_{sid}.zip"
        images = read_jpeg_zip(zip_path)
        if len(images) != resp.shape[1]:
            raise DataError(f"{len(images)} images in {zip_path.name} but responses for {resp.shape[1]} images", resp_path)
        s = Session(sid, images, resp, [f"{sid}_neuron{k}" for k in range(resp.shape[0])],
                    {"source": str(resp_path), "images_file": str(zip_path),
                     "response_kind": "raw" if expected == 3 else "repeat_averaged"})
        validate_session(s, str(resp_path))
        out.append(s)
    return NeuralDataset(out, {"source": str(root), "layout": "cowley_v4"})
