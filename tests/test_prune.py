"""Pruning: the rebuilt network is the masked one, every cut keeps the neuron's accuracy, and
what the neuron does not read is removed."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from compactvision.models.student import CompactStudent, StudentArch, select_channels
from compactvision.prune import (PruneConfig, cut_layer, fold_of, prune_layer, prune_neuron, r_squared, responses,
                                 taylor_scores)


def _random_student(channels=(12, 12, 12, 12, 12), size=32, seed=0) -> CompactStudent:
    torch.manual_seed(seed)
    m = CompactStudent(StudentArch(channels=channels, input_size=(size, size)))
    for layer in m.layers:  # non-trivial BN statistics, as after training
        layer.bn.running_mean.normal_(0, 0.2)
        layer.bn.running_var.uniform_(0.5, 2.0)
        layer.bn.weight.data.uniform_(0.5, 1.5)
    return m.eval()


def _silence(m: CompactStudent, layer: int, channels: list[int]) -> CompactStudent:
    """Make filters of `layer` constant over images: zero BN scale, so only their (folded) mean remains."""
    with torch.no_grad():
        m.layers[layer].bn.weight[channels] = 0.0
        m.layers[layer].bn.bias[channels] = 0.3
    return m


def test_rebuilt_network_equals_masked_original():
    m = _random_student()
    x = torch.rand(8, 3, 32, 32)
    keep = [[0, 2, 5, 7], list(range(12)), [1, 3, 4], [0, 11, 6], [2, 9, 10, 4]]
    for layer, k in zip(m.layers, keep):
        mask = torch.zeros(12)
        mask[k] = 1
        layer.mask.copy_(mask)
    small = select_channels(m, keep)
    assert small.arch.channels == (4, 12, 3, 3, 4)
    assert torch.allclose(small(x), m(x), atol=1e-5)
    assert small.n_parameters() < m.n_parameters()


def test_a_factorised_readout_made_dense_computes_the_same_and_keeps_the_reference_layout():
    torch.manual_seed(1)
    m = CompactStudent(StudentArch(channels=(6, 6, 6, 6, 5), input_size=(32, 32), n_outputs=2)).eval()
    m.factorise_readout()
    assert sum(p.numel() for p in m.readout.parameters()) == 2 * (8 * 8 + 5 + 1), "where (h x w) + what (c) + bias"
    with torch.no_grad():
        m.readout.spatial.normal_()
        m.readout.feature.normal_()
        m.readout.bias.normal_()
    x = torch.rand(4, 3, 32, 32)
    before = m(x)
    m.dense_readout()
    assert isinstance(m.readout, torch.nn.Linear) and m.readout.weight.shape == (2, 8 * 8 * 5)
    assert torch.allclose(m(x), before, atol=1e-5)
    # The dense form prunes and rebuilds like any student.
    assert torch.allclose(select_channels(m, [range(6)] * 4 + [range(5)])(x), before, atol=1e-5)


def test_a_rank_one_readout_survives_pruning_and_is_taken_back_exactly():
    """Fine-tunes after a cut retrain the readout at rank one only where that is the same model."""
    torch.manual_seed(2)
    m = CompactStudent(StudentArch(channels=(6, 6, 6, 6, 5), input_size=(32, 32))).eval()
    m.factorise_readout(bias=0.25)
    assert m.readout.bias.item() == 0.25
    with torch.no_grad():
        m.readout.feature.normal_()
    m.dense_readout()
    x = torch.rand(16, 3, 32, 32)
    small = cut_layer(m, x, 4, [0, 2, 3])  # drops channels and folds their means into the bias
    before = small(x)
    assert small.low_rank_readout() and not isinstance(small.readout, torch.nn.Linear)
    assert torch.allclose(small(x), before, atol=1e-5)
    small.dense_readout()
    assert torch.allclose(small(x), before, atol=1e-5)
    # An imported (full-rank) readout is left dense and untouched.
    with torch.no_grad():
        small.readout.weight.add_(0.1 * torch.randn_like(small.readout.weight))
    w = small.readout.weight.clone()
    assert not small.low_rank_readout()
    assert isinstance(small.readout, torch.nn.Linear) and torch.equal(small.readout.weight, w)


def test_a_rank_one_readout_keeps_the_parameter_shapes_a_checkpointed_fit_resumes_with():
    """A shared student's fit checkpointed before readouts had a rank held (outputs, h*w) and (outputs, c)."""
    m = CompactStudent(StudentArch(channels=(6, 6, 6, 6, 5), input_size=(32, 32), n_outputs=3)).factorise_readout()
    assert m.readout.spatial.shape == (3, 64) and m.readout.feature.shape == (3, 5) and m.readout.rank == 1


def test_a_rank_two_readout_reads_two_features_at_two_places_and_prunes_at_rank_two():
    """Rank two can read one feature here and another there, which no rank-one readout can."""
    torch.manual_seed(3)
    m = CompactStudent(StudentArch(channels=(6, 6, 6, 6, 5), input_size=(32, 32))).eval()
    m.factorise_readout(bias=0.5, rank=2)
    assert sum(p.numel() for p in m.readout.parameters()) == 2 * (8 * 8 + 5) + 1
    where, what = m.readout.factors()
    with torch.no_grad():
        where.zero_()
        what.zero_()
        where[0, 0, 0] = what[0, 0, 1] = 1.0    # channel 1 at the top left
        where[0, 1, 63] = what[0, 1, 3] = -2.0  # channel 3 at the bottom right
    x = torch.rand(16, 3, 32, 32)
    last = m.features(x)[-1]
    assert torch.allclose(m(x)[:, 0], 0.5 + last[:, 1, 0, 0] + 4.0 * last[:, 3, 7, 7], atol=1e-5)
    before = m(x)
    m.dense_readout()
    assert torch.allclose(m(x), before, atol=1e-5)
    small = cut_layer(m, x, 4, [1, 2, 3])
    before = small(x)
    assert not small.low_rank_readout(max_rank=1), "two places, two features: not rank one"
    assert isinstance(small.readout, torch.nn.Linear)
    assert small.low_rank_readout(max_rank=3) and small.readout.rank == 2, "held at the smallest rank that is exact"
    assert torch.allclose(small(x), before, atol=1e-5)


@pytest.mark.parametrize("layer", range(5))
def test_cutting_constant_filters_costs_almost_nothing(layer):
    """A filter that is constant over images is removed with its mean folded into the next bias.

    The last layer feeds a linear readout, so there the fold is exact. An earlier layer feeds a
    zero-padded depthwise conv, which sees the constant exactly except at the border; the fold
    must still be far closer to the original than switching the filters off.
    """
    m = _silence(_random_student(seed=layer, size=64), layer, [1, 4, 7])
    x = torch.rand(16, 3, 64, 64)
    kept = [j for j in range(12) if j not in (1, 4, 7)]
    small = cut_layer(m, x, layer, kept)
    assert small.arch.channels[layer] == 9
    with torch.no_grad():
        y, y_cut = m(x), small(x)
        zeroed = [list(range(c)) for c in m.arch.channels]
        zeroed[layer] = kept
        y_off = select_channels(m, zeroed)(x)
    if layer == 4:
        assert torch.allclose(y_cut, y, atol=1e-5)
    else:
        assert (y_cut - y).abs().mean() < 0.5 * (y_off - y).abs().mean()


def _duplicate(m: CompactStudent, layer: int, a: int, b: int) -> CompactStudent:
    """Make filter b of `layer` an exact copy of filter a, read identically by the next layer's depthwise conv."""
    with torch.no_grad():
        conv, bn = m.layers[layer].pointwise, m.layers[layer].bn
        for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t[b] = t[a]
        if layer + 1 < len(m.layers):
            m.layers[layer + 1].depthwise.weight[b] = m.layers[layer + 1].depthwise.weight[a]
        else:  # the readout reads b as twice a: its contribution is exactly 2x a's
            w = m.readout.weight.view(1, *m.arch.readout_hw, m.arch.channels[-1])
            w[..., b] = 2 * w[..., a]
    return m


@pytest.mark.parametrize("layer", range(4))
def test_least_squares_carries_a_redundant_filter_exactly(layer):
    """A filter the kept ones reproduce is dropped at no cost: the next layer reads its copy twice as hard.

    Folding only its mean cannot do that.
    """
    m = _duplicate(_random_student(seed=10 + layer, size=32), layer, 0, 5)
    x = torch.rand(24, 3, 32, 32)
    kept = [j for j in range(12) if j != 5]
    with torch.no_grad():
        y = m(x)
        carried = cut_layer(m, x, layer, kept, fold_of(m, x, layer, least_squares=True))(x)
        by_mean = cut_layer(m, x, layer, kept)(x)
    assert torch.allclose(carried, y, atol=1e-4 * float(y.abs().max()))
    assert (by_mean - y).abs().max() > 100 * (carried - y).abs().max()


def test_least_squares_last_layer_drops_one_of_two_proportional_filters_by_rescaling_the_other():
    m = _duplicate(_random_student(seed=3), 4, 2, 7)
    x = torch.rand(48, 3, 32, 32)
    labels = responses(m, x)
    pruned, r2 = prune_layer(m, x, labels, 4, PruneConfig(threshold=0.99999, min_filters=1,
                                                          compensation="least_squares"))
    assert pruned.arch.channels[4] <= 11 and r2 > 0.99999
    assert r2 == pytest.approx(r_squared(responses(pruned, x), labels))  # the rescaled readout is what was scored
    plain, _ = prune_layer(m, x, labels, 4, PruneConfig(threshold=0.99999, min_filters=1, compensation="mean"))
    # Ranked by contribution alone, neither copy can go: the least-squares cut keeps a filter fewer.
    assert pruned.arch.channels[4] < plain.arch.channels[4]
    with pytest.raises(ValueError, match="compensation"):
        PruneConfig(compensation="zero")


def test_taylor_scores_rank_silenced_filters_last():
    m = _silence(_random_student(seed=5), 2, [0, 3, 6, 9])
    scores = taylor_scores(m, torch.rand(32, 3, 32, 32), 2)
    assert scores.shape == (12,)
    assert scores[[0, 3, 6, 9]].max() < 1e-10 < scores[[1, 2, 4, 5, 7, 8, 10, 11]].min()


def test_output_criterion_keeps_the_accuracy_floor_and_the_minimum():
    m = _random_student(seed=2)
    x = torch.rand(96, 3, 32, 32)
    labels = responses(m, x) + np.random.default_rng(0).normal(0, 0.01, len(x))
    full = r_squared(responses(m, x), labels)
    for layer in range(5):
        pruned, r2 = prune_layer(m, x, labels, layer, PruneConfig(threshold=0.9, min_filters=3))
        assert 3 <= pruned.arch.channels[layer] <= 12
        assert r2 == pytest.approx(r_squared(responses(pruned, x), labels))  # measured on the real output
        assert r2 >= 0.9 * full - 1e-9
        assert m.arch.channels == (12,) * 5  # the input model is untouched


def test_output_criterion_removes_what_the_neuron_does_not_read():
    """Half the last layer's filters are invisible to the readout; the output criterion drops them all,
    while reconstructing the next layer would not be asked."""
    m = _random_student(seed=4)
    with torch.no_grad():
        w = m.readout.weight.view(1, *m.arch.readout_hw, 12)
        w[..., 6:] = 0.0
    x = torch.rand(64, 3, 32, 32)
    labels = responses(m, x)
    pruned, r2 = prune_layer(m, x, labels, 4, PruneConfig(threshold=0.999, min_filters=1))
    assert pruned.arch.channels[4] <= 6
    assert r2 > 0.999


REFERENCE = {"criterion": "reconstruction", "order": "last_first", "compensation": "mean"}  # Cowley et al.'s criterion, in their order


def test_reconstruction_criterion_is_the_reference_formulation():
    m = _random_student(seed=6)
    x = torch.rand(64, 3, 32, 32)
    labels = responses(m, x)
    pruned, explained = prune_layer(m, x, labels, 2, PruneConfig(threshold=0.9, **REFERENCE))
    assert explained >= 0.9
    strict, explained = prune_layer(m, x, labels, 2, PruneConfig(threshold=1.0, **REFERENCE))
    assert strict.arch.channels[2] == 12 and explained > 0.999
    with pytest.raises(ValueError, match="order"):
        PruneConfig(criterion="reconstruction", order="readout_then_first", compensation="mean")
    with pytest.raises(ValueError, match="compensation='mean'"):
        PruneConfig(criterion="reconstruction", order="last_first", compensation="least_squares")


def test_prune_neuron_path_shrinks_and_records_every_step():
    m = _random_student(seed=1)
    x = torch.rand(64, 3, 32, 32)
    labels = responses(m, x)
    seen = []

    def evaluate(model):
        return {"r_teacher": float(np.corrcoef(responses(model, x), labels)[0, 1]), "r_heldout": 0.5}

    small, path = prune_neuron(m, x, labels, PruneConfig(threshold=0.8), evaluate=evaluate, on_step=seen.append)
    assert [s.layer for s in path] == [None, 4, 0, 1, 2, 3]  # the readout layer, the costly first, the rest
    assert seen == path
    params = [s.n_parameters for s in path]
    assert all(b <= a for a, b in zip(params, params[1:]))
    assert params[-1] < params[0]
    assert [s.macs for s in path][-1] < path[0].macs
    assert all(s.scores == {"r_heldout": 0.5} for s in path)
    # Every step keeps the floor set by the unpruned model, not just the step before.
    assert all(s.accuracy ** 2 >= 0.8 * path[0].accuracy ** 2 - 1e-6 for s in path)
    assert small.arch.channels == tuple(path[-1].channels)
    assert min(small.arch.channels) >= 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pruning_on_a_gpu_stays_there_and_cuts_as_on_the_cpu(monkeypatch):
    device = "cuda"
    # full float32 on the GPU too, so a cut on the edge of the budget goes the same way
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    m = _random_student(seed=1)
    x = torch.rand(64, 3, 32, 32)
    labels = responses(m, x)
    for compensation in ("mean", "least_squares"):
        config = PruneConfig(threshold=0.8, compensation=compensation)
        on_cpu, _ = prune_neuron(m, x, labels, config)
        on_gpu, _ = prune_neuron(copy.deepcopy(m).to(device), x.to(device), labels, config)
        assert on_gpu.readout.weight.device.type == device
        assert on_gpu.arch.channels == on_cpu.arch.channels
        np.testing.assert_allclose(responses(on_gpu, x.to(device)), responses(on_cpu, x), rtol=1e-3, atol=1e-4)


def _refit_readout(model: CompactStudent, x: torch.Tensor, labels: np.ndarray) -> CompactStudent:
    """Retraining in closed form: the readout refitted to the labels, which wins back accuracy after a cut."""
    with torch.no_grad():
        feats = model.features(x)[-1].permute(0, 2, 3, 1).reshape(len(x), -1).double()
        design = torch.cat([feats, torch.ones(len(x), 1, dtype=torch.float64)], 1)
        ridge = 1e-3 * torch.eye(design.shape[1], dtype=torch.float64)
        coef = torch.linalg.solve(design.T @ design + ridge, design.T @ torch.as_tensor(labels))
        model.readout.weight.copy_(coef[:-1].float().view_as(model.readout.weight))
        model.readout.bias.fill_(float(coef[-1]))
    return model


def test_a_second_visit_only_cuts_further_and_records_only_real_cuts():
    m = _random_student(seed=3)
    x = torch.rand(64, 3, 32, 32)
    labels = responses(m, x)
    # The neuron reads only two last-layer filters, so once that layer is cut the rest of the
    # network is wider than it needs; a second visit can find that out.
    with torch.no_grad():
        w = m.readout.weight.view(1, *m.arch.readout_hw, -1)
        w[..., 2:] = 0
    labels = responses(m, x)

    def refit_readout(model: CompactStudent, layer: int) -> CompactStudent:
        return _refit_readout(model, x, labels)

    once, path1 = prune_neuron(m, x, labels, PruneConfig(threshold=0.8, rounds=1), finetune=refit_readout)
    twice, path2 = prune_neuron(m, x, labels, PruneConfig(threshold=0.8, rounds=2), finetune=refit_readout)
    assert [s.to_dict() for s in path2[:len(path1)]] == [s.to_dict() for s in path1], "the first visit is the same"
    assert len(path2) > len(path1) and sum(twice.arch.channels) < sum(once.arch.channels)
    for before, step in zip(path2[len(path1) - 1:], path2[len(path1):]):
        assert step.round == 1 and step.channels[step.layer] < before.channels[step.layer]
    assert r_squared(responses(twice, x), labels) >= 0.8 * r_squared(responses(m, x), labels) - 1e-6
    with pytest.raises(ValueError, match="rounds"):
        PruneConfig(rounds=0)


def test_retraining_between_visits_wins_back_budget_that_the_second_visit_cuts():
    """Without fine-tunes the first visit spends the whole budget; retrained before the second, the model has
    accuracy to spare, and the second visit spends it on further cuts, still above the unpruned floor."""
    m = _random_student(seed=3)
    x = torch.rand(64, 3, 32, 32)
    labels = responses(m, x)
    calls = []

    def recover(model: CompactStudent) -> CompactStudent:
        calls.append(model.arch.channels)
        return _refit_readout(model, x, labels)

    def evaluate(model: CompactStudent) -> dict[str, float]:
        return {"r_teacher": float(np.corrcoef(responses(model, x), labels)[0, 1])}

    config = PruneConfig(threshold=0.8, rounds=2)
    plain, plain_path = prune_neuron(m, x, labels, config, evaluate=evaluate)
    small, path = prune_neuron(m, x, labels, config, evaluate=evaluate, recover=recover)
    first_visit = [s for s in path if s.round == 0]
    assert len(calls) == 1 and calls[0] == tuple(first_visit[-1].channels), "once, after the first visit"
    # The first visit's last step records the retrained model, which follows the labels better than before.
    before = [s for s in plain_path if s.round == 0][-1]
    assert first_visit[-1].channels == before.channels and first_visit[-1].accuracy > before.accuracy
    assert small.n_parameters() < plain.n_parameters()
    assert any(s.round == 1 for s in path)
    assert r_squared(responses(small, x), labels) >= 0.8 * r_squared(responses(m, x), labels) - 1e-6
    prune_neuron(m, x, labels, PruneConfig(threshold=0.8, rounds=1), recover=recover)
    assert len(calls) == 1, "a single visit never retrains"


def test_prune_refuses_shared_students_and_mismatched_labels():
    m = CompactStudent(StudentArch(channels=(4,) * 5, input_size=(32, 32), n_outputs=2)).eval()
    x = torch.rand(8, 3, 32, 32)
    with pytest.raises(ValueError, match="per-neuron"):
        prune_layer(m, x, np.zeros(8), 4, PruneConfig())
    with pytest.raises(ValueError, match="labels"):
        prune_layer(_random_student(), x, np.zeros(5), 4, PruneConfig())


def test_a_slimmed_student_is_pruned_within_its_references_budget():
    """The budget of a slimmed student is the unslimmed fit's, so slimming and cuts do not compound."""
    reference = _random_student(seed=5)
    x = torch.rand(64, 3, 32, 32)
    labels = responses(reference, x)
    slim = _silence(select_channels(reference, [range(12)] * 5), 2, list(range(8)))  # 8 of layer 2's 12 at zero
    config = PruneConfig(threshold=0.8)

    def evaluate(model):
        return {"r_teacher": float(np.corrcoef(responses(model, x), labels)[0, 1])}

    small, path = prune_neuron(slim, x, labels, config, evaluate=evaluate, reference=reference)
    assert [s.layer for s in path[:2]] == [None, None]  # the reference, then the slimmed student
    assert path[0].accuracy == pytest.approx(1.0) and path[1].accuracy < 1.0
    floor = 0.8 * r_squared(responses(reference, x), labels)
    assert r_squared(responses(small, x), labels) >= min(floor, path[1].accuracy ** 2) - 1e-6
    assert small.arch.channels[2] <= 4  # the zeroed filters went for free


def test_an_even_budget_leaves_each_layer_of_a_visit_its_share():
    """Greedy, the layer cut first may spend the whole budget; even, each cut spends at most its share of what is
    left, 1/n with n layers still to visit, and the path still ends above the floor."""
    m = _random_student(seed=3)
    x = torch.rand(64, 3, 32, 32)
    labels = responses(m, x)

    def evaluate(model: CompactStudent) -> dict[str, float]:
        return {"r_teacher": r_squared(responses(model, x), labels)}  # r², the budget's own measure

    greedy = prune_neuron(m, x, labels, PruneConfig(threshold=0.8, rounds=1), evaluate=evaluate)[1]
    even = prune_neuron(m, x, labels, PruneConfig(threshold=0.8, rounds=1, budget="even"), evaluate=evaluate)[1]
    floor = 0.8 * even[0].accuracy
    assert [s.layer for s in even] == [None, 4, 0, 1, 2, 3]
    for n, (before, step) in zip(range(5, 0, -1), zip(even, even[1:])):
        assert step.accuracy >= before.accuracy - (before.accuracy - floor) / n - 1e-9
    assert even[-1].accuracy >= floor - 1e-9
    assert greedy[1].accuracy < even[1].accuracy, "greedy, the readout layer's cut spends more than a fifth"
    assert greedy[1].channels[4] < even[1].channels[4]
    with pytest.raises(ValueError, match="budget"):
        PruneConfig(budget="lavish")
