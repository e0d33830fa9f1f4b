"""The run directory: `manifest.json` + safetensors weights + architecture JSON.

One artifact format for every stage. Nothing here unpickles: weights are
safetensors, everything else is JSON, and the manifest records the sha256 of
every file so a corrupt or tampered file is caught on load. All writes go to a
temporary file first and are renamed into place, so a killed process never
leaves half a file behind.

Layout::

    run/
      manifest.json   schema, config, seeds, metrics, package versions, sha256 of every file
      data.json       which images and neurons, splits
      teacher/        *.safetensors + architecture json
      students/       neuron_<id>.safetensors + architecture json
      history/        pruning curves, training curves (json)

One neuron's student also travels alone: `export_compact` writes a single
safetensors file whose metadata carries its architecture, provenance, metrics
and a sha256 of its own contents, and `load_compact` refuses it if any of that
has changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from compactvision import __version__
from compactvision.errors import ArtifactError
from compactvision.hashing import sha256_file
from compactvision.models.student import CompactStudent, StudentArch

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


# ----------------------------------------------------------------- atomic I/O
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def atomic_write_npy(path: str | Path, array: Any) -> Path:
    """One array as a `.npy` file (no pickled objects), atomically."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError("file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"not valid JSON ({e})", path) from None


# ------------------------------------------------------------ safetensors I/O
def save_weights(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Save tensors as safetensors, atomically. `metadata` values must be strings."""
    from safetensors.torch import save

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(clean, metadata=dict(metadata or {})))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file; any parse failure becomes an ArtifactError naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtifactError("weights file not found", path)
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise ArtifactError(f"not a readable safetensors file ({e})", path) from None
    return tensors, meta


# ------------------------------------------------------------------ manifests
def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("compactvision", "torch", "numpy", "safetensors", "captum", "streamlit", "plotly"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def file_hashes(run_dir: str | Path) -> dict[str, str]:
    """sha256 of every file under `run_dir` except the manifest, temp files and hidden folders.

    Hidden entries (a leading dot, e.g. `.cache/` with the distillation labels
    and training checkpoints) are regenerable intermediates, not the run.
    """
    run_dir = Path(run_dir)
    out = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir)
        if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp") and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = sha256_file(p)
    return out


def write_manifest(run_dir: str | Path, *, kind: str, config: Mapping[str, Any], metrics: Mapping[str, Any] | None = None,
                   seed: int | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """(Re)write `manifest.json`, hashing every file currently in the run."""
    run_dir = Path(run_dir)
    previous = read_json(run_dir / MANIFEST) if (run_dir / MANIFEST).exists() else {}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": previous.get("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        "config": dict(config),
        "seed": seed,
        "metrics": dict(metrics or {}),
        "versions": package_versions(),
        "files": file_hashes(run_dir),
    }
    if extra:
        manifest.update(extra)
    atomic_write_json(run_dir / MANIFEST, manifest)
    return manifest


def read_manifest(run_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read a manifest; with `verify`, check the schema and every recorded hash."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError("run directory not found", run_dir)
    manifest = read_json(run_dir / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"unknown manifest schema {manifest.get('schema_version') if isinstance(manifest, dict) else '?'}", run_dir / MANIFEST)
    if verify:
        verify_files(run_dir, manifest)
    return manifest


def verify_files(run_dir: str | Path, manifest: Mapping[str, Any], only: list[str] | None = None) -> None:
    """Raise ArtifactError if a recorded file is missing or its hash differs."""
    run_dir = Path(run_dir)
    for rel, digest in manifest.get("files", {}).items():
        if only is not None and rel not in only:
            continue
        p = run_dir / rel
        if not p.is_file():
            raise ArtifactError("file listed in manifest is missing", p)
        if sha256_file(p) != digest:
            raise ArtifactError("sha256 does not match the manifest: the file is corrupt or was modified", p)


# ------------------------------------------------------------------ students
# One compact model per neuron: students/neuron_<id>.safetensors carries the
# weights with the architecture JSON in its metadata, and neuron_<id>.json
# repeats the architecture (plus whatever the stage adds, e.g. metrics) for
# tools that should not have to parse safetensors headers.
STUDENTS = "students"
_NEURON_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_neuron_id(neuron_id: str) -> str:
    neuron_id = str(neuron_id)
    if not _NEURON_ID.match(neuron_id):
        raise ArtifactError(f"neuron id {neuron_id!r} must be letters, digits, '_', '.' or '-' (it names a file)")
    return neuron_id


def student_paths(run_dir: str | Path, neuron_id: str) -> tuple[Path, Path]:
    """(weights, architecture json) of one neuron's student in `run_dir`."""
    stem = Path(run_dir) / STUDENTS / f"neuron_{_check_neuron_id(neuron_id)}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_student(model: CompactStudent, run_dir: str | Path, neuron_id: str, extra: Mapping[str, Any] | None = None) -> Path:
    """Write one neuron's student; returns the safetensors path.

    `extra` (JSON-serialisable, e.g. ``{"metrics": {"r_heldout": 0.7}}``) goes
    into the sidecar JSON; `export_compact` copies its "metrics" entry into the
    exported file. The manifest is not touched: the stage that writes a run
    rewrites it once, after all its files are in place.
    """
    weights, sidecar = student_paths(run_dir, neuron_id)
    arch_json = model.arch.to_json()
    save_weights(weights, model.state_dict(), metadata={"architecture": arch_json, "neuron_id": str(neuron_id)})
    record = {"neuron_id": str(neuron_id), "architecture": json.loads(arch_json),
              "n_parameters": model.n_parameters(), "macs": model.macs(), **dict(extra or {})}
    atomic_write_json(sidecar, record)
    return weights


def _build_student(tensors: Mapping[str, torch.Tensor], arch_json: str | None, path: Path) -> CompactStudent:
    if not arch_json:
        raise ArtifactError("no 'architecture' entry in the metadata: not a compactvision student", path)
    try:
        arch = StudentArch.from_json(arch_json)
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"unreadable architecture in the metadata ({e})", path) from None
    model = CompactStudent(arch)
    try:
        model.load_state_dict(dict(tensors), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ArtifactError(f"weights do not fit the recorded architecture ({' '.join(first[:3])})", path) from None
    return model.eval()


def load_student(run_dir: str | Path, neuron_id: str) -> CompactStudent:
    """Load one neuron's student in eval mode, checking its hash when the manifest lists it."""
    run_dir = Path(run_dir)
    weights, _ = student_paths(run_dir, neuron_id)
    if (run_dir / MANIFEST).exists():
        manifest = read_manifest(run_dir, verify=False)
        rel = weights.relative_to(run_dir).as_posix()
        if rel in manifest.get("files", {}):
            verify_files(run_dir, manifest, only=[rel])
    tensors, meta = load_weights(weights)
    return _build_student(tensors, meta.get("architecture"), weights)


def list_students(run_dir: str | Path) -> list[str]:
    """Neuron ids with a student in `run_dir`, in natural order (n2 before n10)."""
    folder = Path(run_dir) / STUDENTS
    ids = [p.name[len("neuron_"):-len(".safetensors")] for p in folder.glob("neuron_*.safetensors")]
    return sorted(ids, key=_natural_key)


def _natural_key(s: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t]


# ------------------------------------------------------------ compact export
# One file per neuron that needs nothing else: safetensors whose metadata holds
# the architecture, the neuron id, where it came from, its metrics, and a
# sha256 over the tensors AND the rest of the metadata. Hashing inside the file
# is what catches tampering once the file has left its run's manifest behind.
COMPACT_FORMAT = "compactvision-compact-model"
COMPACT_FORMAT_VERSION = "1"
_DIGEST_KEY = "sha256"


def compact_digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) and every metadata entry but the digest itself."""
    h = hashlib.sha256()
    for key in sorted(k for k in metadata if k != _DIGEST_KEY):
        h.update(json.dumps([key, metadata[key]]).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def export_compact(run_dir: str | Path, neuron_id: str, out_path: str | Path) -> Path:
    """Write one neuron's student as a single self-describing, self-verifying file."""
    run_dir = Path(run_dir)
    model = load_student(run_dir, neuron_id)
    weights, sidecar = student_paths(run_dir, neuron_id)
    record = read_json(sidecar) if sidecar.exists() else {}
    manifest = read_manifest(run_dir, verify=False) if (run_dir / MANIFEST).exists() else {}
    per_neuron = manifest.get("metrics", {}).get("per_neuron", {})
    metrics = {**record.get("metrics", {}), **per_neuron.get(str(neuron_id), {})}
    source = {"run": run_dir.name, "kind": manifest.get("kind"), "created": manifest.get("created"),
              "weights_sha256": sha256_file(weights)}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": COMPACT_FORMAT,
        "format_version": COMPACT_FORMAT_VERSION,
        "architecture": model.arch.to_json(),
        "neuron_id": str(neuron_id),
        "source_run": json.dumps(source, sort_keys=True),
        "metrics": json.dumps(metrics, sort_keys=True, default=_json_default),
        "n_parameters": str(model.n_parameters()),
        "compactvision_version": __version__,
    }
    metadata[_DIGEST_KEY] = compact_digest(tensors, metadata)
    return save_weights(out_path, tensors, metadata)


def read_compact_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded metadata of an exported model (architecture, neuron id, source run, metrics)."""
    path = Path(path)
    _, meta = load_weights(path)
    out: dict[str, Any] = dict(meta)
    for key in ("architecture", "source_run", "metrics"):
        if key in out:
            out[key] = json.loads(out[key])
    return out


def load_compact(path: str | Path) -> CompactStudent:
    """Load a file written by `export_compact`, refusing it if its digest does not match."""
    path = Path(path)
    tensors, meta = load_weights(path)
    if meta.get("format") != COMPACT_FORMAT:
        raise ArtifactError(f"not a compactvision compact model (format {meta.get('format')!r})", path)
    if meta.get("format_version") != COMPACT_FORMAT_VERSION:
        raise ArtifactError(f"unsupported compact model version {meta.get('format_version')!r}", path)
    recorded = meta.get(_DIGEST_KEY)
    if not recorded:
        raise ArtifactError("no sha256 in the metadata: cannot check the file is intact", path)
    if compact_digest(tensors, meta) != recorded:
        raise ArtifactError("sha256 of the weights and metadata does not match the one recorded in the file: "
                            "it is corrupt or was modified", path)
    return _build_student(tensors, meta.get("architecture"), path)
