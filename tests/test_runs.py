"""Run directories as the library reads them: finding runs, opening one, its fingerprint."""
from __future__ import annotations

import os

import pytest

from compactvision.artifacts import atomic_write_json, write_manifest
from compactvision.errors import ArtifactError
from compactvision.runs import Run, find_runs, run_fingerprint


def _make_run(path, kind="pipeline"):
    atomic_write_json(path / "data.json", {"source": "twin"})
    write_manifest(path, kind=kind, config={"preset": "tiny"})
    return path


def test_find_runs_lists_bundle_then_made_runs_then_extra(tmp_path):
    bundle = _make_run(tmp_path / "assets" / "default_run")
    runs = tmp_path / "runs"
    older = _make_run(runs / "older")
    _make_run(runs / "newer")
    # Newest first is by the manifest's mtime; set it rather than wait for the clock to tick.
    stamp = (older / "manifest.json").stat().st_mtime - 60
    os.utime(older / "manifest.json", (stamp, stamp))
    _make_run(runs / "cowley", kind="imported-cowley")
    (runs / "not-a-run").mkdir()
    elsewhere = _make_run(tmp_path / "elsewhere")
    choices = find_runs(bundle, runs, extra=[elsewhere, bundle, tmp_path / "missing"])
    assert [c.path for c in choices][0] == bundle
    names = [c.path.name for c in choices]
    assert names.index("newer") < names.index("older") and "not-a-run" not in names
    assert names[-1] == "elsewhere" and names.count("default_run") == 1
    assert any(c.kind == "imported-cowley" and "published" in c.label for c in choices)


def test_run_open_verifies_hashes_and_fingerprint_tracks_content(tmp_path):
    run_dir = _make_run(tmp_path / "r")
    run = Run.open(run_dir)
    assert run.kind == "pipeline" and run.data_info == {"source": "twin"} and run.fingerprint == run_fingerprint(run_dir)
    assert not run.has_teacher and run.history("missing.json") is None
    (run_dir / "data.json").write_text('{"source": "tampered"}')
    with pytest.raises(ArtifactError, match="sha256"):
        Run.open(run_dir)
    write_manifest(run_dir, kind="pipeline", config={})
    assert Run.open(run_dir).fingerprint != run.fingerprint
    with pytest.raises(ArtifactError, match="no manifest"):
        Run.open(tmp_path)


def test_find_runs_marks_unfinished_runs_and_keeps_finished_labels(tmp_path):
    runs = tmp_path / "runs"
    for name, kind in [("done", "pipeline"), ("compressed", "compressed"), ("cowley", "imported-cowley"),
                       ("teacher-only", "teacher"), ("half", "teacher"), ("prepared", "recompress"),
                       ("building", "teacher")]:
        _make_run(runs / name, kind=kind)
    # The Train page leaves NAME.job.json beside each run it starts: a "teacher" run is then a pipeline's part.
    for name in ("half", "building", "done"):
        atomic_write_json(runs / f"{name}.job.json", {"argv": ["x"], "preset": "tiny", "started": 0})
    labels = {c.path.name: c.label for c in find_runs(tmp_path / "no-bundle", runs, building={"building"})}
    assert labels["done"] == "done" and labels["compressed"] == "compressed", "finished runs keep their names"
    assert labels["cowley"] == "cowley (published V4 models)"
    assert labels["teacher-only"] == "teacher-only", "a teacher made by its own command is complete"
    assert labels["half"] == "half (incomplete)"
    assert labels["prepared"] == "prepared (incomplete)", "a re-compression that never compressed"
    assert labels["building"] == "building (being built)"
