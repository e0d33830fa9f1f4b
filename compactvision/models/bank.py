"""Several one-neuron compact models run as one multi-neuron model: a teacher made of students.

Re-compression treats each published compact model of Cowley et al. (2026)
as the teacher of its own neuron. The compression stage expects one teacher
that answers for every neuron of a run (`predict_all_sessions`, `neuron_ids`);
a `StudentBank` is that teacher, one output column per model. It is saved in
the run's `teacher/` folder like any teacher, with its own format tag, so the
label cache, the per-neuron tasks and their resumption work unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from compactvision.artifacts import atomic_write_json, load_weights, save_weights
from compactvision.errors import ArtifactError
from compactvision.models.student import CompactStudent, StudentArch

BANK_FORMAT = "compactvision.student-bank/1"


class StudentBank(nn.Module):
    """One-output students side by side; output column k is model k's response."""

    def __init__(self, models: Mapping[str, CompactStudent], sessions: Mapping[str, Sequence[str]]) -> None:
        super().__init__()
        self.sessions = {str(s): [str(i) for i in ids] for s, ids in sessions.items()}
        missing = [i for i in self.neuron_ids if i not in models]
        if missing:
            raise ValueError(f"no model for neurons {missing}")
        for i in self.neuron_ids:
            if models[i].arch.n_outputs != 1:
                raise ValueError(f"the model of {i} has {models[i].arch.n_outputs} outputs; a bank holds one-output models")
        sizes = {models[i].arch.input_size for i in self.neuron_ids}
        if len(sizes) != 1:
            raise ValueError(f"the models take different image sizes {sorted(sizes)}")
        self.image_size = int(next(iter(sizes))[0])
        self.models = nn.ModuleList([models[i] for i in self.neuron_ids])

    @property
    def neuron_ids(self) -> list[str]:
        return [i for ids in self.sessions.values() for i in ids]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for m in self.models], dim=1)

    def predict_all_sessions(self, x: torch.Tensor) -> torch.Tensor:
        """Every neuron's response, sessions in order (the teacher interface compression labels with)."""
        return self(x)

    def fused(self) -> "StudentBank":
        """An eval-mode copy whose students have their BatchNorms folded into their convolutions.

        The same function to float rounding, for labelling: with channels-last
        inputs a reference-sized student ([47, 57, 3, 7, 3] at 112 px) labels
        about 1.8x as many images a second on a CPU (`benchmarks/memory_layout.py`).
        """
        return StudentBank({i: m.fused() for i, m in zip(self.neuron_ids, self.models)}, self.sessions).eval()


def save_bank(bank: StudentBank, folder: str | Path, weights: str, architecture: str,
              source: Mapping[str, object] | None = None) -> None:
    """Write the bank's weights (one safetensors file) and its architecture JSON, atomically."""
    folder = Path(folder)
    tensors = {f"{k}.{name}": t for k, m in enumerate(bank.models) for name, t in m.state_dict().items()}
    save_weights(folder / weights, tensors, metadata={"format": BANK_FORMAT})
    atomic_write_json(folder / architecture, {
        "format": BANK_FORMAT, "sessions": bank.sessions, "config": {"image_size": bank.image_size},
        "models": [m.arch.to_dict() for m in bank.models], "source": dict(source or {})})


def load_bank(arch: Mapping[str, object], weights_path: Path, arch_path: Path) -> StudentBank:
    """Rebuild a saved bank in eval mode from its architecture record and weights file."""
    try:
        sessions = {str(s): list(ids) for s, ids in dict(arch["sessions"]).items()}
        archs = [StudentArch.from_dict(a) for a in arch["models"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"malformed student-bank architecture ({e})", arch_path) from None
    ids = [i for group in sessions.values() for i in group]
    if len(ids) != len(archs):
        raise ArtifactError(f"{len(ids)} neurons but {len(archs)} model architectures", arch_path)
    tensors, _ = load_weights(weights_path)
    models = {}
    for k, (nid, a) in enumerate(zip(ids, archs)):
        m = CompactStudent(a)
        prefix = f"{k}."
        try:
            m.load_state_dict({n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)}, strict=True)
        except RuntimeError as e:
            raise ArtifactError(f"weights of model {k} ({nid}) do not fit its architecture "
                                f"({str(e).splitlines()[0]})", weights_path) from None
        models[nid] = m
    return StudentBank(models, sessions).eval()

