"""Distillation + pruning end to end on the `tiny` preset, resume, and backends."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from compactvision.artifacts import list_students, load_student, read_manifest
from compactvision.compress import CompressConfig, compress_run
from compactvision.rundir import history_path, neuron_ids_of
from compactvision.pipeline import PRESETS
from compactvision.prune import PruneConfig

from conftest import APP_RUN, ROOT, copy_run


def _workers(pid: int) -> list[int]:
    """The spawned worker processes of `pid` (read from Linux's /proc, as on the CI machine)."""
    from pathlib import Path

    def read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError:  # a thread or process that ended while we looked
            return b""

    kids = [int(c) for t in Path(f"/proc/{pid}/task").glob("*") for c in read(t / "children").split()]
    return [k for k in kids if b"spawn_main" in read(Path(f"/proc/{k}/cmdline"))]


def _poll(condition, deadline_s: float, every_s: float = 0.1) -> bool:
    """Wait for `condition()` until the deadline; True once it holds."""
    import time

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(every_s)
    return condition()


def _histories(run):
    return [json.loads(p.read_text()) for p in sorted((run / "history").glob("prune_*.json"))]


def test_every_neuron_has_a_compact_model(tiny_run):
    ids = neuron_ids_of(tiny_run)
    assert list_students(tiny_run) == ids
    manifest = read_manifest(tiny_run)  # verifies every hash
    assert manifest["kind"] == "pipeline"
    comp = manifest["metrics"]["compression"]
    assert comp["n_students"] == len(ids)
    # At the tiny preset the teacher itself is small (about 12k parameters); what pruning must
    # show is that each neuron's model ends far smaller than the wide student it started from.
    unpruned = np.median([h["path"][0]["n_parameters"] for h in _histories(tiny_run)])
    assert comp["n_parameters"]["median"] <= 0.5 * unpruned


def test_pruning_path_shrinks_keeps_accuracy_and_records_every_step(tiny_run):
    threshold = PRESETS["tiny"].compress.prune.threshold
    for h in _histories(tiny_run):
        path = h["path"]
        # The first visit cuts every layer; a later visit records only the layers it cut further.
        assert [s["layer"] for s in path if s["round"] == 0] == [None, 4, 0, 1, 2, 3]
        later = [s for s in path if s["round"] > 0]
        assert all(b["channels"][b["layer"]] < a["channels"][b["layer"]] for a, b in zip(path, path[1:]) if b in later)
        params, macs = [s["n_parameters"] for s in path], [s["macs"] for s in path]
        assert all(b <= a for a, b in zip(params, params[1:])), h["neuron_id"]
        assert all(b <= a for a, b in zip(macs, macs[1:])), h["neuron_id"]
        assert params[-1] < params[0] and macs[-1] < macs[0]
        assert path[0]["channels"] == [64] * 5, "students start wide"
        assert min(h["metrics"]["channels"]) >= 3
        # Accuracy is r² against the teacher's labels on validation images; pruning keeps
        # `threshold` of the unpruned student's (the cut is decided on probe images, hence the slack).
        unpruned, pruned = path[0]["accuracy"], path[-1]["accuracy"]
        assert pruned ** 2 >= threshold * unpruned ** 2 - 0.02, (h["neuron_id"], unpruned, pruned)
        for s in path:  # every step is scored against the teacher, the held-out data and the twin's truth
            assert s["accuracy"] is not None and set(s["scores"]) == {"r_heldout", "r_truth"}, s


def test_most_compact_models_consolidate(tiny_run):
    """Per-neuron pruning finds a bottleneck: in most models some layer after the first keeps at most 5 filters.

    (Pruning a shared student to reconstruct each layer, as this project did before, kept 20-25 filters in
    every layer of every neuron.)
    """
    channels = [h["metrics"]["channels"] for h in _histories(tiny_run)]
    assert sum(min(c[1:]) <= 5 for c in channels) >= len(channels) / 2, channels


def test_students_predict_held_out_twin_responses(tiny_run):
    r = [h["metrics"]["r_truth"] for h in _histories(tiny_run)]
    assert np.median(r) > 0.3  # well above chance for 8 neurons scored on held-out images


def test_interrupted_job_resumes_without_redoing(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    ids = neuron_ids_of(run)
    redo = ids[:2]
    for nid in redo:  # as if the job had been killed before these two finished
        history_path(run, nid).unlink()
    kept = {nid: history_path(run, nid).stat().st_mtime_ns for nid in ids[2:]}
    before = {nid: load_student(run, nid).state_dict() for nid in redo}
    compress_run(run, PRESETS["tiny"].compress, workers=1)
    assert {nid: history_path(run, nid).stat().st_mtime_ns for nid in ids[2:]} == kept
    for nid in redo:
        after = load_student(run, nid).state_dict()
        assert all(torch.equal(before[nid][k], after[k]) for k in after), "same seed, same student"
    read_manifest(run)


def test_the_device_asked_for_reaches_each_neurons_fits_and_pruning(tiny_run, tmp_path, monkeypatch):
    import compactvision.compress as compress

    run = copy_run(tiny_run, tmp_path / "run")
    nid = neuron_ids_of(run)[0]
    history_path(run, nid).unlink()
    before = load_student(run, nid).state_dict()
    asked = []
    real = compress.select_device
    monkeypatch.setattr(compress, "select_device", lambda device=None: asked.append(device) or real(device))
    compress_run(run, PRESETS["tiny"].compress, neurons=[0], workers=1, device="cpu")
    assert asked == ["cpu"]  # not left to each task to pick CUDA where the user said cpu
    after = load_student(run, nid).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after), "on the CPU, naming it changes nothing"


def test_a_resume_with_other_settings_is_refused_and_changes_nothing(tiny_run, tmp_path):
    """A half-done run resumed under other settings would mix two configurations; it must say so instead."""
    from dataclasses import replace

    from compactvision.errors import ArtifactError

    run = copy_run(tiny_run, tmp_path / "run")
    tiny = PRESETS["tiny"].compress
    ids = neuron_ids_of(run)
    history_path(run, ids[0]).unlink()  # as if killed before the first neuron was done
    files = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    other_prune = replace(tiny, prune=replace(tiny.prune, threshold=tiny.prune.threshold / 2))
    with pytest.raises(ArtifactError, match=r"compact models were made .*prune\.threshold"):
        compress_run(run, other_prune, workers=1)
    with pytest.raises(ArtifactError, match=r"shared_epochs"):
        compress_run(run, replace(tiny, shared_epochs=tiny.shared_epochs + 1), workers=1)
    with pytest.raises(ArtifactError, match=r"stream\.n_images"):
        compress_run(run, replace(tiny, stream=replace(tiny.stream, n_images=2 * tiny.stream.n_images)), workers=1)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == files, "a refused resume wrote"

    # Without compact models, only their own settings may change: the labels and the shared student are reused.
    for nid in ids[1:]:
        history_path(run, nid).unlink()
    with pytest.raises(ArtifactError, match=r"shared student was made"):
        compress_run(run, replace(tiny, seed=1), workers=1)
    shared = (run / "distill" / "shared_student.safetensors").stat().st_mtime_ns
    compress_run(run, replace(other_prune, threads_per_task=2), neurons=[0], workers=1)
    assert (run / "distill" / "shared_student.safetensors").stat().st_mtime_ns == shared
    assert read_manifest(run)["config"]["compress"]["prune"]["threshold"] == other_prune.prune.threshold
    with pytest.raises(ArtifactError, match=r"threshold"):  # the new settings are now the run's
        compress_run(run, tiny, neurons=[0], workers=1)


def test_ray_backend_equals_local(tiny_run, tmp_path):
    ray = pytest.importorskip("ray")
    run = copy_run(tiny_run, tmp_path / "run")
    ids = neuron_ids_of(run)
    local = {nid: load_student(run, nid).state_dict() for nid in ids[:2]}
    for nid in ids[:2]:
        history_path(run, nid).unlink()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        compress_run(run, PRESETS["tiny"].compress, backend="ray", neurons=[0, 1])
    finally:
        ray.shutdown()
    for nid in ids[:2]:
        remote = load_student(run, nid).state_dict()
        assert all(torch.equal(local[nid][k], remote[k]) for k in remote)


def test_config_round_trips_and_rejects_unknown_strategy():
    c = PRESETS["demo"].compress
    assert CompressConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError):
        CompressConfig(strategy="magic")
    with pytest.raises(ValueError, match="readout_form"):
        CompressConfig(readout_form="gaussian")
    with pytest.raises(ValueError, match="readout_rank"):
        CompressConfig(readout_rank=0)
    with pytest.raises(ValueError, match="neuron_epochs"):
        CompressConfig(strategy="per_neuron", neuron_epochs=0)
    assert CompressConfig(strategy="shared", neuron_epochs=0).neuron_epochs == 0
    with pytest.raises(ValueError, match="rounds >= 2"):  # nothing comes between the visits of one round
        CompressConfig(round_epochs=2, prune=PruneConfig(rounds=1))
    with pytest.raises(ValueError, match="round_epochs"):
        CompressConfig(round_epochs=-1)
    for bad in ({"final_images": 0}, {"final_lr": 0.0}, {"final_lr": -1e-3}):
        with pytest.raises(ValueError, match="final_images and final_lr"):
            CompressConfig(**bad)


def test_the_final_retraining_takes_its_own_images_and_rate(tiny_run, tmp_path, monkeypatch):
    """`final_images` and `final_lr` reach the last retraining of a pruned model and the retraining between visits
    of the layers (`round_epochs`), and no other fit."""
    from dataclasses import replace

    import compactvision.compress as compress
    from compactvision.distill import LabelCache
    from compactvision.rundir import CACHE_DIR

    run = copy_run(tiny_run, tmp_path / "run")
    history_path(run, neuron_ids_of(run)[0]).unlink()
    config = replace(PRESETS["tiny"].compress, final_epochs=1, final_images=1500, final_lr=7e-4, round_epochs=1,
                     prune=replace(PRESETS["tiny"].compress.prune, rounds=2, min_filters=1))
    fits: list[list[float]] = []  # [images, rate] of each fit, in order
    real_stream, real_fit = compress._stream, compress.fit

    def stream(cache, idx, *args):
        fits.append([len(idx)])
        return real_stream(cache, idx, *args)

    def fit(model, batches, val, tc, **kw):
        fits[-1].append(tc.lr)
        return real_fit(model, batches, val, tc, **kw)

    monkeypatch.setattr(compress, "_stream", stream)
    monkeypatch.setattr(compress, "fit", fit)
    compress.compress_neuron(run, 0, config.to_dict(), device="cpu")
    n_train = len(LabelCache(run / CACHE_DIR / "labels").split()[0])
    final = [min(1500, n_train), 7e-4]
    assert fits[-1] == final
    recovers = [f for f in fits[:-1] if f == final]
    assert len(recovers) == 1  # the one retraining before the second visit
    others = [f for f in fits[:-1] if f != final]
    assert len(others) > 1 and all(f[0] in (config.neuron_images, config.finetune_images) for f in others)
    assert all(f[1] == config.lr for f in others)  # the neuron's fit and the fine-tunes keep their rate


#: Below this orientation selectivity (1 - circular variance at the best frequency) a teacher's grating tuning has
#: no orientation to keep. The `tiny` teacher of one machine reached 0.43 on its simple cell: the rows of its
#: orientation x frequency surface peaked up to 105 deg apart, and its orientation component followed the truth's
#: at r 0.12, while the bundled teacher's simple cells reach 0.60 and 0.70.
SELECTIVE = 0.5


@pytest.mark.parametrize("which", ["tiny", "app"])
def test_compressed_simple_cells_keep_their_teachers_preferred_orientation(which, request):
    """Compression keeps what the teacher learned: the compact model of a twin simple cell prefers its teacher's
    orientation, wherever the teacher's grating tuning has one (`SELECTIVE`).

    The comparison is with the teacher, not the truth: whether the teacher found the cell's orientation is the
    teacher's luck (the `tiny` one missed it by 39 deg on one machine's floating point and found it on another's).
    `tiny` tests the code of this checkout; the app's run (the bundle by default) tests the shipped models, whose
    teacher is selective enough that the bundle must check at least one cell.
    """
    from compactvision.data.formats import load_npz
    from compactvision.data.twin import twin_from_ground_truth
    from compactvision.interpret.stimuli import compare_with_twin, orientation_difference, orientation_sf_tuning
    from compactvision.models.teacher import load_teacher
    from compactvision.runs import teacher_view

    run = request.getfixturevalue("tiny_run") if which == "tiny" else APP_RUN
    ds = load_npz(run / "data" / "heldout.npz")
    if ds.ground_truth is None:
        pytest.skip(f"{run} is not a twin run: no true orientation to place the gratings")
    size = ds.sessions[0].images.shape[1]
    twin = twin_from_ground_truth(ds.ground_truth, image_size=size)
    teacher = load_teacher(run)
    checked = []
    for i, truth in enumerate(ds.ground_truth):
        if truth["cell_type"] != "v1_simple":
            continue
        view, j = teacher_view(teacher, truth["neuron_id"])
        taught = orientation_sf_tuning(view, j, size=size, center=truth["rf_center"]).preferred
        if taught["orientation_selectivity"] < SELECTIVE:
            continue
        out = compare_with_twin(load_student(run, truth["neuron_id"]), twin, i, synthesis_steps=16)
        assert orientation_difference(out["model_orientation_deg"], taught["orientation_deg"]) <= 15.0, (out, taught)
        checked.append(truth["neuron_id"])
    if run == ROOT / "assets" / "default_run":
        assert checked, "the bundled teacher has no orientation-selective simple cell"


# A script that calls the library keeps SIGTERM's default action, unlike the CLI, which sets its own handler.
_LIBRARY_SCRIPT = """
import sys
from compactvision.compress import compress_run
from compactvision.pipeline import PRESETS
if __name__ == "__main__":
    compress_run(sys.argv[1], PRESETS["tiny"].compress, workers=2,
                 progress=lambda stage, done, total: print("PROGRESS", stage, done, total, flush=True))
"""


@pytest.mark.parametrize("caller", ["cli", "library"])
def test_sigterm_stops_workers_and_a_rerun_finishes(tiny_run, tmp_path, caller):
    """Killing `compress` mid-way stops its worker processes at once; rerunning completes the rest.

    Both callers: the CLI, and a user's script calling `compress_run` with the default SIGTERM action.
    """
    import signal
    import subprocess
    import sys
    import time

    run = copy_run(tiny_run, tmp_path / "run")
    ids = neuron_ids_of(run)
    for nid in ids[:3]:  # three neurons to do: two run at once, one waits in the queue
        history_path(run, nid).unlink()
    if caller == "cli":
        cmd = [sys.executable, "-m", "compactvision.cli", "compress", str(run), "--preset", "tiny", "--workers", "2",
               "--progress-format", "lines"]
    else:
        script = tmp_path / "compress_script.py"
        script.write_text(_LIBRARY_SCRIPT)
        cmd = [sys.executable, str(script), str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # wait until the per-neuron tasks are submitted...
        if line.startswith("PROGRESS compress"):
            break
    assert _poll(lambda: len(_workers(proc.pid)) >= 2, deadline_s=60), "the worker processes never started"
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[0]
    # The CLI exits 130 itself; the script dies of the uncaught KeyboardInterrupt, which Python ends with SIGINT.
    assert proc.returncode == (130 if caller == "cli" else -signal.SIGINT), rest
    done_at_exit = sorted(p.name for p in (run / "history").glob("prune_*.json"))
    time.sleep(5)  # orphaned workers would keep writing neurons now
    assert sorted(p.name for p in (run / "history").glob("prune_*.json")) == done_at_exit
    assert len(done_at_exit) < len(ids)
    compress_run(run, PRESETS["tiny"].compress, workers=1)  # in this process: no pool under pytest's __main__
    assert all(history_path(run, nid).exists() for nid in ids)
    read_manifest(run)
    assert not [p for p in run.rglob("*.tmp")]


def test_slimming_strength_is_searched_down_until_the_budget_holds():
    """`slim_to_threshold` takes the strongest L1 whose slimmed model keeps the budget, else the fit itself."""
    from compactvision.compress import slim_to_threshold
    from compactvision.models.student import CompactStudent, StudentArch
    from compactvision.prune import responses

    torch.manual_seed(0)
    fitted = CompactStudent(StudentArch(channels=(6,) * 5, input_size=(24, 24))).eval()
    x = torch.rand(48, 3, 24, 24)
    labels = responses(fitted, x)

    def slimming(zeroed_at: dict[float, int], tried: list[float]):
        """Slimming at strength l1 silences `zeroed_at[l1]` of layer 1's 6 filters (all 6: a constant output)."""
        def slimmed(l1: float) -> CompactStudent:
            tried.append(l1)
            m = copy.deepcopy(fitted)
            with torch.no_grad():
                m.layers[1].bn.weight[: zeroed_at[l1]] = 0.0
            return m
        return slimmed

    for zeroed_at, want in (({0.4: 0}, 0.4), ({0.4: 6, 0.2: 6, 0.1: 0}, 0.1), ({0.4: 6, 0.2: 6, 0.1: 6}, 0.0)):
        tried: list[float] = []
        model, l1 = slim_to_threshold(fitted, slimming(zeroed_at, tried), x, labels, 0.4, threshold=0.9)
        assert l1 == want
        assert tried == sorted(zeroed_at, reverse=True)
        assert (model is fitted) == (want == 0.0)
    with pytest.raises(ValueError, match="neuron_epochs"):
        CompressConfig(strategy="shared", neuron_epochs=0, neuron_channel_l1=0.5)


def test_a_slimmed_compression_keeps_the_budget_of_its_unslimmed_fit(tiny_run, tmp_path):
    """Slimming on the tiny twin: where a strength is taken, the path starts from the plain fit, then the slimmed
    model, and the final model keeps the threshold of the plain fit's accuracy, not of the slimmed one's."""
    from dataclasses import replace

    run = copy_run(tiny_run, tmp_path / "slim")
    for nid in neuron_ids_of(run):
        history_path(run, nid).unlink()
    tiny = PRESETS["tiny"].compress
    compress_run(run, replace(tiny, neuron_channel_l1=0.5), neurons=[0, 1, 2, 3], workers=1)  # no pool under pytest
    histories = _histories(run)
    assert len(histories) == 4
    taken = [h for h in histories if h["metrics"]["slimming_l1"] > 0]
    assert taken, "slimming was taken for no neuron"
    for h in histories:
        path, l1 = h["path"], h["metrics"]["slimming_l1"]
        assert l1 in (0.0, 0.5, 0.25, 0.125)
        starts = [s["layer"] for s in path[:3]]
        assert starts == ([None, None, 4] if l1 else [None, 4, 0])
        assert path[0]["channels"] == [64] * 5 and (not l1 or path[1]["channels"] == [64] * 5)
        assert path[-1]["accuracy"] ** 2 >= tiny.prune.threshold * path[0]["accuracy"] ** 2 - 0.02, h["neuron_id"]


def test_a_run_compressed_before_a_setting_existed_resumes_at_its_default(tiny_run, tmp_path):
    """Settings recorded by an older version lack the newer ones; they are read at their defaults, not refused."""
    from dataclasses import replace

    from compactvision.compress import SETTINGS, guard_settings
    from compactvision.errors import ArtifactError

    run = copy_run(tiny_run, tmp_path / "old")
    tiny = PRESETS["tiny"].compress
    recorded = tiny.to_dict()
    for newer in ("neuron_channel_l1", "neuron_scale_lr_ratio", "final_images", "final_lr"):
        recorded.pop(newer)
    (run / SETTINGS).write_text(json.dumps(recorded))
    guard_settings(run, tiny)  # compact models exist: a refusal would raise
    assert json.loads((run / SETTINGS).read_text()) == json.loads(json.dumps(tiny.to_dict()))
    with pytest.raises(ArtifactError, match="neuron_channel_l1"):
        guard_settings(run, replace(tiny, neuron_channel_l1=0.5))  # a real change is still refused
