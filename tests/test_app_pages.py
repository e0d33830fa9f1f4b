"""AppTest of every page on the bundled run: it renders, its main widgets change what is drawn, bad uploads are refused.

The run is the bundled default (assets/default_run), or the one named by
COMPACTVISION_RUN, the variable the app itself opens on.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from compactvision.interpret.graph import neuron_graph
from compactvision.runs import Run, neuron_data
from compactvision.inputs import fit_images

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
RUN = Path(os.environ.get("COMPACTVISION_RUN", ROOT / "assets" / "default_run"))

pytestmark = pytest.mark.skipif(not (RUN / "manifest.json").is_file(), reason=f"no run at {RUN} (build it with `make bundle`)")


@pytest.fixture
def open_page(monkeypatch):
    monkeypatch.setenv("COMPACTVISION_RUN", str(RUN))

    def _open(name: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=120)
        at.switch_page(f"pages/{name}.py").run()
        assert not at.exception, [e.message for e in at.exception]
        return at

    return _open


def decode(value):
    """Plotly 7 packs numeric arrays as {dtype, bdata (base64), shape}; lists pass through."""
    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return arr.reshape(value["shape"]) if "shape" in value else arr
    return np.asarray(value)


def figures(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def figure_data(at: AppTest, index: int) -> str:
    """Everything drawn by one chart, canonicalised so two renders can be compared."""
    return json.dumps(figures(at)[index]["data"], sort_keys=True)


def _page_student_and_image(at: AppTest, slider: str = "graph_image_index"):
    """The compact model and held-out image the page shows (its image slider's choice), read through the library."""
    run = Run.open(RUN)
    neuron_id = at.sidebar.selectbox(key="neuron").value
    model = run.load_student(neuron_id)
    data = neuron_data(run.heldout(), neuron_id)
    index = at.sidebar.slider(key=slider).value
    return model, fit_images(data.images[index:index + 1], model.arch.input_size[0])[0]


def _png(width: int = 40, height: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_gallery_lists_every_neuron_with_its_type_size_and_accuracy(open_page):
    at = open_page("gallery")
    table = at.dataframe[0].value
    run = Run.open(RUN)
    assert list(table["neuron"]) == run.student_ids()
    truth = {str(r["neuron_id"]): r["cell_type"] for r in run.ground_truth()}
    assert [t.replace(" ", "_").lower() for t in table["type"]] == [truth[n].lower() for n in table["neuron"]]
    assert (table["parameters"] > 0).all() and table["noise ceiling"].between(0, 1).all()
    assert table["top image"].str.startswith("data:image/png").all()
    assert "synthesised" not in table, "synthesis waits for the button"
    population = figures(at)[0]
    assert "noise ceiling" in population["layout"]["yaxis"]["title"]["text"]
    at.button(key="gallery_synthesise").click().run()
    assert at.dataframe[0].value["synthesised"].str.startswith("data:image/png").all()


def test_profile_gathers_one_neuron(open_page):
    at = open_page("profile")
    labels = {m.label: m.value for m in at.metric}
    neuron_id = at.sidebar.selectbox(key="neuron").value
    model = Run.open(RUN).load_student(neuron_id)
    assert labels["Parameters"] == f"{model.n_parameters():,}"
    assert {"r, compact model", "r, teacher", "Noise ceiling"} <= set(labels)
    rf, graph = figures(at)
    assert rf["data"][0]["type"] == "heatmap" and "readout" in rf["data"][0]["colorbar"]["title"]["text"]
    assert any(t.get("name") == "filters" for t in graph["data"])
    assert at.get("download_button"), "the compact model can be downloaded"
    assert any("preferred orientation" in m.value for m in at.markdown)
    other = Run.open(RUN).student_ids()[3]
    at.sidebar.selectbox(key="neuron").set_value(other).run()
    assert at.sidebar.selectbox(key="neuron").value == other
    assert at.query_params["neuron"] in (other, [other]), "the URL names the neuron shown"
    assert at.sidebar.selectbox(key="neuron").options[3].startswith(f"{other} · "), "the picker shows the cell type"


def test_home_summarises_the_run(open_page):
    at = open_page("home")
    labels = {m.label: m.value for m in at.metric}
    n_students = len(list((RUN / "students").glob("neuron_*.safetensors")))
    assert labels["Neurons with a compact model"] == str(n_students)
    assert "Compact model file" in labels and labels["Compact model file"].endswith("KB")
    assert at.dataframe, "the accuracy table is drawn"
    assert any("What am I looking at" in m.value for m in at.markdown)


def test_gabor_bank_widgets_change_the_filter_grid(open_page):
    at = open_page("gabor_bank")
    assert len(figures(at)) == 3
    before = figure_data(at, 0)
    shown = at.slider(key="gb_shown")
    shown.set_value(shown.min).run()
    assert figure_data(at, 0) != before
    before = figure_data(at, 0)
    at.selectbox(key="gb_order").set_value("sf_cpd").run()
    assert figure_data(at, 0) != before
    maps = figure_data(at, 2)
    at.radio(key="gb_cells").set_value("complex").run()
    assert figure_data(at, 2) != maps


def test_layer_weights_follow_layer_and_model(open_page):
    at = open_page("layer_weights")
    first = figure_data(at, 0)
    at.selectbox(key="lw_student_layer").set_value(1).run()
    second = figure_data(at, 0)
    assert second != first
    # A separable layer is drawn as depthwise + pointwise: two heatmaps.
    assert sum(t["type"] == "heatmap" for t in figures(at)[0]["data"]) == 2
    at.radio(key="lw_model").set_value("teacher").run()
    assert not at.exception and figure_data(at, 0) not in (first, second)


def test_attributions_method_and_image_change_the_maps(open_page):
    at = open_page("attributions")
    fig = figures(at)[0]
    assert [t["type"] for t in fig["data"]][:1] == ["image"] and len(fig["data"]) == 3  # image, student, teacher
    maps = figure_data(at, 0)
    at.selectbox(key="attr_method").set_value("input_x_gradient").run()
    assert figure_data(at, 0) != maps
    at.selectbox(key="attr_method").set_value("integrated_gradients").run()
    assert not at.get("plotly_chart"), "expensive methods wait for the button"
    at.button(key="attr_compute").click().run()
    ig = figure_data(at, 0)
    assert any(m.label.startswith("Teacher–student map similarity") for m in at.metric)
    index = at.sidebar.slider(key="attr_image_index")
    index.set_value(index.min if index.value != index.min else index.min + 1).run()
    at.button(key="attr_compute").click().run()
    assert figure_data(at, 0) != ig
    # Filter conductance routes through each model's strongest filter; it used to end in a traceback.
    at.selectbox(key="attr_method").set_value("neuron_conductance").run()
    at.button(key="attr_compute").click().run()
    assert not at.exception and at.get("plotly_chart")


def test_attributions_refuse_a_bad_upload_and_use_a_good_one(open_page):
    at = open_page("attributions")
    at.sidebar.radio(key="attr_image_source").set_value("upload").run()
    at.sidebar.file_uploader(key="attr_image_upload").set_value(("evil.png", b"GIF89a not a png", "image/png")).run()
    assert not at.exception
    assert any("cannot be used" in e.value and "evil.png" in e.value for e in at.sidebar.error)
    at.sidebar.file_uploader(key="attr_image_upload").set_value(("ok.png", _png(), "image/png")).run()
    assert not at.sidebar.error and at.get("plotly_chart"), "a good upload is attributed"


def _graph_nodes(at: AppTest) -> list[tuple[int, int]]:
    graph = figures(at)[0]
    filters = next(t for t in graph["data"] if t.get("name") == "filters")
    return [tuple(int(v) for v in row) for row in decode(filters["customdata"]).reshape(-1, 2)]


def test_neuron_graph_node_choice_and_ablation(open_page):
    at = open_page("neuron_graph")
    model, image = _page_student_and_image(at)
    graph = neuron_graph(model, image)
    options = at.selectbox(key="graph_node").options
    shown = _graph_nodes(at)
    assert set(shown) <= {n.id for n in graph.nodes} and len(options) == len(graph.nodes)
    strongest = max(graph.nodes, key=lambda n: abs(n.ablation_delta))
    assert strongest.id in shown, "the important paths hold the filter that matters most"
    assert at.selectbox(key="graph_node").value == strongest.id, "the most important filter is selected first"
    at.toggle(key="graph_full").set_value(True).run()
    assert sorted(_graph_nodes(at)) == sorted(n.id for n in graph.nodes), "one toggle shows the full graph"
    detail = figure_data(at, 1)
    other = next(n.id for n in graph.nodes if n.id != strongest.id)
    at.selectbox(key="graph_node").set_value(other).run()
    assert figure_data(at, 1) != detail
    base = next(m for m in at.metric if m.label == "Response")
    # Switch off the filter whose loss moves the response most: the page must show exactly that move.
    assert abs(strongest.ablation_delta) > 0.01, "the bundled model has a filter that matters"
    at.multiselect(key="graph_ablate").set_value([strongest.id]).run()
    ablated = next(m for m in at.metric if m.label == "Response with these filters off")
    assert float(base.value) == pytest.approx(graph.response, abs=1e-3)
    assert float(ablated.value) == pytest.approx(graph.response + strongest.ablation_delta, abs=1e-3)
    assert float(ablated.delta) == pytest.approx(strongest.ablation_delta, abs=2e-3)
    marks = next(t for t in figures(at)[0]["data"] if t.get("name") == "ablated")
    assert len(decode(marks["x"])) == 1, "the ablated filter is marked in the graph"
    # A new neuron starts with every filter on.
    at.sidebar.selectbox(key="neuron").set_value(Run.open(RUN).student_ids()[1]).run()
    assert at.multiselect(key="graph_ablate").value == []
    assert not any(t.get("name") == "ablated" for t in figures(at)[0]["data"])


def test_neuron_graph_image_changes_activations(open_page):
    at = open_page("neuron_graph")
    before = figure_data(at, 0)
    index = at.sidebar.slider(key="graph_image_index")
    index.set_value(index.min if index.value != index.min else index.min + 1).run()
    assert figure_data(at, 0) != before


def test_teacher_vs_student_widgets(open_page):
    at = open_page("teacher_vs_student")
    assert len(figures(at)) >= 2
    scatter = figures(at)[0]
    names = [t["name"] for t in scatter["data"]]
    assert any(n.startswith("compact model") for n in names) and any(n.startswith("teacher") for n in names)
    target = at.radio(key="tvs_target")
    twin_run = Run.open(RUN).data_info.get("source") == "twin"
    assert len(target.options) == (2 if twin_run else 1), "a twin run also compares with the noise-free rates"
    if not twin_run:
        pytest.skip("the run is not the digital twin: no second target to switch to")
    x_before = decode(scatter["data"][0]["x"])
    target.set_value(target.options[1]).run()
    assert not np.array_equal(decode(figures(at)[0]["data"][0]["x"]), x_before)


def test_teacher_vs_student_predicts_under_the_models_locks(open_page, monkeypatch):
    """The Robustness page switches the shared teacher's V1 noise under its lock; predictions must wait for it."""
    import app_support.caches as caches
    import compactvision.interpret.attribution as attribution

    held: list = []
    calls: list[tuple[str, bool]] = []
    real_lock, real_response = caches.model_lock, attribution.response

    @contextlib.contextmanager
    def recording_lock(run, model):
        with real_lock(run, model):
            held.append(model)
            try:
                yield
            finally:
                held.remove(model)

    def recording_response(model, images, *args, **kwargs):
        calls.append((type(model).__name__, any(m is model for m in held)))
        return real_response(model, images, *args, **kwargs)

    monkeypatch.setattr(caches, "model_lock", recording_lock)
    monkeypatch.setattr(attribution, "response", recording_response)
    st.cache_data.clear()  # the page caches its predictions across tests
    open_page("teacher_vs_student")
    assert len(calls) == 2, calls  # the compact model and the teacher
    assert all(locked for _, locked in calls), calls


def test_teacher_vs_student_refuses_a_bad_dataset_upload(open_page):
    at = open_page("teacher_vs_student")
    at.file_uploader(key="tvs_upload").set_value(("data.npz", b"PK\x03\x04 truncated", "application/octet-stream")).run()
    assert not at.exception
    assert any("cannot be used" in e.value and "data.npz" in e.value for e in at.error)


def test_preferred_stimuli_tuning_follows_the_stimulus(open_page):
    at = open_page("preferred_stimuli")
    assert len(at.image) > 0, "top images are shown on first render"
    at.button(key="ps_measure").click().run()
    gratings = figure_data(at, 0)
    at.selectbox(key="ps_tuning").set_value("dot_size").run()
    assert not at.get("plotly_chart"), "a new stimulus waits for the button"
    at.button(key="ps_measure").click().run()
    assert figure_data(at, 0) != gratings
    overlay = figures(at)[0]
    names = {t["legendgroup"] for t in overlay["data"] if t.get("legendgroup")}
    assert {"compact model", "teacher", "ground truth (twin)"} <= names, "every model on the one figure"
    assert overlay["layout"]["yaxis"]["range"] == [-1.05, 1.05], "one normalised scale"


def test_robustness_runs_and_follows_the_perturbation(open_page):
    at = open_page("robustness")
    at.slider(key="rb_images").set_value(16).run()
    at.button(key="rb_run").click().run()
    noise = figures(at)[0]
    assert any("compact model" in t["name"] for t in noise["data"])
    at.selectbox(key="rb_perturbation").set_value("blur").run()
    at.button(key="rb_run").click().run()
    blur = figures(at)[0]
    assert not np.array_equal(decode(blur["data"][0]["x"]), decode(noise["data"][0]["x"]))
