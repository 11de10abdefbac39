"""Train -> checkpoint -> evaluate -> predict, on replicas (always) and on the real data (where present).

These runs are deliberately tiny (one epoch, small images): they check the plumbing, names, sizes
and values, not accuracy. Accuracy is checked by the demo test and reported from full runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from medseg.inference.checkpoint import load_checkpoint
from medseg.evaluation.evaluate import evaluate
from medseg.app.cli import parse_duration
from runs import train

from conftest import run_cli


def _tiny_run(tmp_path_factory, data, name):
    """One epoch at 32x32 on real data: checks plumbing, not accuracy."""
    from conftest import need
    out = tmp_path_factory.mktemp("runs") / name
    train(need(data), out, epochs=1, image_size=32, batch_size=8, quiet=True)
    return out


@pytest.fixture(scope="module")
def lgg_run(tmp_path_factory):
    from conftest import LGG
    return _tiny_run(tmp_path_factory, LGG, "lgg")


@pytest.fixture(scope="module")
def busi_run(tmp_path_factory):
    from conftest import BUSI
    return _tiny_run(tmp_path_factory, BUSI, "busi")


def test_checkpoint_is_safetensors_with_config(tmp_path, busi_replica):
    out = tmp_path / "run"
    assert run_cli("train", str(busi_replica), "--out", str(out), "--epochs", "2", "--image-size", "32") == 0
    for name in ("best", "last"):
        with safe_open(str(out / name / "model.safetensors"), framework="pt") as f:
            cfg = json.loads(f.metadata()["medseg_config"])
        assert cfg == json.loads((out / name / "config.json").read_text())
        assert set(cfg["split"]["train"]).isdisjoint(cfg["split"]["val"])
    model, cfg = load_checkpoint(out / "best")
    assert cfg.channels == 1 and cfg.image_size == 32
    log = (out / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,") and len(log) == 3
    assert not list(out.rglob("*.tmp"))


def test_evaluate_writes_metrics_report_and_cases(tmp_path, lgg_replica):
    out = tmp_path / "run"
    train(lgg_replica, out, epochs=1, image_size=32, val_fraction=0.34, quiet=True)
    assert run_cli("evaluate", str(out)) == 0
    m = json.loads((out / "eval" / "metrics.json").read_text())
    assert m["unit"] == "patient" and m["split"] == "val" and m["n_cases"] == 1
    assert 0.0 <= m["dice"]["mean"] <= 1.0
    html = (out / "eval" / "report.html").read_text()
    assert "data:image/png;base64," in html and "TCGA_XX_" in html
    cases = (out / "eval" / "cases.csv").read_text().splitlines()
    assert cases[0].startswith("case,") and len(cases) == 2


def _check_masks(inputs, out):
    for img_path in inputs:
        mask_path = out / f"{img_path.stem}.png"
        assert mask_path.is_file(), mask_path
        with Image.open(img_path) as im, Image.open(mask_path) as mk:
            assert mk.size == im.size and mk.mode == "L"
            assert set(np.unique(np.asarray(mk))) <= {0, 255}


def test_predict_lgg_patient_folder(lgg_run, lgg_real, tmp_path):
    folder = sorted(p for p in lgg_real.iterdir() if p.is_dir())[0]
    out = tmp_path / "masks"
    assert run_cli("predict", str(lgg_run), str(folder), "--out", str(out)) == 0
    images = sorted(p for p in folder.glob("*.tif") if "_mask" not in p.stem)
    assert len(list(out.glob("*.png"))) == len(images)  # masks in the input are not treated as images
    _check_masks(images, out)


def test_predict_busi_class_folder(busi_run, busi_real, tmp_path):
    out = tmp_path / "masks"
    assert run_cli("predict", str(busi_run), str(busi_real / "malignant"), "--out", str(out)) == 0
    images = sorted(p for p in (busi_real / "malignant").glob("*.png") if "_mask" not in p.stem)
    assert len(list(out.glob("*.png"))) == len(images) == 38
    _check_masks(images, out)


def test_evaluate_real_lgg_is_per_patient(lgg_run):
    m = evaluate(lgg_run, quiet=True)
    assert m["unit"] == "patient" and m["n_cases"] == 6 and m["level"].startswith("patient")


@pytest.mark.parametrize("text,seconds", [("20m", 1200), ("90s", 90), ("1h30m", 5400), ("45", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("verb", [None, "demo", "train", "evaluate", "predict", "presets", "prepare", "inspect",
                                  "export-nnunet", "weights", "weights convert"])
def test_every_verb_has_help(verb, capsys):
    assert run_cli(*(verb.split() if verb else []), "--help") == 0
    assert "Usage" in capsys.readouterr().out


def test_train_without_validation_keeps_last_as_best(tmp_path, lgg_replica, capsys):
    out = tmp_path / "run"
    train(lgg_replica, out, epochs=1, image_size=32, val_fraction=0.0, quiet=True)
    assert (out / "best" / "model.safetensors").is_file() and (out / "last" / "model.safetensors").is_file()
    assert run_cli("evaluate", str(out)) == 2  # no validation split to score: a clear error, not a crash
    assert "no cases of the 'val' split" in capsys.readouterr().err
    assert run_cli("evaluate", str(out), "--split", "all") == 0
