"""A neuron at a glance: the gallery's cards and the profile's receptive field, from plain inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compactvision.interpret.profile import cell_label, consolidation_layer, neuron_card, readout_map, sizes_by_cell_type
from compactvision.models.student import CompactStudent, StudentArch
from compactvision.viz.filters import readout_map_figure


def _student(channels=(6, 4, 3, 3, 3), size=32, seed=0) -> CompactStudent:
    torch.manual_seed(seed)
    return CompactStudent(StudentArch(channels=channels, input_size=(size, size))).eval()


def test_labels_name_the_cell_type_or_the_session():
    assert cell_label("twin_000", {"cell_type": "v1_simple"}) == "V1 simple"
    assert cell_label("twin_004", {"cell_type": "dot_detector"}) == "dot detector"
    assert cell_label("190923_neuron0", None, "190923") == "session 190923"
    assert cell_label("x") == ""


def test_consolidation_is_a_narrow_layer_after_the_first():
    assert consolidation_layer([47, 57, 3, 7, 3]) == 2
    assert consolidation_layer([3, 20, 20, 20, 20]) is None, "a narrow first layer is not a bottleneck"
    assert consolidation_layer([20, 20, 20, 20, 6]) is None


def test_sizes_are_grouped_by_cell_type_and_split_into_one_and_multi_stage():
    truth = [{"neuron_id": f"n{i}", "cell_type": t} for i, t in
             enumerate(["v1_simple", "v1_simple", "curvature", "texture", "colour_opponent"])]
    metrics = {
        "n0": {"channels": [8, 39, 63, 60, 3], "n_parameters": 13000, "r_teacher": 0.9, "r_truth": 0.4},
        "n1": {"channels": [4, 4, 4, 4, 4], "n_parameters": 1000, "r_teacher": 0.8, "r_truth": 0.6},
        "n2": {"channels": [3, 3, 3, 3, 3], "n_parameters": 900, "r_teacher": 0.95, "r_truth": 0.7},
        "n3": {"channels": [9, 9, 9, 9, 9], "n_parameters": 3000, "r_teacher": 0.85},
        "n4": {"channels": [6, 6, 6, 6, 6], "n_parameters": 1500, "r_teacher": 0.9, "r_truth": 0.9},
    }
    sizes = sizes_by_cell_type(metrics, truth)
    assert list(sizes) == ["colour_opponent", "v1_simple", "curvature", "texture", "all"], "one-stage types first"
    simple = sizes["v1_simple"]
    assert simple["n"] == 2 and simple["one_stage"] and simple["consolidated"] == 2
    assert simple["channels"] == [6, 21, 33, 32, 3] and simple["total_filters"] == (173 + 20) / 2
    assert simple["n_parameters"] == 7000 and simple["r_truth"] == pytest.approx(0.5)
    assert sizes["texture"]["consolidated"] == 0 and np.isnan(sizes["texture"]["r_truth"]), "no truth score: NaN"
    every = sizes["all"]
    assert every["one_stage_filters"] == 30 and every["multi_stage_filters"] == (15 + 45) / 2
    assert every["consolidated"] == 3 and every["n"] == 5 and every["n_parameters"] == 1500


def test_a_card_scores_the_model_and_finds_its_top_image():
    m = _student()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        pred = m(torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0)[:, 0].numpy()
    noisy = pred + rng.normal(0, pred.std(), len(pred))
    card = neuron_card("n0", m, images, responses=noisy, truth=pred, ceiling=0.8, r_teacher=0.5, label="V1 simple")
    assert card.top_image == int(np.argmax(pred))
    assert card.r_truth == pytest.approx(1.0, abs=1e-4)
    assert 0.2 < card.r_student < 0.95
    assert card.normalised == pytest.approx(card.r_student / 0.8)
    assert card.channels == [6, 4, 3, 3, 3] and card.total_filters == 19 and card.consolidated
    assert card.n_parameters == m.n_parameters()
    bare = neuron_card("n1", m)
    assert bare.r_student is None and bare.top_image is None and bare.normalised is None


def test_readout_map_is_where_the_readout_weights_are():
    m = _student()
    with torch.no_grad():
        w = m.readout.weight.view(1, *m.arch.readout_hw, -1)
        w.zero_()
        w[0, 2, 5, :] = 1.0
    rf = readout_map(m)
    assert rf.shape == m.arch.readout_hw
    assert np.unravel_index(np.argmax(rf), rf.shape) == (2, 5) and rf.sum() == pytest.approx(3.0)
    fig = readout_map_figure(rf, 32)
    heat = fig.data[0]
    assert heat.colorbar.title.text.startswith("|readout weight|"), "the map says what its colours are"
    assert list(fig.layout.xaxis.range) == [0, 32]
