"""The teacher stage: a dataset in, a run directory with a trained, scored teacher out.

Two protocols:
  * "split" (default): every session is split into train / validation / test
    images; the teacher trains on all sessions' training images, early-stops
    on validation, and is scored on the held-out test images. A session that
    names its own test images (`TEST_INDICES`, such as the repeated test set
    of a train-once design) is scored on those.
  * "cowley": the paper's protocol for the public V4 release. The teacher's
    trunk trains on every session except the test sessions (190923, 201025 by
    default) and the validation session (210224 when present). Then, for each
    test and validation session, the trunk is frozen and only that session's
    readout is fitted, on the first half of its images (a tenth of them kept
    for early stopping); the score is on the second half. With
    `trunk_sees_held_out`, those first halves also train the trunk (with
    their readouts) before the refit: more data for the shared features,
    still none of the second halves. The validation
    session's score is reported apart (`metrics["validation"]`): it is the one
    to choose settings on, so the test sessions' second halves stay unseen
    until the final figure.

Scores are per neuron: Pearson r against the repeat-averaged responses, plus
noise-corrected r^2_ER and FEVE where repeats exist, and, for the digital twin,
r against its noise-free rates, the ceiling-free answer. Medians come with
bootstrap CIs.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from compactvision.artifacts import atomic_write_json, load_weights, save_weights, write_manifest
from compactvision.data.dataset import designated_test
from compactvision.data.formats import NeuralDataset, Session, load_dataset, split_images
from compactvision.errors import DataError
from compactvision.metrics import feve, pearson_r, r2_er, summarise
from compactvision.models.backbone import DEFAULT_STAGE, backbone_from_checkpoint, load_trunk_weights
from compactvision.models.teacher import PRESETS, Teacher, TeacherConfig, build_teacher, save_teacher
from compactvision.progress import as_progress
from compactvision.readout_fit import ReadoutFitConfig, fit_basis, fit_heldout_readout, fit_probe
from compactvision.train import TrainResult, fit, predict

COWLEY_TEST_SESSIONS = ("190923", "201025")
#: The release's validation session, used by default when the data has it.
COWLEY_VALIDATION_SESSION = "210224"
Progress = Callable[[str, int, int], None]
READOUT_CHECKPOINT = "readout.safetensors"
#: The cross-validated fit's finished folds, so a stopped fit resumes at the fold it was in.
READOUT_FOLDS = "readout_folds.json"


def _targets(session: Session, idx: np.ndarray) -> np.ndarray:
    """Repeat-averaged responses, images x neurons (the loop's layout)."""
    return session.mean_responses()[:, idx].T.astype(np.float32)


def _split_half(n: int) -> dict[str, np.ndarray]:
    """Paper protocol: first half to fit (its last tenth to validate), second half to score."""
    half = n // 2
    n_val = max(1, half // 10)
    return {"train": np.arange(0, half - n_val), "val": np.arange(half - n_val, half), "test": np.arange(half, n)}


def score_session(teacher: Teacher, session: Session, idx: np.ndarray, device: str | None = None,
                  noise_free: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-neuron scores of `teacher` on images `idx` of `session` (noise_free: neurons x idx rates)."""
    pred = predict(teacher, session.images[idx], key=session.session_id, device=device).T.astype(np.float64)
    responses = session.responses[:, idx]
    scores = {"r": pearson_r(pred, np.nanmean(responses, axis=2))}
    if session.n_repeats > 1:
        scores["r2_er"] = r2_er(pred, responses)
        scores["feve"] = feve(pred, responses)
    if noise_free is not None:
        scores["r_noise_free"] = pearson_r(pred, noise_free)
    return scores


def _fit(teacher: Teacher, sessions: Sequence[Session], splits: Mapping[str, dict[str, np.ndarray]],
         config: TeacherConfig, seed: int, device: str | None, checkpoint_dir: Path, resume: bool,
         progress: bool | Progress, stage: str) -> TrainResult:
    train = {s.session_id: (s.images[splits[s.session_id]["train"]], _targets(s, splits[s.session_id]["train"]))
             for s in sessions}
    val = {s.session_id: (s.images[splits[s.session_id]["val"]], _targets(s, splits[s.session_id]["val"]))
           for s in sessions}
    stats = {sid: _set_response_stats(teacher, sid, y) for sid, (_, y) in train.items()}
    report: bool | Progress = progress
    if callable(progress):
        report = lambda _stage, done, total: progress(stage, done, total)  # noqa: E731
    return fit(teacher, train, val, config.train_config(seed=seed, device=device), checkpoint_dir=checkpoint_dir,
               resume=resume, progress=report, target_stats=stats)


def _set_response_stats(teacher: Teacher, sid: str, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fix `sid`'s z-score mapping from its training responses `y` (images x neurons); returns (mean, s.d.)."""
    mean, std = np.nanmean(y, axis=0), np.nanstd(y, axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    teacher.set_response_stats(sid, mean, std)
    return mean, std


def _fit_heldout(teacher: Teacher, session: Session, split: Mapping[str, np.ndarray], sources: Sequence[str],
                 checkpoint_dir: Path | None, resume: bool, progress: bool | Progress,
                 fresh: bool = False) -> dict[str, Any]:
    """A held-out session's readout on the frozen trunk (`readout_fit`), kept once fitted so a resume skips it.

    A new session's readouts (or, with `fresh`, new ones for a session the
    teacher has) are drawn from the teacher's seed, so a refit draws them again.
    Without `checkpoint_dir` nothing is kept. With `heldout_probe_pool`, the
    session's linear probes are then fitted on the same first half (seconds,
    so never kept), and with `heldout_basis_weight` its neuron basis over the
    neurons of `sources`, the sessions the trunk was trained on. A probe or
    basis of weight 1 leaves nothing for the readout to do, and it is not
    fitted.
    """
    sid, config = session.session_id, teacher.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(teacher.seed)
        if sid not in teacher.sessions:  # else its readout trained with the trunk and starts from there
            teacher.add_session(sid, session.neuron_ids)
        elif fresh:
            teacher.reset_session(sid)
    y = _targets(session, split["train"])
    _set_response_stats(teacher, sid, y)
    record = _fit_readout(teacher, session, split, y, checkpoint_dir, resume, progress)
    first = np.concatenate([split["train"], split["val"]])
    folds = max(config.readout_folds, 5)
    if config.heldout_probe_pool and config.heldout_basis_weight < 1.0:
        record["probe"] = fit_probe(teacher, sid, session.images[first], _targets(session, first),
                                    folds=folds, seed=teacher.seed)
    if config.heldout_basis_weight:
        record["basis"] = fit_basis(teacher, sid, sources, session.images[first], _targets(session, first),
                                    folds=folds, seed=teacher.seed)
    return record


def _readout_unused(config: TeacherConfig) -> bool:
    """Whether a held-out session's prediction is all probe or all basis, so its readout need not be fitted."""
    return config.heldout_basis_weight == 1.0 or (config.heldout_probe_pool > 0 and config.heldout_probe_weight == 1.0)


def _fit_readout(teacher: Teacher, session: Session, split: Mapping[str, np.ndarray], y: np.ndarray,
                 checkpoint_dir: Path | None, resume: bool, progress: bool | Progress) -> dict[str, Any]:
    """The held-out session's readout fitted, or reloaded from its checkpoint when resuming; returns its record."""
    sid, config = session.session_id, teacher.config
    if _readout_unused(config):
        return {"folds": config.readout_folds, "readout": "not fitted: a probe or basis alone predicts (weight 1)"}
    done = checkpoint_dir / READOUT_CHECKPOINT if checkpoint_dir is not None else None
    if resume and done is not None and done.is_file():
        tensors, meta = load_weights(done)
        record = json.loads(meta["record"])
        # a readout fitted another way (the run resumed with other `readout_folds`) is fitted again
        if record.get("folds", 0) == config.readout_folds:
            for k, readout in enumerate(teacher.readouts_of(sid)):
                readout.load_state_dict({n.split(".", 1)[1]: t for n, t in tensors.items()
                                         if n.startswith(f"member{k}.")})
            return record
    journal = checkpoint_dir / READOUT_FOLDS if checkpoint_dir is not None else None
    if journal is not None and not resume:
        journal.unlink(missing_ok=True)
    record = fit_heldout_readout(teacher, sid, (session.images[split["train"]], y),
                                 (session.images[split["val"]], _targets(session, split["val"])),
                                 ReadoutFitConfig(folds=config.readout_folds, seed=teacher.seed),
                                 progress=as_progress(progress), journal=journal)
    if done is not None:
        slots = {f"member{k}.{name}": t for k, readout in enumerate(teacher.readouts_of(sid))
                 for name, t in readout.state_dict().items()}
        save_weights(done, slots, metadata={"record": json.dumps(record)})
    return record


def refit_heldout_readout(teacher: Teacher, session: Session, split: Mapping[str, Any], sources: Sequence[str],
                          progress: bool | Progress = False) -> dict[str, Any]:
    """`session`'s readout fitted afresh on the frozen trunk, as the stage fits it (the teacher's `readout_folds`).

    `split` is the session's split as `data.json` records it. For comparing
    ways to fit a finished teacher's held-out readouts; the second half
    (`split["test"]`) is not used; `sources` are the sessions the trunk was
    trained on (a neuron basis's regressors). Its fresh readouts are drawn from the
    teacher's seed, as the stage draws them, so the same way of fitting gives
    the same readout again.
    """
    teacher.freeze_trunk()
    try:
        return _fit_heldout(teacher, session, {k: np.asarray(v) for k, v in split.items()}, sources, None, False,
                            progress, fresh=True)
    finally:
        teacher.freeze_trunk(False)
        teacher.eval()


def _fit_image_size(config: TeacherConfig, dataset: NeuralDataset, overridden: bool, source: str) -> TeacherConfig:
    """The teacher is built for the dataset's image size; a size it cannot take is refused here, not in the readout.

    A preset names a size (112 px for the paper's); square images of another
    size make the teacher that size, unless the caller asked for one
    explicitly, which must then match.
    """
    shapes = sorted({tuple(s.images.shape[1:3]) for s in dataset.sessions})
    if len(shapes) != 1 or shapes[0][0] != shapes[0][1]:
        raise DataError(f"the teacher needs square images of one size in every session; found {shapes} (h, w)", source)
    size = shapes[0][0]
    if size == config.image_size:
        return config
    if overridden:
        raise DataError(f"the images are {size}x{size} px but image_size={config.image_size} was asked for; "
                        "resize the data or drop the override", source)
    return replace(config, image_size=size)


def train_teacher(data: str | Path | NeuralDataset, out: str | Path, preset: str = "cpu", seed: int = 0,
                  protocol: str = "split", device: str | None = None, resume: bool = False,
                  epochs: int | None = None, data_kwargs: Mapping[str, Any] | None = None,
                  progress: bool | Progress = True, test_sessions: Sequence[str] = COWLEY_TEST_SESSIONS,
                  validation_session: str | None = None,
                  config_overrides: Mapping[str, Any] | None = None, backbone: str | Path | None = None,
                  backbone_stage: str = DEFAULT_STAGE, backbone_stem: str = "pixels",
                  finetune_backbone: bool = False) -> dict[str, Any]:
    """Train and score a teacher; write the run directory; return the manifest.

    `config_overrides` changes fields of the preset (e.g. `image_size` for
    data that are not 112 px); the run's manifest records the result.
    `backbone` is a local torchvision ResNet checkpoint whose trunk, cut after
    `backbone_stage`, feeds the members (frozen unless `finetune_backbone`);
    see `models/backbone.py` for the two stems. The members' back ends then
    keep the trunk's resolution (first_stride 1) unless overridden.
    """
    t0 = time.perf_counter()
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if protocol not in ("split", "cowley"):
        raise ValueError(f"protocol must be 'split' or 'cowley', got {protocol!r}")
    config = replace(PRESETS[preset], **dict(config_overrides or {}))
    if epochs is not None:
        config = replace(config, epochs=int(epochs))
    trunk_weights = None
    if backbone is not None:
        entry, trunk_weights = backbone_from_checkpoint(backbone, backbone_stage, backbone_stem, finetune_backbone)
        stride = dict(config_overrides or {}).get("first_stride", 1)
        config = replace(config, backbone=entry, first_stride=int(stride))
    dataset = data if isinstance(data, NeuralDataset) else load_dataset(data, **dict(data_kwargs or {}))
    source = dataset.metadata.get("source", str(data))
    for s in dataset.sessions:
        s.validate(source)
    config = _fit_image_size(config, dataset, "image_size" in dict(config_overrides or {}), source)
    held_out, trunk_sessions = _choose_sessions(dataset, protocol, test_sessions, source)
    validation = _validation_session(trunk_sessions, protocol, validation_session, source)
    trunk_sessions = [s for s in trunk_sessions if s is not validation]
    if protocol == "cowley" and not trunk_sessions:
        raise DataError(f"no session is left to train the trunk on once test {list(test_sessions)} and validation "
                        f"{validation.session_id if validation else None} are held out", source)
    readout_only = held_out + ([validation] if validation is not None else [])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {s.session_id: split_images(s.n_images, seed=seed, test=designated_test(s, source)) for s in trunk_sessions}
    splits.update({s.session_id: _split_half(s.n_images) for s in readout_only})

    # the held-out sessions' first halves may join the trunk's training (their second halves never do)
    fitted = trunk_sessions + (readout_only if config.trunk_sees_held_out else [])
    teacher = build_teacher(config, {s.session_id: s.neuron_ids for s in fitted}, seed=seed)
    if trunk_weights is not None and teacher.trunk is not None:
        load_trunk_weights(teacher.trunk, trunk_weights, backbone)
    result = _fit(teacher, fitted, splits, config, seed, device, out / "checkpoints" / "teacher", resume,
                  progress, "teacher")
    histories = {"teacher": result.history}
    if readout_only:
        teacher.freeze_trunk()
        for s in readout_only:
            histories[f"readout_{s.session_id}"] = _fit_heldout(teacher, s, splits[s.session_id],
                                                                [t.session_id for t in trunk_sessions],
                                                                out / "checkpoints" / f"readout_{s.session_id}",
                                                                resume, progress)
        teacher.freeze_trunk(False)
    teacher.eval()

    scored, noise_free = held_out or trunk_sessions, _twin_rates(dataset, splits)
    per_session = {s.session_id: score_session(teacher, s, splits[s.session_id]["test"], device,
                                               noise_free.get(s.session_id)) for s in scored}
    pooled = {k: np.concatenate([v[k] for v in per_session.values() if k in v])
              for k in {k for v in per_session.values() for k in v}}
    summary = summarise(pooled)

    save_teacher(teacher, out)
    write_split_data(out, dataset, scored, fitted, splits)
    # Checkpoints exist to resume an interrupted run; a finished run does not ship them.
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    atomic_write_json(out / "data.json", {
        "source": source, "protocol": protocol, "test_sessions": [s.session_id for s in held_out],
        "validation_session": validation.session_id if validation is not None else None,
        "sessions": {s.session_id: {"neuron_ids": s.neuron_ids, "n_images": s.n_images, "n_repeats": s.n_repeats,
                                    "split": {k: v.tolist() for k, v in splits[s.session_id].items()}}
                     for s in dataset.sessions},
        "dataset_metadata": {k: v for k, v in dataset.metadata.items() if isinstance(v, (str, int, float, bool))},
    })
    metrics: dict[str, Any] = {"teacher": summary}
    if validation is not None:
        scores = score_session(teacher, validation, splits[validation.session_id]["test"], device)
        metrics["validation"] = {"session": validation.session_id, **summarise(scores)}
    _write_metrics(out, teacher, per_session, summary, histories, result, bool(held_out), time.perf_counter() - t0)
    return write_manifest(out, kind="teacher", seed=seed, metrics=metrics,
                          config={"preset": preset, "teacher": config.to_dict(),
                                  "train": config.train_config(seed=seed, device=device).to_dict(),
                                  "protocol": protocol, "data": str(data) if not isinstance(data, NeuralDataset) else source,
                                  "data_kwargs": dict(data_kwargs or {}), "n_parameters": teacher.n_parameters()})


def _choose_sessions(dataset: NeuralDataset, protocol: str, test_sessions: Sequence[str],
                     source: str) -> tuple[list[Session], list[Session]]:
    """(held-out sessions, sessions the trunk trains on) for the protocol; a named session must exist."""
    if protocol != "cowley":
        return [], list(dataset.sessions)
    present = [s.session_id for s in dataset.sessions]
    missing = [t for t in test_sessions if t not in present]
    if missing:
        raise DataError(f"test session(s) {missing} not in the data; it has {present}", source)
    held_out = [s for s in dataset.sessions if s.session_id in test_sessions]
    trunk_sessions = [s for s in dataset.sessions if s.session_id not in test_sessions]
    if not held_out or not trunk_sessions:
        raise DataError(f"the cowley protocol needs at least one test session and one other to train on; "
                        f"test {list(test_sessions)}, found {present}", source)
    return held_out, trunk_sessions


def _validation_session(trunk_sessions: Sequence[Session], protocol: str, wanted: str | None,
                        source: str) -> Session | None:
    """The cowley protocol's validation session: `wanted` (which must exist), else 210224 when the data has it."""
    if protocol != "cowley":
        if wanted is not None:
            raise DataError("--validation-session belongs to the cowley protocol", source)
        return None
    by_id = {s.session_id: s for s in trunk_sessions}
    if wanted is not None and wanted not in by_id:
        raise DataError(f"validation session {wanted!r} is not among the training sessions; they are {sorted(by_id)}",
                        source)
    return by_id.get(wanted or COWLEY_VALIDATION_SESSION)


def _write_metrics(out: Path, teacher: Teacher, per_session: Mapping[str, Mapping[str, np.ndarray]],
                   summary: dict[str, Any], histories: dict[str, Any], result: TrainResult, held_out: bool,
                   wall_seconds: float) -> None:
    """history/teacher_metrics.json: the scores per neuron and session, and how training went."""
    atomic_write_json(out / "history" / "teacher_metrics.json", {
        "scored_on": "held-out images" + (" of the test sessions (second half)" if held_out else " (test split)"),
        "summary": summary, "by_session": {sid: summarise(v) for sid, v in per_session.items()},
        "per_neuron": {sid: {"neuron_ids": teacher.sessions[sid], **{k: v.tolist() for k, v in m.items()}}
                       for sid, m in per_session.items()},
        "training": histories, "images_per_second": result.images_per_second,
        "train_seconds": result.train_seconds,
        # the whole call: data, trunk, held-out readouts and scoring (a resumed run counts its last part only)
        "wall_seconds": wall_seconds,
    })


def write_split_data(out: Path, dataset: NeuralDataset, scored: Sequence[Session], trained: Sequence[Session],
                     splits: Mapping[str, dict[str, np.ndarray]]) -> None:
    """Store what later stages score on and distil from.

    The scored sessions' held-out images and responses travel with the run
    (`data/heldout.npz`, with the twin's ground truth): compression, the app
    and the benchmarks all score on exactly these. The training images go to
    the hidden cache, where distillation mixes them into its image stream.
    """
    from compactvision.artifacts import atomic_write_npy
    from compactvision.rundir import HELDOUT, TRAIN_IMAGES
    from compactvision.data.formats import save_npz

    held = [Session(s.session_id, s.images[splits[s.session_id]["test"]], s.responses[:, splits[s.session_id]["test"]],
                    s.neuron_ids, {"split": "test", "indices": splits[s.session_id]["test"].tolist()}) for s in scored]
    truth = dataset.ground_truth if len(dataset.sessions) == 1 else None
    save_npz(NeuralDataset(held, dict(dataset.metadata), truth), out / HELDOUT)
    shape = trained[0].images.shape[1:]
    train = np.concatenate([s.images[splits[s.session_id]["train"]] for s in trained if s.images.shape[1:] == shape])
    atomic_write_npy(out / TRAIN_IMAGES, train)


def _twin_rates(dataset: NeuralDataset, splits: Mapping[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The twin's noise-free rates on each session's test images (empty for recorded data)."""
    if not dataset.ground_truth:
        return {}
    from compactvision.data.twin import twin_from_ground_truth

    size = int(dataset.metadata.get("image_size", 112))
    twin = twin_from_ground_truth(dataset.ground_truth, image_size=size)
    out, start = {}, 0
    for s in dataset.sessions:
        rows = slice(start, start + s.n_neurons)
        start += s.n_neurons
        if s.session_id in splits:
            out[s.session_id] = twin.rates(s.images[splits[s.session_id]["test"]])[rows]
    return out
