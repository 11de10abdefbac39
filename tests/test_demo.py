"""The demo's promise, on a shorter run: the built-in synthetic data set is learned to Dice >= 0.85."""

from __future__ import annotations

import json

from medseg.app.demo import make_synthetic, run_demo


def test_synthetic_data_is_deterministic(tmp_path):
    a = make_synthetic(tmp_path / "a", n=4, size=64)
    b = make_synthetic(tmp_path / "b", n=4, size=64)
    for f in sorted(a.iterdir()):
        assert f.read_bytes() == (b / f.name).read_bytes()


def test_demo_reaches_dice_085_on_held_out_cases(tmp_path):
    result = run_demo(tmp_path, n=96, size=64, time_budget_s=45, quiet=True)
    assert result["dice"]["mean"] >= 0.85, result["dice"]
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "val" and (tmp_path / "run" / "eval" / "report.html").is_file()
    assert len(list((tmp_path / "predictions").glob("*.png"))) == metrics["n_cases"]
