"""The bundled default run: small, intact, and its recorded metrics are what re-evaluation gives."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compactvision.artifacts import file_hashes, list_students, load_student, read_manifest
from compactvision.rundir import heldout_data
from compactvision.metrics import pearson_r, summarise
from compactvision.models.teacher import load_teacher
from compactvision.runs import Run
from compactvision.train import predict

BUNDLE = Path(__file__).resolve().parents[1] / "assets" / "default_run"
pytestmark = pytest.mark.skipif(not (BUNDLE / "manifest.json").is_file(), reason="no bundled run (make bundle)")


def test_bundle_is_small_and_every_file_matches_its_hash():
    manifest = read_manifest(BUNDLE)  # raises on any hash mismatch
    assert manifest["kind"] == "pipeline" and manifest["config"]["pipeline"]["preset"] == "demo"
    assert set(manifest["files"]) == set(file_hashes(BUNDLE))
    size = sum((BUNDLE / f).stat().st_size for f in manifest["files"]) + (BUNDLE / "manifest.json").stat().st_size
    assert size <= 25e6


def test_re_evaluating_the_bundle_gives_its_recorded_metrics():
    manifest = read_manifest(BUNDLE)
    data = heldout_data(BUNDLE)
    (session,) = data["sessions"].values()
    ids = session["neuron_ids"]
    assert list_students(BUNDLE) == ids
    r_heldout, r_truth = [], []
    for j, nid in enumerate(ids):
        pred = predict(load_student(BUNDLE, nid), session["images"])[:, 0].astype(np.float64)
        r_heldout.append(pearson_r(pred[None], session["responses"][j][None])[0])
        r_truth.append(pearson_r(pred[None], session["truth"][j][None])[0])
        recorded = json.loads((BUNDLE / "history" / f"prune_{nid}.json").read_text())["metrics"]
        assert r_heldout[-1] == pytest.approx(recorded["r_heldout"], abs=1e-5)
        assert r_truth[-1] == pytest.approx(recorded["r_truth"], abs=1e-5)
    comp = manifest["metrics"]["compression"]
    again = summarise({"r_heldout": np.array(r_heldout), "r_truth": np.array(r_truth)})
    for key in ("r_heldout", "r_truth"):
        assert again[key]["median"] == pytest.approx(comp[key]["median"], abs=1e-5)
        assert again[key]["ci_low"] == pytest.approx(comp[key]["ci_low"], abs=1e-5)

    teacher = load_teacher(BUNDLE)
    pred_t = predict(teacher, session["images"]).T.astype(np.float64)
    r_t = pearson_r(pred_t, session["responses"])
    assert float(np.median(r_t)) == pytest.approx(manifest["metrics"]["teacher"]["r"]["median"], abs=1e-4)
    recorded_t = Run.open(BUNDLE).teacher_scores()["r_heldout"]  # what the app shows per neuron
    assert [recorded_t[nid] for nid in ids] == pytest.approx(list(r_t), abs=1e-4)
