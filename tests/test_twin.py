"""The digital twin: each cell type computes what its definition says, deterministically."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compactvision.data import images as im
from compactvision.data.twin import CELL_TYPES, DigitalTwin, make_twin_dataset, twin_from_ground_truth


def _twin(*cell_types: str, n: int = 3, seed: int = 0) -> tuple[DigitalTwin, list[dict]]:
    twin = DigitalTwin(n, seed=seed, cell_types=list(cell_types))
    return twin, twin.ground_truth()


def _angle_error(a: float, b: float) -> float:
    return abs((a - b + 90.0) % 180.0 - 90.0)


def _orientations(preferred: float) -> np.ndarray:
    """Every 10 deg around the clock, and every 1 deg within 30 deg of the preferred orientation."""
    return np.unique(np.concatenate([np.arange(0.0, 180.0, 10.0), (preferred + np.arange(-30.0, 31.0)) % 180.0]))


@pytest.mark.parametrize("cell_type", ["v1_simple", "v1_complex", "texture"])
def test_orientation_cells_peak_at_their_orientation_on_gratings(cell_type):
    twin, truth = _twin(cell_type, n=2)
    phases = np.linspace(0, 2 * np.pi, 4, endpoint=False) if cell_type == "v1_simple" else [0.0]
    for i, rec in enumerate(truth):
        orientations = _orientations(rec["preferred_orientation_deg"])
        g = im.gratings(orientations, rec["params"]["sf_cpp"], phases, center=rec["rf_center"])
        tuning = twin.rates(g)[i].reshape(len(orientations), len(phases)).max(axis=1)
        peak = orientations[np.argmax(tuning)]
        assert _angle_error(peak, rec["preferred_orientation_deg"]) <= 5.0
        assert tuning.max() > 3 * tuning.min()  # tuned, not flat


def test_end_stopped_cell_prefers_short_bars_at_its_orientation():
    twin, truth = _twin("end_stopped", n=2)
    for i, rec in enumerate(truth):
        p, ori, best = rec["params"], rec["preferred_orientation_deg"], rec["preferred_size_px"]
        width = 0.5 / p["sf_cpp"]
        lengths = np.concatenate([np.arange(2.0, 40.0, 1.0), [60.0, 90.0]])
        curve = np.maximum(twin.rates(im.bars(lengths, width, ori, rec["rf_center"]))[i],
                           twin.rates(im.bars(lengths, width, ori, rec["rf_center"], polarity=-1))[i])
        assert abs(lengths[np.argmax(curve)] - best) <= max(2.0, 0.15 * best)
        assert curve[-1] - p["baseline"] < 0.3 * (curve.max() - p["baseline"])  # a long bar is suppressed
        oriented = _orientations(ori)
        bars = np.concatenate([im.bars([best], width, o, rec["rf_center"], polarity=s) for o in oriented for s in (1, -1)])
        by_orientation = twin.rates(bars)[i].reshape(-1, 2).max(axis=1)
        assert _angle_error(oriented[np.argmax(by_orientation)], ori) <= 5.0


def test_curvature_cell_prefers_its_curvature_and_needs_both_subunits():
    twin, truth = _twin("curvature", n=3)
    for i, rec in enumerate(truth):
        p = rec["params"]
        k = p["curvature_per_px"]
        curvatures = np.linspace(-0.15, 0.15, 41)
        width = 0.5 / p["sf_cpp"]
        arcs = im.curved_arcs(curvatures, center=rec["rf_center"], orientation_deg=rec["preferred_orientation_deg"],
                              length_px=4 * p["subunit_arc_px"], width_px=width)
        curve = twin.rates(arcs)[i]
        assert abs(curvatures[np.argmax(curve)] - k) <= 0.35 * abs(k)
        assert curve.max() > curve[np.argmin(np.abs(curvatures + k))]  # the mirror-image curve drives it less
        # Half an arc (only one subunit covered) barely drives a conjunction cell.
        half = im.curved_arcs([k], center=rec["rf_center"], orientation_deg=rec["preferred_orientation_deg"],
                              length_px=4 * p["subunit_arc_px"], width_px=width).astype(float)
        x = np.arange(112) - rec["rf_center"][0]
        t = np.radians(rec["preferred_orientation_deg"])
        along = x[None, :] * np.cos(t) - (np.arange(112)[:, None] - rec["rf_center"][1]) * np.sin(t)
        half[0][along < 0] = 127.5
        response_half = twin.rates(np.rint(half).astype(np.uint8))[i, 0]
        assert response_half - p["baseline"] < 0.5 * (curve.max() - p["baseline"])


@pytest.mark.parametrize("cell_type", ["dot_detector", "centre_surround"])
def test_size_tuned_cells_peak_at_their_dot_size(cell_type):
    twin, truth = _twin(cell_type)
    sizes = np.arange(2.0, 40.0, 0.5)
    for i, rec in enumerate(truth):
        polarity = int(rec["params"]["polarity"])
        curve = twin.rates(im.dots(sizes, [rec["rf_center"]], polarity=polarity))[i]
        best = rec["preferred_size_px"]
        assert abs(sizes[np.argmax(curve)] - best) <= max(1.0, 0.1 * best)
        opposite = twin.rates(im.dots([best], [rec["rf_center"]], polarity=-polarity))[i, 0]
        assert opposite < 0.5 * curve.max()


def test_dot_detector_is_position_tolerant_and_centre_surround_is_not():
    for cell_type, tolerant in (("dot_detector", True), ("centre_surround", False)):
        twin, truth = _twin(cell_type, n=2)
        for i, rec in enumerate(truth):
            d, (x, y) = rec["preferred_size_px"], rec["rf_center"]
            shift = rec["params"].get("pool_sigma_px", d)  # one pooling sigma, or one dot diameter
            r = twin.rates(im.dots([d], [(x, y), (x + shift, y)], polarity=int(rec["params"]["polarity"])))[i]
            kept = (r[1] - rec["params"]["baseline"]) / (r[0] - rec["params"]["baseline"])
            assert (kept > 0.6) if tolerant else (kept < 0.3)


def test_texture_cell_is_divisively_normalised():
    twin, truth = _twin("texture", n=2)
    for i, rec in enumerate(truth):
        ori, sf = rec["preferred_orientation_deg"], rec["params"]["sf_cpp"]
        contrasts = [0.1, 0.2, 0.4, 0.8]
        c = twin.rates(np.concatenate([im.gratings(ori, sf, contrast=k) for k in contrasts]))[i] - rec["params"]["baseline"]
        assert np.all(np.diff(c) > 0) and c[3] / c[2] < c[1] / c[0]  # rising, then saturating
        grating = im.gratings(ori, sf, contrast=0.5).astype(float)
        plaid = np.rint(grating + im.gratings(ori + 90, sf, contrast=0.5) - 127.5).astype(np.uint8)
        alone, with_mask = twin.rates(np.concatenate([grating.astype(np.uint8), plaid]))[i]
        assert with_mask < alone  # cross-orientation suppression


def test_colour_opponent_cell_sees_colour_not_luminance():
    twin, truth = _twin("colour_opponent", n=4)
    for i, rec in enumerate(truth):
        w = np.array([rec["params"][f"weight_{c}"] for c in "rgb"])
        preferred, anti = 0.5 + 0.5 * w / np.abs(w).max(), 0.5 - 0.5 * w / np.abs(w).max()
        r = twin.rates(np.concatenate([im.dots([24], [rec["rf_center"]], color=c)
                                       for c in (preferred, anti, (1, 1, 1), (0, 0, 0))]))[i]
        assert r[0] > 3 * max(r[1:])


def test_population_is_deterministic_by_seed_and_rebuilds_from_its_ground_truth():
    crops = im.natural_crops(24, size=64, seed=11)
    a, b, c = (DigitalTwin(8, seed=s, image_size=64) for s in (5, 5, 6))
    assert a.ground_truth() == b.ground_truth() != c.ground_truth()
    assert np.array_equal(a.rates(crops), b.rates(crops))
    rebuilt = twin_from_ground_truth(json.loads(json.dumps(a.ground_truth())), image_size=64)
    assert np.array_equal(rebuilt.rates(crops), a.rates(crops))
    assert np.array_equal(a.trials(crops, 3, seed=1), b.trials(crops, 3, seed=1))
    assert not np.array_equal(a.trials(crops, 3, seed=1), a.trials(crops, 3, seed=2))


def test_ground_truth_describes_every_neuron():
    twin = DigitalTwin(len(CELL_TYPES) * 2, seed=0)
    truth = twin.ground_truth()
    assert [r["cell_type"] for r in truth] == list(CELL_TYPES) * 2
    for r in truth:
        assert set(r) == {"neuron_id", "cell_type", "rf_center", "preferred_orientation_deg", "preferred_size_px", "params"}
        assert all(isinstance(v, float) for v in r["params"].values())
        assert 0 <= r["rf_center"][0] < 112 and 0 <= r["rf_center"][1] < 112
    oriented = {"v1_simple", "v1_complex", "end_stopped", "curvature", "texture"}
    assert all((r["preferred_orientation_deg"] is not None) == (r["cell_type"] in oriented) for r in truth)
    sized = {"end_stopped", "dot_detector", "centre_surround"}
    assert all((r["preferred_size_px"] is not None) == (r["cell_type"] in sized) for r in truth)


def test_rates_are_spike_count_like_and_vary_over_natural_images():
    twin = DigitalTwin(len(CELL_TYPES), seed=2)
    rates = twin.rates(im.natural_crops(150, seed=9))
    assert rates.shape == (len(CELL_TYPES), 150) and np.all(rates > 0)
    assert np.all((rates.mean(1) > 1) & (rates.mean(1) < 10)) and np.all(rates.max(1) < 45)
    assert np.all(rates.std(1) > 0.3 * rates.mean(1))  # sparse, image-driven variability
    counts = twin.trials(im.natural_crops(20, seed=9), repeats=5, seed=0)
    assert counts.shape == (len(CELL_TYPES), 20, 5) and np.array_equal(counts, np.round(counts)) and counts.min() >= 0


def test_forward_is_differentiable_with_finite_gradients_everywhere():
    twin = DigitalTwin(len(CELL_TYPES), seed=1)
    for x in (torch.rand(2, 3, 112, 112), torch.full((2, 3, 112, 112), 0.5), torch.zeros(2, 3, 112, 112)):
        x.requires_grad_(True)
        twin(x).sum().backward()
        assert torch.isfinite(x.grad).all()
    noisy = torch.rand(1, 3, 112, 112, requires_grad=True)
    twin(noisy).sum().backward()
    assert noisy.grad.abs().sum() > 0
    grey = torch.rand(3, 1, 112, 112)
    assert torch.allclose(twin(grey), twin(grey.expand(-1, 3, -1, -1)))
    assert twin(torch.rand(2, 3, 64, 64)).shape == (2, len(CELL_TYPES))


def test_make_twin_dataset_is_one_self_describing_session():
    ds = make_twin_dataset(8, 40, 3, seed=4, image_size=64)
    (s,) = ds.sessions
    assert s.session_id == "twin" and s.images.shape == (40, 64, 64, 3) and s.responses.shape == (8, 40, 3)
    assert [r["neuron_id"] for r in ds.ground_truth] == s.neuron_ids
    assert ds.metadata["seed"] == 4 and ds.metadata["image_size"] == 64
    assert "natural" in s.metadata["image_family"]
    again = make_twin_dataset(8, 40, 3, seed=4, image_size=64)
    assert np.array_equal(again.sessions[0].responses, s.responses) and np.array_equal(again.sessions[0].images, s.images)
