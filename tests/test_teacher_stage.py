"""The teacher stage adapts to the data it is given: its image size, and the held-out sessions a user names."""
from __future__ import annotations

import json

import numpy as np
import pytest

from compactvision.data.formats import NeuralDataset, Session
from compactvision.data.twin import make_twin_dataset
from compactvision.errors import DataError
from compactvision.models.readouts import FactorisedReadout
from compactvision.teacher_stage import train_teacher


def _sessions(ids: list[str], size: int = 32) -> NeuralDataset:
    """A small multi-session release: the twin's neurons split into sessions of their own images."""
    ds = make_twin_dataset(6, 90 * len(ids), 2, seed=1, image_size=size)
    s = ds.sessions[0]
    per = s.n_images // len(ids)
    return NeuralDataset([Session(sid, s.images[i * per:(i + 1) * per], s.responses[2 * i:2 * i + 2, i * per:(i + 1) * per],
                                  s.neuron_ids[2 * i:2 * i + 2]) for i, sid in enumerate(ids)], {"source": "sessions"})


def test_a_64px_dataset_trains_a_64px_teacher(tmp_path):
    ds = make_twin_dataset(4, 120, 2, seed=0, image_size=64)
    manifest = train_teacher(ds, tmp_path / "run", preset="tiny", epochs=1, progress=False)
    assert manifest["config"]["teacher"]["image_size"] == 64
    assert np.isfinite(manifest["metrics"]["teacher"]["r"]["median"])


def test_a_session_is_scored_on_its_own_test_images(tmp_path):
    ds = make_twin_dataset(4, 80, 3, seed=0, image_size=32, test_images=12)
    train_teacher(ds, tmp_path / "run", preset="tiny", epochs=1, progress=False)
    split = json.loads((tmp_path / "run" / "data.json").read_text())["sessions"]["twin"]["split"]
    assert split["test"] == ds.sessions[0].metadata["test_indices"]
    assert not set(split["train"]) & set(split["test"]) and len(split["train"]) + len(split["val"]) == 68


def test_an_image_size_that_contradicts_the_data_is_refused_before_training(tmp_path):
    ds = make_twin_dataset(4, 60, 2, seed=0, image_size=64)
    with pytest.raises(DataError, match="64x64 px but image_size=112"):
        train_teacher(ds, tmp_path / "run", preset="tiny", epochs=1, progress=False,
                      config_overrides={"image_size": 112})
    assert not (tmp_path / "run").exists(), "nothing is written"


def test_cowley_protocol_holds_out_the_sessions_the_user_names(tmp_path):
    ds = _sessions(["s1", "s2", "s3"])
    train_teacher(ds, tmp_path / "run", preset="tiny", epochs=1, progress=False, protocol="cowley",
                  test_sessions=("s3",), config_overrides={"image_size": 32})
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["test_sessions"] == ["s3"]
    metrics = json.loads((tmp_path / "run" / "history" / "teacher_metrics.json").read_text())
    assert list(metrics["by_session"]) == ["s3"]


def test_a_missing_test_session_is_one_clear_error_naming_it(tmp_path):
    ds = _sessions(["s1", "s2"])
    with pytest.raises(DataError, match=r"test session\(s\) \['s9'\] not in the data; it has \['s1', 's2'\]"):
        train_teacher(ds, tmp_path / "run", preset="tiny", epochs=1, progress=False, protocol="cowley",
                      test_sessions=("s2", "s9"), config_overrides={"image_size": 32})
    assert not (tmp_path / "run").exists(), "nothing is written"


def test_the_validation_session_is_kept_out_of_the_trunk_and_scored_apart(tmp_path):
    """Settings are chosen on the validation session; the test sessions' second halves stay for the final figure."""
    ds = _sessions(["s1", "210224", "s3"])
    manifest = train_teacher(ds, tmp_path / "run", preset="tiny", epochs=1, progress=False, protocol="cowley",
                             test_sessions=("s3",), config_overrides={"image_size": 32})
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["validation_session"] == "210224", "the release's validation session by default"
    metrics = json.loads((tmp_path / "run" / "history" / "teacher_metrics.json").read_text())
    assert list(metrics["by_session"]) == ["s3"], "the test score never mixes in the validation session"
    assert {"readout_s3", "readout_210224"} <= set(metrics["training"]), "its readout is fitted on its first half"
    assert manifest["metrics"]["validation"]["session"] == "210224"
    assert manifest["metrics"]["validation"]["r"]["n"] == 2
    # Named by the user, any other session plays that part.
    named = train_teacher(ds, tmp_path / "named", preset="tiny", epochs=1, progress=False, protocol="cowley",
                          test_sessions=("s3",), validation_session="s1", config_overrides={"image_size": 32})
    assert named["metrics"]["validation"]["session"] == "s1"


def test_a_missing_validation_session_is_one_clear_error_naming_it(tmp_path):
    ds = _sessions(["s1", "s2", "s3"])
    with pytest.raises(DataError, match=r"validation session 's7' is not among the training sessions"):
        train_teacher(ds, tmp_path / "run", preset="tiny", epochs=1, progress=False, protocol="cowley",
                      test_sessions=("s3",), validation_session="s7", config_overrides={"image_size": 32})
    assert not (tmp_path / "run").exists(), "nothing is written"
    with pytest.raises(DataError, match="no session is left"):
        train_teacher(_sessions(["s1", "s3"]), tmp_path / "run", preset="tiny", epochs=1, progress=False,
                      protocol="cowley", test_sessions=("s3",), validation_session="s1",
                      config_overrides={"image_size": 32})


def test_a_resumed_run_keeps_the_held_out_readouts_it_already_fitted(tmp_path, monkeypatch):
    """Killed after the held-out readouts were fitted, a resumed run reloads them instead of fitting again."""
    import compactvision.teacher_stage as stage

    ds = _sessions(["s1", "s2", "s3"])
    kwargs = dict(preset="tiny", epochs=1, progress=False, protocol="cowley", test_sessions=("s3",),
                  validation_session="s2", config_overrides={"image_size": 32}, resume=True)

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "score_session", killed)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(ds, tmp_path / "run", **kwargs)
    saved = sorted(p.parent.name for p in (tmp_path / "run" / "checkpoints").rglob(stage.READOUT_CHECKPOINT))
    assert saved == ["readout_s2", "readout_s3"]
    monkeypatch.undo()
    fitted = []
    real = stage.fit_heldout_readout
    monkeypatch.setattr(stage, "fit_heldout_readout", lambda *a, **k: fitted.append(a[1]) or real(*a, **k))
    manifest = train_teacher(ds, tmp_path / "run", **kwargs)
    assert fitted == [], "both readouts came back from their checkpoints"
    metrics = json.loads((tmp_path / "run" / "history" / "teacher_metrics.json").read_text())
    assert "strength" in metrics["training"]["readout_s3"], "the record of how each was chosen travels with the run"
    assert manifest["metrics"]["validation"]["session"] == "s2"


def test_a_run_resumed_with_another_readout_fit_fits_its_held_out_readouts_again(tmp_path, monkeypatch):
    """A readout checkpoint records how it was fitted; resumed with other `readout_folds`, it is not reused."""
    import compactvision.teacher_stage as stage

    ds = _sessions(["s1", "s2", "s3"])
    kwargs = dict(preset="tiny", epochs=1, progress=False, protocol="cowley", test_sessions=("s3",),
                  validation_session="s2", resume=True)

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "score_session", killed)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(ds, tmp_path / "run", config_overrides={"image_size": 32}, **kwargs)
    monkeypatch.undo()
    fitted = []
    real = stage.fit_heldout_readout
    monkeypatch.setattr(stage, "fit_heldout_readout", lambda *a, **k: fitted.append(a[1]) or real(*a, **k))
    train_teacher(ds, tmp_path / "run", config_overrides={"image_size": 32, "readout_folds": 2}, **kwargs)
    assert fitted == ["s3", "s2"]
    metrics = json.loads((tmp_path / "run" / "history" / "teacher_metrics.json").read_text())
    assert metrics["training"]["readout_s3"]["folds"] == 2


def test_a_trunk_that_sees_the_held_out_first_halves_never_sees_their_second_halves(tmp_path):
    """With `trunk_sees_held_out`, the held-out sessions' first halves train the trunk; their second halves do not.

    Two runs whose data differ only in the held-out sessions' second-half
    responses must end with the same teacher: any leak would change it.
    """
    import torch

    from compactvision.models.teacher import load_teacher

    kwargs = dict(preset="tiny", epochs=1, progress=False, protocol="cowley", test_sessions=("s3",),
                  validation_session="s2", config_overrides={"image_size": 32, "trunk_sees_held_out": True})
    ds = _sessions(["s1", "s2", "s3"])
    train_teacher(ds, tmp_path / "a", **kwargs)
    for s in ds.sessions[1:]:
        s.responses[:, s.n_images // 2:] = np.random.default_rng(0).poisson(5.0, s.responses[:, s.n_images // 2:].shape)
    train_teacher(ds, tmp_path / "b", **kwargs)
    a, b = load_teacher(tmp_path / "a"), load_teacher(tmp_path / "b")
    assert set(a.sessions) == {"s1", "s2", "s3"}
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), f"{name} depends on the second halves"
    metrics = json.loads((tmp_path / "a" / "history" / "teacher_metrics.json").read_text())
    trunk = metrics["training"]["teacher"]
    assert trunk, "the trunk trained"
    assert {"readout_s2", "readout_s3"} <= set(metrics["training"]), "each held-out readout is refitted on the frozen trunk"
    # Without the option the trunk trains on s1 alone, and comes out different.
    plain = train_teacher(ds, tmp_path / "plain", **{**kwargs, "config_overrides": {"image_size": 32}})
    c = load_teacher(tmp_path / "plain")
    assert any(not torch.equal(x, c.state_dict()[n]) for n, x in a.state_dict().items()
               if n in c.state_dict() and "readout" not in n and "scale" not in n), "the first halves trained the trunk"
    assert plain["config"]["teacher"]["trunk_sees_held_out"] is False


def test_a_pipeline_preset_with_a_test_set_scores_its_teacher_on_exactly_those_images(tmp_path):
    """`PipelinePreset.test_images` reaches the twin: N repeated test images are the held-out set, the rest seen once."""
    from dataclasses import replace

    import numpy as np

    from compactvision.pipeline import PRESETS, pipeline_teacher
    from compactvision.rundir import heldout_data

    p = replace(PRESETS["tiny"], images=300, test_images=40, image_size=32,
                teacher_overrides={**PRESETS["tiny"].teacher_overrides, "epochs": 1})
    pipeline_teacher(p, tmp_path)
    (held,) = heldout_data(tmp_path)["sessions"].values()
    assert len(held["images"]) == 40
    assert np.isfinite(held["responses"]).all(), "every test image was shown every repeat"
    with pytest.raises(ValueError, match="test_images"):
        replace(p, test_images=299)


def test_cross_validated_held_out_readouts_are_recorded_and_a_refit_redoes_them_on_the_frozen_trunk(tmp_path):
    """`readout_folds` reaches the held-out fits; a refit of a finished teacher's readout is reproducible and
    leaves every other weight as it was."""
    import torch

    from compactvision.models.teacher import load_teacher
    from compactvision.teacher_stage import refit_heldout_readout

    ds = _sessions(["s1", "s2", "s3"])
    train_teacher(ds, tmp_path / "run", preset="tiny", epochs=1, progress=False, protocol="cowley",
                  test_sessions=("s3",), validation_session="s2",
                  config_overrides={"image_size": 32, "readout_folds": 3})
    metrics = json.loads((tmp_path / "run" / "history" / "teacher_metrics.json").read_text())
    record = metrics["training"]["readout_s3"]
    assert record["folds"] == 3 and record["steps_run"] >= 10 and set(record["stop_steps"]) == set(record["tried"])

    teacher = load_teacher(tmp_path / "run")
    assert teacher.config.readout_folds == 3
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    split = json.loads((tmp_path / "run" / "data.json").read_text())["sessions"]["s3"]["split"]
    again = refit_heldout_readout(teacher, ds.session("s3"), split, ["s1"])
    assert again["folds"] == 3 and set(again["tried"]) == set(record["tried"])
    after = {k: v.clone() for k, v in teacher.state_dict().items()}
    readout = {k for k in after if ".readouts.session_s3." in k}
    assert len(readout) == 3 * len(teacher.members), sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in after if k not in readout), "only s3's readout is refitted"
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in readout), \
        "from the teacher's seed the refit is the stage's own fit again"
    teacher.seed = 1
    other = refit_heldout_readout(teacher, ds.session("s3"), split, ["s1"])
    assert other["folds"] == 3
    assert any(not torch.equal(after[k], v) for k, v in teacher.state_dict().items() if k in readout), \
        "another seed draws other fresh readouts: the refit fits afresh"


def test_a_run_stopped_inside_a_cross_validated_readout_fit_resumes_at_its_fold(tmp_path, monkeypatch):
    """The held-out readouts' folds are kept as they finish, so a kill costs at most the fold it was in."""
    import compactvision.readout_fit as rf
    import compactvision.teacher_stage as stage

    ds = _sessions(["s1", "s2", "s3"])
    kwargs = dict(preset="tiny", epochs=1, progress=False, protocol="cowley", test_sessions=("s3",),
                  validation_session="s2", resume=True, config_overrides={"image_size": 32, "readout_folds": 2})
    real, fits, stop = rf.fit_readouts, [], {"after": 3}

    def counted(*a, **k):
        fits.append(1)
        if len(fits) > stop["after"]:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(rf, "fit_readouts", counted)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(ds, tmp_path / "run", **kwargs)
    journals = list((tmp_path / "run" / "checkpoints").rglob(stage.READOUT_FOLDS))
    assert len(journals) == 1 and len(json.loads(journals[0].read_text())["folds_done"]) == 3
    per_session = 2 * len(FactorisedReadout.penalty_grid)  # folds x strengths
    fits.clear()
    stop["after"] = 10 ** 6
    train_teacher(ds, tmp_path / "run", **kwargs)
    assert len(fits) == 2 * per_session - 3, "the three finished folds are not fitted again"
    assert not (tmp_path / "run" / "checkpoints").exists(), "a finished run ships no journal"


def test_held_out_sessions_get_their_probes_from_their_first_halves_and_keep_them(tmp_path):
    """With `heldout_probe_pool`, every held-out session's prediction blends in a probe fitted on its first half;
    the saved teacher reloads with them, and the record says how each was fitted."""
    import torch

    from compactvision.models.teacher import load_teacher

    ds = _sessions(["s1", "s2", "s3"])
    train_teacher(ds, tmp_path / "run", preset="tiny", epochs=1, progress=False, protocol="cowley",
                  test_sessions=("s3",), validation_session="s2",
                  config_overrides={"image_size": 32, "heldout_probe_pool": 2})
    teacher = load_teacher(tmp_path / "run")
    assert sorted(teacher.probed_sessions) == ["s2", "s3"], "the trunk's own session reads out as before"
    probe = teacher.members[0].probes["session_s3"]
    assert probe.pool == 2 and probe.blend == 0.5 and torch.count_nonzero(probe.weight) > 0
    metrics = json.loads((tmp_path / "run" / "history" / "teacher_metrics.json").read_text())
    assert metrics["training"]["readout_s3"]["probe"]["pool"] == 2
    # The probe alone (weight 1) leaves the readout unfitted, and says so.
    train_teacher(ds, tmp_path / "alone", preset="tiny", epochs=1, progress=False, protocol="cowley",
                  test_sessions=("s3",), validation_session="s2",
                  config_overrides={"image_size": 32, "heldout_probe_pool": 2, "heldout_probe_weight": 1.0})
    metrics = json.loads((tmp_path / "alone" / "history" / "teacher_metrics.json").read_text())
    assert "not fitted" in metrics["training"]["readout_s3"]["readout"]


def test_held_out_sessions_get_neuron_bases_over_the_trunks_sessions_alone(tmp_path):
    """With `heldout_basis_weight`, each held-out session's basis combines the neurons of the sessions the trunk
    trained on, never another held-out session's (the validation session is not a test session's source); it
    reloads with the teacher. A basis of weight 1 predicts alone: neither readout nor probe is fitted."""
    import torch

    from compactvision.models.teacher import load_teacher

    ds = _sessions(["s1", "s2", "s3"])
    kwargs = dict(preset="tiny", epochs=1, progress=False, protocol="cowley", test_sessions=("s3",),
                  validation_session="s2")
    train_teacher(ds, tmp_path / "run", **kwargs,
                  config_overrides={"image_size": 32, "heldout_probe_pool": 2, "heldout_basis_weight": 0.3})
    teacher = load_teacher(tmp_path / "run")
    assert teacher.basis_sessions == {"s2": ["s1"], "s3": ["s1"]}
    assert sorted(teacher.probed_sessions) == ["s2", "s3"]
    assert teacher.bases["session_s3"].blend == 0.3 and torch.count_nonzero(teacher.bases["session_s3"].weight) > 0
    record = json.loads((tmp_path / "run" / "history" / "teacher_metrics.json").read_text())["training"]["readout_s3"]
    assert record["basis"]["sources"] == ["s1"] and record["basis"]["n_regressors"] == len(ds.session("s1").neuron_ids)

    train_teacher(ds, tmp_path / "alone", **kwargs,
                  config_overrides={"image_size": 32, "heldout_probe_pool": 2, "heldout_basis_weight": 1.0})
    record = json.loads((tmp_path / "alone" / "history" / "teacher_metrics.json").read_text())["training"]["readout_s3"]
    assert "not fitted" in record["readout"] and "probe" not in record and "basis" in record
    assert load_teacher(tmp_path / "alone").probed_sessions == []
