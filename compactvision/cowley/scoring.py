"""Scoring published (or our) compact models on a release session: the paper's split-half protocol."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from compactvision.cowley.convert import find_published_models, load_published_model
from compactvision.data.cowley_release import load_cowley
from compactvision.data.dataset import Session
from compactvision.errors import ArtifactError, DataError
from compactvision.metrics import pearson_r
from compactvision.models.student import CompactStudent
from compactvision.runtime import select_device
from compactvision.train import predict


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
