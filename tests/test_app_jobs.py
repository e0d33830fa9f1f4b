"""The app's background jobs: the progress lines a pipeline prints, run names, and a job's life (progress, cancel, exit)."""
from __future__ import annotations

import sys
import textwrap
import time

import pytest

from app_support.jobs import PipelineJob, new_run_dir, parse_progress_line, pipeline_command, read_progress
from compactvision.errors import ArtifactError


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
