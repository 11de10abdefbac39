"""Splits are by patient (never by slice), stratified by class, and reproducible."""

from __future__ import annotations

import json

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


def test_plan_versions_and_keys(tmp_path):
    """Plans written by medseg <= 31ad044 carry no "version" (version 1) and load unchanged; a newer version
    or a key this medseg does not know stops with one line naming the file."""
    from medseg.planning.plan import PLAN_VERSION, Plan
    v1 = {"model": "unet", "model_args": {"features": [16, 32, 64, 128, 256], "res_units": 2}, "loss": "bce+dice",
          "image_size": 128, "lr": 0.002, "epochs": 3, "time_budget_s": None, "neighbours": 1, "data": "/x",
          "layout": "lgg", "channels": 3, "unit": "patient", "intensity": {"mode": "range"}, "mean": [0.1] * 9,
          "std": [0.2] * 9, "normalization": "dataset", "n_items": {"train": 7, "val": 2}, "threads": 1,
          "split": {"train": ["a"], "val": ["b"]}, "epoch": 3, "val_dice": 0.5, "medseg_version": "0.1.0"}
    plan = Plan.from_dict(v1)
    assert plan.version == PLAN_VERSION and plan.in_channels == 9 and plan.mean == [0.1] * 9 and plan.epoch == 3
    assert plan.optimizer == "adamw" and plan.schedule == "cosine"  # absent keys take the field defaults
    # ... except what changed since: a version-1 run keeps the behaviour it was trained with
    assert plan.intensity_norm == "none" and plan.ema_decay is None and plan.select_window == 1
    assert Plan().intensity_norm == "case"  # (new plans scale each case)
    assert not plan.ema_buffers and not Plan.from_dict({"version": 3}).ema_buffers  # live BN statistics then
    assert Plan().ema_buffers and Plan.from_dict({"version": 4}).ema_buffers
    # `best`: the final weights since version 5; the end of the best select_window-epoch window before
    assert Plan().select == "last" and Plan.from_dict({"version": 5}).select == "last"
    assert plan.select == Plan.from_dict({"version": 4}).select == "window"
    assert Plan.from_dict(plan.to_dict()) == plan
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**v1, "version": PLAN_VERSION + 1}))
    with pytest.raises(MedsegError, match=f"{path}.*newer than this medseg"):
        Plan.load(path)
    with pytest.raises(MedsegError, match="unknown plan keys: colour"):
        Plan.from_dict({**v1, "colour": "red"}, path)
    with pytest.raises(MedsegError, match="setting lr must be > 0"):
        plan.replace(lr=0).validate()
    with pytest.raises(MedsegError, match="select must be one of last, window, got 'best'"):
        plan.replace(select="best").validate()
    with pytest.raises(MedsegError, match="unknown sampling 'often'"):
        plan.replace(sampling="often").validate()
    with pytest.raises(MedsegError, match="body_mask must be one of fraction, log-otsu, got 'otsu'"):
        plan.replace(body_mask="otsu").validate()
    with pytest.raises(MedsegError, match="coarse_size must be a multiple of 16 .* no larger than image_size 128, "
                                          "got 100"):
        plan.replace(coarse_share=0.5, coarse_size=100, image_size=128).validate()
    with pytest.raises(MedsegError, match="got 160"):
        plan.replace(coarse_share=0.5, coarse_size=160, image_size=128).validate()
    plan.replace(coarse_share=0.5, coarse_size=96, image_size=128).validate()
    plan.replace(coarse_share=0.0, coarse_size=100).validate()  # off: the size is not used
    with pytest.raises(MedsegError, match="image_size must be a multiple of 16 for this 5-level U-Net, got 100"):
        plan.replace(image_size=100).validate()  # MONAI's UNet would fail at its first skip join
    with pytest.raises(MedsegError, match="image_size must be a multiple of 16 for vgg16-unet"):
        plan.replace(model="vgg16-unet", model_args={}, image_size=120).validate()
    plan.replace(model="unet-milesial", model_args={}, image_size=100).validate()  # pads at its skips
    assert Plan.from_dict({"version": 5}).body_mask == "fraction"  # a plan from before the setting: as then


def test_busi_trains_the_dice_term_per_image_unless_a_preset_or_another_loss_says_otherwise(tmp_path):
    from medseg.planning.planner import settings_for

    per_image = {"batch": False, "smooth_nr": 1.0, "smooth_dr": 1.0}
    assert settings_for("busi")["loss_args"] == per_image
    assert settings_for("lgg")["loss_args"] == {}
    assert settings_for("busi", preset="busi")["loss_args"] == {}  # the seed's recipe as published
    assert settings_for("busi", overrides={"loss": "focal"})["loss_args"] == {}
    assert settings_for("busi", overrides={"loss_args": {"batch": True}})["loss_args"] == {"batch": True}
    ds = load_dataset(write_busi_replica(tmp_path / "b", per_class=3))
    assert make_plan(ds).loss_args == per_image


def test_kaggle_3m_draws_more_lesion_slices_than_other_layouts_unless_told(tmp_path):
    """LGG's layout default is lesion_fraction 0.7 (measured: docs/results.md, "More lesion slices"); BUSI keeps
    0.5, and a user's setting wins."""
    lgg = load_dataset(write_lgg_replica(tmp_path / "k", patients=3, slices=2))
    assert make_plan(lgg, 0.34, 0).lesion_fraction == 0.7
    assert make_plan(lgg, 0.34, 0, settings={"lesion_fraction": 0.5}).lesion_fraction == 0.5
    busi = load_dataset(write_busi_replica(tmp_path / "b", per_class=3))
    assert make_plan(busi, 0.34, 0).lesion_fraction == 0.5


def test_kaggle_3m_trains_in_batches_of_8_unless_told(tmp_path):
    """LGG's layout default batch is 8 (measured: docs/results.md, "Changes measured side by side"); BUSI keeps 16,
    and a user's setting or flag wins."""
    lgg = load_dataset(write_lgg_replica(tmp_path / "k", patients=3, slices=2))
    assert make_plan(lgg, 0.34, 0).batch_size == 8
    assert make_plan(lgg, 0.34, 0, settings={"batch_size": 16}).batch_size == 16
    busi = load_dataset(write_busi_replica(tmp_path / "b", per_class=3))
    assert make_plan(busi, 0.34, 0).batch_size == 16


def test_the_plans_choices_name_exactly_the_implemented_rules():
    """plan.py lists its choices itself (it imports nothing but the standard library, so `medseg --help` starts
    without numpy); each list must name what the implementing module provides, no more and no less."""
    from medseg.data.sampling import SAMPLING
    from medseg.io.intensity import RULES
    from medseg.planning import plan
    assert set(plan.INTENSITY_NORMS) == set(RULES) | {"none"}
    assert set(plan.SAMPLINGS) == set(SAMPLING)
