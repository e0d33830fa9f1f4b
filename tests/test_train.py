"""The training loop: it learns, it resumes to the very same weights, its checkpoints are safe."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compactvision.errors import ArtifactError
from compactvision.models.teacher import TeacherConfig, build_teacher
from compactvision.train import CHECKPOINT, TrainConfig, fit, load_checkpoint, predict, response_loss

SMALL = TeacherConfig(n_simple=8, n_complex=8, kernel_size=9, image_size=48, width=8, n_blocks=1, ensemble=2)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images with a random contrast per quadrant; three "neurons" report three quadrants' contrast."""
    rng = np.random.default_rng(seed)
    contrast = rng.uniform(0.0, 1.0, size=(n, 2, 2))
    gain = np.repeat(np.repeat(contrast, 24, axis=1), 24, axis=2)[..., None]
    images = np.clip(128 + gain * rng.normal(0, 60, size=(n, 48, 48, 3)), 0, 255).astype(np.uint8)
    targets = np.stack([contrast[:, 0, 0], contrast[:, 1, 1], contrast[:, 0, 1]], axis=1)
    return images, (targets + rng.normal(0, 0.05, targets.shape)).astype(np.float32)


def _model() -> torch.nn.Module:
    return build_teacher(SMALL, {"s": 3}, seed=0)


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 4, "batch_size": 16, "lr": 3e-3, "patience": 10, "seed": 1, "device": "cpu", **kw})


def _state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_resume_after_an_interruption_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    train, val = _data(96, 0), _data(32, 1)

    def stream(interrupt_at: int | None):
        def batches(epoch: int):
            rng = np.random.default_rng([5, epoch])  # the same batches for the same epoch
            order = rng.permutation(len(train[0]))
            for i, s in enumerate(range(0, len(order), 16)):
                if epoch == interrupt_at and i == 2:
                    raise KeyboardInterrupt  # Ctrl-C in the middle of epoch 2
                idx = order[s:s + 16]
                yield train[0][idx], train[1][idx]
        return batches

    whole = _model()
    fit(whole, stream(None), val, _config(), checkpoint_dir=tmp_path / "a", progress=False)

    killed = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(killed, stream(2), val, _config(), checkpoint_dir=tmp_path / "b", progress=False)
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT)["epoch"] == 1  # the last finished epoch, intact

    resumed = _model()
    result = fit(resumed, stream(None), val, _config(), checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    assert result.epochs_run == 4
    a, b = _state(whole), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_from_array_data_matches_and_a_finished_run_is_a_no_op(tmp_path: Path) -> None:
    train, val = _data(80, 2), _data(32, 3)
    whole = _model()
    fit(whole, train, val, _config(), checkpoint_dir=tmp_path / "a", progress=False)

    calls = {"n": 0}

    def dies_in_third_validation(pred, target):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        from compactvision.train import pearson_per_neuron
        return pearson_per_neuron(pred, target)

    with pytest.raises(KeyboardInterrupt):
        fit(_model(), train, val, _config(), checkpoint_dir=tmp_path / "b", progress=False,
            val_metric=dies_in_third_validation)
    resumed = _model()
    fit(resumed, train, val, _config(), checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    for k, v in _state(whole).items():
        assert torch.equal(v, resumed.state_dict()[k]), k

    again = _model()
    result = fit(again, train, val, _config(), checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    assert result.epochs_run == 4
    for k, v in _state(whole).items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    train, val = _data(40, 0), _data(20, 1)
    fit(_model(), train, val, _config(epochs=1), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ArtifactError, match="different training config"):
        fit(_model(), train, val, _config(epochs=1, lr=1e-2), checkpoint_dir=tmp_path, resume=True, progress=False)


def test_a_checkpoint_from_before_a_setting_existed_resumes_at_its_default(tmp_path: Path) -> None:
    train, val = _data(40, 0), _data(20, 1)
    fit(_model(), train, val, _config(epochs=1), checkpoint_dir=tmp_path, progress=False)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    del state["config"]["frozen_bn"]  # as written before the setting was added
    torch.save(state, tmp_path / CHECKPOINT)
    fit(_model(), train, val, _config(epochs=1), checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ArtifactError, match="different training config"):
        fit(_model(), train, val, _config(epochs=1, frozen_bn=True), checkpoint_dir=tmp_path, resume=True,
            progress=False)


def test_corrupt_checkpoint_is_an_artifact_error(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="checkpoint"):
        load_checkpoint(tmp_path / CHECKPOINT)


def test_fit_learns_and_keeps_the_best_epoch() -> None:
    train, val = _data(192, 4), _data(64, 5)
    model = _model()
    result = fit(model, train, val, _config(epochs=6), progress=False)
    assert result.best_score > 0.5
    best = result.history[result.best_epoch]["val_median_r"]
    assert best == max(h["val_median_r"] for h in result.history)
    from compactvision.metrics import pearson_r
    r = pearson_r(predict(model, val[0]).T, val[1].T)
    assert np.median(r) == pytest.approx(result.best_score, abs=1e-5)  # the model holds the best weights
    assert not model.training


def test_frozen_bn_trains_the_weights_but_keeps_the_running_statistics() -> None:
    train, val = _data(64, 8), _data(24, 9)
    frozen, moving = _model(), _model()
    bn = lambda m: {k: v for k, v in _state(m).items() if "running_" in k}  # noqa: E731
    start = bn(frozen)
    assert start
    fit(frozen, train, val, _config(epochs=1, frozen_bn=True), progress=False)
    fit(moving, train, val, _config(epochs=1), progress=False)
    assert all(torch.equal(v, bn(frozen)[k]) for k, v in start.items())
    assert not all(torch.equal(v, bn(moving)[k]) for k, v in start.items())
    weights = {k: v for k, v in _state(frozen).items() if k.endswith("weight")}
    assert any(not torch.equal(v, _state(_model())[k]) for k, v in weights.items())


def test_early_stopping_stops() -> None:
    train, val = _data(48, 6), _data(24, 7)
    result = fit(_model(), train, val, _config(epochs=30, patience=1, lr=0.0, min_lr_ratio=1.0), progress=False)
    assert result.stopped_early and result.epochs_run == 2  # nothing can improve with lr = 0


def test_loss_is_z_scored_mse_and_skips_missing_responses() -> None:
    pred = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    target = torch.tensor([[2.0, 20.0], [float("nan"), 10.0]])
    inv_std = torch.tensor([1.0, 0.1])
    loss = response_loss(pred, target, inv_std, "mse")
    assert loss.item() == pytest.approx((1.0 + 1.0 + 4.0) / 3)


def test_slimming_zeroes_the_channels_the_loss_does_not_defend_and_keeps_the_fit() -> None:
    """The proximal L1 step on BatchNorm scales: scales reach exactly zero, and only where the loss allows it."""
    from compactvision.models.student import CompactStudent, StudentArch
    train, val = _data(192, 10), _data(64, 11)
    train, val = (train[0], train[1][:, :1]), (val[0], val[1][:, :1])  # one neuron, as a per-neuron fit

    def fitted(**kw) -> tuple[CompactStudent, float]:
        torch.manual_seed(0)
        m = CompactStudent(StudentArch(channels=(12,) * 5, input_size=(48, 48), n_outputs=1))
        return m, fit(m, train, val, _config(epochs=6, **kw), progress=False).best_score

    def zeros(m: CompactStudent) -> int:
        return sum(int((layer.bn.weight == 0).sum()) for layer in m.layers)

    slim, r_slim = fitted(channel_l1=0.3, scale_lr_ratio=20)
    plain, r_plain = fitted()
    assert zeros(plain) == 0
    assert zeros(slim) >= 6  # of 60 (11 when written)
    assert r_slim > r_plain - 0.05  # (0.88 against 0.85 when written)
    with pytest.raises(ValueError, match="channel_l1"):
        TrainConfig(channel_l1=-1.0)
