"""Reading the release's pickled weight files without letting a pickle run code.

The release stores each neuron's Keras model as a NumPy *object* array of 36
weight arrays, which only a pickle can rebuild. A pickle can call any Python
function, so these files never reach `np.load(allow_pickle=True)`: the
unpickler here resolves exactly the globals NumPy needs to rebuild plain
arrays and refuses everything else before it can run.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from compactvision.data.npz import read_npy_header
from compactvision.errors import ArtifactError

try:  # NumPy >= 2 moved the array machinery to numpy._core; files written by NumPy 1 still name numpy.core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct

#: The only globals a published weights file may name: NumPy's array
#: reconstruction (under its NumPy 1 and NumPy 2 module paths), the ndarray
#: type it rebuilds, and dtype. None of them can run code or touch the system.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild NumPy arrays and nothing else."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # NumPy's own choice, for Python-2-era pickles
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ArtifactError(f"refused to unpickle: the file names {module}.{name}, which is not NumPy array "
                                f"reconstruction; it may try to run code", self.path) from None

    def persistent_load(self, pid: Any) -> Any:
        raise ArtifactError("refused to unpickle: persistent ids are not allowed", self.path)


def load_published_arrays(path: str | Path) -> list[np.ndarray]:
    """The weight arrays (36) of one published model, rebuilt without running arbitrary pickle code."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError("published model file not found", path)
    with open(path, "rb") as f:
        try:
            shape, dtype, _ = read_npy_header(f)
        except ValueError as e:
            raise ArtifactError(f"not a .npy file ({e})", path) from None
        if dtype != np.dtype(object):
            raise ArtifactError(f"expected an object array of weight arrays, got dtype {dtype}", path)
        try:
            obj = _ArrayOnlyUnpickler(f, path).load()
        except ArtifactError:
            raise
        except Exception as e:  # truncated or malformed pickles raise many types
            raise ArtifactError(f"unreadable pickled payload ({type(e).__name__}: {e})", path) from None
    if not isinstance(obj, np.ndarray) or obj.dtype != object or obj.shape != tuple(shape):
        raise ArtifactError(f"payload is not the object array its header promises (shape {shape})", path)
    arrays = list(obj.ravel())
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            raise ArtifactError(f"entry {i} is {type(a).__name__} {getattr(a, 'dtype', '')}, not a float array", path)
    return arrays
