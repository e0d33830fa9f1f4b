"""The app's run facade: finding runs, the pipeline's progress lines, background jobs."""
from __future__ import annotations

import sys
import textwrap
import time

import pytest

from compactvision.artifacts import atomic_write_json, write_manifest
from compactvision.errors import ArtifactError
from compactvision.runs import (PipelineJob, Run, find_runs, new_run_dir, parse_progress_line, pipeline_command,
                                read_progress, run_fingerprint)


def _make_run(path, kind="pipeline"):
    atomic_write_json(path / "data.json", {"source": "twin"})
    write_manifest(path, kind=kind, config={"preset": "tiny"})
    return path


def test_progress_line_parsing():
    assert parse_progress_line("PROGRESS teacher 3/10").total == 10
    p = parse_progress_line("  PROGRESS compress:neuron 7/7 \n")
    assert (p.stage, p.done, p.total) == ("compress:neuron", 7, 7)
    for bad in ("PROGRESS teacher 11/10", "PROGRESS teacher 1/0", "progress teacher 1/2",
                "PROGRESS teacher", "epoch 3/10", "PROGRESS two words 1/2"):
        assert parse_progress_line(bad) is None, bad


def test_read_progress_keeps_latest_per_stage_and_other_output():
    text = "starting\nPROGRESS data 1/1\nPROGRESS teacher 1/4\nwarning: x\nPROGRESS teacher 3/4\nPROGRESS distill 2/8\n"
    prog = read_progress(text)
    assert list(prog.stages) == ["data", "teacher", "distill"]
    assert prog.stages["teacher"] == (3, 4)
    assert prog.current == "distill" and prog.fraction == pytest.approx(0.25)
    assert prog.last_lines() == ["starting", "warning: x"]
    assert read_progress("").fraction == 0.0


def test_find_runs_lists_bundle_then_made_runs_then_extra(tmp_path):
    bundle = _make_run(tmp_path / "assets" / "default_run")
    runs = tmp_path / "runs"
    _make_run(runs / "older")
    time.sleep(0.02)
    _make_run(runs / "newer")
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


def test_new_run_dir_refuses_escapes_and_clobbering(tmp_path):
    assert new_run_dir("demo-1", tmp_path) == tmp_path / "demo-1"
    for bad in ("../x", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(ArtifactError):
            new_run_dir(bad, tmp_path)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ArtifactError, match="already exists"):
        new_run_dir("taken", tmp_path)


def test_pipeline_command_asks_for_progress_lines(tmp_path):
    argv = pipeline_command("tiny", tmp_path / "r")
    assert argv[1:4] == ["-m", "compactvision.cli", "pipeline"]
    assert argv[argv.index("--progress-format") + 1] == "lines" and argv[argv.index("--preset") + 1] == "tiny"


# A stand-in workload with the pipeline's two behaviours the job runner relies on:
# progress lines on stdout, and a clean exit on SIGINT.
_WORKER = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as the CLI does, even if launched with SIGINT ignored
    try:
        for i in range(1, 400):
            print(f"PROGRESS work {i}/400", flush=True)
            time.sleep(0.05)
    except KeyboardInterrupt:
        print("interrupted: checkpoint intact", flush=True)
        sys.exit(130)
""")


def test_job_reports_progress_and_cancels_with_sigint(tmp_path):
    job = PipelineJob.start([sys.executable, "-c", _WORKER], tmp_path / "run", cwd=tmp_path)
    assert job.log_path == tmp_path / "run.log"
    deadline = time.time() + 20
    while job.progress().current is None and time.time() < deadline:
        time.sleep(0.05)
    assert job.status == "running" and job.progress().stages["work"][1] == 400
    job.cancel()
    assert job.wait(20) == 130
    assert job.status == "cancelled"
    assert "checkpoint intact" in job.output()


def test_finished_and_failed_jobs(tmp_path):
    ok = PipelineJob.start([sys.executable, "-c", "print('PROGRESS a 1/1')"], tmp_path / "ok", cwd=tmp_path)
    bad = PipelineJob.start([sys.executable, "-c", "raise SystemExit(2)"], tmp_path / "bad", cwd=tmp_path)
    ok.wait(20), bad.wait(20)
    assert ok.status == "finished" and ok.progress().fraction == 1.0
    assert bad.status == "failed"
