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
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from compactvision.errors import ArtifactError

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


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    """sha256 of every file under `run_dir` except the manifest and temp files."""
    run_dir = Path(run_dir)
    out = {}
    for p in sorted(run_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp") and not p.name.startswith("."):
            out[p.relative_to(run_dir).as_posix()] = sha256_file(p)
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
