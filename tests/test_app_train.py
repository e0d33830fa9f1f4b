"""AppTest of the Train page and the sidebar run picker (they need no trained models)."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from compactvision.artifacts import atomic_write_json, write_manifest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _bare_run(path: Path) -> Path:
    atomic_write_json(path / "data.json", {"source": "twin"})
    write_manifest(path, kind="compressed", config={})
    return path


@pytest.fixture
def train_page(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPACTVISION_RUN", str(_bare_run(tmp_path / "picked")))
    at = AppTest.from_file(APP, default_timeout=30)
    at.switch_page("pages/train.py").run()
    assert not at.exception, at.exception
    return at


def test_train_page_offers_presets_and_refuses_bad_names(train_page):
    at = train_page
    assert [t.value for t in at.title] == ["Train a run"]
    assert [o.split(":")[0] for o in at.radio(key="train_preset").options] == ["tiny", "demo"]
    at.text_input(key="train_name").set_value("../escape")
    at.get("form_submit_button")[0].click().run()
    assert any("run name" in e.value for e in at.error), [e.value for e in at.error]
    assert not at.session_state["train_jobs"], "no job may start under a bad name"


def test_sidebar_opens_typed_run_directory_and_explains_bad_ones(train_page, tmp_path):
    at = train_page
    assert at.session_state["run_path"] == str(tmp_path / "picked")
    other = _bare_run(tmp_path / "other")
    at.sidebar.text_input(key="run_dir_input").set_value(str(other)).run()
    assert at.session_state["run_path"] == str(other)
    assert str(other) in at.sidebar.selectbox(key="run_path").options
    at.sidebar.text_input(key="run_dir_input").set_value(str(tmp_path / "nowhere")).run()
    assert any("not a run directory" in e.value for e in at.sidebar.error)
    assert at.session_state["run_path"] == str(other), "a bad path must not change the open run"


def test_the_run_named_by_the_environment_opens_when_named_relatively(monkeypatch, tmp_path):
    """`COMPACTVISION_RUN=runs/v4 make run`: the picker lists runs/ by absolute path, yet that run must open."""
    import app_support.sidebar as sidebar

    runs = tmp_path / "runs"
    _bare_run(runs / "older")
    wanted = _bare_run(runs / "wanted")
    monkeypatch.setattr(sidebar, "RUNS_DIR", runs)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPACTVISION_RUN", "runs/wanted")
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception, at.exception
    assert Path(at.session_state["run_path"]).resolve() == wanted.resolve()
