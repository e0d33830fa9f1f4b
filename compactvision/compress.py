"""`compress`: distil the teacher into students, then prune one compact model per neuron.

Steps, each resumable:
1. label the distillation stream with the teacher (`distill.LabelCache`, on disk);
2. fit the starting student(s): by default one *shared* multi-neuron student
   whose per-neuron copies start every neuron's compression (strategy
   "shared"); or a fresh one-output student per neuron (strategy "per_neuron");
3. for every neuron, as an independent task: fit its copy to its own labels,
   prune it layer by layer (`prune.prune_neuron`) with fine-tuning after each
   cut, score it, and write `students/neuron_<id>.*` and
   `history/prune_<id>.json` atomically. A neuron whose history file exists is
   done and is never redone, so a killed or repeated job picks up where it was.

Tasks run in local processes by default or as Ray tasks (`backend="ray"`);
each task is a pure function of (run, neuron, config), so both backends give
identical students for the same seeds.
"""
from __future__ import annotations

import copy
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from compactvision.artifacts import (MANIFEST, atomic_write_json, load_weights, read_json, read_manifest, save_student,
                                     save_weights, write_manifest)
from compactvision.distill import LabelCache, StreamConfig
from compactvision.errors import ArtifactError
from compactvision.models.student import CompactStudent, StudentArch, select_channels
from compactvision.models.bank import StudentBank
from compactvision.progress import Progress, silent
from compactvision.runtime import cpu_count, release_freed_memory, select_device, torch_threads
from compactvision.rundir import (CACHE_DIR, SHARED_STUDENT, heldout_data, history_path, neuron_ids_of,
                                  teacher_image_size, training_images)
from compactvision.prune import PruneConfig, prune_neuron, r_squared, responses
from compactvision.inputs import as_model_input
from compactvision.metrics import pearson_r, summarise
from compactvision.models.teacher import load_teacher
from compactvision.distributed import ray_tasks
from compactvision.train import TrainConfig, fit, predict


@dataclass(frozen=True)
class CompressConfig:
    """Everything that decides the students; stored in the manifest."""

    stream: StreamConfig = field(default_factory=StreamConfig)
    student_channels: tuple[int, ...] = (100, 100, 100, 100, 100)  # unpruned, as in the reference
    strategy: str = "shared"        # "shared" multi-neuron student then per-neuron copies, or "per_neuron"
    # How a fresh student's readout (shared or per neuron) is fitted: "dense" (the reference's), or "factorised"
    # (rank one per neuron, where x what, made dense again before pruning: far fewer weights to learn from the
    # few thousand images a CPU can afford).
    readout_form: str = "dense"
    readout_rank: int = 1           # the factorised form's rank: terms of where x what per neuron
    shared_epochs: int = 8
    neuron_epochs: int = 3          # per-neuron fit of the (copied or fresh) student; 0: a copy goes straight to pruning
    neuron_images: int = 8192       # labels per neuron fit, drawn from the stream
    finetune_epochs: int = 1        # after each pruned layer
    finetune_images: int = 4096
    final_epochs: int = 2           # retraining of the fully pruned network
    # Its labels and rate (None: the neuron-fit images, and the rate of every other retraining). A pruned model is
    # small, so passes over the whole stream are cheap, and they win back what the cuts cost (`pipeline.STUDENTS_112`).
    final_images: int | None = None
    final_lr: float | None = None
    # Retraining of the pruned network before each later visit of the layers (`PruneConfig.rounds`), for this many
    # epochs on the final retraining's images at its rate (0: none): it wins back the budget the first visit's cuts
    # spent (see `prune_neuron`).
    round_epochs: int = 0
    # Slimming after the per-neuron fit (`TrainConfig.channel_l1`, `scale_lr_ratio`; 0: none): a copy of a
    # shared student carries every neuron's channels, and those this neuron does not need go to zero before
    # pruning. The fitted student is trained on with the L1 at this strength, then at half and a quarter of it,
    # and the first that keeps `prune.threshold` of the fit's r² on the probe goes on (none: the fit itself).
    neuron_channel_l1: float = 0.0
    neuron_scale_lr_ratio: float = 40.0
    # Retraining a pruned copy (each fine-tune and the final one): its learning rate (None: `lr`), and whether
    # its BatchNorm statistics stay as they were (see `TrainConfig.frozen_bn`).
    retrain_lr: float | None = None
    retrain_frozen_bn: bool = False
    batch_size: int = 64
    lr: float = 2e-3
    probe_images: int = 512         # images on which filter contributions are measured
    score_images: int = 512         # validation images that score every step of a neuron's pruning path
    prune: PruneConfig = field(default_factory=PruneConfig)
    seed: int = 0
    threads_per_task: int = 1
    # Students train on NHWC tensors: speed only, the arithmetic is the same up to its order. On 2 CPU cores at
    # 112 px a 64-filter student trains 1.8x faster and a pruned one 1.2x (`benchmarks/memory_layout.py`).
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in ("shared", "per_neuron"):
            raise ValueError(f"strategy must be 'shared' or 'per_neuron', got {self.strategy!r}")
        if self.readout_form not in ("dense", "factorised"):
            raise ValueError(f"readout_form must be 'dense' or 'factorised', got {self.readout_form!r}")
        if self.readout_rank < 1:
            raise ValueError(f"readout_rank must be at least 1, got {self.readout_rank}")
        if self.neuron_channel_l1 < 0 or (self.neuron_channel_l1 > 0 and self.neuron_epochs < 1):
            raise ValueError("slimming (neuron_channel_l1 > 0) trains the per-neuron fit on: it needs neuron_epochs >= 1")
        if self.round_epochs < 0 or (self.round_epochs > 0 and self.prune.rounds < 2):
            raise ValueError("round_epochs retrains the pruned network between visits of the layers: it needs "
                             f"prune.rounds >= 2 (got round_epochs={self.round_epochs}, rounds={self.prune.rounds})")
        if ((self.final_images is not None and self.final_images < 1)
                or (self.final_lr is not None and self.final_lr <= 0)):
            raise ValueError(f"final_images and final_lr must be positive (got {self.final_images}, {self.final_lr})")
        if self.neuron_epochs < (1 if self.strategy == "per_neuron" else 0):
            raise ValueError("a fresh per-neuron student needs neuron_epochs >= 1 (a shared student's copy may take 0)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CompressConfig":
        """The inverse of `to_dict`; a key this version does not know is refused, never dropped."""
        d = dict(d)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown compression settings {sorted(unknown)}")
        d["stream"] = _nested(StreamConfig, d.get("stream", {}), "stream")
        d["prune"] = _nested(PruneConfig, d.get("prune", {}), "prune")
        if "student_channels" in d:
            d["student_channels"] = tuple(d["student_channels"])
        return cls(**d)


def _nested(kind: type, d: Mapping[str, Any], name: str) -> Any:
    unknown = set(d) - {f.name for f in fields(kind)}
    if unknown:
        raise ValueError(f"unknown {name} settings {sorted(unknown)}")
    return kind(**d)


# ----------------------------------------------------------------- helpers
def _train_config(config: CompressConfig, epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=config.batch_size, lr=config.lr, weight_decay=1e-4,
                       patience=max(2, epochs), seed=seed, amp=True, channels_last=config.channels_last)


def _task_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, 7919, index]).generate_state(1)[0] % (2**31))


def _stream(cache: LabelCache, indices: np.ndarray, batch: int, columns: np.ndarray | None, seed: int):
    """Epoch -> batches from the on-disk cache; the same epoch gives the same batches (exact resume)."""
    return lambda epoch: cache.batches(indices, batch, columns=columns, seed=seed * 1000 + epoch)


def _val_arrays(cache: LabelCache, val_idx: np.ndarray, columns: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    labels = cache.labels[val_idx] if columns is None else cache.labels[val_idx][:, columns]
    return np.asarray(cache.images[val_idx]), np.asarray(labels, np.float32)


def _r(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.asarray(pearson_r(np.asarray(pred, np.float64).reshape(1, -1), np.asarray(target, np.float64).reshape(1, -1)))[0])


# ---------------------------------------------------------- shared student
class AllSessions(torch.nn.Module):
    """The teacher seen as one model with every session's neurons as columns."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.predict_all_sessions(x)


def build_label_cache(run_dir: str | Path, config: CompressConfig, progress: Progress = silent,
                      device: str | None = None) -> LabelCache:
    run_dir = Path(run_dir)
    teacher = load_teacher(run_dir)
    if isinstance(teacher, StudentBank):  # published models (re-compression): label with their BN-folded form
        teacher = teacher.fused()
    own = training_images(run_dir)
    return LabelCache.build(run_dir / CACHE_DIR / "labels", AllSessions(teacher), teacher.neuron_ids, config.stream,
                            own_images=own, device=device,
                            progress=progress)


def fit_shared_student(run_dir: str | Path, config: CompressConfig, cache: LabelCache, progress: Progress = silent,
                       device: str | None = None, resume: bool = True) -> CompactStudent:
    """One student for all neurons, fitted to the teacher's labels (checkpointed, resumable)."""
    run_dir = Path(run_dir)
    out = run_dir / SHARED_STUDENT
    arch = StudentArch(channels=config.student_channels, input_size=(config.stream.image_size,) * 2,
                       n_outputs=len(cache.neuron_ids), output_names=tuple(cache.neuron_ids))
    if out.exists():
        return load_shared_student(run_dir)
    torch.manual_seed(config.seed)
    model = CompactStudent(arch)
    train_idx, val_idx = cache.split()
    stats = _label_stats(cache, train_idx, None)
    if config.readout_form == "factorised":
        model.factorise_readout(bias=torch.from_numpy(stats[0]), rank=config.readout_rank)
    tc = replace(_train_config(config, config.shared_epochs, config.seed), device=device)
    result = fit(model, _stream(cache, train_idx, config.batch_size, None, config.seed),
                 _val_arrays(cache, val_idx, None), tc, checkpoint_dir=run_dir / CACHE_DIR / "shared", resume=resume,
                 progress=lambda s, d, t: progress("distill", d, t), target_stats={"": stats})
    model.dense_readout()
    # Its epochs' time, validation included and summed over resumes, is shared by every neuron:
    # a per-neuron cost must count it.
    seconds = sum(epoch["seconds"] for epoch in result.history)
    save_weights(out, model.state_dict(), metadata={"architecture": model.arch.to_json(), "seconds": repr(seconds)})
    return model.eval()


def load_shared_student(run_dir: str | Path) -> CompactStudent:
    """The run's fitted shared student (every neuron a column), in eval mode."""
    tensors, meta = load_weights(Path(run_dir) / SHARED_STUDENT)
    model = CompactStudent(StudentArch.from_json(meta["architecture"]))
    model.load_state_dict(tensors)
    return model.eval()


def stage_seconds(run_dir: str | Path, cache: LabelCache) -> dict[str, float]:
    """Seconds the neurons' shared stages took: labelling, and the shared student where there is one.

    Stages written before their time was recorded are left out rather than guessed.
    """
    out = {} if cache.seconds is None else {"labels": cache.seconds}
    shared = Path(run_dir) / SHARED_STUDENT
    if shared.exists():
        seconds = load_weights(shared)[1].get("seconds")
        if seconds is not None:
            out["shared_student"] = float(seconds)
    return out


def _label_stats(cache: LabelCache, idx: np.ndarray, columns: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    sel = idx[:: max(1, len(idx) // 4096)]
    y = np.asarray(cache.labels[np.sort(sel)], np.float64)
    if columns is not None:
        y = y[:, columns]
    std = y.std(0)
    return y.mean(0).astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


# ------------------------------------------------------------ one neuron
def slim_to_threshold(fitted: CompactStudent, slimmed: Callable[[float], CompactStudent], probe: torch.Tensor,
                      labels: np.ndarray, l1: float, threshold: float, tries: int = 3) -> tuple[CompactStudent, float]:
    """The sparsest slimmed version of `fitted` that keeps `threshold` of its r² on the probe, and its L1.

    Slimming zeroes channels whatever they cost, so its strength is searched,
    not fixed: `slimmed(l1)` at `l1`, then half and a quarter of it. The first
    that keeps the budget goes on; if none does, `fitted` itself (L1 0). A
    neuron whose teacher response is simple loses almost nothing at full
    strength; one with a rich response needs the weaker L1 or none.
    """
    floor = threshold * r_squared(responses(fitted, probe), labels)
    for k in range(tries):
        m = slimmed(l1 / 2 ** k)
        if r_squared(responses(m, probe), labels) >= floor:
            return m, l1 / 2 ** k
    return fitted, 0.0


def compress_neuron(run_dir: str | Path, index: int, config_dict: Mapping[str, Any],
                    device: str | None = None) -> dict[str, Any]:
    """Distil and prune neuron `index` of the run; writes its student and history. Pure in its inputs.

    Fits and pruning run on `device` (default: CUDA where there is one, as on
    a Ray node that picks its own).
    """
    run_dir = Path(run_dir)
    config = CompressConfig.from_dict(config_dict)
    neuron_id = neuron_ids_of(run_dir)[index]
    done = history_path(run_dir, neuron_id)
    if done.exists():
        return read_json(done)
    # One thread per task: tasks run side by side, and the result must not depend on the pool.
    with torch_threads(config.threads_per_task):
        return _compress_neuron(run_dir, index, neuron_id, config, done, select_device(device))


def _compress_neuron(run_dir: Path, index: int, neuron_id: str, config: CompressConfig, done: Path,
                     device: torch.device) -> dict[str, Any]:
    seed = _task_seed(config.seed, index)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    cache = LabelCache(run_dir / CACHE_DIR / "labels")
    col = np.array([index])
    train_idx, val_idx = cache.split()
    val_idx = val_idx[: config.score_images]
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(train_idx, size=min(config.neuron_images, len(train_idx)), replace=False))
    tune_idx = np.sort(rng.choice(train_idx, size=min(config.finetune_images, len(train_idx)), replace=False))
    probe_idx = np.sort(rng.choice(train_idx, size=min(config.probe_images, len(train_idx)), replace=False))
    final_idx = fit_idx if config.final_images is None else \
        np.sort(rng.choice(train_idx, size=min(config.final_images, len(train_idx)), replace=False))
    val = _val_arrays(cache, val_idx, col)
    stats = {"": _label_stats(cache, train_idx, col)}

    if config.strategy == "shared":
        shared = load_shared_student(run_dir)
        model = select_channels(shared, [range(c) for c in shared.arch.channels], outputs=[index])
    else:
        model = CompactStudent(StudentArch(channels=config.student_channels, input_size=(config.stream.image_size,) * 2,
                                           n_outputs=1, output_names=(neuron_id,)))
        if config.readout_form == "factorised":
            model.factorise_readout(bias=float(stats[""][0][0]), rank=config.readout_rank)

    def train(m: CompactStudent, idx: np.ndarray, tc: TrainConfig) -> CompactStudent:
        """Fit `m` on images `idx` (its readout at the fitted rank, the stream seeded by `tc.seed`), back dense.

        The model stays on `device` between fits: pruning scores its cuts there
        too, so a GPU run does not wait on the CPU between fits.
        """
        m.low_rank_readout(config.readout_rank)
        fit(m, _stream(cache, idx, config.batch_size, col, tc.seed), val, replace(tc, device=str(device)),
            progress=False, target_stats=stats)
        release_freed_memory()  # each fit's blocks differ in size from the last: a kept heap must not hoard them
        return m.dense_readout()

    if config.neuron_epochs > 0:
        train(model, fit_idx, _train_config(config, config.neuron_epochs, seed))
    else:
        model.to(device).dense_readout()  # an unfitted copy too: pruning measures a dense model
    probe = as_model_input(np.asarray(cache.images[probe_idx])).to(device)
    labels = np.asarray(cache.labels[probe_idx][:, index], np.float64)
    fitted, slim_l1 = model, 0.0
    if config.neuron_channel_l1 > 0:
        def slimmed(l1: float) -> CompactStudent:
            tc = replace(_train_config(config, config.neuron_epochs, seed + 7), channel_l1=l1,
                         scale_lr_ratio=config.neuron_scale_lr_ratio)
            return train(copy.deepcopy(fitted), fit_idx, tc).eval()
        model, slim_l1 = slim_to_threshold(fitted, slimmed, probe, labels, config.neuron_channel_l1,
                                           config.prune.threshold)
    heldout = _heldout_scorer(run_dir, neuron_id)

    def evaluate(m: CompactStudent) -> dict[str, float]:
        return {"r_teacher": _r(predict(m, val[0]), val[1]), **heldout(m)}

    def refit(m: CompactStudent, idx: np.ndarray, epochs: int, task_seed: int,
              lr: float | None = None) -> CompactStudent:
        """Retrain `m` on images `idx`, keeping it as it was if retraining made it worse on validation.

        A short fit from a fresh optimiser can first disturb a network (its BN
        statistics move with small batches); judged on validation images, the
        better of the two goes on, so the next cut's budget is not spent on
        that. A readout still of the fitted rank (or less) is retrained at it.
        `lr` is the rate (None: the retraining rate).
        """
        if epochs <= 0:
            return m.eval()
        before = copy.deepcopy(m.state_dict())
        r_before = _r(predict(m.eval(), val[0]), val[1])
        train(m, idx, replace(_train_config(config, epochs, task_seed), lr=lr or config.retrain_lr or config.lr,
                              frozen_bn=config.retrain_frozen_bn))
        if not _r(predict(m.eval(), val[0]), val[1]) >= r_before:
            m.load_state_dict(before)
        return m.eval()

    def finetune(m: CompactStudent, layer: int) -> CompactStudent:
        return refit(m, tune_idx, config.finetune_epochs, seed + layer + 1)

    def recover(m: CompactStudent) -> CompactStudent:
        # Between visits the pruned network is retrained as the final one is: on its images, at its rate.
        return refit(m, final_idx, config.round_epochs, seed + 98, config.final_lr)

    model, path = prune_neuron(model.eval(), probe, labels, config.prune, finetune=finetune, evaluate=evaluate,
                               reference=fitted if model is not fitted else None,
                               recover=recover if config.round_epochs > 0 else None)
    if config.final_epochs > 0:
        # The paper retrains the rebuilt network; the last path point records the result.
        model = refit(model, final_idx, config.final_epochs, seed + 99, config.final_lr)
        scores = evaluate(model)
        path[-1].accuracy = scores.pop("r_teacher")
        path[-1].scores = scores
    metrics = {"r_teacher": path[-1].accuracy, "r_teacher_unpruned": path[0].accuracy, "slimming_l1": slim_l1,
               "n_parameters": model.n_parameters(), "channels": list(model.arch.channels), "macs": model.macs(),
               **path[-1].scores}
    metrics["seconds"] = time.perf_counter() - t0
    record = {"neuron_id": neuron_id, "index": index, "metrics": metrics, "path": [s.to_dict() for s in path]}
    save_student(model, run_dir, neuron_id, extra={"metrics": metrics})
    atomic_write_json(done, record)  # written last: its presence marks the neuron done
    return record


def _heldout_scorer(run_dir: Path, neuron_id: str) -> Callable[[CompactStudent], dict[str, float]]:
    """model -> its r on the run's held-out images: against the measured responses and, for the twin, the truth."""
    data = heldout_data(run_dir)
    for s in (data or {"sessions": {}})["sessions"].values():
        if neuron_id in s["neuron_ids"]:
            j = s["neuron_ids"].index(neuron_id)

            def score(model: CompactStudent) -> dict[str, float]:
                pred = predict(model, s["images"])[:, 0]
                out = {"r_heldout": _r(pred, s["responses"][j])}
                if "truth" in s:
                    out["r_truth"] = _r(pred, s["truth"][j])
                return out

            return score
    return lambda model: {}


# ------------------------------------------------------------- the stage
def compress_run(run_dir: str | Path, config: CompressConfig = CompressConfig(), backend: str = "local",
                 workers: int | None = None, address: str | None = None, neurons: Sequence[int] | None = None,
                 progress: Progress = silent, device: str | None = None) -> dict[str, Any]:
    """Compress every neuron (or `neurons`) of a teacher run in place; returns the summary metrics."""

    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).exists():
        raise ArtifactError("not a run directory (no manifest.json)", run_dir)
    manifest = read_manifest(run_dir, verify=False)
    # Students see images at the size the teacher was fitted on, whatever the preset says.
    size = teacher_image_size(run_dir)
    if config.stream.image_size != size:
        config = replace(config, stream=replace(config.stream, image_size=size))
    guard_settings(run_dir, config, manifest)
    cache = build_label_cache(run_dir, config, progress, device)
    if config.strategy == "shared":
        fit_shared_student(run_dir, config, cache, progress, device)
    ids = neuron_ids_of(run_dir)
    todo = list(range(len(ids))) if neurons is None else list(neurons)
    cfg = config.to_dict()
    workers = workers or default_workers(config)
    done = sum(history_path(run_dir, ids[i]).exists() for i in todo)
    progress("compress", done, len(todo))
    pending = [i for i in todo if not history_path(run_dir, ids[i]).exists()]
    release_freed_memory()  # what the shared stages kept, before the workers need it
    for _ in run_tasks(run_dir, pending, cfg, backend=backend, workers=workers, address=address, device=device):
        done += 1
        progress("compress", done, len(todo))
    summary = {**summarise_run(run_dir), "stage_seconds": stage_seconds(run_dir, cache)}
    config_all = dict(manifest.get("config", {}))
    config_all["compress"] = cfg
    metrics = dict(manifest.get("metrics", {}))
    metrics["compression"] = summary
    write_manifest(run_dir, kind="compressed", config=config_all, metrics=metrics, seed=manifest.get("seed"))
    return summary


# ------------------------------------------------------- settings guard
SETTINGS = f"{CACHE_DIR}/compress.json"  # the settings of a compression in progress; the manifest has them once done
# Which settings decide each stage's files. A later stage depends on every earlier one; `threads_per_task` decides
# nothing (it only spreads the work).
STAGE_SETTINGS = {
    "labels": ("stream",),
    "shared student": ("student_channels", "strategy", "readout_form", "readout_rank", "shared_epochs", "batch_size",
                       "lr", "seed", "channels_last"),
}
_NOT_DECIDING = ("threads_per_task",)


def same_shared_stages(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two compressions' settings (`CompressConfig.to_dict()` or as recorded) make the same labels and
    shared student, whatever they do per neuron afterwards."""
    a, b = _flat(_with_defaults(a)), _flat(_with_defaults(b))
    deciding = {k for stage in STAGE_SETTINGS.values() for k in stage}
    return all(a.get(k) == b.get(k) for k in set(a) | set(b) if k.split(".")[0] in deciding)


def guard_settings(run_dir: str | Path, config: CompressConfig, manifest: Mapping[str, Any] | None = None) -> None:
    """Refuse to resume a compression with settings other than those its finished work was made with.

    Without this, a half-done run resumed under another preset reuses its
    labels, shared student or compact models and mixes two configurations
    without a word. The settings are written before any work starts; a run
    whose work predates that record is checked against its manifest.
    """
    run_dir = Path(run_dir)
    path = run_dir / SETTINGS
    new = config.to_dict()
    if path.exists():
        old = read_json(path)
    else:
        old = (manifest or read_manifest(run_dir, verify=False)).get("config", {}).get("compress")
    if old is not None:
        _refuse_changed(run_dir, _with_defaults(old), new)
    atomic_write_json(path, new)


def _with_defaults(recorded: Mapping[str, Any]) -> Mapping[str, Any]:
    """Recorded settings, with any setting added since filled in at its default: what the older version did.

    So a run compressed before a setting existed resumes under the version that
    has it. A record this version cannot read is compared as it is.
    """
    try:
        return CompressConfig.from_dict(recorded).to_dict()
    except (TypeError, ValueError):
        return recorded


def _refuse_changed(run_dir: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    old, new = _flat(old), _flat(new)
    changed = [k for k in sorted(set(old) | set(new)) if k.split(".")[0] not in _NOT_DECIDING and old.get(k) != new.get(k)]
    # Each stage in order: whether its files exist, and what it reads beyond the stages before it (None: all).
    stages = [("its labels were", (run_dir / CACHE_DIR / "labels" / "cache.json").exists(), STAGE_SETTINGS["labels"]),
              ("its shared student was",
               (run_dir / SHARED_STUDENT).exists() or any((run_dir / CACHE_DIR / "shared").glob("*")),
               STAGE_SETTINGS["shared student"]),
              ("its compact models were", any((run_dir / "history").glob("prune_*.json")), None)]
    deciding: set[str] = set()
    for what, done, settings in stages:
        deciding |= set(settings) if settings is not None else {k.split(".")[0] for k in changed}
        clash = [k for k in changed if k.split(".")[0] in deciding]
        if done and clash:
            detail = "; ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in clash)
            raise ArtifactError(f"{what} made with other compression settings ({detail}). Resume with the settings "
                                "it was started with, or compress into a fresh copy of the teacher run", run_dir)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys ("stream.n_images"), lists as tuples: JSON and dataclass forms compare equal."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, (list, tuple)) else v
    return out


def describe_stage_seconds(stages: Mapping[str, float]) -> str:
    """`stage_seconds` as one line of text: "labels 83 s, shared student 912 s"."""
    return ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in stages.items()) or "not recorded"


def default_workers(config: CompressConfig) -> int:
    """Local worker processes when none are asked for: as many as the cores hold at the config's threads each."""
    return max(1, cpu_count() // max(1, config.threads_per_task))


def run_tasks(run_dir: Path, indices: Sequence[int], config_dict: Mapping[str, Any], backend: str = "local",
              workers: int = 1, address: str | None = None, device: str | None = None):
    """Yield each finished neuron's record, as tasks complete, on the chosen backend.

    Local tasks compute on `device`; a Ray task picks its own node's.
    """
    if not indices:
        return
    if backend == "ray":
        yield from ray_tasks(compress_neuron, run_dir, indices, config_dict, address=address)
    elif backend == "local":
        if workers <= 1:
            for i in indices:
                yield compress_neuron(run_dir, i, config_dict, device)
            return
        # spawn: fresh interpreters, no forked torch thread pools; tasks read the run from disk.
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        futures = [pool.submit(compress_neuron, str(run_dir), i, dict(config_dict), device) for i in indices]
        try:
            with _sigterm_raises():
                for f in as_completed(futures):
                    yield f.result()
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM, a failed task): stop the workers now rather than
            # letting them finish their neurons after we are gone. Their files are written
            # atomically and a neuron counts as done only once its history exists, so a
            # killed task leaves nothing half-made.
            _terminate(pool)
            raise
        else:
            pool.shutdown(wait=True)
    else:
        raise ValueError(f"unknown backend {backend!r}; choose 'local' or 'ray'")


@contextmanager
def _sigterm_raises():
    """SIGTERM raises KeyboardInterrupt here, so the pool's workers are stopped with us.

    The CLI installs such a handler itself; a script that calls the library
    directly has SIGTERM's default action, which ends the parent at once and
    leaves its spawned workers compressing on their own. Only the main thread
    can set a handler, and a handler someone else installed is kept.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(pool: ProcessPoolExecutor) -> None:
    processes = list(getattr(pool, "_processes", {}).values())  # no public API before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.terminate()
    for p in processes:
        p.join(timeout=10)


def summarise_run(run_dir: str | Path) -> dict[str, Any]:
    """Medians (with bootstrap CIs) over the neurons compressed so far."""
    run_dir = Path(run_dir)
    records = [read_json(p) for p in sorted((run_dir / "history").glob("prune_*.json"))]
    per_neuron = {key: np.array([r["metrics"][key] for r in records if r["metrics"].get(key) is not None], float)
                  for key in ("n_parameters", "macs", "r_teacher", "r_teacher_unpruned", "r_heldout", "r_truth", "seconds")}
    return {"n_students": len(records), **summarise({k: v for k, v in per_neuron.items() if len(v)})}
