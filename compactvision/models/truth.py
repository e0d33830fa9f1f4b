"""The digital twin's noise-free truth as a teacher: what does compression find when the teacher is right?

On the twin, a compact model is distilled from a teacher that was itself fitted
to noisy trials, so its size mixes two things: the neuron's computation and
the teacher's errors about it (a student pruned to follow a teacher keeps what
it learnt, right or wrong). Distilling from the twin itself removes the
second. A `TruthTeacher` answers with the twin's noise-free rates, so the
compression stage runs on it unchanged, and the compact model it finds is the
smallest this student architecture and pruning give *for the true
computation*: the reference against which a teacher-distilled model's size and
recovery can be read.

It is saved in a run's `teacher/` folder like any teacher, with its own format
tag: the architecture file holds the twin's ground-truth records (which rebuild
it exactly) and the weights file holds no tensors, since the twin's filters are
computed from those records.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from compactvision.artifacts import atomic_write_json, load_weights, save_weights
from compactvision.data.twin import twin_from_ground_truth
from compactvision.errors import ArtifactError

TRUTH_FORMAT = "compactvision.twin-truth/1"


class TruthTeacher(nn.Module):
    """The twin's noise-free rates, one column per neuron, behind the teacher interface compression labels with."""

    def __init__(self, ground_truth: Sequence[Mapping[str, Any]], image_size: int, session: str = "twin") -> None:
        super().__init__()
        self.twin = twin_from_ground_truth([dict(r) for r in ground_truth], image_size=int(image_size))
        self.image_size = int(image_size)
        self.sessions = {str(session): self.twin.neuron_ids}

    @property
    def neuron_ids(self) -> list[str]:
        return self.twin.neuron_ids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x H x W images in [0, 1] -> N x neurons noise-free rates."""
        return self.twin(x)

    def predict_all_sessions(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def n_parameters(self) -> int:
        """None learnt: the twin's filters follow from its records."""
        return 0


def save_truth(teacher: TruthTeacher, folder: str | Path, weights: str, architecture: str) -> None:
    """Write the truth teacher's records (its architecture file) and an empty weights file, atomically."""
    folder = Path(folder)
    save_weights(folder / weights, {}, metadata={"format": TRUTH_FORMAT})
    atomic_write_json(folder / architecture, {
        "format": TRUTH_FORMAT, "sessions": teacher.sessions, "config": {"image_size": teacher.image_size},
        "ground_truth": teacher.twin.ground_truth()})


def load_truth(arch: Mapping[str, Any], weights_path: Path, arch_path: Path) -> TruthTeacher:
    """Rebuild a saved truth teacher from its records; the weights file must be the empty one it was saved with."""
    tensors, meta = load_weights(weights_path)
    if tensors or meta.get("format") != TRUTH_FORMAT:
        raise ArtifactError("not the weights file of a twin-truth teacher", weights_path)
    try:
        sessions = {str(s): [str(i) for i in ids] for s, ids in dict(arch["sessions"]).items()}
        (session, ids), = sessions.items()
        teacher = TruthTeacher(arch["ground_truth"], int(arch["config"]["image_size"]), session)
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"malformed twin-truth teacher ({e})", arch_path) from None
    if teacher.neuron_ids != ids:
        raise ArtifactError("the session's neurons are not the twin's", arch_path)
    return teacher.eval()
