"""Uploaded files: good ones decode to model-ready arrays, bad ones give DataError naming the upload."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from compactvision.errors import DataError
from compactvision.uploads import read_image_upload


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _gradient(w: int, h: int) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None].repeat(w, 1)
    return np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares a huge canvas: the classic decompression bomb."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_is_cropped_and_resized_to_model_size(fmt):
    rgb = _gradient(300, 200)
    out = read_image_upload(_encode(Image.fromarray(rgb), fmt), f"photo.{fmt.lower()}", size=112)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    # Centre crop of a horizontal ramp: the left edge starts at about a sixth of the way along.
    assert 20 < int(out[56, 0, 0]) < 70 and 185 < int(out[56, -1, 0]) < 235


def test_grey_alpha_and_16_bit_become_rgb():
    grey = read_image_upload(_encode(Image.fromarray(np.full((40, 40), 200, np.uint8)), "PNG"), "g.png", size=None)
    assert grey.shape == (40, 40, 3) and (grey == 200).all()
    rgba = np.zeros((20, 20, 4), np.uint8)  # fully transparent -> neutral grey background
    out = read_image_upload(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), "a.png", size=None)
    assert (out == 128).all()
    deep = Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16))
    out = read_image_upload(_encode(deep, "PNG"), "deep.png", size=None)
    assert out.min() == 0 and out.max() == 255


def test_format_is_decided_by_content_not_name():
    with pytest.raises(DataError, match="not a PNG or JPEG") as e:
        read_image_upload(b"GIF89a" + b"\x00" * 100, "innocent.png")
    assert "innocent.png" in str(e.value)
    png = _encode(Image.fromarray(_gradient(30, 30)), "PNG")
    assert read_image_upload(png, "named-wrong.jpg", size=None).shape == (30, 30, 3)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png_header_only(60_000, 60_000)
    assert len(bomb) < 200
    with pytest.raises(DataError, match="decompression"):
        read_image_upload(bomb, "bomb.png")
    with pytest.raises(DataError, match="limit"):
        read_image_upload(_encode(Image.fromarray(_gradient(100, 100)), "PNG"), "big.png", max_pixels=5_000)


def test_size_limit_empty_and_truncated_files():
    png = _encode(Image.fromarray(_gradient(64, 64)), "PNG")
    with pytest.raises(DataError, match="limit"):
        read_image_upload(png, "x.png", max_bytes=100)
    with pytest.raises(DataError, match="empty"):
        read_image_upload(b"", "empty.png")
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_image_upload(png[: len(png) // 2], "cut.png")
    jpeg = _encode(Image.fromarray(_gradient(64, 64)), "JPEG")
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_image_upload(jpeg[:40], "cut.jpg")


def _dataset_bytes(tmp_path) -> bytes:
    from compactvision.data.formats import NeuralDataset, Session, save_npz

    rng = np.random.default_rng(0)
    s = Session("s1", rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8), rng.random((2, 5, 3)), ["a", "b"])
    return save_npz(NeuralDataset([s]), tmp_path / "d.npz").read_bytes()


def test_dataset_upload_round_trip_names_the_upload(tmp_path):
    from compactvision.uploads import read_dataset_upload

    ds = read_dataset_upload(_dataset_bytes(tmp_path), "mine.npz")
    assert ds.sessions[0].neuron_ids == ["a", "b"] and ds.metadata["source"] == "mine.npz"


def test_bad_dataset_uploads(tmp_path):
    import zipfile

    from compactvision.uploads import read_dataset_upload

    with pytest.raises(DataError, match="not a .npz"):
        read_dataset_upload(b"hello world", "x.npz")
    good = _dataset_bytes(tmp_path)
    with pytest.raises(DataError, match="limit"):
        read_dataset_upload(good, "x.npz", max_bytes=100)
    with pytest.raises(DataError, match="unpacks to"):
        read_dataset_upload(good, "x.npz", max_unpacked_bytes=1000)
    with pytest.raises(DataError) as e:
        read_dataset_upload(good[: len(good) // 2], "cut.npz")
    assert "cut.npz" in str(e.value) and "upload.npz" not in str(e.value)
    # An object array inside the archive would need pickle: refused.
    buf = io.BytesIO()
    np.savez(buf, format=np.array("compactvision-dataset"), format_version=np.array(1), metadata=np.array("{}"),
             session_ids=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="pickle"):
        read_dataset_upload(buf.getvalue(), "pickled.npz")
    # A zip of something else entirely.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "not arrays")
    with pytest.raises(DataError, match="pickled|npz|missing|format"):
        read_dataset_upload(buf.getvalue(), "other.npz")


def _bomb_npz(tmp_path, shape=(10**6, 10**3, 10**3, 3)) -> bytes:
    """A valid dataset whose images member's header declares a ~3 TB array over a few bytes of data."""
    import zipfile

    good = _dataset_bytes(tmp_path)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "images/s1.npy":
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
                data = header.getvalue() + b"\0" * 16
            dst.writestr(info.filename, data)
    return out.getvalue()


def test_npz_member_declaring_a_huge_array_is_refused_before_allocation(tmp_path):
    from compactvision.data.formats import load_npz
    from compactvision.uploads import read_dataset_upload

    bomb = _bomb_npz(tmp_path)
    assert len(bomb) < 2000, "a few hundred bytes that claim terabytes"
    with pytest.raises(DataError, match="declares .* holds only") as e:
        read_dataset_upload(bomb, "bomb.npz")
    assert "bomb.npz" in str(e.value) and "images/s1" in str(e.value)
    path = tmp_path / "bomb.npz"
    path.write_bytes(bomb)
    with pytest.raises(DataError, match="declares .* holds only"):
        load_npz(path)  # the CLI's path to the same loader


def test_npy_declaring_a_huge_array_is_refused_before_allocation(tmp_path):
    from compactvision.data.formats import load_npy

    path = tmp_path / "responses_x.npy"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**7, 10**6)})
    path.write_bytes(header.getvalue() + b"\0" * 64)
    with pytest.raises(DataError, match="declares .* holds only"):
        load_npy(path)
