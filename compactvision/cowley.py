"""The published compact models of Cowley et al. (2026), read safely and run as ours.

The release stores each neuron's Keras model as a NumPy *object* array of 36
weight arrays, which only a pickle can rebuild. A pickle can call any Python
function, so we never hand these files to `np.load(allow_pickle=True)`:
`load_published_arrays` unpickles with a loader that resolves exactly the
three globals NumPy needs to rebuild plain arrays and refuses everything else
before it can run.

`published_to_student` maps the Keras layout onto `CompactStudent` (whose
preprocessing, TF-"same" padding and BN epsilon already follow Keras), and
`import_cowley` writes every model into an ordinary run directory, scored on
the held-out half of its session when the release's images and responses are
beside the weights.

Release layout (see the release README)::

    images/images_<session>.zip                       images_<session>/image0001.jpg ...
    responses_repeat_averaged/responses_<session>.npy  (neurons, images)
    compact_models/weights_npy/compact_model_<session>_neuron<k>.npy
    compact_models/nums_filters/compact_model_<session>_neuron<k>.npy
"""
from __future__ import annotations

import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from compactvision.artifacts import STUDENTS, atomic_write_json, save_student, sha256_file, write_manifest
from compactvision.data.formats import Session, load_cowley
from compactvision.errors import ArtifactError, DataError
from compactvision.metrics import bootstrap_median_ci, pearson_r
from compactvision.models.student import CompactStudent, StudentArch
from compactvision.runtime import select_device
from compactvision.train import predict

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

#: Layers 0-4 of the published models: conv, then four separable convs.
N_LAYERS = 5
N_ARRAYS = 6 + 7 * (N_LAYERS - 1) + 2  # = 36
INPUT_SIZE = (112, 112)
_MODEL_FILE = re.compile(r"^compact_model_(?P<session>[A-Za-z0-9]+)_neuron(?P<k>\d+)\.npy$")


# ---------------------------------------------------------- restricted loading
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
    """The 36 weight arrays of one published model, rebuilt without running arbitrary pickle code."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError("published model file not found", path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as e:
            raise ArtifactError(f"not a .npy file ({e})", path) from None
        if dtype != np.dtype(object):
            raise ArtifactError(f"expected an object array of {N_ARRAYS} weight arrays, got dtype {dtype}", path)
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


# ---------------------------------------------------------------- conversion
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


# ---------------------------------------------------------------- evaluation
def release_root_of(weights_dir: str | Path) -> Path | None:
    """The release folder holding images/ and responses beside these weights, if there is one."""
    p = Path(weights_dir).resolve()
    for candidate in (p, *p.parents[:3]):
        if (candidate / "images").is_dir() and (candidate / "responses_repeat_averaged").is_dir():
            return candidate
    return None


def split_halves(n_images: int) -> tuple[slice, slice]:
    """(first half, held-out second half) in image-name order: the paper's protocol."""
    half = n_images // 2
    return slice(0, half), slice(half, n_images)


def session_predictions(model: CompactStudent, images: np.ndarray, device: str | None = None) -> np.ndarray:
    """One student's responses (n_images,) to uint8 N x H x W x C images, in float32 without autocast.

    Runs the BN-folded, channels-last form: the same function, a few times
    faster on CPU; no bf16, since the point is to reproduce the Keras numbers.
    """
    dev = select_device(device)
    fast = model.fused().to(dev, memory_format=torch.channels_last)
    with torch.inference_mode():
        return predict(fast, images, batch_size=64, device=dev, amp=False)[:, 0]


def score_students(students: Mapping[int, CompactStudent], images: np.ndarray, responses: np.ndarray,
                   first_half: bool = True, device: str | None = None) -> dict[int, dict[str, float]]:
    """Pearson r of each single-output student (keyed by its row in `responses`, neurons x images)
    on the held-out half, and optionally on the first half."""
    first, held_out = split_halves(len(images))
    if responses.shape[1] != len(images):
        raise DataError(f"{len(images)} images but responses to {responses.shape[1]}")
    scores = {}
    for k, model in students.items():
        if not 0 <= k < responses.shape[0]:
            raise DataError(f"neuron {k} has no row in the {responses.shape[0]}-neuron responses")
        if model.arch.n_outputs != 1:
            raise ArtifactError(f"the student of neuron {k} has {model.arch.n_outputs} outputs, expected one")
        y = session_predictions(model, images if first_half else images[held_out], device)
        y_held = y[held_out] if first_half else y
        scores[k] = {"r_heldout": float(pearson_r(y_held, responses[k, held_out])[0])}
        if first_half:
            scores[k]["r_first_half"] = float(pearson_r(y[first], responses[k, first])[0])
    return scores


def load_session(release_root: str | Path, session: str) -> Session:
    """One session of the release through the data layer (repeat-averaged responses are what the paper scores)."""
    return load_cowley(release_root, [session]).sessions[0]


def evaluate_published(release_root: str | Path, session: str, first_half: bool = True,
                       device: str | None = None) -> dict[str, Any]:
    """Per-neuron Pearson r of the published models of `session` on its held-out (second) half.

    Also on the first half (the one the teacher's readout was fit on) unless
    `first_half` is False, which halves the work.
    """
    models = {m.index: load_published_model(m) for m in find_published_models(release_root, [session])}
    s = load_session(release_root, session)
    scores = score_students(models, s.images, s.mean_responses(), first_half=first_half, device=device)
    return session_summary(session, scores, {k: m.n_parameters() for k, m in models.items()})


def session_summary(session: str, scores: Mapping[int, Mapping[str, float]], n_parameters: Mapping[int, int]) -> dict[str, Any]:
    """Per-neuron lists and the medians the paper reports, for one session."""
    ks = sorted(scores)
    out: dict[str, Any] = {"session": session, "neurons": ks,
                           "median_n_parameters": float(np.median([n_parameters[k] for k in ks]))}
    for key in ("r_heldout", "r_first_half"):
        if all(key in scores[k] for k in ks):
            r = np.array([scores[k][key] for k in ks])
            out[key] = r.tolist()
            out[f"median_{key}"] = float(np.median(r))
    out["median_r2_heldout"] = float(np.median(np.square(out["r_heldout"])))
    return out


# -------------------------------------------------------------------- import
def import_cowley(weights_dir: str | Path, out_run: str | Path, sessions: Iterable[str] | None = None,
                  evaluate: bool = True, progress: bool = False, device: str | None = None) -> Path:
    """Convert published models into a run directory (manifest kind "imported-cowley").

    Students are named as the data layer names the neurons ("<session>_neuron<k>").
    With `evaluate` and the release's images and responses beside the weights,
    each neuron's held-out and first-half r go into its sidecar JSON, and the
    manifest's metrics get per-session medians plus the same "compression"
    summary (medians with bootstrap CIs) a compressed run records.
    """
    from tqdm.auto import tqdm

    out_run = Path(out_run)
    models = find_published_models(weights_dir, sessions)
    if (out_run / STUDENTS).is_dir() and any((out_run / STUDENTS).iterdir()):
        raise ArtifactError("output run already has students; choose an empty folder", out_run)
    root = release_root_of(models[0].weights.parent) if evaluate else None
    by_session: dict[str, list[PublishedModel]] = {}
    for m in models:
        by_session.setdefault(m.session, []).append(m)

    records: dict[str, dict[str, Any]] = {}
    session_metrics: dict[str, Any] = {}
    data: dict[str, Any] = {"source": "Cowley et al. (2026) V4 release, published compact models", "sessions": {}}
    bar = tqdm(total=len(models), desc="import-cowley", unit="model", disable=not progress)
    for session, group in by_session.items():
        data["sessions"][session] = {"neurons": [m.neuron_id for m in group]}
        has_data = root is not None and (root / "images" / f"images_{session}.zip").is_file()
        if has_data:
            recording = load_session(root, session)
            responses = recording.mean_responses()
            first, held_out = split_halves(recording.n_images)
            data["sessions"][session].update(n_images=recording.n_images, first_half=[first.start, first.stop],
                                             held_out=[held_out.start, held_out.stop])
        scores: dict[int, dict[str, float]] = {}
        n_parameters: dict[int, int] = {}
        for m in group:
            student = load_published_model(m)
            n_parameters[m.index] = student.n_parameters()
            record: dict[str, Any] = {"n_parameters": n_parameters[m.index], "macs": student.macs()}
            extra: dict[str, Any] = {"session": session, "neuron_index": m.index,
                                     "source": {"file": m.weights.name, "sha256": sha256_file(m.weights)}}
            if has_data:
                scores[m.index] = score_students({m.index: student}, recording.images, responses,
                                                 device=device)[m.index]
                extra["metrics"] = scores[m.index]
                record.update(scores[m.index])
            save_student(student, out_run, m.neuron_id, extra=extra)
            records[m.neuron_id] = record
            bar.update()
        if scores:
            summary = session_summary(session, scores, n_parameters)
            session_metrics[session] = {k: summary[k] for k in ("median_r_heldout", "median_r2_heldout",
                                                                  "median_r_first_half", "median_n_parameters")}
    bar.close()
    atomic_write_json(out_run / "data.json", data)
    write_manifest(out_run, kind="imported-cowley",
                   config={"weights_dir": str(Path(weights_dir)), "sessions": sorted(by_session),
                           "evaluated": bool(session_metrics)},
                   metrics={"per_neuron": {k: {m: v for m, v in r.items() if m.startswith("r_")} for k, r in records.items()
                                           if "r_heldout" in r},
                            "sessions": session_metrics, "compression": _summarise(records)})
    return out_run


def _summarise(records: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Medians with bootstrap CIs over neurons, in the shape `compress.summarise_run` writes."""
    out: dict[str, Any] = {"n_students": len(records)}
    for key in ("n_parameters", "macs", "r_heldout", "r_first_half"):
        vals = np.array([r[key] for r in records.values() if key in r], float)
        if len(vals):
            med, lo, hi = bootstrap_median_ci(vals)
            out[key] = {"median": med, "ci": [lo, hi], "n": int(len(vals))}
    return out
