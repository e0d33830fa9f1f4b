"""The Home page's numbers (neurons, sizes, compression, compute, accuracy), read from a run's files."""
from __future__ import annotations

from typing import Any

import numpy as np

from compactvision.artifacts import read_json, student_paths
from compactvision.runs import Run, student_record


def run_summary(run: Run, teacher_macs: int | None = None) -> dict[str, Any]:
    """The Home page's numbers: neurons, sizes, compression, compute and accuracy.

    Read from files only (sidecars, the teacher's architecture, the manifest's
    metrics), so the summary costs milliseconds. The teacher's MACs are
    recorded in its architecture file when it is saved; `teacher_macs` (from
    `compute.model_macs` on the loaded teacher) fills in for older runs.
    """
    ids = run.student_ids()
    records = [student_record(run, i) for i in ids]
    params = np.array([r["n_parameters"] for r in records], float)
    macs = np.array([r["macs"] for r in records], float)
    sizes = np.array([student_paths(run.path, i)[0].stat().st_size for i in ids], float)
    out: dict[str, Any] = {"kind": run.kind, "n_students": len(ids)}
    if len(ids):
        out["student"] = {"n_parameters": float(np.median(params)), "n_parameters_range": [float(params.min()), float(params.max())],
                          "macs": float(np.median(macs)), "file_bytes": float(np.median(sizes))}
    arch_path = run.path / "teacher" / "architecture.json"
    if run.has_teacher and arch_path.is_file():
        arch = read_json(arch_path)
        n_teacher = int(arch.get("n_parameters", 0))
        files = sum(p.stat().st_size for p in (run.path / "teacher").iterdir() if p.is_file())
        out["teacher"] = {"n_parameters": n_teacher, "file_bytes": files,
                          "n_neurons": sum(len(v) for v in arch.get("sessions", {}).values())}
        macs_t = arch.get("macs", teacher_macs)
        if macs_t is not None:
            out["teacher"]["macs"] = int(macs_t)
        if len(ids) and n_teacher:
            out["compression"] = n_teacher / out["student"]["n_parameters"]
    out["accuracy"] = accuracy_table(run)
    return out


#: Accuracy entries the Home page reports, in order, with what each means.
ACCURACY_KEYS = {
    "r_heldout": "compact models vs measured responses (held-out images)",
    "r_truth": "compact models vs the twin's noise-free rates",
    "r_teacher": "compact models vs the teacher (distillation fidelity)",
}


def accuracy_table(run: Run) -> list[dict[str, Any]]:
    """Median r with its bootstrap CI for each accuracy the run recorded."""
    rows = []
    teacher_r = (run.metrics.get("teacher") or {}).get("r")
    if isinstance(teacher_r, dict) and "median" in teacher_r:
        rows.append(_accuracy_row("teacher vs measured responses (held-out images)", teacher_r))
    comp = run.metrics.get("compression") or {}
    for key, what in ACCURACY_KEYS.items():
        v = comp.get(key)
        if isinstance(v, dict) and "median" in v:
            rows.append(_accuracy_row(what, v))
    return rows


def _accuracy_row(what: str, v: dict[str, Any]) -> dict[str, Any]:
    """`metrics.summarise` entries carry ci_low/ci_high; older ones a "ci" pair."""
    lo, hi = v.get("ci_low"), v.get("ci_high")
    if lo is None and isinstance(v.get("ci"), (list, tuple)):
        lo, hi = v["ci"]
    return {"metric": what, "median r": v["median"], "ci_low": lo, "ci_high": hi, "neurons": v.get("n")}
