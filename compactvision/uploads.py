"""Files a user hands the app: images (PNG/JPEG) and datasets (.npz), checked before use.

An upload is untrusted bytes. Everything here decides by content, not by the
file name; bounds the size of the bytes *and* of what they decode to (a 50 KB
PNG can declare a 50 000 x 50 000 canvas: a decompression bomb); and turns every
failure into a DataError naming the upload, so a page can show the message and
keep working.
"""
from __future__ import annotations

import io
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from compactvision.data.dataset import NeuralDataset
from compactvision.data.npz import load_npz
from compactvision.errors import DataError
from compactvision.inputs import as_rgb, crop_resize

#: Default cap on an uploaded image's size in bytes.
MAX_IMAGE_BYTES = 10 * 2**20
#: Default cap on an uploaded image's decoded size (width x height).
MAX_IMAGE_PIXELS = 25_000_000
#: Default cap on an uploaded dataset's size in bytes (matches the app's upload limit).
MAX_DATASET_BYTES = 20 * 2**20
#: Cap on what an uploaded .npz may decompress to, against zip bombs.
MAX_DATASET_UNPACKED_BYTES = 2**30

_SIGNATURES = {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff"}


def _check_size(data: bytes, name: str, max_bytes: int) -> None:
    if len(data) == 0:
        raise DataError("the file is empty", name)
    if len(data) > max_bytes:
        raise DataError(f"the file is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.1f} MB", name)


def image_format(data: bytes) -> str | None:
    """'PNG' or 'JPEG' from the file's first bytes, None for anything else."""
    for fmt, magic in _SIGNATURES.items():
        if data.startswith(magic):
            return fmt
    return None


def read_image_upload(data: bytes, name: str, max_bytes: int = MAX_IMAGE_BYTES,
                      max_pixels: int = MAX_IMAGE_PIXELS, size: int | tuple[int, int] | None = 112) -> np.ndarray:
    """Decode an uploaded PNG/JPEG into the uint8 H x W x 3 image a model sees.

    The canvas size is read from the header and checked against `max_pixels`
    *before* any pixel is decoded. With `size`, the largest centred square
    (or box of the target aspect) is cropped and resized to `size`, which is
    what "show this photo to a 112 px model" means. `size=None` keeps the
    decoded resolution.
    """
    _check_size(data, name, max_bytes)
    fmt = image_format(data)
    if fmt is None:
        raise DataError("not a PNG or JPEG image (checked by content, not by the file name)", name)
    try:
        with warnings.catch_warnings():
            # PIL warns (rather than fails) between MAX_IMAGE_PIXELS and twice that; refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise DataError(f"the image declares {w} x {h} pixels; the limit is {max_pixels:,} "
                                    "(refused before decoding, as a decompression-bomb guard)", name)
                img.seek(0)  # first frame of an animated PNG
                rgb = _to_rgb(img)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"refused as a decompression bomb ({e})", name) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"the {fmt} data is corrupt or truncated ({e})", name) from None
    if size is not None:
        rgb = crop_resize(rgb, (size, size) if isinstance(size, int) else tuple(size))
    return rgb


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode to uint8 RGB; 16-bit and float greys are rescaled, not clipped."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        return as_rgb(np.round(a).astype(np.uint8)[:, :, None])
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels are shown on mid grey, the models' neutral background.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        img = Image.alpha_composite(bg, rgba)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def read_dataset_upload(data: bytes, name: str, max_bytes: int = MAX_DATASET_BYTES,
                        max_unpacked_bytes: int = MAX_DATASET_UNPACKED_BYTES) -> NeuralDataset:
    """Load an uploaded `.npz` dataset with the library's pickle-free loader.

    The archive's declared member sizes are summed before anything is
    decompressed, and zipfile never inflates a member past its declared size;
    `load_npz` then reads every member's .npy header and refuses an array
    larger than the bytes that hold it before `np.load` allocates it. Together
    these bound the memory an upload can claim.
    """
    _check_size(data, name, max_bytes)
    if not data.startswith(b"PK"):
        raise DataError("not a .npz archive (a .npz is a zip file of .npy arrays)", name)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DataError(f"not a readable .npz archive ({e})", name) from None
    unpacked = sum(m.file_size for m in members)
    if unpacked > max_unpacked_bytes:
        raise DataError(f"the archive unpacks to {unpacked / 2**20:.0f} MB; the limit is "
                        f"{max_unpacked_bytes / 2**20:.0f} MB", name)
    with tempfile.TemporaryDirectory(prefix="compactvision-upload-") as tmp:
        path = Path(tmp) / "upload.npz"
        path.write_bytes(data)
        try:
            dataset = load_npz(path)
        except DataError as e:
            # Name the user's file, not our temporary copy.
            raise DataError(e.problem, name) from None
    dataset.metadata["source"] = name
    return dataset
