"""`import_cowley`: every published model of the release written into an ordinary run directory."""
from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from compactvision.artifacts import (MANIFEST, STUDENTS, atomic_write_json, list_students, read_json, save_student,
                                     sha256_file, student_paths, write_manifest)
from compactvision.cowley.convert import PublishedModel, find_published_models, load_published_model
from compactvision.cowley.scoring import load_session, release_root_of, score_students, session_summary, split_halves
from compactvision.errors import ArtifactError
from compactvision.metrics import bootstrap_median_ci
from compactvision.progress import Progress, silent


def import_cowley(weights_dir: str | Path, out_run: str | Path, sessions: Iterable[str] | None = None,
                  evaluate: bool = True, progress: Progress = silent, device: str | None = None,
                  per_session: int | None = None) -> Path:
    """Convert published models into a run directory (manifest kind "imported-cowley").

    Students are named as the data layer names the neurons ("<session>_neuron<k>").
    With `evaluate` and the release's images and responses beside the weights,
    each neuron's held-out and first-half r go into its sidecar JSON, and the
    manifest's metrics get per-session medians plus the same "compression"
    summary (medians with bootstrap CIs) a compressed run records. A session
    that could not be scored is still imported, and the manifest's
    `metrics["not_scored"]` says why. `progress("import-cowley", models_done,
    n_models)` follows each model written. `per_session` keeps only the first
    models of each session (by neuron index), for a quick sample. An import
    stopped part-way (Ctrl-C, a killed process) resumes when run again on
    the same folder: the models already written are kept, not converted or
    scored again.
    """
    out_run = Path(out_run)
    models = find_published_models(weights_dir, sessions)
    if per_session is not None:
        models = [m for _, group in groupby(models, key=lambda m: m.session) for m in list(group)[:per_session]]
    done = _finished_models(out_run, models)
    root = release_root_of(models[0].weights.parent) if evaluate else None
    by_session: dict[str, list[PublishedModel]] = {}
    for m in models:
        by_session.setdefault(m.session, []).append(m)

    records: dict[str, dict[str, Any]] = {}
    session_metrics: dict[str, Any] = {}
    not_scored: dict[str, str] = {}  # session -> why its models were imported without a score
    data: dict[str, Any] = {"source": "Cowley et al. (2026) V4 release, published compact models", "sessions": {}}
    for session, group in by_session.items():
        data["sessions"][session] = {"neurons": [m.neuron_id for m in group]}
        has_data = root is not None and (root / "images" / f"images_{session}.zip").is_file()
        if evaluate and not has_data:
            not_scored[session] = _why_not_scored(root, session, models[0].weights.parent)
        if has_data:
            recording = load_session(root, session)
            responses = recording.mean_responses()
            first, held_out = split_halves(recording.n_images)
            data["sessions"][session].update(n_images=recording.n_images, first_half=[first.start, first.stop],
                                             held_out=[held_out.start, held_out.stop])
        scores: dict[int, dict[str, float]] = {}
        n_parameters: dict[int, int] = {}
        for m in group:
            kept = done.get(m.neuron_id)
            if kept is not None and (not has_data or "metrics" in kept):  # written before an interruption
                n_parameters[m.index] = int(kept["n_parameters"])
                records[m.neuron_id] = {"n_parameters": n_parameters[m.index], "macs": kept["macs"],
                                        **(kept.get("metrics", {}) if has_data else {})}
                if has_data:
                    scores[m.index] = dict(kept["metrics"])
                progress("import-cowley", len(records), len(models))
                continue
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
            progress("import-cowley", len(records), len(models))
        if scores:
            summary = session_summary(session, scores, n_parameters)
            session_metrics[session] = {k: summary[k] for k in ("median_r_heldout", "median_r2_heldout",
                                                                  "median_r_first_half", "median_n_parameters")}
    atomic_write_json(out_run / "data.json", data)
    write_manifest(out_run, kind="imported-cowley",
                   config={"weights_dir": str(Path(weights_dir)), "sessions": sorted(by_session),
                           "evaluated": bool(session_metrics)},
                   metrics={"per_neuron": {k: {m: v for m, v in r.items() if m.startswith("r_")} for k, r in records.items()
                                           if "r_heldout" in r},
                            "sessions": session_metrics, "not_scored": not_scored,
                            "compression": _summarise(records)})
    return out_run


def _finished_models(out_run: Path, models: list[PublishedModel]) -> dict[str, dict[str, Any]]:
    """Sidecars of the models an interrupted import of the same files already wrote, by neuron id.

    An import writes each model's weights, then its sidecar, and the manifest
    last: a folder with students and no manifest is an import cut short, and
    running the same import again goes on from where it stopped. A finished
    run (it has a manifest), or students this import would not write (another
    release or sessions), are refused, so nothing is overwritten or mixed.
    """
    if not (out_run / STUDENTS).is_dir() or not any((out_run / STUDENTS).iterdir()):
        return {}
    if (out_run / MANIFEST).exists():
        raise ArtifactError("output run already has students; choose an empty folder", out_run)
    wanted = {m.neuron_id: m for m in models}
    strays = sorted(set(list_students(out_run)) - set(wanted))
    if strays:
        raise ArtifactError(f"output folder holds an unfinished import of other models ({', '.join(strays[:3])}"
                            f"{', ...' if len(strays) > 3 else ''}); choose an empty folder", out_run)
    done: dict[str, dict[str, Any]] = {}
    for nid, m in wanted.items():
        weights, sidecar = student_paths(out_run, nid)
        if not (weights.is_file() and sidecar.is_file()):
            continue
        try:
            record = read_json(sidecar)
        except ArtifactError:  # a sidecar the interruption left unreadable: convert that model again
            continue
        if isinstance(record, dict) and record.get("source", {}).get("sha256") == sha256_file(m.weights):
            done[nid] = record
    return done


def _why_not_scored(root: Path | None, session: str, weights_dir: Path) -> str:
    if root is None:
        return (f"no release folder (images/ and responses_repeat_averaged/) was found beside {weights_dir}, "
                "so there is nothing to score on")
    return f"{root / 'images' / f'images_{session}.zip'} is missing"


def _summarise(records: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Medians with bootstrap CIs over neurons, in the shape `compress.summarise_run` writes."""
    out: dict[str, Any] = {"n_students": len(records)}
    for key in ("n_parameters", "macs", "r_heldout", "r_first_half"):
        vals = np.array([r[key] for r in records.values() if key in r], float)
        if len(vals):
            med, lo, hi = bootstrap_median_ci(vals)
            out[key] = {"median": med, "ci": [lo, hi], "n": int(len(vals))}
    return out
