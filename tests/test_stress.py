"""Stress test (`medseg evaluate --stress`): the shifts themselves, the rows on a stand-in predictor whose
values are known, and the table in metrics.json and the report after a tiny training."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medseg.evaluation import stress
from medseg.evaluation.evaluate import evaluate
from runs import train

from conftest import run_cli, write_lgg_replica

ROWS = ["none", "intensity x0.33", "intensity x0.5", "intensity x2", "intensity x3", "gamma 0.5", "gamma 2",
        "noise std 0.05", "blur sigma 1", "resolution /2", "flip left-right"]
KEYS = {"shift", "description", "n_cases", "dice_mean", "dice_mean_lesion", "change", "worst_case", "worst_dice"}
SETTING = {"threshold": 0.5, "largest": False, "min_area": 0.0}


def _image(seed: int = 0, shape=(3, 12, 10)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# --- the shifts ---------------------------------------------------------------------------------------------

def test_registry_has_the_rows_in_order():
    assert list(stress.SHIFTS) == ROWS
    assert set(stress.DESCRIPTIONS) == set(ROWS)


def test_intensity_scales_every_channel_without_clipping():
    img = _image()
    np.testing.assert_array_equal(stress.SHIFTS["intensity x2"]([img])[0], img * 2)
    tripled = stress.SHIFTS["intensity x3"]([img])[0]
    assert tripled.max() > 1.5 and np.allclose(tripled, 3 * img.astype(np.float64))
    assert np.allclose(stress.SHIFTS["intensity x0.33"]([img])[0], 0.33 * img.astype(np.float64))
    assert np.allclose(stress.SHIFTS["intensity x0.5"]([img])[0], img / 2)


def test_gamma_is_a_power_on_the_unit_image():
    img = _image()
    assert np.allclose(stress.SHIFTS["gamma 0.5"]([img])[0], np.sqrt(img.astype(np.float64)), atol=1e-6)
    assert np.allclose(stress.SHIFTS["gamma 2"]([img])[0], img.astype(np.float64) ** 2, atol=1e-6)
    ends = np.array([[[0.0, 1.0]]], np.float32)
    np.testing.assert_array_equal(stress.SHIFTS["gamma 2"]([ends])[0], ends)  # 0 and 1 stay


def test_noise_is_seeded_additive_and_of_the_stated_std():
    img = np.full((1, 200, 200), 0.5, np.float32)
    a, b = stress.SHIFTS["noise std 0.05"]([img])[0], stress.SHIFTS["noise std 0.05"]([img])[0]
    np.testing.assert_array_equal(a, b)  # a fixed seed: the same noise each time
    d = a - img
    assert abs(d.std() - 0.05) < 0.002 and abs(d.mean()) < 0.002
    two = stress.SHIFTS["noise std 0.05"]([img, img])
    assert not np.array_equal(two[0], two[1])  # slices of a case get their own noise


def test_blur_is_in_plane_with_sigma_one_pixel():
    img = np.zeros((2, 21, 21), np.float32)
    img[0, 10, 10] = 1.0
    out = stress.SHIFTS["blur sigma 1"]([img])[0]
    assert out.shape == img.shape and not out[1].any()  # channels apart
    # a unit impulse becomes the sampled 2D Gaussian of sigma 1: peak 1 / (2 pi), mass kept
    assert out[0, 10, 10] == pytest.approx(1 / (2 * np.pi), rel=0.01)
    assert out[0, 10, 11] == pytest.approx(np.exp(-0.5) / (2 * np.pi), rel=0.02)
    assert out[0].sum() == pytest.approx(1.0, abs=1e-4)


def test_half_resolution_keeps_the_shape_and_loses_the_finest_detail():
    for shape in ((3, 12, 10), (1, 9, 7)):
        img = _image(1, shape)
        assert stress.SHIFTS["resolution /2"]([img])[0].shape == shape
    checker = (np.indices((16, 16)).sum(0) % 2).astype(np.float32)[None]  # 1-pixel period: gone at half size
    np.testing.assert_allclose(stress.SHIFTS["resolution /2"]([checker])[0], 0.5, atol=1e-6)
    flat = np.full((1, 8, 8), 0.25, np.float32)
    np.testing.assert_allclose(stress.SHIFTS["resolution /2"]([flat])[0], flat, atol=1e-6)


def test_flip_is_left_right_and_its_own_inverse():
    img = _image()
    flipped = stress.SHIFTS["flip left-right"]([img])[0]
    np.testing.assert_array_equal(flipped[:, :, 0], img[:, :, -1])  # columns reversed, rows kept
    np.testing.assert_array_equal(flipped[:, 0, :], img[:, 0, ::-1])
    np.testing.assert_array_equal(stress.SHIFTS["flip left-right"]([flipped])[0], img)
    probs = img[0][None]
    np.testing.assert_array_equal(stress.UNDO["flip left-right"](flipped[0][None]), probs)


def test_shifts_leave_the_input_alone():
    img = _image()
    keep = img.copy()
    for name, shift in stress.SHIFTS.items():
        out = shift([img])
        assert len(out) == 1 and out[0].shape == img.shape and out[0].dtype == np.float32, name
    np.testing.assert_array_equal(img, keep)


# --- the rows, with a predictor whose output is known -------------------------------------------------------

class Identity:
    """Stands in for a Predictor: the probability is the first channel, as evaluate's call gets it."""

    def volume_probabilities(self, slices, n):
        out = np.stack([np.asarray(s)[0] for s in slices]).astype(np.float16)
        assert len(out) == n
        return out


def _cases():
    """A two-slice patient with a rectangle on the left (even-aligned edges) and a patient with no lesion."""
    truth = np.zeros((16, 16), bool)
    truth[4:12, 2:8] = True
    lesion = [truth.astype(np.float32)[None], np.zeros((1, 16, 16), np.float32)]
    empty = [np.zeros((1, 16, 16), np.float32)]
    return [("lesion", lesion, [truth, np.zeros_like(truth)]), ("empty", empty, [np.zeros((16, 16), bool)])]


def test_rows_on_known_predictions():
    rows = {r["shift"]: r for r in stress.stress_test([(Identity(), _cases())], SETTING, quiet=True)}
    assert list(rows) == ROWS and all(set(r) == KEYS for r in rows.values())
    # the lesion case's Dice under each shift, worked out by hand; the empty case stays 1 (both empty)
    blur = 2 * 44 / (44 + 48)  # sigma 1 leaves edge pixels at 0.70 but corners at 0.70 ** 2 < 0.5: 4 lost
    expected = {"none": 1.0, "intensity x0.33": 0.0, "intensity x0.5": 1.0, "intensity x2": 1.0,
                "intensity x3": 1.0, "gamma 0.5": 1.0, "gamma 2": 1.0, "noise std 0.05": 1.0, "blur sigma 1": blur,
                "resolution /2": 1.0, "flip left-right": 1.0}
    for name, d in expected.items():
        r = rows[name]
        assert r["dice_mean_lesion"] == pytest.approx(d), name
        assert r["dice_mean"] == pytest.approx((d + 1.0) / 2), name
        assert r["change"] == pytest.approx((d + 1.0) / 2 - 1.0), name
        assert r["n_cases"] == 2
    assert rows["intensity x0.33"]["worst_case"] == "lesion" and rows["intensity x0.33"]["worst_dice"] == 0.0
    assert rows["none"]["change"] == 0.0


def test_rows_use_the_given_setting():
    # at threshold 0.6 the halved intensity (0.5) no longer reaches the threshold
    rows = stress.stress_test([(Identity(), _cases())], {**SETTING, "threshold": 0.6}, quiet=True,
                              names=["none", "intensity x0.5"])
    assert [r["dice_mean_lesion"] for r in rows] == [1.0, 0.0]


# --- evaluate --stress after a tiny training -----------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stress")
    data = write_lgg_replica(root / "kaggle_3m", patients=4)
    out = root / "run"
    train(data, out, epochs=1, image_size=32, val_fraction=0.5, quiet=True)
    return out


def test_evaluate_stress_writes_table_and_report(run, capsys):
    assert run_cli("evaluate", str(run), "--stress") == 0
    assert "stress test" in capsys.readouterr().out
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert [r["shift"] for r in m["stress"]] == ROWS
    assert all(set(r) == KEYS and r["n_cases"] == m["n_cases"] for r in m["stress"])
    html = (run / "eval" / "report.html").read_text()
    assert "<h2>Stress test</h2>" in html
    assert all(name in html for name in ROWS)
    assert "http://" not in html and "https://" not in html


def test_reference_row_is_evaluates_own_dice(run):
    m = evaluate(run, stress=True, quiet=True)
    none = m["stress"][0]
    assert none["shift"] == "none" and none["change"] == 0.0
    assert none["dice_mean"] == pytest.approx(m["dice_all_cases"]["mean"], abs=1e-12)
    assert none["dice_mean_lesion"] == pytest.approx(m["dice"]["mean"], abs=1e-12)
    with (run / "eval" / "cases.csv").open() as f:
        cases = {r["case"]: float(r["dice"]) for r in csv.DictReader(f)}
    assert none["n_cases"] == len(cases) == 2
    assert none["worst_dice"] == pytest.approx(min(cases.values()), abs=1e-12)
    assert cases[none["worst_case"]] == pytest.approx(none["worst_dice"], abs=1e-12)


def test_evaluate_without_stress_has_no_table(run):
    m = evaluate(run, quiet=True)
    assert "stress" not in m
    assert "Stress test" not in (run / "eval" / "report.html").read_text()
