"""Published Keras compact models -> `CompactStudent`: where they are in the release, and the weight mapping."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from compactvision.cowley.unpickle import load_published_arrays
from compactvision.errors import ArtifactError
from compactvision.models.student import CompactStudent, StudentArch

#: Layers 0-4 of the published models: conv, then four separable convs.
N_LAYERS = 5
N_ARRAYS = 6 + 7 * (N_LAYERS - 1) + 2  # = 36
INPUT_SIZE = (112, 112)
_MODEL_FILE = re.compile(r"^compact_model_(?P<session>[A-Za-z0-9]+)_neuron(?P<k>\d+)\.npy$")


@dataclass(frozen=True)
class PublishedModel:
    """Where one published model lives in the release."""

    session: str
    index: int
    weights: Path
    nums_filters: Path | None

    @property
    def neuron_id(self) -> str:
        """The data layer's name for this neuron (`load_cowley`), so students and responses join on it."""
        return f"{self.session}_neuron{self.index}"


def published_to_student(arrays: Sequence[np.ndarray], neuron_id: str | None = None,
                         source: str | Path | None = None) -> CompactStudent:
    """Map the 36 Keras arrays onto an eval-mode `CompactStudent` computing the same function.

    Keras kernels are HWIO (conv), (kh, kw, C, 1) (depthwise) and (1, 1, Cin,
    Cout) (pointwise); torch wants OIHW, (C, 1, kh, kw) and (Cout, Cin, 1, 1).
    The dense kernel already flattens the map channel-last, as our readout does.
    """
    if len(arrays) != N_ARRAYS:
        raise ArtifactError(f"expected {N_ARRAYS} weight arrays, got {len(arrays)}", source)
    it = iter(arrays)

    def take(name: str, ndim: int) -> np.ndarray:
        a = np.asarray(next(it), dtype=np.float32)
        if a.ndim != ndim:
            raise ArtifactError(f"{name}: expected {ndim} dims, got shape {a.shape}", source)
        return a

    layers: list[dict[str, np.ndarray]] = []
    c_in = 3
    for i in range(N_LAYERS):
        p: dict[str, np.ndarray] = {}
        if i == 0:
            k = take("layer 0 conv kernel", 4)
            if k.shape[2] != c_in:
                raise ArtifactError(f"layer 0 conv kernel {k.shape} does not take RGB input", source)
            p["pointwise.weight"] = k.transpose(3, 2, 0, 1)
        else:
            dw = take(f"layer {i} depthwise kernel", 4)
            pw = take(f"layer {i} pointwise kernel", 4)
            if dw.shape[2] != c_in or dw.shape[3] != 1 or pw.shape[:3] != (1, 1, c_in):
                raise ArtifactError(f"layer {i}: depthwise {dw.shape} / pointwise {pw.shape} do not follow "
                                    f"a {c_in}-channel layer", source)
            p["depthwise.weight"] = dw.transpose(2, 3, 0, 1)
            p["pointwise.weight"] = pw.transpose(3, 2, 0, 1)
        c_out = p["pointwise.weight"].shape[0]
        p["pointwise.bias"] = take(f"layer {i} bias", 1)
        for name in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            p[name] = take(f"layer {i} {name}", 1)
        for name, a in p.items():
            if name.startswith(("bn.", "pointwise.bias")) and a.shape != (c_out,):
                raise ArtifactError(f"layer {i} {name}: shape {a.shape}, expected ({c_out},)", source)
        layers.append(p)
        c_in = c_out
    dense_w, dense_b = take("dense kernel", 2), take("dense bias", 1)
    arch = StudentArch(channels=tuple(int(p["pointwise.weight"].shape[0]) for p in layers),
                       strides=(1, 2, 2, 1, 1), kernel_size=5, input_size=INPUT_SIZE, n_outputs=1,
                       output_names=(neuron_id,) if neuron_id else ())
    h, w = arch.readout_hw
    if dense_w.shape != (h * w * c_in, 1) or dense_b.shape != (1,):
        raise ArtifactError(f"dense kernel {dense_w.shape} / bias {dense_b.shape} do not read a "
                            f"{h}x{w}x{c_in} map into one neuron", source)
    model = CompactStudent(arch)
    state = {f"layers.{i}.{name}": torch.from_numpy(np.ascontiguousarray(a)) for i, p in enumerate(layers)
             for name, a in p.items()}
    state["readout.weight"] = torch.from_numpy(np.ascontiguousarray(dense_w.T))
    state["readout.bias"] = torch.from_numpy(dense_b)
    model.load_state_dict({**model.state_dict(), **state}, strict=True)
    return model.eval()


def read_nums_filters(path: str | Path) -> list[int]:
    """Filters kept per layer as the release records them (a plain int array: no pickle)."""
    path = Path(path)
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ArtifactError(f"not a plain .npy array ({e})", path) from None
    if a.ndim != 1 or a.dtype.kind not in "iu" or len(a) != N_LAYERS:
        raise ArtifactError(f"expected {N_LAYERS} integer filter counts, got {a.dtype} {a.shape}", path)
    return [int(x) for x in a]


def find_published_models(weights_dir: str | Path, sessions: Iterable[str] | None = None) -> list[PublishedModel]:
    """Every published model under `weights_dir` (the release root, compact_models/ or weights_npy/)."""
    weights_dir = Path(weights_dir)
    for candidate in (weights_dir / "compact_models" / "weights_npy", weights_dir / "weights_npy", weights_dir):
        if candidate.is_dir() and any(_MODEL_FILE.match(p.name) for p in candidate.iterdir()):
            npy_dir = candidate
            break
    else:
        raise ArtifactError("no compact_model_<session>_neuron<k>.npy files here or in weights_npy/", weights_dir)
    wanted = None if sessions is None else {str(s) for s in sessions}
    nums_dir = npy_dir.parent / "nums_filters"
    found = []
    for p in npy_dir.iterdir():
        m = _MODEL_FILE.match(p.name)
        if m and (wanted is None or m["session"] in wanted):
            nums = nums_dir / p.name
            found.append(PublishedModel(m["session"], int(m["k"]), p, nums if nums.is_file() else None))
    if wanted is not None and (missing := wanted - {m.session for m in found}):
        raise ArtifactError(f"no published models for session(s) {sorted(missing)}", npy_dir)
    return sorted(found, key=lambda m: (m.session, m.index))


def load_published_model(model: PublishedModel) -> CompactStudent:
    """Read, convert and check one published model against its nums_filters record."""
    student = published_to_student(load_published_arrays(model.weights), model.neuron_id, model.weights)
    if model.nums_filters is not None:
        recorded = read_nums_filters(model.nums_filters)
        if recorded != list(student.arch.channels):
            raise ArtifactError(f"weights have {list(student.arch.channels)} filters per layer but "
                                f"nums_filters records {recorded}", model.weights)
    return student
