"""3D-IRCADb adapter: DICOM series without extensions, ordered by position, HU window, organ targets, and
each kind of broken series named by its file. Replicas written here; patient 17 where ../shared has it."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from medseg.adapters import load_dataset
from medseg.data.arrays import read_item
from medseg.errors import MedsegError
from medseg.io.images import read_image, read_mask

from conftest import SHARED, need
from replica_ircadb import LIVER_HU, file_of, read_position, replica_volume, write_ct_slice, write_ircadb_replica

PREP = {"channels": 1, "intensity": {"mode": "window", "low": -100, "high": 400}}


@pytest.fixture
def replica(tmp_path):
    return write_ircadb_replica(tmp_path / "3Dircadb1", patients=2, slices=12)


def test_detected_at_parent_and_patient_folder(replica):
    ds = load_dataset(replica)
    assert ds.layout == "ircadb" and ds.channels == 1 and ds.unit == "patient"
    assert ds.patients == ["3Dircadb1.1", "3Dircadb1.2"] and len(ds.items) == 24
    assert ds.intensity == {"mode": "window", "low": -100, "high": 400}
    assert ds.target_values == () and ds.target == "liver"
    it = ds.items[0]
    assert it.z is None and it.case == it.patient == "3Dircadb1.1"
    assert it.masks == (replica / "3Dircadb1.1" / "MASKS_DICOM" / "liver" / it.image.name,)
    assert it.meta["spacing"] == pytest.approx([0.75, 0.75, 1.6]) and all(type(v) is float for v in it.meta["spacing"])

    one = load_dataset(replica / "3Dircadb1.2")
    assert one.layout == "ircadb" and one.patients == ["3Dircadb1.2"] and len(one.items) == 12


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (1, 0, 0, 0, -1, 0)])  # normal +z, then -z
def test_slice_order_follows_position_on_the_normal(tmp_path, orientation):
    root = write_ircadb_replica(tmp_path / "3Dircadb1", slices=12, orientation=orientation)
    ds = load_dataset(root)
    # volume slice i is the file image_<11-i>: neither file-name order (text or numeric) nor raw z gives this
    assert [it.image.name for it in ds.items] == [file_of(i, 12) for i in range(12)]
    assert [it.index for it in ds.items] == list(range(12))
    normal = np.cross(orientation[:3], orientation[3:])
    along = [float(np.dot(read_position(it.image), normal)) for it in ds.items]
    assert np.all(np.diff(along) == pytest.approx(1.6))
    # the masks travel with their images: the replica's liver is absent from the first and last slice only
    has_liver = [read_mask(list(it.masks), (64, 64)).any() for it in ds.items]
    assert has_liver == [False] + [True] * 10 + [False]


@pytest.mark.parametrize("signed", [False, True])
def test_hu_window(tmp_path, signed):
    root = write_ircadb_replica(tmp_path / "3Dircadb1", slices=8, signed=signed)
    ds = load_dataset(root)
    it = ds.items[4]
    img = read_image(it.image, ds.channels, ds.intensity)
    raw = pydicom.dcmread(it.image).pixel_array.astype(np.float32)
    hu = raw - 1024  # RescaleIntercept -1024, slope 1
    assert img.shape == (1, 64, 64)
    np.testing.assert_allclose(img[0], np.clip((hu + 100) / 500, 0, 1), atol=1e-6)
    liver = read_mask(list(it.masks), (64, 64))
    tumour = replica_volume(8, 64, seed=1)[2][4]
    assert np.all(img[0][liver & ~tumour] == pytest.approx((LIVER_HU + 100) / 500))  # 150 HU -> 0.5
    assert img[0, 0, 0] == 0.0  # air, -1000 HU, below the window


def test_target_choice(replica, capsys):
    ds = load_dataset(replica, target="livertumor1")
    assert ds.target == "livertumor1" and len(ds.items) == 24
    assert all(it.masks[0].parent.name == "livertumor1" for it in ds.items)
    voxels = sum(int(read_mask(list(it.masks), (64, 64)).sum()) for it in ds.items if it.patient == "3Dircadb1.1")
    assert voxels == int(replica_volume(12, 64, seed=1)[2].sum()) > 0
    with pytest.raises(MedsegError, match=r"no structure 'spleen' in any patient; available: liver, livertumor1$"):
        load_dataset(replica, target="spleen")


    from medseg.app.cli import main
    with pytest.raises(SystemExit) as e:
        main(["train", str(replica), "--out", str(replica.parent / "run"), "--target", "spleen", "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "available: liver, livertumor1" in err
    assert not (replica.parent / "run").exists()


def _duplicate_position(root):
    """Give volume slice 5 the position of slice 4."""
    folder = root / "3Dircadb1.1" / "PATIENT_DICOM"
    path = folder / file_of(5, 8)
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = pydicom.dcmread(folder / file_of(4, 8)).ImagePositionPatient
    ds.save_as(path)
    return path


def _small_mask(root):
    path = root / "3Dircadb1.1" / "MASKS_DICOM" / "liver" / file_of(3, 8)
    write_ct_slice(path, np.zeros((32, 32), np.uint8), read_position(path), intercept=0)
    return path


def _missing_mask(root):
    path = root / "3Dircadb1.1" / "MASKS_DICOM" / "liver" / file_of(6, 8)
    path.unlink()
    return path


@pytest.mark.parametrize("write, bad, problem", [
    (dict(drop=4), "3Dircadb1.1/PATIENT_DICOM", r"missing slice between z=-95\.200 \(image_4\) and z=-92\.000 \(image_2\)"),
    (dict(truncate=3), "PATIENT_DICOM/image_4", r"DICOM file truncated: \d+ bytes"),
    (dict(truncate=3, keep_bytes=300), "PATIENT_DICOM/image_4", "file truncated"),
    (dict(truncate=3, keep_bytes=10), "PATIENT_DICOM/image_4", "cannot read DICOM"),
    (_duplicate_position, "PATIENT_DICOM/image_3", "duplicate slice position z=-93.600 mm, the same as image_2"),
    (_small_mask, "MASKS_DICOM/liver/image_4", "mask is 32x32 but its image image_4 is 64x64"),
    (_missing_mask, "MASKS_DICOM/liver/image_1", "mask file missing for image slice .*PATIENT_DICOM/image_1"),
], ids=["gap", "truncated-pixels", "truncated-header", "truncated-preamble", "duplicate", "mask-size", "no-mask"])
def test_bad_series_named_by_file(tmp_path, write, bad, problem):
    root = tmp_path / "3Dircadb1"
    if callable(write):
        write_ircadb_replica(root)
        write(root)
    else:
        write_ircadb_replica(root, **write)
    with pytest.raises(MedsegError, match=problem) as e:
        load_dataset(root)
    assert e.value.path.endswith(bad) and "\n" not in str(e.value)


def test_short_pixel_data_surfaces_when_read(tmp_path):
    """A file a few bytes short passes the header-only load; reading it names the file."""
    root = write_ircadb_replica(tmp_path / "3Dircadb1")
    path = root / "3Dircadb1.1" / "PATIENT_DICOM" / file_of(2, 8)
    path.write_bytes(path.read_bytes()[:-100])
    it = next(it for it in load_dataset(root).items if it.image == path)
    with pytest.raises(MedsegError, match="cannot read DICOM .*less than expected") as e:
        read_item(it, PREP)
    assert e.value.path == str(path)


def test_real_patient_17():
    root = need(SHARED / "ircadb-dev" / "3Dircadb1")
    ds = load_dataset(root)
    assert ds.layout == "ircadb" and ds.patients == ["3Dircadb1.17"] and len(ds.items) == 119
    along = [read_position(it.image)[2] for it in ds.items]  # axial, orientation (1,0,0,0,1,0)
    assert np.all(np.diff(along) == pytest.approx(1.6, abs=1e-4))
    assert [it.image.name for it in ds.items[:12]] == [f"image_{k}" for k in range(12)]  # not image_0, 1, 10, 100
    assert ds.items[0].meta["spacing"] == pytest.approx([0.743, 0.743, 1.6], abs=1e-4)
    per_slice = np.array([read_mask(list(it.masks), (512, 512)).sum() for it in ds.items])
    # measured: 2,106,497 liver voxels on slices 1..113 (README: about 2.1 M over 113 slices)
    assert 2.0e6 < per_slice.sum() < 2.2e6 and (per_slice > 0).sum() == 113
    assert np.flatnonzero(per_slice).tolist() == list(range(1, 114))  # one contiguous run: the order is anatomical
    img = read_image(ds.items[60].image, 1, ds.intensity)
    liver = read_mask(list(ds.items[60].masks), (512, 512))
    assert 0.3 < float(np.median(img[0][liver])) < 0.5  # enhanced liver ~ 50..150 HU, inside the -100..400 window
    tumours = load_dataset(root / "3Dircadb1.17", target="livertumor2")
    assert tumours.target == "livertumor2" and len(tumours.items) == 119


def test_one_epoch_training_smoke(tmp_path):
    import torch
    from runs import train
    root = write_ircadb_replica(tmp_path / "3Dircadb1", patients=2, slices=8)
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: on a busy 2-core machine, 2 threads ran 5-10x slower than 1
    try:
        summary = train(root, out, epochs=1, image_size=64, batch_size=4, val_fraction=0.5, quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert summary["epochs"] == 1 and (out / "best" / "model.safetensors").is_file()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["layout"] == "ircadb" and plan["intensity"]["mode"] == "window"
    assert plan["split"]["train"] and plan["split"]["val"] and not set(plan["split"]["train"]) & set(plan["split"]["val"])


def test_patient_without_the_structure_has_empty_masks(replica):
    import shutil
    shutil.rmtree(replica / "3Dircadb1.2" / "MASKS_DICOM" / "livertumor1")
    ds = load_dataset(replica, target="livertumor1")
    second = [it for it in ds.items if it.patient == "3Dircadb1.2"]
    assert second and all(it.masks == () and it.meta["target_absent"] for it in second)
    assert not read_mask(list(second[0].masks), (64, 64)).any()
