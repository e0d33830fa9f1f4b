"""The computation graph is the network: same connections, same numbers, exact ablations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compactvision.interpret.graph import INPUT_LAYER, ablate, expanded_weights, neuron_graph
from compactvision.models.student import CompactStudent, StudentArch, select_channels

SIZE = 32


def _pruned_student(seed: int = 0) -> CompactStudent:
    """A per-neuron student rebuilt by select_channels, with a few pointwise weights cut to zero."""
    torch.manual_seed(seed)
    big = CompactStudent(StudentArch(channels=(10, 10, 8, 8, 6), input_size=(SIZE, SIZE), n_outputs=3))
    for layer in big.layers:
        layer.bn.running_mean.normal_(0, 0.2)
        layer.bn.running_var.uniform_(0.5, 2.0)
        layer.bn.weight.data.uniform_(-1.5, 1.5)  # negative gains too: edge signs must follow the fused weights
    small = select_channels(big, [[0, 2, 3, 5, 7], [1, 4, 6, 9], [0, 5, 7], [2, 3, 4, 6], [1, 2, 5]], outputs=[1])
    with torch.no_grad():
        small.layers[1].pointwise.weight[0, 2] = 0.0
        small.layers[3].pointwise.weight[1, :] = 0.0
        small.layers[4].pointwise.weight[2, 0] = 0.0
    return small.eval()


def _image(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)


def test_edge_set_equals_nonzero_weights_of_the_rebuilt_network():
    student = _pruned_student()
    graph = neuron_graph(student)
    assert [len(graph.layer_nodes(i)) for i in range(5)] == list(student.arch.channels)
    for i, layer in enumerate(student.layers):
        w = layer.pointwise.weight.detach()
        if layer.depthwise is not None:
            expected = {((i - 1, j), (i, c)) for c, j in torch.nonzero(w[:, :, 0, 0]).tolist()}
        else:
            expected = {((INPUT_LAYER, j), (i, c)) for c in range(w.shape[0]) for j in range(3) if w[c, j].abs().sum() > 0}
        got = {(e.src, e.dst) for e in graph.edges_into(i)}
        assert got == expected, f"layer {i}"
    readout = {(e.src, e.dst) for e in graph.edges_into(graph.n_layers)}
    assert readout == {((4, c), graph.output_id) for c in range(3)}


def test_edge_weights_are_the_fused_network_weights():
    student = _pruned_student()
    fused = student.fused()
    graph = neuron_graph(student)
    for e in graph.edges_into(2):
        (_, j), (_, c) = e.src, e.dst
        pw = float(fused.layers[2].pointwise.weight[c, j].detach())
        assert e.pointwise == pytest.approx(pw)
        dw = fused.layers[2].depthwise.weight[j, 0].detach().numpy()
        np.testing.assert_allclose(e.kernel, pw * dw, rtol=1e-6)
        assert e.sign == np.sign(pw * dw.sum())


def test_activations_and_contributions_reproduce_the_response():
    student, img = _pruned_student(), _image()
    graph = neuron_graph(student, img)
    with torch.no_grad():
        expected = float(student(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)[0, 0])
    assert graph.response == pytest.approx(expected, abs=1e-5)
    last = graph.layer_nodes(4)
    # The readout is linear: last-layer contributions plus its bias are the response exactly.
    assert sum(n.contribution for n in last) + graph.readout_bias == pytest.approx(graph.response, abs=1e-5)
    for n in last:
        assert n.contribution == pytest.approx(float((n.readout_map * n.activation).sum()), abs=1e-5)
    assert graph.node(0, 3).activation.shape == (SIZE, SIZE)
    assert graph.node(2, 0).activation.shape == (SIZE // 4, SIZE // 4)


def test_ablation_deltas_match_ablate():
    student, img = _pruned_student(), _image()
    graph = neuron_graph(student, img)
    for node_id in [(0, 1), (1, 3), (2, 0), (3, 2), (4, 1)]:
        assert graph.node(*node_id).ablation_delta == pytest.approx(ablate(student, img, [node_id]) - graph.response, abs=1e-5)


def test_ablating_nothing_changes_nothing_and_leaves_the_student_alone():
    student, img = _pruned_student(), _image()
    graph = neuron_graph(student, img)
    assert ablate(student, img, []) == pytest.approx(graph.response, abs=1e-6)
    ablate(student, img, [(1, 0), (2, 1)])
    assert all(bool((layer.mask == 1).all()) for layer in student.layers)


@pytest.mark.parametrize("layer", range(5))
def test_ablating_a_whole_layer_leaves_only_what_the_biases_give(layer):
    student = _pruned_student()
    everything = [(layer, c) for c in range(student.arch.channels[layer])]
    responses = [ablate(student, _image(seed), everything) for seed in range(3)]
    # With a layer silent, what remains is the later layers' biases pushed through the network.
    with torch.no_grad():
        feat = student.features(torch.zeros(1, 3, SIZE, SIZE), upto=layer)[-1] * 0.0
        for nxt in student.layers[layer + 1:]:
            feat = nxt(feat)
        from_biases = float(student.readout_from(feat)[0, 0])
    assert responses == pytest.approx([from_biases] * 3, abs=1e-5)
    if layer == 4:
        assert from_biases == pytest.approx(float(student.readout.bias[0].detach()))


def test_masked_filters_are_not_nodes():
    student = _pruned_student()
    student.layers[2].mask[1] = 0.0
    graph = neuron_graph(student)
    assert [n.channel for n in graph.layer_nodes(2)] == [0, 2]
    assert not any((2, 1) in (e.src, e.dst) for e in graph.edges)


def test_expanded_weights_chain_the_gain_matrices():
    graph = neuron_graph(_pruned_student())
    g23, rows, cols = expanded_weights(graph, 2, 3)
    assert g23.shape == (4, 3) and rows == [0, 1, 2, 3] and cols == [0, 1, 2]
    assert np.all(g23[1] == 0)  # filter (3, 1) lost all its inputs
    g34, _, _ = expanded_weights(graph, 3, 4)
    g24, _, _ = expanded_weights(graph, 2, 4)
    np.testing.assert_allclose(g24, g34 @ g23)
    to_response, rows, _ = expanded_weights(graph, INPUT_LAYER, graph.n_layers)
    assert to_response.shape == (1, 3) and rows == [0]
