"""Cross-validation as one run: `train --folds K` trains every fold into RUN/fold<i>, `evaluate RUN` pools the
folds' validation patients (each scored by the fold that never saw it), `predict RUN` averages the folds."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medseg.adapters import load_dataset
from medseg.evaluation.evaluate import evaluate
from medseg.inference.predictor import Predictor
from medseg.io.images import read_image
from runs import train

from conftest import write_lgg_replica

FOLDS = 3


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    data = write_lgg_replica(root / "kaggle_3m", patients=6, slices=4, size=48)
    run = root / "run"
    summary = train(data, run, folds=FOLDS, epochs=1, image_size=32, batch_size=4, quiet=True,
                    settings={"model_args": {"features": [4, 8, 16], "res_units": 1}})
    return data, run, summary


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_every_fold_trains_and_the_validation_sets_partition_the_patients(cv_run):
    data, run, summary = cv_run
    assert len(summary["folds"]) == FOLDS
    info = json.loads((run / "cv.json").read_text())
    assert info["done"] == [f"fold{i}" for i in range(FOLDS)]
    patients = set(load_dataset(data).patients)
    vals = []
    for i in range(FOLDS):
        plan = json.loads((run / f"fold{i}" / "plan.json").read_text())
        assert plan["fold"] == i and plan["folds"] == FOLDS
        train_p, val_p = set(plan["split"]["train"]), set(plan["split"]["val"])
        assert train_p and val_p and not train_p & val_p and train_p | val_p == patients  # never its own val
        assert (run / f"fold{i}" / "best" / "model.safetensors").is_file()
        vals.append(val_p)
    assert set().union(*vals) == patients and sum(len(v) for v in vals) == len(patients)


def test_evaluate_pools_each_patient_once_scored_by_its_own_fold(cv_run):
    data, run, _ = cv_run
    pooled = evaluate(run, quiet=True)
    rows = {r["case"]: float(r["dice"]) for r in _rows(run / "eval" / "cases.csv")}
    assert sorted(rows) == sorted(load_dataset(data).patients)  # every patient, once
    assert pooled["n_cases"] == len(rows)
    # each patient's Dice is the one its own fold gives it (the fold that did not train on it)
    setting = json.loads((run / "postprocess.json").read_text())
    for i in range(FOLDS):
        fold = run / f"fold{i}"
        (fold / "postprocess.json").write_text(json.dumps(setting))  # the pooled setting, for a like-for-like score
        evaluate(fold, quiet=True, tune=False)
        for r in _rows(fold / "eval" / "cases.csv"):
            assert float(r["dice"]) == pytest.approx(rows[r["case"]], abs=1e-9)


def test_predict_with_a_cv_run_averages_the_fold_models(cv_run):
    data, run, _ = cv_run
    patient = sorted(p for p in data.iterdir() if p.is_dir())[0]
    imgs = [read_image(patient / f"{patient.name}_{n}.tif", 3) for n in range(1, 5)]  # a 2.5D run: the stack

    def probs(run_folder):
        return Predictor.load(run_folder).volume_probabilities(iter(imgs), len(imgs)).astype(np.float32)

    ensemble = probs(run)
    folds = [probs(run / f"fold{i}") for i in range(FOLDS)]
    assert np.allclose(ensemble, np.mean(folds, axis=0), atol=2e-3)  # float16 probabilities
    assert not np.allclose(ensemble, folds[0], atol=2e-3)  # the folds differ, so the average is not one of them


def test_serve_and_load_take_a_cv_run_as_its_ensemble(cv_run):
    from fastapi.testclient import TestClient

    import medseg
    from medseg.app.serve import create_app
    data, run, _ = cv_run
    assert TestClient(create_app(run)).get("/model").json()["ensemble_of_folds"] == FOLDS
    patient = sorted(p for p in data.iterdir() if p.is_dir())[0]
    got = medseg.load(run).predict(patient / f"{patient.name}_2.tif")
    assert got.mask.shape == (48, 48) and got.prob.dtype == np.float32


def test_the_report_names_each_folds_epochs_and_the_machine_they_trained_on(cv_run):
    import torch
    _, run, _ = cv_run
    pooled = evaluate(run, quiet=True, tune=False)
    epochs = [len(_rows(run / f"fold{i}" / "log.csv")) for i in range(FOLDS)]  # one log row per epoch
    assert pooled["training"]["epochs"] == epochs == [1] * FOLDS
    report = (run / "eval" / "report.html").read_text()
    assert f"{FOLDS} folds, 1 epoch each" in report and f"torch {torch.__version__}" in report
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    if cpu:  # x86 Linux names its CPU here (this machine does); elsewhere platform.processor() stands in
        assert pooled["training"]["machine"]["cpu"] == cpu and cpu in report
