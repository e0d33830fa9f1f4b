"""Re-compression: a published compact model as the teacher of its neuron, distilled and pruned again."""
from __future__ import annotations

import shutil
import signal
from dataclasses import replace

import pytest
import torch

from compactvision.artifacts import list_students, load_student, read_json, read_manifest
from compactvision import cli
from compactvision.cli import main
from compactvision.compress import CompressConfig, compress_run
from compactvision.cowley import import_cowley
from compactvision.cowley.recompress import prepare_recompress
from compactvision.distill import LabelCache, StreamConfig
from compactvision.errors import ArtifactError, DataError
from compactvision.models.teacher import load_teacher
from compactvision.prune import PruneConfig
from compactvision.cowley.scoring import load_session
from compactvision.rundir import (SHARED_STUDENT, heldout_data, history_path, neuron_ids_of, teacher_image_size,
                                  training_images)
from conftest import load_benchmark
from test_cowley_import import fake_release  # a miniature release in the real layout

#: Small enough for the suite: 8-filter students on a 512-image stream (the published models are 112 px).
#: Shaped like the `recompress` preset: a shared student read out at rank one, its copies pruned directly,
#: trained on NHWC tensors.
TINY = CompressConfig(stream=StreamConfig(n_images=512, image_size=112, chunk=128), strategy="shared",
                      readout_form="factorised", student_channels=(8, 8, 8, 8, 8), shared_epochs=1, neuron_epochs=0,
                      neuron_images=256, finetune_epochs=1, finetune_images=64, final_epochs=1, batch_size=32,
                      probe_images=64, score_images=64, prune=PruneConfig(min_filters=2), channels_last=True)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = fake_release(tmp_path_factory.mktemp("release"), n_models=2, n_images=40)
    run = tmp_path_factory.mktemp("imported") / "run"
    import_cowley(root / "compact_models", run, device="cpu")
    return run


def test_the_bank_teacher_answers_as_each_published_model(imported, tmp_path):
    out = prepare_recompress(imported, tmp_path / "re")
    assert read_manifest(out)["kind"] == "recompress"
    assert neuron_ids_of(out) == ["100101_neuron0", "100101_neuron1"] and teacher_image_size(out) == 112
    bank = load_teacher(out)
    x = torch.rand(3, 3, 112, 112)
    for k, nid in enumerate(bank.neuron_ids):
        assert torch.allclose(bank(x)[:, k], load_student(imported, nid)(x)[:, 0], atol=1e-5)
    # Labelling runs the BN-folded form: the same function.
    assert torch.allclose(bank.fused()(x), bank(x), atol=1e-5)
    held = heldout_data(out)["sessions"]["100101"]
    assert len(held["images"]) == 20, "the held-out second half only"
    assert held["responses"].shape == (2, 20)


def test_the_stream_pool_holds_other_sessions_images_and_never_a_held_out_one(tmp_path):
    root = fake_release(tmp_path / "release", n_models=1, n_images=40)
    other = fake_release(tmp_path / "other", session="100102", n_models=1, n_images=12)
    for sub in ("images/images_100102.zip", "responses_repeat_averaged/responses_100102.npy"):
        shutil.copy(other / sub, root / sub)
    import_cowley(root / "compact_models", tmp_path / "imported", device="cpu", sessions=["100101"])
    out = prepare_recompress(tmp_path / "imported", tmp_path / "re")
    pool = training_images(out)
    session = load_session(root, "100101")
    assert len(pool) == 20 + 12, "the first half of the re-compressed session and every image of the other one"
    assert all((pool == img).all(axis=(1, 2, 3)).any() for img in session.images[:20])
    for img in session.images[20:]:
        assert not (pool == img).all(axis=(1, 2, 3)).any(), "a held-out image reached the distillation stream"


def test_recompression_distils_prunes_and_resumes_per_neuron(imported, tmp_path, capsys):
    out = prepare_recompress(imported, tmp_path / "ours_a", per_session=2)
    compress_run(out, TINY, neurons=[0], workers=1)
    first = history_path(out, "100101_neuron0")
    stamp = first.stat().st_mtime_ns
    assert not history_path(out, "100101_neuron1").exists()
    # Rerunning (the command after a Ctrl-C) keeps what is done and does the rest.
    assert prepare_recompress(imported, out) == out
    summary = compress_run(out, TINY, workers=1)
    assert first.stat().st_mtime_ns == stamp
    assert summary["n_students"] == 2 and list_students(out) == ["100101_neuron0", "100101_neuron1"]
    # The stages every neuron shares are timed, so a benchmark can charge each neuron its part.
    assert set(summary["stage_seconds"]) == {"labels", "shared_student"}
    assert all(s > 0 for s in summary["stage_seconds"].values())
    cli._print_compression(summary)
    assert "shared by every neuron: labels" in capsys.readouterr().out
    for nid in list_students(out):
        record = read_json(history_path(out, nid))
        path = record["path"]
        assert path[0]["channels"] == [8] * 5, "a fresh wide student, not the published one"
        assert path[-1]["n_parameters"] < path[0]["n_parameters"]
        assert "r_heldout" in record["metrics"], "scored against the measured held-out responses"
    # The benchmark's table puts each neuron's shortfall on distillation (the unpruned column) or on pruning.
    bench = load_benchmark("recompress")
    rows = bench.neuron_rows(imported, out)
    assert [r["neuron"] for r in rows] == ["100101_neuron0", "100101_neuron1"]
    for r in rows:
        assert -1 <= r["r_distilled_vs_theirs"] <= 1 and -1 <= r["r_ours_vs_theirs"] <= 1
        assert r["params_ours"] < 8 * 8 * 25 * 5 and r["seconds"] > 0
    bench.print_table(rows)
    bench.print_time(rows, summary["stage_seconds"], workers=2)
    printed = capsys.readouterr().out
    assert "r distilled~theirs" in printed and "on 2 workers the sample costs" in printed
    stream = bench.distilled_r_stream(out)
    assert sorted(stream) == ["100101_neuron0", "100101_neuron1"] and all(-1 <= r <= 1 for r in stream.values())
    # Cut to its full rank (3 channels), a published readout is itself; cut to rank one, at most as close.
    caps = bench.readout_rank_cap(imported, out, bench.published_predictions(imported, out), ranks=(1, 3))
    assert set(caps) == {"100101_neuron0", "100101_neuron1"}
    assert all(c[1] == pytest.approx(1.0, abs=1e-6) and c[0] <= c[1] + 1e-9 for c in caps.values())
    # A variant of the same sample that labels the same stream takes the labels instead of making them again,
    # and the shared student too where only what happens per neuron differs.
    variant = prepare_recompress(imported, tmp_path / "ours_b", per_session=2)
    assert bench.reuse_shared_stages(variant, tmp_path, replace(TINY, stream=replace(TINY.stream, n_images=256))) \
        == (None, [])
    assert bench.reuse_shared_stages(variant, tmp_path, replace(TINY, shared_epochs=TINY.shared_epochs + 1)) \
        == (out, ["labels"])
    assert LabelCache(variant / ".cache" / "labels").seconds == LabelCache(out / ".cache" / "labels").seconds
    assert not (variant / SHARED_STUDENT).exists()
    assert bench.reuse_shared_stages(variant, tmp_path, TINY) == (None, []), "a run with labels keeps its own"
    per_neuron = prepare_recompress(imported, tmp_path / "ours_c", per_session=2)
    assert bench.reuse_shared_stages(per_neuron, tmp_path, replace(TINY, neuron_epochs=TINY.neuron_epochs + 1)) \
        == (out, ["labels", "shared student"])
    assert (per_neuron / SHARED_STUDENT).read_bytes() == (out / SHARED_STUDENT).read_bytes()


def test_unknown_neurons_and_wrong_runs_are_refused_before_anything_is_written(imported, tmp_path):
    with pytest.raises(DataError, match="not in the imported run"):
        prepare_recompress(imported, tmp_path / "a", neurons=["100101_neuron7"])
    with pytest.raises(DataError, match="sessions"):
        prepare_recompress(imported, tmp_path / "b", sessions=["999999"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    teacherless = tmp_path / "c"
    prepare_recompress(imported, teacherless)
    with pytest.raises(ArtifactError, match="import-cowley"):
        prepare_recompress(teacherless, tmp_path / "d")
    assert main(["recompress", str(imported), "--out", str(tmp_path / "e"), "--neurons", "nope"]) != 0
    assert not (tmp_path / "e").exists()


def test_the_benchmark_scores_finished_neurons_only_and_starts_no_work_for_that(tmp_path, capsys):
    """`--finished-only` reads what a cut-short run left; with nothing finished it says so and labels nothing."""
    bench = load_benchmark("recompress")
    root = fake_release(tmp_path / "release", n_models=2, n_images=40)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        code = bench.main(["--release", str(root), "--work", str(tmp_path / "w"), "--sessions", "100101",
                           "--per-session", "1", "--preset", "tiny", "--finished-only"])
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    assert code == 1 and "no neuron is finished yet" in capsys.readouterr().err
    run = tmp_path / "w" / "ours_1_tiny_100101"
    assert neuron_ids_of(run) == ["100101_neuron0"], "--per-session picks the sample, GPU or not"
    assert not (run / ".cache" / "labels").exists() and not (run / SHARED_STUDENT).exists()


def test_each_variant_runs_in_a_folder_named_for_what_it_changes():
    """Runs made before keep their names (so they resume), and a setting reaches the config at its dotted place."""
    bench = load_benchmark("recompress")
    preset = bench.COMPRESS_PRESETS["recompress"]
    assert bench.variant_name(4, "recompress", preset) == "4"
    assert bench.variant_name(None, "tiny", bench.COMPRESS_PRESETS["tiny"]) == "all_tiny"
    config = preset
    for path, value in (("stream.n_images", 65536), ("stream.own_zoom", 0.3), ("prune.threshold", 0.8),
                        ("round_epochs", 2), ("prune.budget", "even")):
        config = bench._with_setting(config, path, value)
    assert config.stream.n_images == 65536 and config.prune.threshold == 0.8 and config.prune.budget == "even"
    assert config.prune.rounds == preset.prune.rounds and config.stream.image_size == preset.stream.image_size
    assert bench.variant_name(4, "recompress", config) == "4_i65536_z0.3_t0.8_re2_even"
