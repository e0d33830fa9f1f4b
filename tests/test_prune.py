"""Pruning: the rebuilt network is the masked one, and every step is smaller."""
from __future__ import annotations

import torch

from compactvision.models.student import CompactStudent, StudentArch, select_channels
from compactvision.prune import PruneConfig, prune_layer, prune_neuron


def _random_student(channels=(12, 12, 12, 12, 12), size=32, seed=0) -> CompactStudent:
    torch.manual_seed(seed)
    m = CompactStudent(StudentArch(channels=channels, input_size=(size, size)))
    for layer in m.layers:  # non-trivial BN statistics, as after training
        layer.bn.running_mean.normal_(0, 0.2)
        layer.bn.running_var.uniform_(0.5, 2.0)
        layer.bn.weight.data.uniform_(0.5, 1.5)
    return m.eval()


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


def test_prune_layer_respects_threshold_and_minimum():
    m = _random_student()
    x = torch.rand(64, 3, 32, 32)
    for layer in range(5):
        pruned, explained = prune_layer(m, x, layer, PruneConfig(threshold=0.9, min_filters=3))
        assert explained >= 0.9 or pruned.arch.channels[layer] == 12
        assert pruned.arch.channels[layer] >= 3
        # the input model is untouched
        assert m.arch.channels == (12,) * 5
    # a threshold of 1.0 can only be met by keeping all filters with non-zero variance
    strict, explained = prune_layer(m, x, 4, PruneConfig(threshold=1.0))
    assert explained > 0.999


def test_last_layer_prune_keeps_response_close():
    m = _random_student(seed=3)
    x = torch.rand(128, 3, 32, 32)
    pruned, explained = prune_layer(m, x, 4, PruneConfig(threshold=0.95))
    with torch.no_grad():
        y, yp = m(x)[:, 0], pruned(x)[:, 0]
    r2 = 1 - ((y - yp) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert abs(float(r2) - explained) < 1e-4  # the criterion is measured on the real output
    assert float(r2) >= 0.95


def test_prune_neuron_path_shrinks_every_step():
    m = _random_student(seed=1)
    x = torch.rand(64, 3, 32, 32)
    small, path = prune_neuron(m, x, PruneConfig(threshold=0.8))
    assert [s.layer for s in path] == [None, 4, 3, 2, 1, 0]
    params = [s.n_parameters for s in path]
    assert all(b <= a for a, b in zip(params, params[1:]))
    assert params[-1] < params[0]
    assert small.arch.channels == tuple(path[-1].channels)
    assert min(small.arch.channels) >= 3
