"""A held-out session's readout: fitted on a frozen trunk, its mask penalty chosen on held-back images only."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from compactvision.artifacts import read_json
from compactvision.models.teacher import PRESETS, build_teacher
from compactvision.readout_fit import ReadoutFitConfig, fit_heldout_readout, member_features
from compactvision.train import pearson_per_neuron

SIZE = 32


def _teacher_and_responses(n_images: int = 400, seed: int = 0, readout: str = "factorised", init: int = 0):
    """A tiny two-member teacher and a new session whose 3 neurons each read one channel at one place of its maps.

    The truth lies inside the model class, so a good fit must find it; the
    noise makes the mask penalty matter. `init` seeds the new readouts' random
    start (drawn from the global generator, it would make a test's outcome
    depend on what ran before it).
    """
    teacher = build_teacher(replace(PRESETS["tiny"], image_size=SIZE, ensemble=2, readout=readout), {"trunk": 2}, seed=seed).eval()
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_images, SIZE, SIZE, 3), dtype=np.uint8)
    maps = member_features(teacher, images)[0].numpy()  # the first member's maps
    h, w = maps.shape[2:]
    places = [(1, h // 2, w // 2), (3, 1, w - 2), (5, h - 2, 1)]
    clean = np.stack([maps[:, c, y, x] for c, y, x in places], axis=1)
    clean = (clean - clean.mean(0)) / (clean.std(0) + 1e-6)
    noisy = clean + rng.normal(0, 1.0, clean.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init)
        teacher.add_session("new", ["n0", "n1", "n2"])
    teacher.set_response_stats("new", noisy.mean(0), noisy.std(0))
    return teacher, images, noisy.astype(np.float32), clean


def test_the_fit_recovers_a_readout_the_trunk_can_express_and_keeps_the_best_penalty():
    teacher, images, noisy, clean = _teacher_and_responses()
    train, val, test = slice(0, 300), slice(300, 340), slice(340, 400)
    config = ReadoutFitConfig(max_steps=600, patience=150, penalty_grid=(1e-3, 1.0))
    record = fit_heldout_readout(teacher, "new", (images[train], noisy[train]), (images[val], noisy[val]), config)

    assert set(record["tried"]) == {"0.001", "1.0"}
    assert record["penalty"] == "mask_l1", "a factorised readout's mask penalty is the one tuned"
    assert record["tried"][str(record["strength"])] == max(record["tried"].values()), "the best held-back r is kept"
    assert all(r.mask_l1 == record["strength"] for r in teacher.readouts_of("new")), "every member fits at the choice"
    with torch.no_grad():
        pred = teacher(torch.as_tensor(images[test]).permute(0, 3, 1, 2).float() / 255, "new").numpy()
    r = pearson_per_neuron(pred, clean[test])
    assert np.median(r) > 0.6, r  # against the noise-free truth, on images the fit never saw


def test_the_held_back_choice_never_sees_other_images():
    """Only `train` and `val` reach the fit: scrambling everything else changes nothing."""
    teacher, images, noisy, _ = _teacher_and_responses(n_images=200)
    config = ReadoutFitConfig(max_steps=60, patience=30, penalty_grid=(0.1,))
    init = [{k: v.clone() for k, v in r.state_dict().items()} for r in teacher.readouts_of("new")]
    first = fit_heldout_readout(teacher, "new", (images[:150], noisy[:150]), (images[150:180], noisy[150:180]), config)
    for r, state in zip(teacher.readouts_of("new"), init):
        r.load_state_dict(state)
    scrambled = noisy.copy()
    scrambled[180:] = np.random.default_rng(9).normal(size=scrambled[180:].shape)
    second = fit_heldout_readout(teacher, "new", (images[:150], scrambled[:150]), (images[150:180], scrambled[150:180]),
                                 config)
    assert first["best_val_r"] == pytest.approx(second["best_val_r"])


def test_an_unknown_session_is_refused():
    teacher, images, noisy, _ = _teacher_and_responses(n_images=60)
    with pytest.raises(KeyError, match="no session 'other'"):
        fit_heldout_readout(teacher, "other", (images, noisy), (images, noisy))


def test_a_gaussian_readout_reads_the_map_at_its_position_and_searches_in_training():
    from compactvision.models.readouts import GaussianReadout

    readout = GaussianReadout(4, 5, 7, 2)
    x = torch.randn(3, 4, 5, 7)
    with torch.no_grad():
        readout.mu.copy_(torch.tensor([[-1.0, -1.0], [1.0 / 3, 0.5]]))  # (x, y): the top-left pixel; column 4, row 3
        readout.features.copy_(torch.eye(4)[:2])
        readout.bias.zero_()
    readout.eval()
    out = readout(x)
    assert torch.allclose(out[:, 0], x[:, 0, 0, 0]) and torch.allclose(out[:, 1], x[:, 1, 3, 4], atol=1e-6)
    readout.train()
    assert not torch.allclose(readout(x), readout(x)), "training draws positions around mu"
    assert readout.tuned_penalty == "feature_l1"


def test_a_gaussian_readout_teacher_fits_a_held_out_session_too():
    teacher, images, noisy, clean = _teacher_and_responses(readout="gaussian")
    train, val, test = slice(0, 300), slice(300, 340), slice(340, 400)
    record = fit_heldout_readout(teacher, "new", (images[train], noisy[train]), (images[val], noisy[val]),
                                 ReadoutFitConfig(max_steps=600, patience=150, penalty_grid=(1e-3, 0.03)))
    assert record["penalty"] == "feature_l1"
    with torch.no_grad():
        pred = teacher(torch.as_tensor(images[test]).permute(0, 3, 1, 2).float() / 255, "new").numpy()
    assert np.median(pearson_per_neuron(pred, clean[test])) > 0.6


def test_cross_validation_chooses_on_every_image_and_fits_every_member_on_all_of_them():
    teacher, images, noisy, clean = _teacher_and_responses()
    fit, val, test = slice(0, 300), slice(300, 340), slice(340, 400)
    config = ReadoutFitConfig(max_steps=600, patience=150, penalty_grid=(1e-3, 1.0), folds=4)
    record = fit_heldout_readout(teacher, "new", (images[fit], noisy[fit]), (images[val], noisy[val]), config)

    assert record["folds"] == 4 and set(record["tried"]) == {"0.001", "1.0"}
    assert record["tried"][str(record["strength"])] == max(record["tried"].values()), "the best mean held-back r wins"
    assert record["steps_run"] == max(record["stop_steps"][str(record["strength"])], config.eval_every)
    assert all(r.mask_l1 == record["strength"] for r in teacher.readouts_of("new"))
    with torch.no_grad():
        pred = teacher(torch.as_tensor(images[test]).permute(0, 3, 1, 2).float() / 255, "new").numpy()
    assert np.median(pearson_per_neuron(pred, clean[test])) > 0.6


def test_cross_validation_sees_only_the_images_it_is_given_and_is_reproducible():
    """The held-back images join the folds; the images after them never reach the fit."""
    teacher, images, noisy, _ = _teacher_and_responses(n_images=200)
    config = ReadoutFitConfig(max_steps=60, patience=30, penalty_grid=(0.1, 1.0), folds=3)
    init = [{k: v.clone() for k, v in r.state_dict().items()} for r in teacher.readouts_of("new")]

    def fitted(responses: np.ndarray) -> tuple[dict, list[torch.Tensor]]:
        for r, state in zip(teacher.readouts_of("new"), init):
            r.load_state_dict(state)
        record = fit_heldout_readout(teacher, "new", (images[:150], responses[:150]),
                                     (images[150:180], responses[150:180]), config)
        return record, [p.detach().clone() for r in teacher.readouts_of("new") for p in r.parameters()]

    first, weights = fitted(noisy)
    scrambled = noisy.copy()
    scrambled[180:] = np.random.default_rng(9).normal(size=scrambled[180:].shape)
    second, again = fitted(scrambled)
    assert first["tried"] == second["tried"]
    assert all(torch.equal(a, b) for a, b in zip(weights, again))
    changed = noisy.copy()
    changed[160:180] = np.random.default_rng(10).normal(size=changed[160:180].shape)
    third, _ = fitted(changed)
    assert third["tried"] != first["tried"], "the held-back images are part of the folds"


@pytest.mark.parametrize("folds", [1, -2])
def test_a_fold_count_that_cannot_cross_validate_is_refused(folds):
    with pytest.raises(ValueError, match="folds must be 0"):
        ReadoutFitConfig(folds=folds)


def test_cross_validation_recovers_the_readout_from_any_start_where_one_held_back_set_may_stop_too_early():
    """40 held-back images choose when to stop as noisily as they choose the penalty: from some random starts
    the fit stops after a few dozen steps. Cross-validated, the stop is chosen on every image."""
    fit, val, test = slice(0, 300), slice(300, 340), slice(340, 400)
    recovered: dict[int, list[float]] = {0: [], 4: []}
    for init in range(6):
        for folds in recovered:
            teacher, images, noisy, clean = _teacher_and_responses(init=init)
            fit_heldout_readout(teacher, "new", (images[fit], noisy[fit]), (images[val], noisy[val]),
                                ReadoutFitConfig(max_steps=600, patience=150, penalty_grid=(1e-3, 1.0), folds=folds))
            with torch.no_grad():
                pred = teacher(torch.as_tensor(images[test]).permute(0, 3, 1, 2).float() / 255, "new").numpy()
            recovered[folds].append(float(np.median(pearson_per_neuron(pred, clean[test]))))
    assert min(recovered[4]) > 0.8, recovered
    assert max(recovered[4]) - min(recovered[4]) < max(recovered[0]) - min(recovered[0]), recovered


def test_a_stopped_cross_validation_resumes_at_the_fold_it_was_in_and_ends_where_an_unbroken_one_does(tmp_path, monkeypatch):
    """Each finished fold is written down; a fit that was stopped repeats none of them and reaches the same readout.
    A journal written for other responses, or one that cannot be read, is not trusted."""
    import compactvision.readout_fit as rf

    teacher, images, noisy, _ = _teacher_and_responses(n_images=200)
    config = ReadoutFitConfig(max_steps=60, patience=30, penalty_grid=(0.1, 1.0), folds=3)
    init = [{k: v.clone() for k, v in r.state_dict().items()} for r in teacher.readouts_of("new")]
    fits: list[int] = []
    real_fit = rf.fit_readouts

    def counted(*args, **kwargs):
        fits.append(1)
        if stop_after is not None and len(fits) > stop_after:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(rf, "fit_readouts", counted)

    def fitted(responses: np.ndarray, journal) -> tuple[dict, list[torch.Tensor]]:
        for r, state in zip(teacher.readouts_of("new"), init):
            r.load_state_dict(state)
        record = fit_heldout_readout(teacher, "new", (images[:150], responses[:150]),
                                     (images[150:180], responses[150:180]), config, journal=journal)
        return record, [p.detach().clone() for r in teacher.readouts_of("new") for p in r.parameters()]

    stop_after = None
    whole, weights = fitted(noisy, None)
    assert len(fits) == 6, "two strengths x three folds, and the final fit has no held-back images"

    journal = tmp_path / "folds.json"
    fits.clear()
    stop_after = 4
    with pytest.raises(KeyboardInterrupt):
        fitted(noisy, journal)
    assert len(read_json(journal)["folds_done"]) == 4
    fits.clear()
    stop_after = None
    resumed, again = fitted(noisy, journal)
    assert len(fits) == 2, "only the folds the stopped fit had not finished"
    assert resumed["tried"] == whole["tried"] and resumed["steps_run"] == whole["steps_run"]
    assert all(torch.equal(a, b) for a, b in zip(weights, again))

    fits.clear()
    other = noisy + np.random.default_rng(3).normal(0, 0.5, noisy.shape).astype(np.float32)
    fitted(other, journal)
    assert len(fits) == 6, "a journal of other responses is fitted again"
    journal.write_text("{not json")
    fits.clear()
    fitted(noisy, journal)
    assert len(fits) == 6 and len(read_json(journal)["folds_done"]) == 6


def test_a_probe_recovers_a_neuron_the_pooled_maps_express_and_blends_with_the_readout(tmp_path):
    """The ridge probe is solved on the first half alone; it predicts a neuron that is a linear function of the
    pooled maps on images it never saw, and the teacher's prediction is the readout and the probe in proportion."""
    from compactvision.models.teacher import load_teacher, save_teacher
    from compactvision.readout_fit import fit_probe

    teacher, images, _, _ = _teacher_and_responses(n_images=300)
    teacher.config = replace(teacher.config, heldout_probe_pool=2, heldout_probe_weight=0.5)
    maps = member_features(teacher, images)
    pooled = [torch.nn.functional.adaptive_avg_pool2d(m, 2).flatten(1).numpy() for m in maps]
    rng = np.random.default_rng(4)
    clean = np.stack([pooled[0] @ rng.normal(size=pooled[0].shape[1]) for _ in range(3)], axis=1)
    clean = (clean - clean.mean(0)) / clean.std(0)
    noisy = (clean + rng.normal(0, 0.5, clean.shape)).astype(np.float32)
    teacher.set_response_stats("new", noisy[:200].mean(0), noisy[:200].std(0))
    record = fit_probe(teacher, "new", images[:200], noisy[:200], folds=4)
    assert record["pool"] == 2 and record["weight"] == 0.5 and record["folds"] == 4
    assert teacher.probed_sessions == ["new"]

    x = torch.as_tensor(images[200:]).permute(0, 3, 1, 2).float() / 255
    probes = [m.probes["session_new"] for m in teacher.members]
    with torch.no_grad():
        shared = teacher.features(x)
        maps_test = [m.back_end(shared) for m in teacher.members]
        probe_alone = torch.stack([p(f) for p, f in zip(probes, maps_test)]).mean(0)
        readout_alone = torch.stack([r(f) for r, f in zip(teacher.readouts_of("new"), maps_test)]).mean(0)
        blended = teacher(x, "new")
    scale = teacher.response_scale("new")
    assert torch.allclose(blended, scale(0.5 * probe_alone + 0.5 * readout_alone), atol=1e-5)
    with torch.no_grad():  # the labels for distillation come from this path: it must blend the same way
        columns = teacher.predict_all_sessions(x)[:, [teacher.neuron_ids.index(i) for i in teacher.sessions["new"]]]
    assert torch.allclose(columns, blended, atol=1e-5)
    assert np.median(pearson_per_neuron(probe_alone.numpy(), clean[200:])) > 0.8

    save_teacher(teacher, tmp_path)
    again = load_teacher(tmp_path, verify=False)
    assert again.probed_sessions == ["new"]
    with torch.no_grad():
        assert torch.equal(again(x, "new"), blended), "the probe travels with the teacher's weights"
    assert again.n_parameters() == teacher.n_parameters() > sum(p.numel() for p in teacher.parameters())
    teacher.reset_session("new")
    assert teacher.probed_sessions == [], "a refit starts without the old probe"


@pytest.mark.parametrize("field, value", [("heldout_probe_pool", -1), ("heldout_probe_weight", 1.5)])
def test_a_probe_setting_out_of_range_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        replace(PRESETS["tiny"], **{field: value})


def _basis_teacher(weight: float = 0.4):
    """A tiny teacher whose trunk session predicts 4 neurons, and a held-out session of 3 neurons that are noisy
    linear combinations of those predictions (so the basis's model class holds the truth)."""
    teacher = build_teacher(replace(PRESETS["tiny"], image_size=SIZE, ensemble=2, heldout_basis_weight=weight),
                            {"trunk": 4}, seed=1).eval()
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (300, SIZE, SIZE, 3), dtype=np.uint8)
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        known = teacher.sessions_z(x, ["trunk"]).numpy()
    clean = known @ rng.normal(size=(4, 3))
    clean = (clean - clean.mean(0)) / clean.std(0)
    noisy = (clean + rng.normal(0, 0.5, clean.shape)).astype(np.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher.add_session("new", ["n0", "n1", "n2"])
    teacher.set_response_stats("new", noisy[:200].mean(0), noisy[:200].std(0))
    return teacher, images, x, noisy, clean


def test_a_neuron_basis_recovers_a_neuron_made_of_the_trunks_neurons_and_blends_in(tmp_path):
    """Solved on the first half alone, the basis predicts unseen images' responses of neurons that combine the
    trunk's own neurons; the teacher's prediction (and the distillation labels) blend it in at its weight, and
    it travels with the weights."""
    from compactvision.models.teacher import load_teacher, save_teacher
    from compactvision.readout_fit import fit_basis

    teacher, images, x, noisy, clean = _basis_teacher(weight=0.4)
    record = fit_basis(teacher, "new", ["trunk"], images[:200], noisy[:200], folds=4)
    assert record["sources"] == ["trunk"] and record["n_regressors"] == 4 and record["weight"] == 0.4
    assert teacher.basis_sessions == {"new": ["trunk"]}
    test = x[200:]
    with torch.no_grad():
        basis_alone = teacher.bases["session_new"](teacher.sessions_z(test, ["trunk"]))
        shared = teacher.features(test)
        readout_alone = torch.stack([r(m.back_end(shared)) for r, m in zip(teacher.readouts_of("new"),
                                                                          teacher.members)]).mean(0)
        blended = teacher(test, "new")
        columns = teacher.predict_all_sessions(test)[:, [teacher.neuron_ids.index(i) for i in teacher.sessions["new"]]]
    assert np.median(pearson_per_neuron(basis_alone.numpy(), clean[200:])) > 0.8
    assert torch.allclose(blended, teacher.response_scale("new")(0.6 * readout_alone + 0.4 * basis_alone), atol=1e-5)
    assert torch.allclose(columns, blended, atol=1e-5), "distillation labels blend the same way"

    save_teacher(teacher, tmp_path)
    again = load_teacher(tmp_path, verify=False)
    assert again.basis_sessions == {"new": ["trunk"]}
    with torch.no_grad():
        assert torch.equal(again(test, "new"), blended)
    assert again.n_parameters() == teacher.n_parameters() == sum(p.numel() for p in teacher.parameters()) + \
        sum(b.numel() for b in teacher.bases["session_new"].buffers())
    teacher.reset_session("new")
    assert teacher.basis_sessions == {}, "a refit starts without the old basis"


def test_a_neuron_basis_must_rest_on_other_sessions_without_bases():
    teacher, images, _, noisy, _ = _basis_teacher()
    for sources in (["new"], ["nowhere"], []):
        with pytest.raises(ValueError, match="other sessions without bases"):
            teacher.add_basis("new", sources)
    teacher.add_basis("new", ["trunk"])
    teacher.add_session("later", ["m0"])
    with pytest.raises(ValueError, match="unusable: \\['new'\\]"):
        teacher.add_basis("later", ["new"])
    with pytest.raises(ValueError, match="already a source"):
        teacher.add_basis("trunk", ["later"])
    off = build_teacher(replace(PRESETS["tiny"], image_size=SIZE), {"trunk": 2, "new": 1})
    with pytest.raises(ValueError, match="heldout_basis_weight is 0"):
        off.add_basis("new", ["trunk"])
    with pytest.raises(ValueError, match="heldout_basis_weight"):
        replace(PRESETS["tiny"], heldout_basis_weight=1.5)
