"""The twin's truth as the teacher: a truth run distils the twin itself, scored on the twin run's own data."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from compactvision.artifacts import list_students, read_json, read_manifest, save_weights, write_manifest
from compactvision.cli import main
from compactvision.compress import CompressConfig
from compactvision.data.formats import load_npz, save_npz
from compactvision.data.twin import twin_from_ground_truth
from compactvision.distill import LabelCache
from compactvision.errors import ArtifactError, DataError
from compactvision.models.teacher import load_teacher
from compactvision.models.truth import TruthTeacher
from compactvision.rundir import HELDOUT, TRAIN_IMAGES, history_path, neuron_ids_of, training_images
from compactvision.truth_run import prepare_truth_run
from conftest import ROOT, copy_run, load_benchmark

def _rerecord(run) -> None:
    """Re-record a run's manifest after a test changed its files, as a user's own edit would have to."""
    manifest = read_manifest(run, verify=False)
    write_manifest(run, kind=manifest["kind"], config=manifest["config"], metrics=manifest["metrics"])


def _twin_of(run):
    held = load_npz(run / HELDOUT)
    return twin_from_ground_truth(held.ground_truth, image_size=held.sessions[0].images.shape[1]), held


def test_the_truth_teacher_is_the_twin_and_its_run_holds_the_twin_runs_data(tiny_run, tmp_path):
    out = prepare_truth_run(tiny_run, tmp_path / "truth")
    teacher = load_teacher(out)
    assert isinstance(teacher, TruthTeacher) and teacher.n_parameters() == 0
    twin, held = _twin_of(tiny_run)
    assert neuron_ids_of(out) == neuron_ids_of(tiny_run) == twin.neuron_ids
    images = held.sessions[0].images[:16]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        assert torch.equal(teacher.predict_all_sessions(x), twin(x)), "the noise-free rates themselves"
    # Scored on the same held-out images; distilled from the same training images.
    assert (out / HELDOUT).read_bytes() == (tiny_run / HELDOUT).read_bytes()
    assert np.array_equal(training_images(out), training_images(tiny_run))
    assert read_manifest(out)["config"]["own_images"] == "copied"
    # Asked again for the same twin run, the truth run is reused as it is.
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert prepare_truth_run(tiny_run, out) == out and (out / "manifest.json").stat().st_mtime_ns == stamp


def test_a_twin_run_without_its_cache_gets_its_training_images_made_again(tiny_run, tmp_path):
    """The bundle ships without its cache; the twin's recorded design makes the same images again."""
    bare = copy_run(tiny_run, tmp_path / "bare")
    shutil.rmtree(bare / ".cache")
    out = prepare_truth_run(bare, tmp_path / "truth")
    assert read_manifest(out)["config"]["own_images"] == "made again"
    assert np.array_equal(training_images(out), training_images(tiny_run))
    # A design the images cannot be made from again is said, not guessed.
    data = read_json(bare / "data.json")
    data["dataset_metadata"]["seed"] += 1
    (bare / "data.json").write_text(json.dumps(data))
    _rerecord(bare)
    other = prepare_truth_run(bare, tmp_path / "truth2")
    assert read_manifest(other)["config"]["own_images"].startswith("none")
    assert not (other / TRAIN_IMAGES).exists()


def test_recordings_other_runs_and_forged_weights_are_refused(tiny_run, tmp_path):
    recorded = copy_run(tiny_run, tmp_path / "recorded")
    held = load_npz(recorded / HELDOUT)
    held.ground_truth = None
    save_npz(held, recorded / HELDOUT)
    _rerecord(recorded)
    with pytest.raises(DataError, match="no ground truth"):
        prepare_truth_run(recorded, tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists(), "nothing written before the checks"
    out = prepare_truth_run(tiny_run, tmp_path / "truth")
    with pytest.raises(ArtifactError, match="not of"):
        prepare_truth_run(copy_run(tiny_run, tmp_path / "another"), out)
    with pytest.raises(ArtifactError, match="not a truth run"):
        prepare_truth_run(tiny_run, tiny_run)
    save_weights(out / "teacher" / "teacher.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(ArtifactError):
        load_teacher(out)  # the manifest's hash no longer matches
    with pytest.raises(ArtifactError, match="twin-truth"):
        load_teacher(out, verify=False)


@pytest.fixture(scope="module")
def truth_run(tiny_run, tmp_path_factory):
    """`compactvision compress-truth` on the tiny run, one neuron, as a user runs it. Tests copy before changing it."""
    out = tmp_path_factory.mktemp("truth") / "truth"
    main(["compress-truth", str(tiny_run), "--out", str(out), "--neurons", "0", "--workers", "1",
          "--progress-format", "none"])
    return out


def test_compress_truth_distils_the_twin_with_the_twin_runs_settings_and_resumes(tiny_run, truth_run, tmp_path):
    ids = neuron_ids_of(truth_run)
    assert list_students(truth_run) == [ids[0]] and read_manifest(truth_run)["kind"] == "compressed"
    # Without --preset, the settings the twin run's own compact models were made with: like for like.
    assert read_manifest(truth_run)["config"]["compress"] == read_manifest(tiny_run)["config"]["compress"]
    record = read_json(history_path(truth_run, ids[0]))
    assert {"r_teacher", "r_truth", "r_heldout"} <= set(record["metrics"])
    # The labels are the twin's noise-free rates on the stream's images.
    cache = LabelCache(truth_run / ".cache" / "labels")
    twin, _ = _twin_of(tiny_run)
    images = np.array(cache.images[:32])  # a copy: the cache is a read-only memory map
    assert np.allclose(np.asarray(cache.labels[:32]), twin.rates(images).T, rtol=1e-4, atol=1e-5)
    # Rerun (after a Ctrl-C, or for more neurons): what is done is kept.
    out = copy_run(truth_run, tmp_path / "again")
    stamp = history_path(out, ids[0]).stat().st_mtime_ns
    main(["compress-truth", str(tiny_run), "--out", str(out), "--neurons", "0", "1", "--workers", "1",
          "--progress-format", "none"])
    assert history_path(out, ids[0]).stat().st_mtime_ns == stamp and len(list_students(out)) == 2


@pytest.mark.parametrize("page", sorted(p.stem for p in (ROOT / "pages").glob("*.py")))
def test_every_page_works_on_a_truth_run_and_says_why_it_has_no_teacher(truth_run, page, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("COMPACTVISION_RUN", str(truth_run))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    if page in ("home", "gabor_bank"):
        assert any("distilled from the digital twin itself" in e.value for e in [*at.caption, *at.info])
    if page == "gallery":
        assert "r teacher" not in at.dataframe[0].value.columns, "no column of blanks without teacher scores"


def test_the_benchmark_sets_both_runs_side_by_side(tiny_run, truth_run, capsys):
    bench = load_benchmark("truth")
    bench.print_side_by_side(tiny_run, truth_run)
    out = capsys.readouterr().out
    first = neuron_ids_of(truth_run)[0]
    assert first in out and "median total filters one-stage" in out and "from the truth" in out
    bench.print_recovery(tiny_run, {"the truth's unpruned student": bench.unpruned_columns(truth_run),
                                    "the run's compact models": bench.compact_models(tiny_run)})
    out = capsys.readouterr().out
    n = len(neuron_ids_of(tiny_run))
    assert "the truth's unpruned student | the run's compact models" in out
    assert out.strip().splitlines()[-1].split()[0] == "total" and out.count(f"/{n}") == 2


def test_compress_truth_takes_the_runs_own_settings_seed_included_unless_told(tiny_run, tmp_path):
    from compactvision import cli

    recorded = read_manifest(tiny_run)["config"]["compress"]
    run = tmp_path / "seeded"
    run.mkdir()
    write_manifest(run, kind="pipeline", config={"compress": {**recorded, "seed": 5}})

    def config(*options):
        args = cli.build_parser().parse_args(["compress-truth", str(run), "--out", str(tmp_path / "t"), *options])
        return args.func, cli._truth_compression_config(args)

    func, own = config()
    assert func is cli._compress_truth and own.seed == 5
    assert own.to_dict() == CompressConfig.from_dict({**recorded, "seed": 5}).to_dict()
    assert config("--seed", "2")[1].seed == 2
    assert config("--threshold", "0.8")[1].prune.threshold == 0.8
    from compactvision.pipeline import COMPRESS_PRESETS

    preset = config("--preset", "tiny")[1]
    assert preset.seed == 0 and preset.to_dict() == COMPRESS_PRESETS["tiny"].to_dict()
