"""Every figure builder returns the traces it promises, with the numbers it was given."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from compactvision.interpret.graph import neuron_graph
from compactvision.interpret.stimuli import Tuning
from compactvision.models.student import CompactStudent, StudentArch
from compactvision.models.vone import VOneBlock
from compactvision.prune import PruneStep
from compactvision.viz.attribution import attribution_figure
from compactvision.viz.filters import (gabor_bank_figure, gabor_parameter_histograms, kernel_grid_figure,
                                       student_layer_figure)
from compactvision.viz.graph import neuron_graph_figure, node_detail_figure
from compactvision.viz.layout import counted
from compactvision.viz.performance import (accuracy_by_neuron_figure, predicted_vs_measured_figure, pruning_path_figure,
                                          teacher_student_scatter_figure)
from compactvision.viz.robustness import robustness_figure
from compactvision.viz.tuning import tuning_figure

SIZE = 32


def _student() -> CompactStudent:
    torch.manual_seed(0)
    return CompactStudent(StudentArch(channels=(6, 5, 3, 4, 3), input_size=(SIZE, SIZE))).eval()


def _types(fig: go.Figure) -> list[str]:
    return [type(t).__name__ for t in fig.data]


def test_gabor_bank_grid_shows_each_filter_with_its_parameters():
    block = VOneBlock(n_simple=6, n_complex=6, image_size=SIZE, kernel_size=9)
    params = block.parameters_table()
    fig = gabor_bank_figure(block.kernels(), params, n_cols=4)
    assert _types(fig) == ["Heatmap", "Scatter"]
    assert fig.data[0].z.shape == (3 * 10 - 1, 4 * 10 - 1)  # 12 tiles of 9 px, 4 per row, 1 px gaps
    order = np.argsort(params["orientation_deg"], kind="stable")
    assert list(fig.data[1].customdata) == list(order)
    assert f"{params['orientation_deg'][order[0]]:.0f} deg" in fig.data[1].text[0]


def test_parameter_histograms_compare_bank_and_reference_fractions():
    reference = {"orientation_deg": {"bins": [-22.5, 22.5, 67.5, 112.5, 157.5], "counts": [1, 1, 1, 1]}}
    params = {"orientation_deg": np.array([0.0, 170.0, 45.0, 90.0, 100.0, 10.0])}
    fig = gabor_parameter_histograms(params, reference)
    assert _types(fig) == ["Bar", "Bar"]
    bank, v1 = fig.data
    np.testing.assert_allclose(bank.y, [3 / 6, 1 / 6, 2 / 6, 0.0])  # 170 deg wraps to -10, into the first bin
    np.testing.assert_allclose(v1.y, [0.25] * 4)
    assert "TV distance 0.33" in fig.layout.annotations[0].text  # (0.25 + 1/12 + 1/12 + 0.25) / 2


def test_layer_weights_show_colour_kernels_then_depthwise_and_pointwise():
    student = _student()
    first = student_layer_figure(student, 0)
    assert _types(first) == ["Image", "Scatter"] and len(first.data[1].x) == 6
    sep = student_layer_figure(student, 2)
    assert _types(sep) == ["Heatmap", "Scatter", "Heatmap"]
    fused = student.fused().layers[2]
    np.testing.assert_allclose(sep.data[2].z, fused.pointwise.weight.detach()[:, :, 0, 0].numpy(), rtol=1e-6)
    summed = kernel_grid_figure(np.random.default_rng(0).standard_normal((4, 5, 3, 3)))
    assert _types(summed) == ["Heatmap", "Scatter"]


def test_attribution_maps_sit_beside_the_image():
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    maps = {"teacher": np.ones((SIZE, SIZE)), "student": -np.ones((SIZE, SIZE))}
    fig = attribution_figure(img, maps, similarity=0.42)
    assert _types(fig) == ["Image", "Heatmap", "Heatmap"]
    assert [t.name for t in fig.data[1:]] == ["teacher", "student"]
    assert fig.data[2].zmin == -1.0 and fig.data[2].zmax == 1.0
    assert "0.42" in fig.layout.title.text


def test_graph_figure_has_one_selectable_point_per_filter():
    student = _student()
    image = (np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    graph = neuron_graph(student, image)
    fig = neuron_graph_figure(graph, edge_threshold=0.0)
    filters = next(t for t in fig.data if t.name == "filters")
    assert sorted(tuple(c) for c in filters.customdata) == sorted(n.id for n in graph.nodes)
    np.testing.assert_allclose(filters.marker.color, [n.contribution for n in graph.nodes])
    edge_traces = [t for t in fig.data if t.name in ("excitatory edges", "inhibitory edges")]
    assert sum(len(t.x) // 3 for t in edge_traces) == len(graph.edges)  # every edge drawn, as x0, x1, None
    assert all(t.line.color == ("#c0392b" if t.name.startswith("excit") else "#2e6da4") for t in edge_traces)
    assert len(fig.layout.images) == len(graph.nodes)
    detail = node_detail_figure(graph, 4, 1)
    assert _types(detail) == ["Bar", "Heatmap", "Heatmap", "Heatmap"]  # weights, kernel, activation, readout
    bars = [t.colorbar for t in detail.data[1:]]
    assert [b.title.text for b in bars] == ["weight", "activation (a.u.)", "readout weight"], "every map has units"
    assert len({round(b.x, 3) for b in bars}) == 3, "each colour bar beside its own map"


def test_graph_shows_important_paths_and_marks_ablations():
    from compactvision.interpret.graph import important_paths, importance, most_important

    student = _student()
    image = (np.random.default_rng(1).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    graph = neuron_graph(student, image)
    view = important_paths(graph, share=0.6, max_per_layer=2, edges_per_node=2)
    assert view.hidden_nodes == len(graph.nodes) - len(view.graph.nodes) > 0
    for layer in range(graph.n_layers):
        kept = {n.id for n in view.graph.layer_nodes(layer)}
        ranked = sorted(graph.layer_nodes(layer), key=importance, reverse=True)
        assert kept == {n.id for n in ranked[:len(kept)]} and 1 <= len(kept) <= 2, "the top filters of each layer"
    assert all(e.src in {n.id for n in view.graph.nodes} | {(-1, 0), (-1, 1), (-1, 2)} for e in view.graph.edges)
    best = most_important(graph)
    assert importance(graph.node(*best)) == max(importance(n) for n in graph.nodes)
    fig = neuron_graph_figure(view.graph, ablated=[best], hidden=(view.hidden_nodes, view.hidden_edges))
    marks = next(t for t in fig.data if t.name == "ablated")
    assert len(marks.x) == 1
    assert f"{counted(view.hidden_nodes, 'filter')} and" in fig.layout.title.text
    assert "switched off" in fig.layout.title.text


def test_graph_labels_count_a_single_filter_in_the_singular():
    """A pruned layer may keep one filter: its label reads "1 filter", never "1 filters"."""
    torch.manual_seed(0)
    student = CompactStudent(StudentArch(channels=(3, 1, 3, 1, 2), input_size=(SIZE, SIZE))).eval()
    image = (np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    fig = neuron_graph_figure(neuron_graph(student, image), edge_threshold=0.0)
    ticks = list(fig.layout.xaxis.ticktext)
    assert ticks[2] == "layer 1<br>1 filter" and ticks[1] == "layer 0<br>3 filters", ticks
    assert [counted(n, "filter") for n in (0, 1, 2)] == ["0 filters", "1 filter", "2 filters"]


def test_response_maps_and_one_by_one_kernels_read_as_what_they_are():
    from compactvision.viz.filters import response_maps_figure

    maps = np.random.default_rng(0).random((4, 20, 20))
    fig = response_maps_figure(maps, [f"cell {i}" for i in range(4)], "maps", border=3)
    assert fig.data[0].colorbar.title.text == "response / its peak" and fig.data[0].zmin == 0.0
    assert np.nanmax(fig.data[0].z) == pytest.approx(1.0)
    assert np.asarray(fig.data[0].z).shape[0] == 14, "the padded border is cropped"
    mixing = kernel_grid_figure(np.random.default_rng(0).standard_normal((6, 4, 1, 1)))
    assert _types(mixing) == ["Heatmap"] and np.asarray(mixing.data[0].z).shape == (6, 4)


def test_tuning_overlay_puts_every_model_on_one_normalised_scale():
    from compactvision.viz.tuning import tuning_overlay_figure

    axes = {"orientation_deg": np.array([0.0, 45.0, 90.0, 135.0]), "sf_cpp": np.array([0.05, 0.1, 0.2])}
    a = Tuning("orientation_sf", 0, (15.5, 15.5), axes, np.arange(12.0).reshape(4, 3), 1.0, {})
    b = Tuning("orientation_sf", 0, (15.5, 15.5), axes, 100 * np.arange(12.0).reshape(4, 3)[::-1], 0.0, {})
    fig = tuning_overlay_figure({"model": a, "truth": b})
    assert [t.name for t in fig.data] == ["model", "model", "truth", "truth"]  # orientation and sf slices each
    for t in fig.data:
        assert np.max(np.asarray(t.y)) <= 1.0 + 1e-9
    assert np.asarray(fig.data[1].y)[-1] == pytest.approx(1.0), "each model's peak reads 1"
    dots = Tuning("dot_size", 0, (15.5, 15.5), {"polarity": np.array([1, -1]), "diameter_px": np.array([2.0, 4.0, 8.0])},
                  np.array([[1.0, 3.0, 2.0], [0.0, -1.0, 0.5]]), 0.0, {})
    fig = tuning_overlay_figure({"model": dots})
    assert [t.name for t in fig.data] == ["model (white)", "model (black)"]
    assert fig.data[1].line.dash == "dash"


def test_tuning_figures():
    grid = Tuning("orientation_sf", 0, (15.5, 15.5), {"orientation_deg": np.array([0.0, 45.0, 90.0, 135.0]),
                                                      "sf_cpp": np.array([0.05, 0.1, 0.2])},
                  np.arange(12.0).reshape(4, 3), 0.5,
                  {"orientation_deg": 135.0, "sf_cpp": 0.2, "orientation_selectivity": 0.3})
    fig = tuning_figure(grid)
    assert _types(fig) == ["Heatmap", "Scatter", "Scatter"]
    np.testing.assert_allclose(fig.data[1].y, [2, 5, 8, 11])   # orientation curve at the best SF
    np.testing.assert_allclose(fig.data[2].y, [9, 10, 11])     # SF curve at the best orientation
    dots = Tuning("dot_size", 0, (15.5, 15.5), {"polarity": np.array([1, -1]), "diameter_px": np.array([2.0, 4.0, 8.0])},
                  np.array([[1.0, 3.0, 2.0], [0.5, 0.4, 0.3]]), 0.2, {"diameter_px": 4.0, "polarity": 1.0})
    fig = tuning_figure(dots)
    assert [t.name for t in fig.data] == ["white on grey", "black on grey"]
    assert fig.layout.xaxis.type == "log" and "4 px white" in fig.layout.title.text


def test_performance_figures():
    rng = np.random.default_rng(0)
    measured = rng.standard_normal((50, 2))
    fig = predicted_vs_measured_figure(measured * 2 + 1, measured, names=["a", "b"])
    assert _types(fig) == ["Scattergl", "Scattergl", "Scatter"]
    assert "a r = 1.00, b r = 1.00" in fig.layout.title.text  # few columns: each one's r
    fig = accuracy_by_neuron_figure({"teacher": np.array([0.2, 0.8, 0.5]), "student": np.array([0.1, 0.7, 0.6])})
    assert list(fig.data[0].x) == ["neuron 1", "neuron 2", "neuron 0"]
    path = [PruneStep(None, [10, 10], 5000, None, 0.8), PruneStep(1, [10, 3], 2000, 0.95, 0.78),
            PruneStep(0, [4, 3], 900, 0.92, 0.75)]
    fig = pruning_path_figure(path)
    assert list(fig.data[0].x) == [5000, 2000, 900] and list(fig.data[0].text) == ["start", "layer 1", "layer 0"]
    assert fig.layout.xaxis.type == "log"
    both = pruning_path_figure({"n1": path, "n2": [s.to_dict() for s in path]})
    assert [t.name for t in both.data] == ["n1", "n2"]


def test_robustness_figure_draws_each_model_in_both_panels():
    base = {"perturbation": "pgd", "label": "epsilon", "levels": np.array([0.0, 0.01]), "r": np.array([1.0, 0.5]),
            "delta": np.array([0.0, 0.2]), "delta_rel": np.array([0.0, 0.4])}
    fig = robustness_figure({"teacher (V1 noise on)": base, "student": base})
    assert [(t.name, t.xaxis) for t in fig.data] == [("teacher (V1 noise on)", "x"), ("teacher (V1 noise on)", "x2"),
                                                     ("student", "x"), ("student", "x2")]
    np.testing.assert_allclose(fig.data[1].y, [0.0, 0.4])
    assert fig.data[0].line.dash == "dash"
    with pytest.raises(ValueError, match="mix perturbations"):
        robustness_figure({"a": base, "b": {**base, "perturbation": "blur"}})


def test_scatter_title_names_what_the_columns_are():
    rng = np.random.default_rng(1)
    measured = rng.standard_normal((60, 4))
    predicted = measured + 0.5 * rng.standard_normal((60, 4))
    many = predicted_vs_measured_figure(predicted, measured, series="models").layout.title.text
    assert "over 4 models" in many and "neurons" not in many
    assert "over 4 neurons" in predicted_vs_measured_figure(predicted, measured).layout.title.text
    two = predicted_vs_measured_figure(predicted[:, :2], measured[:, :2], names=["compact model", "teacher"],
                                       series="models").layout.title.text
    r = [np.corrcoef(predicted[:, j], measured[:, j])[0, 1] for j in range(2)]
    assert f"compact model r = {r[0]:.2f}, teacher r = {r[1]:.2f}" in two and "over" not in two


def test_scatter_range_ignores_an_outlier_and_reports_it():
    rng = np.random.default_rng(2)
    # A bounded cloud near 0 (the 5% padding covers its edges) and one wild measurement.
    measured = np.r_[rng.uniform(-0.1, 0.1, 200), 50.0]
    predicted = np.r_[0.9 * measured[:200] + rng.uniform(-0.01, 0.01, 200), 0.0]
    fig = predicted_vs_measured_figure(np.c_[predicted, predicted], np.c_[measured, measured],
                                       names=["compact model", "teacher"], series="models")
    lo, hi = fig.layout.xaxis.range
    assert tuple(fig.layout.yaxis.range) == (lo, hi), "both axes share one range"
    assert hi < 1 and lo > -1, (lo, hi)
    assert lo < min(measured[:200].min(), predicted[:200].min()) and hi > max(measured[:200].max(),
                                                                             predicted[:200].max())
    assert "2 points outside" in fig.layout.title.subtitle.text  # the one outlier in each of the two models
    assert 50.0 in fig.data[0].x, "the outlier stays in the data; plotly clips it"
    one = predicted_vs_measured_figure(predicted, measured)
    assert one.layout.title.subtitle.text.startswith("1 point outside")
    clean = predicted_vs_measured_figure(predicted[:200], measured[:200])
    assert not clean.layout.title.subtitle.text, "nothing to report without outliers"
    identity = [t for t in fig.data if t.name == "identity"][0]
    assert tuple(identity.x) == (lo, hi)


def test_scatter_density_mode_draws_contours():
    rng = np.random.default_rng(3)
    measured = rng.standard_normal((3000, 2))
    fig = predicted_vs_measured_figure(measured + 0.3 * rng.standard_normal((3000, 2)), measured,
                                       names=["compact model", "teacher"], series="models", density=True)
    assert _types(fig) == ["Histogram2dContour", "Histogram2dContour", "Scatter"]
    assert fig.data[-1].name == "identity"
    assert _types(predicted_vs_measured_figure(measured, measured)) == ["Scattergl", "Scattergl", "Scatter"]


def test_teacher_student_scatter_highlights_the_current_neuron():
    teacher = np.array([0.8, 0.6, 0.4, 0.7, np.nan])
    student = np.array([0.6, 0.6, 0.2, 0.35, 0.5])
    names = ["n0", "n1", "n2", "n3", "n4"]
    fig = teacher_student_scatter_figure(teacher, student, names, current="n3", metric="r vs measured")
    every = fig.data[0]
    singles = [t for t in fig.data if len(t.x) == 1]
    assert len(singles) == 1, "one trace holds just the current neuron"
    current = singles[0]
    assert list(every.customdata) == names and list(every.x[:4]) == list(teacher[:4])
    assert (list(current.x), list(current.y), list(current.text)) == ([0.7], [0.35], ["n3"])
    assert current.marker.size > every.marker.size and current.marker.color != every.marker.color
    assert "%{customdata}" in every.hovertemplate and "teacher r vs measured" in every.hovertemplate
    assert fig.layout.xaxis.title.text == "teacher r vs measured"
    assert fig.layout.yaxis.title.text == "compact model r vs measured"
    assert tuple(fig.layout.xaxis.range) == tuple(fig.layout.yaxis.range)
    # Ratios 0.75, 1.0, 0.5, 0.5 (n4 has no teacher score): median 0.62.
    assert "(4 neurons; median compact/teacher ratio 0.62)" in fig.layout.title.text
    assert fig.data[-1].name == "identity"
    plain = teacher_student_scatter_figure(teacher, student, names)
    assert [t.name for t in plain.data] == ["neurons", "identity"], "no highlight without a current neuron"
    with pytest.raises(ValueError, match="differ"):
        teacher_student_scatter_figure(teacher, student, names[:3])
