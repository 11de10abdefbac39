"""docs/workflows/make_figures.py, the script that draws the guides' learning curve and best/median/worst
figure, runs against a current run folder (it is outside the package, so nothing else imports it: its
imports went stale once when the package was split into stages)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run_cli
from runs import train

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "workflows" / "make_figures.py"


def test_make_figures_draws_the_curve_and_the_cases_of_an_evaluated_run(tmp_path, lgg_replica, monkeypatch):
    run = tmp_path / "run"
    train(lgg_replica, run, epochs=2, image_size=32, val_fraction=0.34, quiet=True)
    assert run_cli("evaluate", str(run)) == 0
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), str(run), str(tmp_path / "fig" / "lgg")])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    for name in ("lgg-curve.png", "lgg-cases.png"):
        with Image.open(tmp_path / "fig" / name) as im:
            px = np.asarray(im.convert("RGB"))
        assert px.shape[0] > 100 and px.shape[1] > 300, name
        assert len(np.unique(px.reshape(-1, 3), axis=0)) > 50, f"{name} is blank"
    with Image.open(tmp_path / "fig" / "lgg-cases.png") as im:
        top = np.asarray(im.convert("L"))[:4]
    assert (top > 250).all(), "the cases figure's titles run off its top edge"
