"""The real-V4 command, end to end on a slice of the public release: teacher on recordings, compact models of real neurons.

Skips when the release folder is absent. The slice keeps the release's
layout (zip of JPEGs in name order, responses as neurons x images); its
images are shrunk to 48 px and it keeps a few neurons and images per
session, so the whole chain runs in minutes on two cores.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compactvision.artifacts import list_students, read_manifest
from conftest import load_benchmark

SESSIONS = {"190923": "test", "210224": "validation", "190925": "trunk", "190927": "trunk"}
IMAGES, NEURONS, SIZE = 80, 4, 48


def release_slice(release: Path, out: Path, sessions=tuple(SESSIONS), n_images: int = IMAGES,
                  n_neurons: int = NEURONS, size: int | None = SIZE) -> Path:
    """The first images and neurons of some real sessions, in the release's own layout, with their published models.

    `size` shrinks the images (None keeps the release's 112 px).
    """
    (out / "images").mkdir(parents=True)
    (out / "responses_repeat_averaged").mkdir()
    for sid in sessions:
        with zipfile.ZipFile(release / "images" / f"images_{sid}.zip") as src, \
                zipfile.ZipFile(out / "images" / f"images_{sid}.zip", "w") as dst:
            names = sorted(n for n in src.namelist() if n.lower().endswith(".jpg"))[:n_images]
            for name in names:
                buf = io.BytesIO()
                if size is None:
                    dst.writestr(name, src.read(name))
                    continue
                Image.open(io.BytesIO(src.read(name))).convert("RGB").resize((size, size)).save(buf, "JPEG", quality=95)
                dst.writestr(name, buf.getvalue())
        responses = np.load(release / "responses_repeat_averaged" / f"responses_{sid}.npy")
        np.save(out / "responses_repeat_averaged" / f"responses_{sid}.npy", responses[:n_neurons, :n_images])
        for kind in ("weights_npy", "nums_filters"):
            for k in range(n_neurons):
                model = release / "compact_models" / kind / f"compact_model_{sid}_neuron{k}.npy"
                if model.is_file():
                    (out / "compact_models" / kind).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(model, out / "compact_models" / kind / model.name)
    return out


ROOT = Path(__file__).resolve().parents[1]


def _command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "compactvision.cli", "pipeline", "--data", str(data), "--preset", "tiny",
            "--out", str(out), "--test-sessions", "190923", "--per-session", "2", "--workers", "1",
            "--progress-format", "none"]


@pytest.fixture(scope="module")
def real_run(cowley_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(release slice, run) built once by the real-V4 command, as a user runs it."""
    tmp = tmp_path_factory.mktemp("real_v4")
    data, out = release_slice(cowley_dir, tmp / "release"), tmp / "runs" / "v4"
    done = subprocess.run(_command(data, out), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return data, out


def test_the_real_v4_command_builds_a_run_of_compact_models_of_real_neurons(real_run):
    data, out = real_run
    manifest = read_manifest(out)  # every file's hash checks out
    assert manifest["kind"] == "pipeline" and manifest["config"]["pipeline"]["data"] == str(data)
    split = json.loads((out / "data.json").read_text())
    assert split["protocol"] == "cowley" and split["test_sessions"] == ["190923"]
    assert split["validation_session"] == "210224", "the release's validation session, by default"
    assert manifest["metrics"]["validation"]["session"] == "210224"
    assert list_students(out) == ["190923_neuron0", "190923_neuron1"], "the first 2 of the test session, no others"
    arch = json.loads((out / "teacher" / "architecture.json").read_text())
    assert arch["config"]["image_size"] == SIZE, "the teacher takes the recordings' image size"
    assert set(arch["sessions"]) == set(SESSIONS)
    from compactvision.data.formats import load_npz

    heldout = load_npz(out / "data" / "heldout.npz")
    assert [s.session_id for s in heldout.sessions] == ["190923"]
    assert heldout.sessions[0].n_images == IMAGES - IMAGES // 2, "scored on the second half of the session"
    assert "compression" in manifest["metrics"]

    again = subprocess.run(_command(data, out), capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_manifest(out)["files"] == manifest["files"], "a rerun of a finished run changes nothing"


@pytest.mark.parametrize("page", sorted(p.stem for p in (ROOT / "pages").glob("*.py")))
def test_every_page_works_on_a_real_v4_run(real_run, page, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("COMPACTVISION_RUN", str(real_run[1]))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.sidebar.selectbox(key="run_path").value == str(real_run[1])


def test_the_twin_presets_refuse_recording_options_and_v4_refuses_the_twin(tmp_path):
    from compactvision.cli import main
    from compactvision.pipeline import run_pipeline

    assert main(["pipeline", "--preset", "tiny", "--out", str(tmp_path / "a"), "--per-session", "2"]) != 0
    with pytest.raises(ValueError, match="is for recordings"):
        run_pipeline("v4", tmp_path / "b")


def test_ours_against_the_published_models_on_the_same_images(cowley_dir, tmp_path, real_run):
    """A run whose compact models are the published ones, re-saved: both columns must agree exactly."""
    from compactvision.cowley import import_cowley
    from compactvision.cowley.compare import compare_with_published
    from compactvision.data.formats import load_cowley, save_npz
    from compactvision.data.dataset import NeuralDataset, Session
    from compactvision.errors import DataError

    release = release_slice(cowley_dir, tmp_path / "release", sessions=("190923",), n_images=40, n_neurons=2, size=None)
    run = import_cowley(release / "compact_models" / "weights_npy", tmp_path / "run", evaluate=False)
    s = load_cowley(release).sessions[0]
    save_npz(NeuralDataset([Session(s.session_id, s.images[20:], s.responses[:, 20:], s.neuron_ids)], {}),
             run / "data" / "heldout.npz")
    (run / "data.json").write_text(json.dumps({"source": str(release)}))
    # a teacher's per-neuron scores, as the teacher stage writes them, join the rows by neuron id
    (run / "history").mkdir(exist_ok=True)
    (run / "history" / "teacher_metrics.json").write_text(json.dumps(
        {"per_neuron": {"190923": {"neuron_ids": ["190923_neuron1", "190923_neuron0"], "r": [0.25, 0.5]}}}))
    seen = []
    result = compare_with_published(run, progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert [r["neuron"] for r in result["rows"]] == ["190923_neuron0", "190923_neuron1"]
    assert [r["teacher_r"] for r in result["rows"]] == [0.5, 0.25]
    for row in result["rows"]:
        assert row["ours_r"] == pytest.approx(row["published_r"], abs=1e-6)
        assert row["ours_parameters"] == row["published_parameters"]
    assert result["sessions"]["190923"]["n_neurons"] == 2
    assert result["sessions"]["190923"]["teacher_r"]["median"] == pytest.approx(0.375)
    assert seen[-1] == ("compare", 2, 2)
    # The benchmark prints the same comparison and writes it per neuron.
    import csv
    bench = load_benchmark("cowley")
    assert bench.main(["--release", str(release), "--ours", str(run), "--csv", str(tmp_path / "rows.csv")]) == 0
    with open(tmp_path / "rows.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["neuron"] for r in table] == ["190923_neuron0", "190923_neuron1"]
    assert float(table[0]["ours_r"]) == pytest.approx(result["rows"][0]["ours_r"])
    with pytest.raises(DataError, match="take 112 px images; this run's are 48 px"):
        compare_with_published(real_run[1])  # the pipeline's slice is shrunk to 48 px


def test_home_compares_a_real_run_with_the_published_models_or_says_why_not(real_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("COMPACTVISION_RUN", str(real_run[1]))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.switch_page("pages/home.py").run()
    assert "Against the published compact models" in [s.value for s in at.subheader]
    at.button(key="home_published__start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("take 112 px images; this run's are 48 px" in i.value for i in at.info), [i.value for i in at.info]


def test_the_readout_benchmark_chooses_on_the_validation_session_before_it_reads_a_test_half(real_run, capsys):
    """`benchmarks/v4_teacher.py --refit-readouts` on the real-V4 run: every fold count, the ridge probe alone and
    each blend of the two, the neuron basis alone and blended in, on 210224, then the test session refitted the
    chosen way beside the run's own readouts. The run itself is left as it was."""
    data, out = real_run
    files = read_manifest(out)["files"]
    bench = load_benchmark("v4_teacher")
    bench.refit_readouts(out, str(data), bench.readout_ways([0, 2], [2], [2], [1.0, 0.5]))
    printed = capsys.readouterr().out
    assert "chosen on validation session 210224" in printed
    rows = [line for line in printed.splitlines()
            if line.startswith(("last tenth held back", "2-fold", "ridge probe", "neuron basis"))]
    assert len(rows) == 8 and all(len(row.split()) >= 6 for row in rows), printed
    assert sum("+ probe 2 x 2, half each" in row for row in rows) == 4, printed
    assert sum(row.startswith("neuron basis alone") or "+ neuron basis at 0.5" in row for row in rows) == 3, printed
    assert all(-1 <= float(row.split("[")[0].split()[-1]) <= 1 for row in rows), printed
    chosen = next(line for line in printed.splitlines() if line.startswith("chosen: "))
    assert printed.index(chosen) < printed.index("\n190923 "), "a test half is read only after the choice"
    assert read_manifest(out)["files"] == files, "refitting in memory writes nothing into the run"
