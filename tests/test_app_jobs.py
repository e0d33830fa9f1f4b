"""The app's background jobs: the progress lines a pipeline prints, run names, a job's life (progress, cancel, exit),
and the server-wide registry with the records that let a run be resumed after a restart."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import app_support.jobs as jobs
from app_support.jobs import (JobRecord, JobRegistry, PipelineJob, RunNameTaken, new_run_dir, parse_progress_line,
                              pipeline_command, read_progress, resume_command, unique_run_name)
from compactvision.artifacts import atomic_write_json, write_manifest
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


def _run(path, kind):
    atomic_write_json(path / "data.json", {"source": "twin"})
    write_manifest(path, kind=kind, config={})
    return path


def test_name_clashes_say_whether_the_run_is_finished_or_resumable(tmp_path):
    runs = tmp_path / "runs"
    _run(runs / "done", "pipeline")
    _run(runs / "compressed", "compressed")
    _run(runs / "half", "teacher")
    JobRecord(runs / "half", ["python", "x"], "tiny", 0.0).write()
    JobRecord(runs / "early", ["python", "x"], "tiny", 0.0).write()  # cut before the pipeline made its folder
    (runs / "stranger").mkdir()
    clashes = {}
    for name in ("done", "compressed", "half", "early", "stranger"):
        with pytest.raises(RunNameTaken) as e:
            new_run_dir(name, runs)
        clashes[name] = e.value
    for name in ("done", "compressed"):
        assert str(clashes[name]) == f"runs/{name} already holds a finished run; pick another name."
        assert not clashes[name].resumable
    for name in ("half", "early"):
        assert clashes[name].state == "incomplete" and clashes[name].resumable
        assert str(clashes[name]).startswith(f"runs/{name} holds an incomplete run") and "Resume" in str(clashes[name])
    assert clashes["stranger"].state == "other" and not clashes["stranger"].resumable


def test_default_names_are_unique(tmp_path):
    assert unique_run_name(tmp_path, "run-x") == "run-x"
    (tmp_path / "run-x").mkdir()
    (tmp_path / "run-x-2.log").write_text("")  # a log alone also holds the name
    assert unique_run_name(tmp_path, "run-x") == "run-x-3"
    assert unique_run_name(tmp_path).startswith("run-")


def test_resume_command_drops_force_only(tmp_path):
    argv = pipeline_command("tiny", tmp_path / "r")
    assert resume_command(argv) == argv
    assert resume_command([*argv, "--force"]) == argv


def _fake_pipeline(monkeypatch, script=None):
    """The Train page's command with a stand-in program: same arguments, seconds instead of minutes."""
    def command(preset, out, python=sys.executable):
        return [python, "-c", script or _WORKER, "pipeline", "--preset", preset, "--out", str(out),
                "--progress-format", "lines"]
    monkeypatch.setattr(jobs, "pipeline_command", command)


def _wait_for_progress(job, timeout=20.0):
    deadline = time.time() + timeout
    while job.progress().current is None and time.time() < deadline:
        time.sleep(0.05)
    assert job.progress().current is not None, job.output()


def test_registry_resumes_a_cancelled_job_with_its_command_and_after_a_restart(tmp_path, monkeypatch):
    _fake_pipeline(monkeypatch)
    runs = tmp_path / "runs"
    registry = JobRegistry(runs)
    job = registry.start("tiny", "r1")
    record = JobRecord.read(runs / "r1.job.json")
    assert record.argv == job.argv and record.preset == "tiny" and record.pid == job.process.pid
    assert job.argv[job.argv.index("--out") + 1] == str(runs / "r1")
    _wait_for_progress(job)
    assert record.process_alive()
    with pytest.raises(RunNameTaken, match="being built"):
        registry.start("tiny", "r1")
    with pytest.raises(ArtifactError, match="still running"):
        registry.resume("r1")
    job.cancel()
    assert job.wait(20) == 130 and not record.process_alive()
    assert registry.rediscovered() == [], "the server's own jobs are not listed twice"

    resumed = registry.resume("r1")
    try:
        assert resumed.argv == job.argv and registry.jobs()["r1"] is resumed
        assert JobRecord.read(runs / "r1.job.json").pid == resumed.process.pid
        _wait_for_progress(resumed)
        assert "checkpoint intact" not in resumed.output(), "a resumed job's progress is its own"
        log = (runs / "r1.log").read_text()
        assert log.index("checkpoint intact") < log.index("--- resumed"), "one log, appended"
    finally:
        resumed.cancel()
        resumed.wait(20)

    # A server restart: a new registry knows nothing but what is on disk.
    restarted = JobRegistry(runs)
    assert [r.name for r in restarted.rediscovered()] == ["r1"]
    again = restarted.resume("r1")
    try:
        assert again.argv == job.argv
        assert restarted.rediscovered() == []
    finally:
        again.cancel()
        again.wait(20)


def test_a_cancel_sent_while_the_job_starts_is_held_until_it_can_stop_cleanly(tmp_path, monkeypatch):
    """Its handler comes a second after the start, as the CLI's does after importing torch; the cancel at once."""
    _fake_pipeline(monkeypatch, script="import time; time.sleep(1.0)\n" + _WORKER)
    job = JobRegistry(tmp_path / "runs").start("tiny", "r1")
    job.cancel()
    assert job.wait(20) == 130, job.output()  # without the held signal: killed at once (-2), nothing saved
    assert "checkpoint intact" in job.output()


def test_the_cli_takes_a_signal_its_launcher_held_back(tmp_path):
    from compactvision import cli

    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        assert cli.main(["export", str(tmp_path / "missing"), "--neuron", "n", "--out", str(tmp_path / "x")]) == 2
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def test_resume_refuses_a_record_for_another_folder(tmp_path):
    runs = tmp_path / "runs"
    JobRecord(runs / "moved", [sys.executable, "-c", "pass", "--out", str(tmp_path / "elsewhere")], "tiny", 0.0).write()
    with pytest.raises(ArtifactError, match="writes to"):
        JobRegistry(runs).resume("moved")
    with pytest.raises(ArtifactError, match="no job record"):
        JobRegistry(runs).resume("nothing")


def test_a_record_knows_its_process_by_command_line(tmp_path):
    own = open("/proc/self/cmdline", "rb").read().decode().split("\0")[:-1]
    assert JobRecord(tmp_path / "r", own, None, 0.0, os.getpid()).process_alive()
    assert not JobRecord(tmp_path / "r", ["something", "else"], None, 0.0, os.getpid()).process_alive(), \
        "a recycled pid is not the job"
    assert not JobRecord(tmp_path / "r", own, None, 0.0, None).process_alive()


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
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # and takes a cancel held while it started
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


# ------------------------------------------------------- the first progress line
def test_pipeline_reports_the_data_stage_before_simulating(tmp_path, monkeypatch):
    import compactvision.data.twin as twin
    import compactvision.teacher_stage as teacher_stage
    from compactvision.pipeline import PRESETS, pipeline_teacher

    events: list = []
    monkeypatch.setattr(twin, "make_twin_dataset", lambda *a, **k: events.append("simulate"))
    monkeypatch.setattr(teacher_stage, "train_teacher", lambda *a, **k: events.append("teacher"))
    pipeline_teacher(PRESETS["tiny"], tmp_path, progress=lambda s, d, t: events.append((s, d, t)))
    assert events == [("data", 0, 1), "simulate", ("data", 1, 1), "teacher"]
    _run(tmp_path, "teacher")  # a resumed run skips the stage, and still says so at once
    events.clear()
    pipeline_teacher(PRESETS["tiny"], tmp_path, progress=lambda s, d, t: events.append((s, d, t)))
    assert events == [("data", 1, 1)]


def test_the_real_pipeline_prints_a_progress_line_first(tmp_path):
    """The Train page's own command: its first PROGRESS line comes before the twin simulation, not after it."""
    out = tmp_path / "run"
    job = PipelineJob.start(pipeline_command("tiny", out), out)
    try:
        _wait_for_progress(job, timeout=90)
        first = next(p for p in map(parse_progress_line, job.output().splitlines()) if p is not None)
        assert (first.stage, first.done, first.total) == ("data", 0, 1), job.output()
    finally:
        _stop(job)


def _stop(job: PipelineJob) -> None:
    """Cancel, and kill if a loaded machine keeps the pipeline from answering in time: never leave it running."""
    job.cancel()
    try:
        job.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(job.process.pid, signal.SIGKILL)
        job.wait(10)
