"""`medseg export-nnunet`: file names, shapes, spacings and values of the nnU-Net v2 raw dataset read
back with SimpleITK, nnU-Net's own verify_dataset_integrity on it, and the refusals and clean failures."""

from __future__ import annotations

import json
import multiprocessing.pool
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from medseg.app.cli import main
from medseg.errors import MedsegError
from medseg.data.nnunet_export import export_nnunet, safe_id


def read(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img.GetSpacing()


def nnunet_verify(folder: Path) -> None:
    """nnU-Net's integrity check as shipped, with its worker pool swapped for threads: its spawn pool
    re-imports torch and nnunetv2 in every worker (~10 s each on 2 cores); the checks are the same code."""
    try:
        from nnunetv2.experiment_planning import verify_dataset_integrity as v
    except ImportError as e:
        pytest.skip(f"nnunetv2 not importable ({e}); `make test` installs it (pyproject extra 'nnunet')")

    class Spawn:
        Pool = multiprocessing.pool.ThreadPool

    class Threads:
        @staticmethod
        def get_context(_method):
            return Spawn

    mp = v.multiprocessing
    v.multiprocessing = Threads
    try:
        v.verify_dataset_integrity(str(folder), 2)  # raises (AssertionError/RuntimeError) on any error
    finally:
        v.multiprocessing = mp


def test_lgg_replica_export(lgg_replica, tmp_path):
    out = export_nnunet(lgg_replica, tmp_path / "raw", 501, "LGG", progress=False)
    assert out == tmp_path / "raw" / "Dataset501_LGG"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "pre-contrast", "1": "FLAIR", "2": "post-contrast"}
    assert meta["labels"] == {"background": 0, "foreground": 1}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz" and meta["medseg"]["layout"] == "lgg"
    patients = [f"TCGA_XX_{1000 + p}" for p in range(3)]
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"{p}_{c:04d}.nii.gz" for p in patients for c in range(3)]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"{p}.nii.gz" for p in patients]
    case = lgg_replica / "TCGA_XX_1001_20010101"
    src = np.stack([tifffile.imread(case / f"TCGA_XX_1001_20010101_{n}.tif") for n in range(1, 6)])  # Z x H x W x 3
    for c in range(3):
        arr, spacing = read(out / "imagesTr" / f"TCGA_XX_1001_{c:04d}.nii.gz")
        assert arr.shape == (5, 64, 64) and arr.dtype == np.uint8 and spacing == (1.0, 1.0, 1.0)
        assert np.array_equal(arr, src[..., c])  # stored values, slices in numeric order
    lab, spacing = read(out / "labelsTr" / "TCGA_XX_1001.nii.gz")
    masks = np.stack([tifffile.imread(case / f"TCGA_XX_1001_20010101_{n}_mask.tif") for n in range(1, 6)])
    assert lab.dtype == np.uint8 and np.array_equal(lab, (masks > 0).astype(np.uint8)) and spacing == (1.0, 1.0, 1.0)
    assert not any(p.name.startswith(".") for p in (tmp_path / "raw").iterdir())  # no temp folder left


def test_busi_replica_export(busi_replica, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["export-nnunet", str(busi_replica), str(tmp_path / "raw"), "--id", "7", "--name", "BUSI"])
    assert e.value.code in (0, None) and "9 cases" in capsys.readouterr().out
    out = tmp_path / "raw" / "Dataset007_BUSI"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "ultrasound"} and meta["numTraining"] == 9
    assert meta["medseg"]["cases"]["benign_1"] == "benign (1)"
    arr, spacing = read(out / "imagesTr" / "benign_1_0000.nii.gz")
    assert arr.shape == (1, 45, 52) and arr.dtype == np.uint8 and spacing == (1.0, 1.0, 999.0)
    grey = np.asarray(Image.open(busi_replica / "benign" / "benign (1).png").convert("L"))
    assert np.array_equal(arr[0], grey)
    lab, lab_spacing = read(out / "labelsTr" / "benign_1.nii.gz")
    union = np.zeros((45, 52), bool)
    for m in ("benign (1)_mask.png", "benign (1)_mask_1.png"):  # two lesions: the label is their union
        union |= np.asarray(Image.open(busi_replica / "benign" / m).convert("L")) > 0
    assert np.array_equal(lab[0], union.astype(np.uint8)) and lab_spacing == spacing
    assert read(out / "labelsTr" / "normal_2.nii.gz")[0].max() == 0


def test_nnunet_integrity_check_passes(lgg_replica, busi_replica, tmp_path):
    nnunet_verify(export_nnunet(lgg_replica, tmp_path / "raw", 501, "LGG", progress=False))  # 3D, 3 channels
    nnunet_verify(export_nnunet(busi_replica, tmp_path / "raw", 502, "BUSI", progress=False))  # 2D as 1 x H x W


def test_refuses_overwrite_and_same_id(busi_replica, tmp_path):
    raw = tmp_path / "raw"
    out = export_nnunet(busi_replica, raw, 12, "B", progress=False)
    stamp = (out / "dataset.json").stat().st_mtime_ns
    with pytest.raises(MedsegError, match="already exists; pass --force"):
        export_nnunet(busi_replica, raw, 12, "B", progress=False)
    with pytest.raises(MedsegError, match="same dataset id 012"):
        export_nnunet(busi_replica, raw, 12, "Other", progress=False)
    assert (out / "dataset.json").stat().st_mtime_ns == stamp
    (out / "imagesTr" / "stale_0000.nii.gz").write_bytes(b"x")
    export_nnunet(busi_replica, raw, 12, "B", force=True, progress=False)
    assert not (out / "imagesTr" / "stale_0000.nii.gz").exists()  # replaced, not merged
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset012_B"]


def test_failed_export_leaves_nothing(busi_replica, tmp_path):
    raw = tmp_path / "raw"
    old = export_nnunet(busi_replica, raw, 3, "B", progress=False)
    img = busi_replica / "normal" / "normal (3).png"  # the last case written: a failure after most files exist
    img.write_bytes(img.read_bytes()[:100])
    with pytest.raises(MedsegError, match=r"normal \(3\)\.png"):
        export_nnunet(busi_replica, raw, 4, "C", progress=False)
    with pytest.raises(MedsegError, match=r"normal \(3\)\.png"):
        export_nnunet(busi_replica, raw, 3, "B", force=True, progress=False)
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset003_B"]  # no new folder, no temp folder
    assert json.loads((old / "dataset.json").read_text())["numTraining"] == 9  # the old one intact
    with pytest.raises(MedsegError):
        export_nnunet(busi_replica, tmp_path / "new" / "raw", 4, "C", progress=False)
    assert not (tmp_path / "new" / "raw").exists()  # an output folder made for the export goes too


@pytest.mark.parametrize("args, message", [
    (["--id", "0", "--name", "X"], "--id must be a whole number from 1 to 999"),
    (["--id", "1000", "--name", "X"], "--id must be a whole number from 1 to 999"),
    (["--id", "5", "--name", "a b"], "--name must use only letters"),
    (["--id", "5", "--name", "../x"], "--name must use only letters"),
])
def test_bad_id_or_name_exit_2(busi_replica, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["export-nnunet", str(busi_replica), str(tmp_path / "raw"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "raw").exists()


def test_safe_ids():
    assert safe_id("benign (12)") == "benign_12"
    assert safe_id("sub/dir/x.y") == "sub_dir_x_y"
    assert safe_id("TCGA_CS_4941") == "TCGA_CS_4941"
    assert safe_id("((..))") == "case"


def test_round_trip_through_the_nifti_layout(lgg_replica, tmp_path):
    """The export read back by medseg's own NIfTI (nnU-Net raw) adapter: same cases, slices and foreground."""
    from medseg.planning.fingerprint import fingerprint
    out = export_nnunet(lgg_replica, tmp_path / "raw", 501, "LGG", progress=False)
    a, b = fingerprint(lgg_replica, progress=False), fingerprint(out, progress=False)
    assert b["layout"] == "nifti" and b["channel_names"] == a["channel_names"]
    assert b["counts"] == a["counts"] and b["problems"] == []
    assert b["foreground"] == a["foreground"]
    assert [r["p50"] for r in b["intensity_raw"]] == [r["p50"] for r in a["intensity_raw"]]
