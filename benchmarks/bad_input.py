"""Bad input, as a figure: every malformed input we know of, through every path a user can hand it to.

Each row is one malformed input tried against one path (a loader, an app
upload, a checkpoint reader or a CLI command). It reports whether it was
refused with the library's own error (no traceback, no MemoryError), the
message the user sees, and whether anything was written: every case runs in
a fresh folder, the output path a command was given must not appear, and a
command run on an existing run must leave that run's files as they were.
Exit status 1 when any row is not a clean refusal.

    python benchmarks/bad_input.py [--markdown] [--json rows.json]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import pickle
import struct
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from compactvision import cli
from compactvision.artifacts import export_compact, load_compact, save_student, write_manifest
from compactvision.cowley import load_published_arrays
from compactvision.data.formats import NeuralDataset, Session, load_dataset, save_npz
from compactvision.errors import CompactVisionError
from compactvision.models.backbone import read_resnet_checkpoint
from compactvision.models.student import CompactStudent, StudentArch
from compactvision.runs import Run
from compactvision.uploads import read_dataset_upload, read_image_upload


@dataclass
class Outcome:
    refused: bool
    message: str


# ------------------------------------------------------------ bad inputs
def _good_dataset() -> NeuralDataset:
    rng = np.random.default_rng(0)
    s = Session("s1", rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8), rng.random((2, 6, 3)), ["a", "b"])
    return NeuralDataset([s])


def _good_npz(folder: Path) -> bytes:
    return save_npz(_good_dataset(), folder / ".good.npz").read_bytes()


def _npz_replacing(good: bytes, member: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, data if info.filename == member else src.read(info.filename))
    return out.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _npy_header_only(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 16


class RunsCode:
    """Unpickling this calls print(): what a malicious file does with os.system."""

    def __reduce__(self):
        return print, ("pickled code ran",)


def bad_npz_files(folder: Path) -> dict[str, bytes]:
    good = _good_npz(folder)
    return {
        "empty file": b"",
        "text, named .npz": b"hello, I am not an archive",
        "truncated .npz": good[: len(good) // 2],
        "member header declares a 3 TB array": _npz_replacing(good, "images/s1.npy", _npy_header_only((10**6, 10**3, 10**3, 3))),
        "pickled object array": _npz_replacing(good, "session_ids.npy", _npy(np.array([RunsCode()], dtype=object))),
        "missing entry": _npz_replacing(good, "format.npy", _npy(np.array("compactvision-dataset"))).replace(b"format.npy", b"formax.npy"),
        "another format": _npz_replacing(good, "format.npy", _npy(np.array("someone-else"))),
        "newer format version": _npz_replacing(good, "format_version.npy", _npy(np.array(99))),
        "metadata not JSON": _npz_replacing(good, "metadata.npy", _npy(np.array("{not json"))),
        "test images out of range": _npz_replacing(good, "session_metadata/s1.npy",
                                                   _npy(np.array(json.dumps({"test_indices": [0, 99]})))),
        "responses with wrong image count": _npz_replacing(good, "responses/s1.npy", _npy(np.zeros((2, 5, 3)))),
        "responses not numeric": _npz_replacing(good, "responses/s1.npy", _npy(np.full((2, 6, 3), "x"))),
        "images not uint8": _npz_replacing(good, "images/s1.npy", _npy(np.zeros((6, 16, 16, 3), np.float64))),
    }


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def bad_images() -> dict[str, bytes]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    return {
        "empty file": b"",
        "GIF named .png": b"GIF89a" + b"\0" * 32,
        "truncated PNG": png[: len(png) // 2],
        "PNG declaring 50000 x 50000 pixels": _png(50_000, 50_000),
        "11 MB of bytes": b"\x89PNG\r\n\x1a\n" + b"\0" * (11 * 2**20),
    }


# ------------------------------------------------------------ the paths
def _cli(argv: list[str]) -> Outcome:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = int(e.code or 0)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return Outcome(code != 0, lines[-1] if lines else f"exit code {code}")


def _call(fn: Callable[[], object]) -> Outcome:
    try:
        fn()
    except CompactVisionError as e:
        return Outcome(True, str(e))
    except Exception as e:  # what we report as NOT refused cleanly
        return Outcome(False, f"{type(e).__name__}: {e}"[:160])
    return Outcome(False, "accepted")


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def _tiny_run(folder: Path) -> Path:
    run = folder / "run"
    save_student(CompactStudent(StudentArch(channels=(4, 4, 4, 4, 4), input_size=(32, 32))), run, "n0")
    write_manifest(run, kind="compressed", config={})
    return run


def cases() -> list[tuple[str, str, Callable[[Path], tuple[Outcome, list[Path]]]]]:
    """(input, path, run(folder) -> (outcome, output paths that must not appear))."""
    out: list[tuple[str, str, Callable[[Path], tuple[Outcome, list[Path]]]]] = []

    def npz_case(name: str, path_kind: str):
        def run(folder: Path) -> tuple[Outcome, list[Path]]:
            data = bad_npz_files(folder)[name]
            target = folder / "data.npz"
            target.write_bytes(data)
            if path_kind == "load_dataset":
                return _call(lambda: load_dataset(target)), []
            if path_kind == "upload":
                return _call(lambda: read_dataset_upload(data, "mine.npz")), []
            if path_kind == "cli data describe":
                return _cli(["data", "describe", str(target)]), []
            dest = folder / "out-run"
            return _cli(["teacher", "--data", str(target), "--out", str(dest), "--preset", "tiny",
                         "--progress", "none"]), [dest]
        return run

    for name in bad_npz_files(Path(tempfile.mkdtemp())):
        for kind in ("load_dataset", "upload", "cli data describe", "cli teacher --data"):
            out.append((f".npz: {name}", kind, npz_case(name, kind)))

    for name in bad_images():
        out.append((f"image: {name}", "upload", lambda folder, name=name: (_call(lambda: read_image_upload(bad_images()[name], "photo.png")), [])))

    def release_case(what: str):
        def run(folder: Path) -> tuple[Outcome, list[Path]]:
            root = folder / "release"
            (root / "images").mkdir(parents=True)
            (root / "responses_repeat_averaged").mkdir()
            resp = root / "responses_repeat_averaged" / "responses_100101.npy"
            with zipfile.ZipFile(root / "images" / "images_100101.zip", "w") as z:
                z.writestr("images_100101/image0001.jpg", b"not a jpeg" if what == "non-JPEG member" else _jpeg())
            if what == "pickled responses":
                resp.write_bytes(_npy(np.array([RunsCode()], dtype=object)))
            elif what == "responses header declares 80 TB":
                resp.write_bytes(_npy_header_only((10**7, 10**6), "<f8"))
            else:
                np.save(resp, np.zeros((2, 1)))
            return _cli(["data", "describe", str(root)]), []
        return run

    for what in ("pickled responses", "responses header declares 80 TB", "non-JPEG member"):
        out.append((f"V4 release: {what}", "cli data describe", release_case(what)))

    out.append(("NWB: not HDF5", "load_dataset", lambda folder: (
        _call(lambda: (folder / "x.nwb").write_bytes(b"not hdf5") and load_dataset(folder / "x.nwb")), [])))
    out.append(("dataset: unknown suffix", "cli data describe", lambda folder: (
        (folder / "x.csv").write_text("a,b") and None) or (_cli(["data", "describe", str(folder / "x.csv")]), [])))
    out.append(("dataset: missing file", "cli teacher --data", lambda folder: (
        _cli(["teacher", "--data", str(folder / "nope.npz"), "--out", str(folder / "out-run"), "--progress", "none"]),
        [folder / "out-run"])))

    return out + RUN_CASES


def tampered_run(folder: Path) -> tuple[Outcome, list[Path]]:
    run = _tiny_run(folder)
    f = run / "students" / "neuron_n0.safetensors"
    f.write_bytes(f.read_bytes()[:-1] + b"\x01")
    return _call(lambda: Run.open(run)), []


def tampered_run_export(folder: Path) -> tuple[Outcome, list[Path]]:
    run = _tiny_run(folder)
    f = run / "students" / "neuron_n0.safetensors"
    f.write_bytes(f.read_bytes()[:-1] + b"\x01")
    dest = folder / "n0.safetensors"
    return _cli(["export", str(run), "--neuron", "n0", "--out", str(dest)]), [dest]


def tampered_export(folder: Path) -> tuple[Outcome, list[Path]]:
    run = _tiny_run(folder)
    exported = export_compact(run, "n0", folder / "n0.safetensors")
    data = bytearray(exported.read_bytes())
    data[-3] ^= 0xFF
    exported.write_bytes(bytes(data))
    return _call(lambda: load_compact(exported)), []


def unknown_neuron(folder: Path) -> tuple[Outcome, list[Path]]:
    run = _tiny_run(folder)
    dest = folder / "n9.safetensors"
    return _cli(["export", str(run), "--neuron", "n9", "--out", str(dest)]), [dest]


def no_manifest(folder: Path) -> tuple[Outcome, list[Path]]:
    (folder / "run").mkdir()
    return _call(lambda: Run.open(folder / "run")), []


def pickled_checkpoint(folder: Path) -> tuple[Outcome, list[Path]]:
    path = folder / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(1), "evil": RunsCode()}, path)
    return _call(lambda: read_resnet_checkpoint(path)), []


def pickled_checkpoint_cli(folder: Path) -> tuple[Outcome, list[Path]]:
    path = folder / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(1), "evil": RunsCode()}, path)
    dest = folder / "out-run"
    return _cli(["teacher", "--data", "twin", "--neurons", "4", "--images", "40", "--preset", "tiny",
                 "--backbone", str(path), "--out", str(dest), "--progress", "none"]), [dest]


def published_with_code(folder: Path) -> tuple[Outcome, list[Path]]:
    path = folder / "compact_model_100101_neuron0.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (36,)})
        pickle.dump(RunsCode(), f, protocol=2)
    return _call(lambda: load_published_arrays(path)), []


def cowley_empty(folder: Path) -> tuple[Outcome, list[Path]]:
    (folder / "weights").mkdir()
    dest = folder / "out-run"
    return _cli(["import-cowley", str(folder / "weights"), "--out", str(dest)]), [dest]


def compress_preset(folder: Path) -> tuple[Outcome, list[Path]]:
    run = _tiny_run(folder)
    before = _files(run)
    outcome = _cli(["compress", str(run), "--preset", "huge"])
    return outcome, [] if _files(run) == before else [run / "(changed)"]


def compress_no_teacher(folder: Path) -> tuple[Outcome, list[Path]]:
    run = _tiny_run(folder)
    before = _files(run)
    outcome = _cli(["compress", str(run), "--progress-format", "none"])
    return outcome, [] if _files(run) == before else [run / "(changed)"]


#: Runs, checkpoints, published models and the compress command, each refused with nothing written.
RUN_CASES: list[tuple[str, str, Callable[[Path], tuple[Outcome, list[Path]]]]] = [
    ("run: a student file changed", "Run.open (app)", tampered_run),
    ("run: a student file changed", "cli export", tampered_run_export),
    ("run: no manifest.json", "Run.open (app)", no_manifest),
    ("run: unknown neuron", "cli export", unknown_neuron),
    ("exported model: bytes flipped", "load_compact", tampered_export),
    ("ResNet checkpoint holding pickled code", "read_resnet_checkpoint", pickled_checkpoint),
    ("ResNet checkpoint holding pickled code", "cli teacher --backbone", pickled_checkpoint_cli),
    ("published model holding pickled code", "load_published_arrays", published_with_code),
    ("V4 release: no models", "cli import-cowley", cowley_empty),
    ("compress --preset huge (no such preset)", "cli compress", compress_preset),
    ("compress a run without a teacher", "cli compress", compress_no_teacher),
]


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def run_all() -> list[dict[str, str]]:
    rows = []
    for what, path, fn in cases():
        with tempfile.TemporaryDirectory(prefix="bad-input-") as tmp:
            folder = Path(tmp)
            try:
                outcome, outputs = fn(folder)
                written = [p for p in outputs if p.exists()]
            except Exception as e:  # the harness itself must not hide a crash
                outcome, written = Outcome(False, f"{type(e).__name__}: {e}"[:160]), []
        rows.append({"input": what, "path": path, "refused": "yes" if outcome.refused else "NO",
                     "message": outcome.message.replace(tmp, "…").replace("\n", " ")[:150],
                     "nothing written": "yes" if not written else "NO: " + ", ".join(p.name for p in written)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (default: aligned text)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = run_all()
    cols = ["input", "path", "refused", "nothing written", "message"]
    if args.markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(r[c].replace("|", "\\|") for c in cols) + " |")
    else:
        width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]}
        print("  ".join(c.ljust(width[c]) for c in cols[:-1]) + "  message")
        for r in rows:
            print("  ".join(r[c].ljust(width[c]) for c in cols[:-1]) + "  " + r["message"])
    bad = [r for r in rows if r["refused"] != "yes" or r["nothing written"] != "yes"]
    print(f"\n{len(rows)} cases, {len(rows) - len(bad)} refused cleanly with nothing written", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
