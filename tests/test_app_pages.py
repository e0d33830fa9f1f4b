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
    at.button(key="gallery_synth__start").click().run()
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
    assert "over 2 neurons" not in scatter["layout"]["title"]["text"], "the columns are models, not neurons"
    density = at.toggle(key="tvs_density")
    assert density.value is (len(decode(scatter["data"][0]["x"])) * 2 > 2000), "on by default only for large sets"
    run = Run.open(RUN)
    if any(run.teacher_scores().values()):
        per_neuron = [f for f in figures(at) if f["layout"]["title"]["text"].startswith("Compact model vs teacher")]
        assert len(per_neuron) == 1, "the per-neuron teacher-vs-student scatter is drawn"
        current = at.sidebar.selectbox(key="neuron").value
        picked = [t for t in per_neuron[0]["data"] if t.get("text") == [current]]
        assert len(picked) == 1 and len(decode(picked[0]["x"])) == 1, "the current neuron is picked out"
    for on, trace in ((True, "histogram2dcontour"), (False, "scattergl")):
        at.toggle(key="tvs_density").set_value(on).run()
        assert [t["type"] for t in figures(at)[0]["data"]].count(trace) == 2, (on, trace)
    target = at.radio(key="tvs_target")
    twin_run = run.data_info.get("source") == "twin"
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
    at.button(key="ps_tuning_job__start").click().run()
    gratings = figure_data(at, 0)
    at.selectbox(key="ps_tuning").set_value("dot_size").run()
    assert not at.get("plotly_chart"), "a new stimulus waits for the button"
    at.button(key="ps_tuning_job__start").click().run()
    assert figure_data(at, 0) != gratings
    overlay = figures(at)[0]
    names = {t["legendgroup"] for t in overlay["data"] if t.get("legendgroup")}
    assert {"compact model", "teacher", "ground truth (twin)"} <= names, "every model on the one figure"
    assert overlay["layout"]["yaxis"]["range"] == [-1.05, 1.05], "one normalised scale"


def test_robustness_runs_and_follows_the_perturbation(open_page):
    at = open_page("robustness")
    at.slider(key="rb_images").set_value(16).run()
    at.button(key="rb_quick__start").click().run()
    noise = figures(at)[0]
    assert any("compact model" in t["name"] for t in noise["data"])
    at.selectbox(key="rb_perturbation").set_value("blur").run()
    at.button(key="rb_quick__start").click().run()
    blur = figures(at)[0]
    assert not np.array_equal(decode(blur["data"][0]["x"]), decode(noise["data"][0]["x"]))


# ------------------------------------------------------------------ Train page
# Its pipeline is a stand-in that takes the same arguments, starts slowly (as importing torch does) and never
# finishes on its own; everything else (registry, records, resume, clashes) is the page's real code.
_SLOW_START = ("import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); time.sleep(1.5); "
               "print('PROGRESS data 0/1', flush=True); time.sleep(120)")


@pytest.fixture
def train_page(monkeypatch, tmp_path):
    """(runs folder, open) for the Train page on a private runs/ folder; its jobs are stopped afterwards."""
    import sys

    import app_support.jobs as jobs
    import app_support.locations as locations
    import app_support.sidebar as sidebar

    runs = tmp_path / "runs"
    monkeypatch.setattr(locations, "RUNS_DIR", runs)
    monkeypatch.setattr(sidebar, "RUNS_DIR", runs)
    monkeypatch.setattr(jobs, "pipeline_command", lambda preset, out, python=sys.executable: [
        python, "-c", _SLOW_START, "pipeline", "--preset", preset, "--out", str(out), "--progress-format", "lines"])
    monkeypatch.setenv("COMPACTVISION_RUN", str(RUN))

    def _open() -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        at.switch_page("pages/train.py").run()
        assert not at.exception, [e.message for e in at.exception]
        return at

    yield runs, _open
    for path in runs.glob("*.job.json"):
        if (record := jobs.JobRecord.read(path)) is not None:
            record.cancel()


def _rerun_until(at: AppTest, predicate, timeout: float = 20.0) -> AppTest:
    import time

    deadline = time.time() + timeout
    while not predicate(at) and time.time() < deadline:
        time.sleep(0.2)
        at.run()
    assert predicate(at), [s.value for s in at.subheader]
    return at


def _progress_texts(at: AppTest) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def _incomplete_run(runs: Path, name: str) -> list[str]:
    """A pipeline cut after its teacher stage, with the record the Train page leaves: returns its command."""
    import sys

    from app_support.jobs import JobRecord
    from compactvision.artifacts import atomic_write_json, write_manifest

    atomic_write_json(runs / name / "data.json", {"source": "twin"})
    write_manifest(runs / name, kind="teacher", config={})
    argv = [sys.executable, "-c", _SLOW_START, "pipeline", "--preset", "tiny", "--out", str(runs / name),
            "--progress-format", "lines", "--force"]
    JobRecord(runs / name, argv, "tiny", 0.0, pid=None).write()
    return argv


def test_train_page_shows_progress_at_once_and_every_session_sees_the_job(train_page):
    runs, open_train = train_page
    at = open_train()
    name = at.text_input(key="train_name").value
    at.get("form_submit_button")[0].click().run()
    assert f"{name}: running" in [s.value for s in at.subheader]
    texts = _progress_texts(at)
    assert len(texts) == 1 and texts[0].startswith("starting: loading libraries… ") and texts[0].endswith(" s"), texts
    assert (runs / f"{name}.job.json").is_file(), "the job is recorded on disk"
    assert at.text_input(key="train_name").value not in ("", name), "the box offers a fresh name"
    # A reload is a new browser session: the job is still there, and its progress arrives.
    other = open_train()
    assert f"{name}: running" in [s.value for s in other.subheader]
    _rerun_until(other, lambda a: any(t.startswith("data: 0/1 · ") for t in _progress_texts(a)))


def test_train_page_resumes_a_cancelled_job_with_its_command(train_page):
    runs, open_train = train_page
    at = open_train()
    name = at.text_input(key="train_name").value
    at.get("form_submit_button")[0].click().run()
    original = at.session_state["train_jobs"][name]
    at.button(key=f"cancel_{name}").click().run()
    _rerun_until(at, lambda a: f"{name}: cancelled" in [s.value for s in a.subheader])
    at.button(key=f"resume_{name}").click().run()
    assert f"{name}: running" in [s.value for s in at.subheader]
    resumed = at.session_state["train_jobs"][name]
    assert resumed is not original and resumed.argv == original.argv and resumed.out_dir == runs / name
    assert "--- resumed" in (runs / f"{name}.log").read_text(), "the same log, appended"


def test_train_page_explains_name_clashes(train_page):
    from compactvision.artifacts import atomic_write_json, write_manifest

    runs, open_train = train_page
    atomic_write_json(runs / "done" / "data.json", {"source": "twin"})
    write_manifest(runs / "done", kind="pipeline", config={})
    argv = _incomplete_run(runs, "half")
    at = open_train()
    at.text_input(key="train_name").set_value("done")
    at.get("form_submit_button")[0].click().run()
    assert [e.value for e in at.error] == ["runs/done already holds a finished run; pick another name."]
    assert not at.session_state["train_jobs"], "no job starts on a taken name"
    assert "train_clash_resume" not in [b.key for b in at.button], "a finished run is not resumed"
    at.text_input(key="train_name").set_value("half")
    at.get("form_submit_button")[0].click().run()
    assert not at.error and any(w.value.startswith("runs/half holds an incomplete run") for w in at.warning)
    at.button(key="train_clash_resume").click().run()
    job = at.session_state["train_jobs"]["half"]
    assert job.argv == [a for a in argv if a != "--force"], "the recorded command, without --force"
    assert "half: running" in [s.value for s in at.subheader]


def test_train_page_lists_and_resumes_an_incomplete_run_after_a_restart(train_page):
    runs, open_train = train_page
    argv = _incomplete_run(runs, "half")  # recorded by an earlier server: this one's registry is empty
    at = open_train()
    assert "half: incomplete" in [s.value for s in at.subheader]
    picker = at.sidebar.selectbox(key="run_path")
    assert picker.format_func(str(runs / "half")) == "half (incomplete)", "the picker says so too"
    assert not at.session_state["train_jobs"]
    at.button(key="resume_half").click().run()
    assert [s.value for s in at.subheader].count("half: running") == 1, "listed once, as this server's job"
    assert at.session_state["train_jobs"]["half"].argv == argv[:-1]
    at.run()
    label = at.sidebar.selectbox(key="run_path").format_func(str(runs / "half"))
    assert label == "half (being built)", "while this server's job writes it, the picker says so"
