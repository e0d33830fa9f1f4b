"""Long work in the app: progress with an estimate, a stop that is reported, results reused, downloads, import.

The pages run their long computations through `app_support.long_work`; these
tests drive it as the pages do. A user's Cancel interrupts a running script
with an exception at its next call into Streamlit; `st.stop()` inside the
computation is that same interruption, so the stop path here is the real one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
RUN = Path(os.environ.get("COMPACTVISION_RUN", ROOT / "assets" / "default_run"))

pytestmark = pytest.mark.skipif(not (RUN / "manifest.json").is_file(), reason=f"no run at {RUN}")


def _job_script() -> None:
    """A page with one long job whose work can stop midway; it counts how often the work really ran."""
    import os

    import streamlit as st

    from app_support.long_work import long_work
    from compactvision.runs import Run

    run = Run.open(os.environ["COMPACTVISION_RUN"], verify=False)
    calls = st.session_state.setdefault("calls", [])

    def work(progress):
        calls.append(1)
        for i in range(3):
            progress("", i + 1, 3)
            if st.session_state.get("interrupt") and i == 1:
                st.stop()  # what a Cancel click does to a running script
        return "result"

    out = long_work(run, "job", ("job", st.session_state.get("setting", 0)), "Working", work, button="Go")
    st.write(f"out={out}")


def _outputs(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if str(m.value).startswith("out=")]


@pytest.fixture
def job_app(monkeypatch):
    monkeypatch.setenv("COMPACTVISION_RUN", str(RUN))
    import streamlit as st

    st.cache_resource.clear()  # results are shared by sessions of one server; start each test empty
    return AppTest.from_function(_job_script, default_timeout=60)


def test_a_job_waits_for_its_button_then_runs_once_and_is_reused(job_app):
    at = job_app.run()
    assert _outputs(at) == ["out=None"] and at.button(key="job__start")
    at.button(key="job__start").click().run()
    assert _outputs(at) == ["out=result"]
    assert not at.warning
    at.run()  # a rerun (or another session) draws the kept result without computing again
    assert _outputs(at) == ["out=result"] and len(at.session_state["calls"]) == 1
    assert not [b for b in at.button if b.key == "job__start"], "no start button once a result exists"


def test_a_stopped_job_says_so_and_keeps_nothing(job_app):
    at = job_app.run()
    at.session_state["interrupt"] = True
    at.button(key="job__start").click().run()
    assert _outputs(at) == [], "the script ended inside the work"
    at.session_state["interrupt"] = False
    at.run()
    assert _outputs(at) == ["out=None"]
    assert any("stopped before it finished" in w.value for w in at.warning)
    at.button(key="job__start").click().run()
    assert _outputs(at) == ["out=result"]
    assert not at.warning


def test_a_new_setting_is_a_new_job(job_app):
    at = job_app.run()
    at.button(key="job__start").click().run()
    at.session_state["setting"] = 1
    at.run()
    assert _outputs(at) == ["out=None"], "another key waits for its own start"


def test_eta_text_estimates_from_the_pace_so_far():
    from app_support.long_work import eta_text

    assert eta_text("Synthesis", 0, 10, 5.0) == "Synthesis: 0/10"
    assert eta_text("Synthesis", 2, 10, 4.0) == "Synthesis: 2/10 · about 16 s left"
    assert eta_text("Synthesis", 1, 100, 30.0).endswith("about 49.5 min left")
    assert eta_text("Synthesis", 10, 10, 4.0) == "Synthesis: 10/10"



def test_synthesis_is_reused_per_neuron_and_settings(open_page):
    at = open_page("preferred_stimuli")
    before = len(at.image)
    at.slider(key="ps_steps").set_value(32).run()
    at.button(key="ps_synth__start").click().run()
    assert not at.exception
    assert len(at.image) == before + 1, "the synthesised images appear"
    fresh = open_page("preferred_stimuli")  # another browser session on the same server
    fresh.slider(key="ps_steps").set_value(32).run()
    assert len(fresh.image) == before + 1, "the result is shared, not recomputed"
    assert not [b for b in fresh.button if b.key == "ps_synth__start"]
    fresh.selectbox(key="ps_ascent").set_value("adam").run()
    assert [b for b in fresh.button if b.key == "ps_synth__start"], "another ascent is another synthesis"
    fresh.button(key="ps_synth__start").click().run()
    assert not fresh.exception and len(fresh.image) == before + 1


def test_robustness_compares_populations_with_error_bars(open_page):
    at = open_page("robustness")
    at.slider(key="rb_pop_images").set_value(16).run()
    at.button(key="rb_population__start").click().run()
    assert not at.exception
    fig = json.loads(at.get("plotly_chart")[-1].proto.spec)
    names = {t["name"] for t in fig["data"]}
    assert any(n.startswith("teacher (16 neurons)") for n in names), names
    assert any(n.startswith("compact models (16 neurons)") for n in names), names
    bars = [t for t in fig["data"] if t.get("error_y", {}).get("array") is not None]
    assert len(bars) == len(fig["data"]), "every population curve has its CI"


def test_the_camera_button_saves_the_chosen_format(open_page):
    at = open_page("gabor_bank")
    spec = at.get("plotly_chart")[0].proto
    assert json.loads(spec.config)["toImageButtonOptions"]["format"] == "png"
    at.radio(key="figure_format").set_value("SVG").run()
    config = json.loads(at.get("plotly_chart")[0].proto.config)
    assert config["toImageButtonOptions"] == {"format": "svg", "filename": "gb_bank", "scale": 1}


def _import_app(monkeypatch, tmp_path, n_models: int = 2):
    import app_support.sidebar as sidebar
    from test_cowley_import import fake_release  # a miniature release in the real layout

    monkeypatch.setattr(sidebar, "RUNS_DIR", tmp_path / "runs")
    release = fake_release(tmp_path / "release", n_models=n_models)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="cowley_release").set_value(str(release)).run()
    at.button(key="cowley_import").click().run()
    return at


def _wait_for(at: AppTest, done, seconds: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.5)
    at.run()


def test_import_shows_progress_and_lands_in_the_run_list(monkeypatch, tmp_path):
    at = _import_app(monkeypatch, tmp_path)
    job = at.session_state["import_job"]
    assert job.argv[-2:] == ["--progress-format", "lines"]
    assert any("Importing" in str(p.proto.text) for p in at.get("progress")), "a bar from the first moment"
    _wait_for(at, lambda: job.status != "running")
    assert job.status == "finished", job.output()[-500:]
    assert "PROGRESS import-cowley 2/2" in job.output()
    _wait_for(at, lambda: True, 0)
    assert any("cowley-v4" in str(o) for o in at.selectbox(key="run_path").options)


def test_a_cancelled_import_can_start_again(monkeypatch, tmp_path):
    at = _import_app(monkeypatch, tmp_path, n_models=40)  # long enough to be caught mid-way
    job = at.session_state["import_job"]
    _wait_for(at, lambda: "PROGRESS import-cowley" in job.output() or job.status != "running")
    at.button(key="cowley_import_cancel").click().run()  # as a user does: once the bar moves
    _wait_for(at, lambda: job.status != "running")
    assert job.status == "cancelled"
    assert any("cancelled" in w.value for w in at.warning)
    at.button(key="cowley_import").click().run()  # the half-made folder is cleared and the import runs again
    again = at.session_state["import_job"]
    assert again is not job
    _wait_for(at, lambda: again.status != "running")
    assert again.status == "finished", again.output()[-500:]


def test_robustness_compares_this_run_with_a_control_run(open_page, monkeypatch, tmp_path):
    """The control is any run with compact models of the same neurons: here a copy of the bundle under runs/."""
    import shutil

    import app_support.locations as locations

    runs = tmp_path / "runs"
    shutil.copytree(RUN, runs / "control")
    monkeypatch.setattr(locations, "RUNS_DIR", runs)
    at = open_page("robustness")
    at.selectbox(key="rb_control").select_index(1).run()
    at.slider(key="rb_pop_images").set_value(16).run()
    at.button(key="rb_population__start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    fig = json.loads(at.get("plotly_chart")[-1].proto.spec)
    names = {t["name"] for t in fig["data"] if t.get("showlegend", True)}
    assert {"teacher (16 neurons)", "compact models (16 neurons)", "teacher (control) (16 neurons)",
            "compact models (control) (16 neurons)"} <= names, names
