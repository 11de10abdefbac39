"""Splits are by patient (never by slice), stratified by class, and reproducible."""

from __future__ import annotations

import pytest

from medseg.adapters import load_dataset
from medseg.errors import MedsegError
from medseg.planning.planner import make_plan
from medseg.planning.split import split_patients

from conftest import write_busi_replica, write_lgg_replica


def test_lgg_split_keeps_patients_whole(tmp_path):
    ds = load_dataset(write_lgg_replica(tmp_path / "k", patients=5, slices=4))
    train, val = split_patients(ds, 0.2, seed=0)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(ds.patients) and len(val) == 1
    assert split_patients(ds, 0.2, seed=0) == (train, val)
    assert len({tuple(split_patients(ds, 0.2, seed=s)[1]) for s in range(10)}) > 1  # the seed matters


def test_busi_split_is_stratified(tmp_path):
    ds = load_dataset(write_busi_replica(tmp_path / "b", per_class=5))
    plan = make_plan(ds, 0.4, seed=3)
    val = plan.split["val"]
    assert sorted(p.split(" ")[0] for p in val) == ["benign"] * 2 + ["malignant"] * 2 + ["normal"] * 2


def test_split_errors(tmp_path):
    ds = load_dataset(write_lgg_replica(tmp_path / "k", patients=1, slices=2))
    with pytest.raises(MedsegError, match="validation"):
        split_patients(ds, 0.2, 0)
    with pytest.raises(MedsegError, match="val-fraction"):
        split_patients(ds, 1.5, 0)
    assert split_patients(ds, 0.0, 0) == (ds.patients, [])


def test_kfold_partitions_patients_and_is_stratified(tmp_path):
    ds = load_dataset(write_busi_replica(tmp_path / "b", per_class=6))
    vals = [split_patients(ds, 0.2, seed=1, folds=3, fold=i)[1] for i in range(3)]
    assert sorted(sum(vals, [])) == sorted(ds.patients)  # every case validated exactly once
    for v in vals:
        assert sorted(p.split(" ")[0] for p in v) == ["benign"] * 2 + ["malignant"] * 2 + ["normal"] * 2
    with pytest.raises(MedsegError, match="folds"):
        split_patients(ds, 0.2, 0, folds=3, fold=3)


def test_presets_fill_the_plan_and_flags_win(tmp_path):
    from medseg.planning.plan import parse_setting
    from medseg.planning.planner import presets
    ds = load_dataset(write_lgg_replica(tmp_path / "k", patients=3, slices=2))
    assert {"busi", "lgg", "liver-ct", "cbis-mass"} <= set(presets())
    plan = make_plan(ds, 0.34, 0, preset="lgg", image_size=64)
    assert plan.preset == "lgg" and plan.sampling == "area" and plan.image_size == 64
    assert parse_setting("lr=3e-4") == ("lr", 3e-4) and parse_setting("model=unet") == ("model", "unet")
    with pytest.raises(MedsegError, match="unknown setting"):
        parse_setting("__import__('os')=1")
    with pytest.raises(MedsegError, match="unknown preset"):
        make_plan(ds, 0.34, 0, preset="nope")
