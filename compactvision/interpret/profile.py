"""A neuron at a glance: what the gallery and the profile page show, computed from a run.

A neuroscientist scanning a population wants, per neuron, the same few
facts side by side: what it is (the twin's cell type, or the recording
session), how big its compact model is and whether it consolidated, how well
it predicts against what is predictable at all (the noise ceiling, from
repeats), and what drives it (its top held-out image). `neuron_card` gathers
these for one neuron from plain inputs; the readout map is the receptive
field the model reads, straight from its last layer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from compactvision.interpret.attribution import response
from compactvision.metrics import pearson_r
from compactvision.models.student import CompactStudent

if TYPE_CHECKING:
    from compactvision.runs import Run

#: A model consolidates when some layer after the first keeps at most this many filters (Cowley et al. 2026).
CONSOLIDATED_MAX = 5


def cell_label(neuron_id: str, ground_truth: Mapping[str, Any] | None = None, session: str | None = None) -> str:
    """How people name the neuron: the twin's cell type ("V1 simple"), else its session."""
    if ground_truth and ground_truth.get("cell_type"):
        return str(ground_truth["cell_type"]).replace("_", " ").replace("v1 ", "V1 ")
    return f"session {session}" if session else ""


def ground_truth_facts(ground_truth: Mapping[str, Any]) -> list[str]:
    """The twin's known preferences, as short phrases ("preferred orientation 45°", ...)."""
    facts = []
    if ground_truth.get("preferred_orientation_deg") is not None:
        facts.append(f"preferred orientation {ground_truth['preferred_orientation_deg']:.0f}°")
    if ground_truth.get("preferred_size_px") is not None:
        facts.append(f"preferred size {ground_truth['preferred_size_px']:.1f} px")
    return facts


def consolidation_layer(channels: Sequence[int]) -> int | None:
    """The first layer after the input layer with at most `CONSOLIDATED_MAX` filters, or None."""
    return next((i for i, c in enumerate(channels) if i > 0 and c <= CONSOLIDATED_MAX), None)


def sizes_by_cell_type(metrics: Mapping[str, Mapping[str, Any]],
                       ground_truth: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Does model size follow the computation? The twin's compact models grouped by cell type.

    `metrics` maps neuron id -> a compact model's recorded metrics (`channels`,
    `n_parameters`, `r_teacher`, `r_truth`); `ground_truth` holds the twin's
    records. Per cell type: n, median filters per layer, median total filters
    and parameters, how many consolidated, median r against the teacher and
    the truth, and whether the type is computed in one stage. Under the key
    "all": the median total filters of one-stage and of multi-stage cells, and
    the consolidated count, over every neuron.
    """
    from compactvision.data.twin import ONE_STAGE_TYPES

    types = {str(r["neuron_id"]): str(r["cell_type"]) for r in ground_truth}
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for nid, m in metrics.items():
        groups.setdefault(types.get(str(nid), "?"), []).append(m)

    def median_of(values: Sequence[float]) -> float:
        return float(np.median(values)) if len(values) else float("nan")

    def median(ms: Sequence[Mapping[str, Any]], key: str) -> float:
        return median_of([m[key] for m in ms if m.get(key) is not None])

    def totals(ms: Sequence[Mapping[str, Any]]) -> list[int]:
        return [sum(m["channels"]) for m in ms]

    def consolidated(ms: Sequence[Mapping[str, Any]]) -> int:
        return sum(consolidation_layer(m["channels"]) is not None for m in ms)

    out: dict[str, dict[str, Any]] = {}
    for kind in sorted(groups, key=lambda k: (k not in ONE_STAGE_TYPES, k)):
        ms = groups[kind]
        out[kind] = {"n": len(ms), "one_stage": kind in ONE_STAGE_TYPES,
                     "channels": np.median([m["channels"] for m in ms], axis=0).astype(int).tolist(),
                     "total_filters": median_of(totals(ms)),
                     "n_parameters": median(ms, "n_parameters"), "consolidated": consolidated(ms),
                     "r_teacher": median(ms, "r_teacher"), "r_truth": median(ms, "r_truth")}
    every = [m for ms in groups.values() for m in ms]
    one = [m for k, ms in groups.items() if k in ONE_STAGE_TYPES for m in ms]
    multi = [m for k, ms in groups.items() if k not in ONE_STAGE_TYPES for m in ms]
    out["all"] = {"n": len(every), "one_stage_filters": median_of(totals(one)),
                  "multi_stage_filters": median_of(totals(multi)),
                  "consolidated": consolidated(every), "n_parameters": median(every, "n_parameters")}
    return out


@dataclass
class NeuronCard:
    """One gallery row: identity, size, accuracy and the image that drives the neuron hardest."""

    neuron_id: str
    label: str
    n_parameters: int
    channels: list[int]
    total_filters: int
    consolidated: bool
    r_student: float | None          # vs the measured held-out responses
    r_teacher: float | None
    ceiling: float | None            # the best r the repeats allow
    normalised: float | None         # r_student / ceiling, the Brain-Score style accuracy
    r_truth: float | None            # vs the twin's noise-free rates, twin runs only
    top_image: int | None            # index into the neuron's held-out images

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def neuron_card(neuron_id: str, student: CompactStudent, images: np.ndarray | None = None,
                responses: np.ndarray | None = None, truth: np.ndarray | None = None, ceiling: float | None = None,
                r_teacher: float | None = None, label: str = "") -> NeuronCard:
    """The card of one neuron; without held-out images only its size and identity are known."""
    r_student = r_truth = top = None
    if images is not None and len(images):
        pred = np.asarray(response(student.fused(), images)[:, 0], np.float64)  # BN folded: same function, faster
        top = int(np.argmax(pred))
        if responses is not None:
            r_student = _finite(pearson_r(pred, np.asarray(responses, np.float64))[0])
        if truth is not None:
            r_truth = _finite(pearson_r(pred, np.asarray(truth, np.float64))[0])
    ceiling = _finite(ceiling) if ceiling is not None else None
    normalised = r_student / ceiling if r_student is not None and ceiling else None
    channels = [int(c) for c in student.arch.channels]
    return NeuronCard(neuron_id, label, student.n_parameters(), channels, sum(channels),
                      consolidation_layer(channels) is not None, r_student, r_teacher, ceiling, normalised, r_truth, top)


def _finite(x: float | np.floating) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def readout_map(student: CompactStudent, output: int = 0) -> np.ndarray:
    """The receptive field the model reads: readout weight magnitude over its last feature map, (h, w).

    The readout is a dense layer over (h, w, channels); summing |w| over
    channels says where in the image the neuron's response comes from.
    """
    h, w = student.arch.readout_hw
    weight = student.readout.weight.detach().view(student.arch.n_outputs, h, w, -1)[output]
    return weight.abs().sum(-1).cpu().numpy()


def run_cards(run: "Run") -> list[NeuronCard]:
    """Every compact model's card, in the run's neuron order (milliseconds per neuron at the bundle's size)."""
    from compactvision.runs import neuron_data

    heldout, truth = run.heldout(), run.ground_truth()
    teacher_r = run.teacher_scores().get("r_heldout", {})
    cards = []
    for nid in run.student_ids():
        data = neuron_data(heldout, nid, truth)
        kw: dict[str, Any] = {}
        if data is not None:
            kw = dict(images=data.images, responses=data.responses, truth=data.truth, ceiling=data.ceiling,
                      label=cell_label(nid, data.ground_truth, data.session))
        cards.append(neuron_card(nid, run.load_student(nid), r_teacher=teacher_r.get(nid), **kw))
    return cards
