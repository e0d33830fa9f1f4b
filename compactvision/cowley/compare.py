"""Our compact models of real V4 neurons against the published ones, on the same held-out images.

A run built from a Cowley et al. release (`compactvision pipeline --data
RELEASE`) holds our compact models of the test sessions' neurons and those
sessions' held-out second halves. The release beside it holds the authors'
published compact models of the same neurons. Both are scored here on exactly
the run's held-out images against the same repeat-averaged responses, so the
two columns differ only in the models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compactvision.artifacts import list_students, load_student, read_json
from compactvision.cowley.convert import INPUT_SIZE, find_published_models, load_published_model
from compactvision.cowley.scoring import session_predictions
from compactvision.data.npz import load_npz
from compactvision.errors import DataError
from compactvision.metrics import pearson_r, summarise
from compactvision.progress import Progress, silent
from compactvision.rundir import HELDOUT
from compactvision.runs import Run


def on_cowley_protocol(run_dir: str | Path) -> bool:
    """Whether the run's teacher followed the cowley protocol (held-out sessions a published model may exist for)."""
    data = Path(run_dir) / "data.json"
    return data.is_file() and read_json(data).get("protocol") == "cowley"


def release_of_run(run_dir: str | Path) -> Path:
    """The release folder a run's data came from, with its published models; else a DataError saying why not."""
    run_dir = Path(run_dir)
    data = run_dir / "data.json"
    if not data.is_file():
        raise DataError("the run records no data source", data)
    source = Path(str(read_json(data).get("source", "")))
    if not (source / "compact_models").is_dir():
        raise DataError(f"the run's data ({source}) is not a Cowley et al. release with published compact models", data)
    return source


def compare_with_published(run_dir: str | Path, release: str | Path | None = None, progress: Progress = silent,
                           device: str | None = None) -> dict[str, Any]:
    """Per neuron with both models: r of ours and of the published one on the run's held-out images, and sizes.

    Returns {"rows": [{neuron, session, teacher_r, ours_r, published_r,
    ours_parameters, published_parameters}], "sessions": {session: summaries
    with bootstrap CIs}}; `teacher_r` is our teacher's r on the same images
    (NaN for a run without one, such as an import). `progress("compare",
    done, total)` follows each neuron. Raises a DataError naming the reason
    when nothing can be compared.
    """
    run_dir = Path(run_dir)
    release = Path(release) if release is not None else release_of_run(run_dir)
    heldout = load_npz(run_dir / HELDOUT)
    ours = set(list_students(run_dir))
    sessions = {s.session_id: s for s in heldout.sessions}
    published = [m for m in find_published_models(release, list(sessions)) if m.neuron_id in ours]
    if not published:
        raise DataError(f"no neuron of this run has a published compact model in {release}", release)
    size = tuple(heldout.sessions[0].images.shape[1:3])
    if size != tuple(INPUT_SIZE):
        raise DataError(f"the published models take {INPUT_SIZE[0]} px images; this run's are {size[0]} px",
                        run_dir / HELDOUT)
    # our teacher's r per neuron on these same images, as its stage scored them (none for an import)
    teacher_r = Run.open(run_dir, verify=False).teacher_scores()["r_heldout"]
    rows = []
    for k, m in enumerate(published):
        session = sessions[m.session]
        row = session.neuron_ids.index(m.neuron_id)
        measured = session.mean_responses()[row]
        student, theirs = load_student(run_dir, m.neuron_id), load_published_model(m)
        rows.append({"neuron": m.neuron_id, "session": m.session,
                     "teacher_r": teacher_r.get(m.neuron_id, float("nan")),
                     "ours_r": float(pearson_r(session_predictions(student, session.images, device), measured)[0]),
                     "published_r": float(pearson_r(session_predictions(theirs, session.images, device), measured)[0]),
                     "ours_parameters": student.n_parameters(), "published_parameters": theirs.n_parameters()})
        progress("compare", k + 1, len(published))
    summary = {}
    for sid in dict.fromkeys(r["session"] for r in rows):
        mine = [r for r in rows if r["session"] == sid]
        summary[sid] = {"n_neurons": len(mine), **summarise(
            {key: np.asarray([r[key] for r in mine], np.float64)
             for key in ("teacher_r", "ours_r", "published_r", "ours_parameters", "published_parameters")})}
    return {"rows": rows, "sessions": summary, "release": str(release)}


def comparison_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per test session: medians of r (with 95% CIs) and of parameters, ours beside the published."""
    out = []
    for sid, s in result["sessions"].items():
        teacher = {"our teacher: median r": s["teacher_r"]["median"]} if s["teacher_r"]["median"] is not None else {}
        out.append({"session": sid, "neurons": s["n_neurons"], **teacher,
                    "ours: median r": s["ours_r"]["median"],
                    "ours: 95% CI": f"[{s['ours_r']['ci_low']:.3f}, {s['ours_r']['ci_high']:.3f}]",
                    "published: median r": s["published_r"]["median"],
                    "published: 95% CI": f"[{s['published_r']['ci_low']:.3f}, {s['published_r']['ci_high']:.3f}]",
                    "ours: median parameters": int(round(s["ours_parameters"]["median"])),
                    "published: median parameters": int(round(s["published_parameters"]["median"]))})
    return out
