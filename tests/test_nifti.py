"""NIfTI/NRRD adapter: nnU-Net v2 and MSD raw layouts, images/ + labels/ pairs, label targets, header
checks naming the file, a real 3D-IRCADb patient converted to NIfTI, and a one-epoch training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.adapters import load_dataset
from medseg.data.arrays import read_item
from medseg.errors import MedsegError
from medseg.io.images import read_dicom, read_mask, read_volume, to_unit

from conftest import SHARED, need
from replica_nifti import (DIRECTION, ORIGIN, SPACING, ircadb_to_nifti, phantom, write_msd_replica,
                           write_nnunet_replica, write_pair_replica, write_volume)

PERCENTILE = {"mode": "percentile", "low": 0.5, "high": 99.5}


def prep(ds) -> dict:
    return {"channels": ds.channels, "intensity": ds.intensity, "target_values": ds.target_values, "classes": ds.classes}


@pytest.fixture
def nnunet(tmp_path):
    return write_nnunet_replica(tmp_path / "Dataset042_Prostate")


def test_nnunet_v2_two_channels(nnunet):
    ds = load_dataset(nnunet)
    assert ds.layout == "nifti" and ds.channels == 2 and ds.unit == "patient" and ds.intensity == PERCENTILE
    assert ds.patients == ["prostate_000", "prostate_001"] and len(ds.items) == 12
    # by default every single-valued label is its own class, as dataset.json names it (region "whole" left out)
    assert ds.target == "all" and [(c["name"], c["value"]) for c in ds.classes] == [("organ", 1), ("tumour", 2)]
    fg = load_dataset(nnunet, target="foreground")
    assert fg.target == "foreground" and fg.target_values == (1, 2) and fg.classes == []  # every non-zero label
    it = ds.items[3]
    assert it.image == nnunet / "imagesTr" / "prostate_000_0000.nii.gz"
    assert it.extra_channels == (nnunet / "imagesTr" / "prostate_000_0001.nii.gz",)
    assert it.masks == (nnunet / "labelsTr" / "prostate_000.nii.gz",)
    assert it.z == it.index == 3 and it.case == it.patient == "prostate_000"
    assert it.meta["spacing"] == pytest.approx(list(SPACING))  # x, y, z from the header, not (1, 1, 1)

    (t2, adc), label = phantom(seed=0)
    img, mask = read_item(it, prep(ds))
    assert img.shape == (2, 32, 32) and img.dtype == np.float32
    np.testing.assert_array_equal(mask, label[3])  # slice z of the label is slice z of the image (classes 1, 2)
    lo, hi = np.percentile(t2, [0.5, 99.5])  # per volume, not per slice
    np.testing.assert_allclose(img[0], np.clip((t2[3] - lo) / (hi - lo), 0, 1), atol=1e-5)
    lo, hi = np.percentile(adc, [0.5, 99.5])
    np.testing.assert_allclose(img[1], np.clip((adc[3] - lo) / (hi - lo), 0, 1), atol=1e-5)
    # the label map's two values both count: a half-maximum threshold would drop label 1 here
    assert {1, 2} <= set(np.unique(label[3])) and (mask > 0).sum() == (label[3] > 0).sum()


@pytest.mark.parametrize("target, name, values", [("organ", "organ", (1,)), ("tumour", "tumour", (2,)),
                                                  ("whole", "whole", (1, 2)), ("TUMOUR", "tumour", (2,)),
                                                  ("2", "2", (2,)), ("foreground", "foreground", (1, 2))])
def test_target_selects_label(nnunet, target, name, values):
    ds = load_dataset(nnunet, target=target)
    assert ds.target == name and ds.target_values == values
    _, label = phantom(seed=0)
    it = ds.items[3]
    np.testing.assert_array_equal(read_mask(list(it.masks), (32, 32), ds.target_values, it.z), np.isin(label[3], values))
    assert load_dataset(nnunet, target=ds.target).target_values == values  # the plan's name loads again


def test_unknown_target_lists_labels(nnunet):
    with pytest.raises(MedsegError) as e:
        load_dataset(nnunet, target="liver")
    msg = str(e.value)
    assert "dataset.json" in msg and "'liver'" in msg and "organ (1)" in msg and "tumour (2)" in msg and "whole (1/2)" in msg
    with pytest.raises(MedsegError, match="no label '7'"):
        load_dataset(nnunet, target="7")


def test_msd_layout(tmp_path):
    root = write_msd_replica(tmp_path / "Task03_Liver")
    ds = load_dataset(root)
    assert ds.layout == "nifti" and ds.channels == 1 and ds.patients == ["liver_0", "liver_1"]  # ._ files skipped
    assert len(ds.items) == 12 and ds.items[0].extra_channels == () and ds.classes == [
        {"name": "liver", "value": 1, "labels": [1]}, {"name": "cancer", "value": 2, "labels": [2]}]
    assert all("imagesTs" not in str(it.image) for it in ds.items)
    cancer = load_dataset(root, target="cancer")
    assert cancer.target == "cancer" and cancer.target_values == (2,)
    _, label = phantom(seed=10)
    it = cancer.items[2]
    np.testing.assert_array_equal(read_item(it, prep(cancer))[1], label[2] == 2)


def test_msd_4d_image_is_refused_clearly(tmp_path):
    root = write_msd_replica(tmp_path / "Task01_BrainTumour", cases=1)
    four = root / "imagesTr" / "liver_0.nii.gz"
    write_volume(four, np.zeros((2, 6, 32, 32), np.float32))  # channels in a 4th dimension, as MSD ships them
    with pytest.raises(MedsegError) as e:
        load_dataset(root)
    assert str(four) in str(e.value) and "not supported" in str(e.value) and "_0000" in str(e.value)


def test_vector_image(tmp_path):
    root = write_msd_replica(tmp_path / "Task", cases=1)
    vec = np.random.default_rng(0).random((6, 32, 32, 3)).astype(np.float32)
    write_volume(root / "imagesTr" / "liver_0.nii.gz", vec, vector=True)
    json_path = root / "dataset.json"
    meta = json.loads(json_path.read_text())
    meta["modality"] = {"0": "R", "1": "G", "2": "B"}
    json_path.write_text(json.dumps(meta))
    ds = load_dataset(root)
    assert ds.channels == 3
    img, _ = read_item(ds.items[2], prep(ds))
    assert img.shape == (3, 32, 32)
    write_volume(root / "imagesTr" / "liver_0.nii.gz", vec[..., :2], vector=True)
    with pytest.raises(MedsegError, match="2 components"):
        load_dataset(root)


@pytest.mark.parametrize("ext, labels_dir", [(".nrrd", "labels"), (".nii.gz", "masks"), (".mha", "labels")])
def test_images_labels_pair(tmp_path, ext, labels_dir):
    root = write_pair_replica(tmp_path / "data", ext=ext, labels_dir=labels_dir)
    ds = load_dataset(root)
    assert ds.layout == "nifti" and ds.channels == 1 and ds.patients == ["scan0", "scan1"] and len(ds.items) == 10
    assert ds.target_values == () and ds.items[0].masks == (root / labels_dir / f"scan0{ext}",)
    assert ds.items[0].meta["spacing"] == pytest.approx(list(SPACING))
    _, label = phantom(5, seed=20)
    np.testing.assert_array_equal(read_item(ds.items[2], prep(ds))[1], label[2] > 0)
    assert load_dataset(root, target="1").target_values == (1,)
    with pytest.raises(MedsegError, match="label value"):
        load_dataset(root, target="organ")


def test_pair_without_names_finds_label_values(tmp_path):
    root = write_pair_replica(tmp_path / "data", ext=".nii.gz")
    _, label = phantom(5, seed=20)
    write_volume(root / "labels" / "scan1.nii.gz", label)  # 0/1/2: both count as foreground
    assert [c["name"] for c in load_dataset(root).classes] == ["1", "2"]  # by default each its own class
    ds = load_dataset(root, target="foreground")
    assert ds.target_values == (1, 2)
    np.testing.assert_array_equal(read_item(ds.items[2 + 5], prep(ds))[1], label[2] > 0)


def _label(root):
    return root / "labelsTr" / "prostate_001.nii.gz"


def _shape(root):
    _, label = phantom(seed=1)
    write_volume(_label(root), label[:, :, :30])
    return _label(root), ["label is 30x32x6", "prostate_001_0000.nii.gz is 32x32x6"]


def _spacing(root):
    _, label = phantom(seed=1)
    write_volume(_label(root), label, spacing=(0.8, 0.9, 3.0))
    return _label(root), ["spacing (0.8, 0.9, 3)", "(0.8, 0.9, 2.5)"]


def _origin(root):
    _, label = phantom(seed=1)
    write_volume(_label(root), label, origin=(ORIGIN[0] + 0.01, *ORIGIN[1:]))
    return _label(root), ["origin (-12.49, 30, 7.25)", "(-12.5, 30, 7.25)"]


def _direction(root):
    _, label = phantom(seed=1)
    write_volume(_label(root), label, direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))  # flipped: not on the image grid
    return _label(root), ["direction (1, 0, 0, 0, 1, 0, 0, 0, 1)", "(-1, 0, 0, 0, -1, 0, 0, 0, 1)"]


def _channel_grid(root):
    (_, adc), _ = phantom(seed=1)
    path = root / "imagesTr" / "prostate_001_0001.nii.gz"
    write_volume(path, adc, spacing=(1.0, 1.0, 2.5))
    return path, ["channel spacing (1, 1, 2.5)"]


def _no_label(root):
    _label(root).unlink()
    return root / "imagesTr" / "prostate_001_0000.nii.gz", ["has no label", "labelsTr/prostate_001.nii.gz"]


def _no_channel(root):
    (root / "imagesTr" / "prostate_001_0001.nii.gz").unlink()
    return root / "imagesTr" / "prostate_001_0001.nii.gz", ["channel file missing", "2 channels"]


def _no_image(root):
    for p in (root / "imagesTr").glob("prostate_001_*"):
        p.unlink()
    return _label(root), ["label has no image", "prostate_001_0000.nii.gz"]


def _bad_json(root):
    (root / "dataset.json").write_text('{"channel_names": {"0": "T2",')
    return root / "dataset.json", ["cannot read dataset.json"]


def _bad_labels(root):
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2", "1": "ADC"},
                                                   "labels": {"background": 0, "tumour": "big"}}))
    return root / "dataset.json", ["labels must map names to integer values"]


def _duplicate(root):
    (_, adc), _ = phantom(seed=1)
    write_volume(root / "imagesTr" / "prostate_001_0001.nrrd", adc)
    return root / "imagesTr", ["duplicate image", "prostate_001_0001"]


def _corrupt_label(root):
    _label(root).write_bytes(b"not a nifti file at all" * 20)
    return _label(root), ["cannot read volume header"]


@pytest.mark.parametrize("breaker", [_shape, _spacing, _origin, _direction, _channel_grid, _no_label, _no_channel,
                                     _no_image, _bad_json, _bad_labels, _duplicate, _corrupt_label])
def test_bad_layout_names_the_file(nnunet, breaker):
    bad, expected = breaker(nnunet)
    with pytest.raises(MedsegError) as e:
        load_dataset(nnunet)
    msg = str(e.value)
    assert msg.startswith(str(bad)) and all(x in msg for x in expected), msg
    assert "\n" not in msg


def test_cli_error_is_one_line(nnunet, tmp_path, capsys):
    from medseg.app.cli import main
    _shape(nnunet)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", str(nnunet), "--out", str(out), "--epochs", "1", "--image-size", "32"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1 and "label is 30x32x6" in err
    assert "Traceback" not in err and not (out / "plan.json").exists()


def test_real_ircadb_patient_as_nifti(tmp_path):
    """Patient 17 read as a DICOM series, subsampled, written as one nnU-Net case: the NIfTI slices carry
    the same HU and liver as the DICOM slices that medseg's 3D-IRCADb adapter orders by position."""
    patient = need(SHARED / "ircadb-dev" / "3Dircadb1") / "3Dircadb1.17"
    root = tmp_path / "Dataset017_Liver"
    src = ircadb_to_nifti(patient, root)
    ds = load_dataset(root)
    assert ds.layout == "nifti" and ds.target_values == (1,) and len(ds.items) == src["hu"].shape[0] == 24
    assert ds.items[0].meta["spacing"] == pytest.approx(src["spacing"]) and src["spacing"][2] == pytest.approx(8.0)
    dicom = load_dataset(patient)  # the DICOM adapter's own order (ImagePositionPatient on the normal)
    step, with_liver = src["step_xy"], 0
    for it in ds.items:
        mask = read_mask(list(it.masks), (64, 64), ds.target_values, it.z)
        np.testing.assert_array_equal(mask, src["liver"][it.z])
        twin = dicom.items[it.z * src["step_z"]]
        hu = read_volume(it.image)[0][it.z]
        ds_dcm = read_dicom(twin.image)
        expected = ds_dcm.pixel_array[::step, ::step] * float(ds_dcm.RescaleSlope) + float(ds_dcm.RescaleIntercept)
        np.testing.assert_array_equal(hu, expected)
        np.testing.assert_array_equal(mask, read_mask(list(twin.masks), (512, 512))[::step, ::step])
        with_liver += int(mask.any())
    assert with_liver >= 15  # the liver spans 113 of the 119 slices
    img, _ = read_item(ds.items[12], prep(ds))
    assert img.shape == (1, 64, 64) and 0 <= img.min() and img.max() <= 1 and img.std() > 0.1
    ref = read_volume(ds.items[12].image)[0]
    lo, hi = np.percentile(ref, [0.5, 99.5])
    np.testing.assert_allclose(img[0], to_unit(ref[12], {"mode": "window", "low": lo, "high": hi}, None), atol=1e-5)


def test_one_epoch_training(nnunet, tmp_path):
    from runs import train
    out = tmp_path / "run"
    summary = train(nnunet, out, epochs=1, image_size=32, batch_size=2, val_fraction=0.5, quiet=True, target="foreground",
                    settings={"model_args": {"features": [8, 16, 32], "res_units": 1}})  # small: a smoke run
    plan = json.loads((out / "plan.json").read_text())
    assert summary["epochs"] == 1 and np.isfinite(summary["last_val_dice"])
    assert plan["layout"] == "nifti" and plan["channels"] == 2 and plan["unit"] == "patient"
    assert plan["target_values"] == [1, 2] and plan["intensity"] == PERCENTILE
    assert plan["n_items"] == {"train": 6, "val": 6}
    assert sitk.ReadImage(str(nnunet / "labelsTr" / "prostate_000.nii.gz")).GetDirection() == pytest.approx(DIRECTION)
