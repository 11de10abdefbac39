"""The bad-input catalogue: each case breaks one thing in a replica of a published layout (or in a run,
or in the command line) and expects exit code 2, one line `error: <file>: <problem>` naming the file,
no traceback, and nothing written to the output folder by the failed step.

Add a case here for every bad input found in the wild or by the fuzzer.
"""

from __future__ import annotations

import gzip
import os
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import write_busi_replica, write_lgg_replica  # noqa: E402
from replica_cbis import write_cbis_replica  # noqa: E402
from replica_ircadb import write_ircadb_replica  # noqa: E402
from replica_nifti import write_pair_replica  # noqa: E402

from medseg.app.cli import main  # noqa: E402

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def busi(tmp):
    return write_busi_replica(tmp / "Dataset_BUSI_with_GT")


def lgg(tmp):
    return write_lgg_replica(tmp / "kaggle_3m")


def train(data, tmp):
    return ["train", str(data), "--out", str(tmp / "OUT"), "--epochs", "1", "--image-size", "32"]


@case
def corrupt_png(tmp):
    root = busi(tmp)
    bad = root / "benign" / "benign (1).png"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    return train(root, tmp), bad, "cannot read image"


@case
def truncated_png(tmp):
    root = busi(tmp)
    bad = root / "malignant" / "malignant (2).png"
    bad.write_bytes(bad.read_bytes()[:60])
    return train(root, tmp), bad, "cannot read"


@case
def zero_byte_tif_mask(tmp):
    root = lgg(tmp)
    bad = next(root.glob("*/*_2_mask.tif"))
    bad.write_bytes(b"")
    return train(root, tmp), bad, "0 bytes"


@case
def truncated_tif(tmp):
    root = lgg(tmp)
    bad = next(root.glob("*/*_3.tif"))
    bad.write_bytes(bad.read_bytes()[:200])
    return train(root, tmp), bad, "cannot read"


@case
def mask_size_mismatch(tmp):
    root = lgg(tmp)
    bad = next(root.glob("*/*_1_mask.tif"))
    tifffile.imwrite(bad, np.zeros((20, 30), np.uint8))
    return train(root, tmp), bad, "mask is 30x20"


@case
def non_binary_mask(tmp):
    root = busi(tmp)
    bad = root / "benign" / "benign (2)_mask.png"
    Image.fromarray(np.tile(np.arange(52, dtype=np.uint8) * 4, (45, 1))).save(bad)
    return train(root, tmp), bad, "not a binary mask"


@case
def three_channel_mask_with_colours(tmp):
    root = busi(tmp)
    bad = root / "benign" / "benign (3)_mask.png"
    rgb = np.zeros((45, 52, 3), np.uint8)
    rgb[5:20, 5:20, 0] = 255
    rgb[25:40, 25:40, 1] = 255
    Image.fromarray(rgb).save(bad)
    return train(root, tmp), bad, "colour mask"


@case
def missing_mask(tmp):
    root = lgg(tmp)
    gone = next(root.glob("*/*_4_mask.tif"))
    gone.unlink()
    return train(root, tmp), gone.with_name(gone.name.replace("_mask", "")), "no mask"


@case
def orphan_mask(tmp):
    root = lgg(tmp)
    img = next(root.glob("*/*_5.tif"))
    img.unlink()
    return train(root, tmp), img.with_name(img.stem + "_mask.tif"), "mask has no image"


@case
def empty_data_set(tmp):
    (tmp / "empty").mkdir()
    return train(tmp / "empty", tmp), tmp / "empty", ""


@case
def all_masks_empty(tmp):
    root = lgg(tmp)
    for m in root.glob("*/*_mask.tif"):
        tifffile.imwrite(m, np.zeros((64, 64), np.uint8))
    return train(root, tmp), root, "nothing to learn"


@case
def nan_in_volume(tmp):
    # NRRD: ITK's NIfTI reader turns NaN into 0 itself, NRRD and MHA keep them
    root = write_pair_replica(tmp / "pairs", ext=".nrrd")
    bad = sorted((root / "images").glob("*"))[0]
    import SimpleITK as sitk
    img = sitk.ReadImage(str(bad), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(img)
    arr[1, 3, 3] = np.nan
    arr[2, 4, 4] = np.inf
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(bad))
    return train(root, tmp), bad, "NaN or Inf"


@case
def corrupt_nifti(tmp):
    root = write_pair_replica(tmp / "pairs", ext=".nii.gz")
    bad = sorted((root / "images").glob("*"))[0]
    bad.write_bytes(gzip.compress(b"\x00" * 100))
    return train(root, tmp), bad, "cannot read volume"


@case
def truncated_dicom(tmp):
    root = write_ircadb_replica(tmp / "3Dircadb1", slices=6, truncate=2)
    return train(root, tmp), root / "3Dircadb1.1" / "PATIENT_DICOM" / "image_3", "truncated"


@case
def wrong_channel_count_volume(tmp):
    root = write_pair_replica(tmp / "pairs", ext=".nii.gz")
    run = tmp / "run"
    assert main_rc(train(root, tmp)) == 0
    import shutil
    shutil.move(str(tmp / "OUT"), str(run))
    import SimpleITK as sitk
    vec = sitk.Compose([sitk.Image(16, 16, 4, sitk.sitkFloat32)] * 2)
    bad = tmp / "two_channels.nii.gz"
    sitk.WriteImage(vec, str(bad))
    return ["predict", str(run), str(bad), "--out", str(tmp / "OUT")], bad, "channel"


@case
def absurd_image_size(tmp):
    root = busi(tmp)
    bad = root / "benign" / "benign (1).png"
    Image.new("1", (40000, 40000)).save(bad)  # 200 kB on disk, 1.6 G pixels decoded
    return train(root, tmp), bad, "too large"


@case
def duplicate_case_ids(tmp):
    root = tmp / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for ext in (".png", ".bmp"):
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "images" / f"case1{ext}")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "masks" / "case1.png")
    return train(root, tmp), root / "images", "case1"


def _cbis_with_image_path(tmp, value: str) -> Path:
    """A CBIS replica whose first case row names `value` as its image file; returns the CSV."""
    root = write_cbis_replica(tmp / "cbis")
    csv_path = next(root.rglob("mass_case_description_train_set.csv"))
    text = csv_path.read_text().splitlines()
    cols = text[1].split(",")
    cols[next(i for i, c in enumerate(cols) if c.endswith(".dcm") or "/" in c)] = value
    text[1] = ",".join(cols)
    csv_path.write_text("\n".join(text) + "\n")
    return csv_path


@case
def csv_row_pointing_to_missing_file(tmp):
    csv_path = _cbis_with_image_path(tmp, "Mass-Training_P_99999_LEFT_CC/1.3.6/1.3.6.2/000000.dcm")
    return train(tmp / "cbis", tmp), csv_path, "not found"


@case
def csv_path_traversal(tmp):
    csv_path = _cbis_with_image_path(tmp, "../../../../etc/passwd")
    return train(tmp / "cbis", tmp), csv_path, "outside the data folder"


@case
def corrupt_checkpoint(tmp):
    root = busi(tmp)
    assert main_rc(train(root, tmp)) == 0
    bad = tmp / "OUT" / "best" / "model.safetensors"
    bad.write_bytes(b"\x00" * 64)
    img = root / "benign" / "benign (1).png"
    return ["predict", str(tmp / "OUT"), str(img), "--out", str(tmp / "OUT2")], bad, ""


@case
def bad_setting_value(tmp):
    root = busi(tmp)
    return train(root, tmp) + ["--set", "lr=-1"], None, "lr"


@case
def unknown_setting(tmp):
    root = busi(tmp)
    return train(root, tmp) + ["--set", "learning_rate=0.1"], None, "learning_rate"


def main_rc(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, capsys):
    argv, culprit, problem = CASES[name](tmp_path)
    capsys.readouterr()
    out_dir = Path(argv[argv.index("--out") + 1])
    existed = out_dir.exists()
    rc = main_rc(argv)
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"exit {rc}; stderr:\n{err}"
    assert "Traceback" not in err and lines[-1].startswith("error:"), err
    if culprit is not None:
        assert str(culprit) in err or Path(culprit).name in err, f"{culprit} not named in: {err}"
    assert problem.lower() in err.lower(), f"{problem!r} not in: {err}"
    if not existed:
        assert not out_dir.exists() or not any(out_dir.iterdir()), f"{out_dir} was written"


def test_catalogue_size():
    assert len(CASES) >= 20


def test_skip_bad_leaves_out_the_corrupt_slice_and_lists_it(tmp_path, capsys):
    root = lgg(tmp_path)
    bad = sorted(root.glob("*/*_3.tif"))[0]
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "run"
    assert main_rc(["train", str(root), "--out", str(out), "--epochs", "1", "--image-size", "32", "--skip-bad"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert [s["file"] for s in plan["skipped"]] == [str(bad)] and "cannot read" in plan["skipped"][0]["problem"]
    assert bad.name in capsys.readouterr().err
    assert main_rc(["evaluate", str(out), "--split", "all"]) == 0
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert [s["file"] for s in metrics["skipped"]] == [str(bad)]
    assert "left out" in (out / "eval" / "report.html").read_text()


def test_odd_unicode_file_names_work(tmp_path):
    root = busi(tmp_path)
    for p in sorted((root / "benign").glob("benign (1)*")):
        p.rename(p.with_name(p.name.replace("benign (1)", "benign (1) é ✓ 日本")))
    out = tmp_path / "run"
    assert main_rc(train(root, tmp_path)[:3] + [str(out), "--epochs", "1", "--image-size", "32"]) == 0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files whatever their permissions: run the suite as a normal user for this case")
def test_unreadable_permissions(tmp_path, capsys):
    root = busi(tmp_path)
    bad = root / "malignant" / "malignant (1).png"
    bad.chmod(0)
    try:
        assert main_rc(train(root, tmp_path)) == 2
        err = capsys.readouterr().err
        assert bad.name in err and "Traceback" not in err and not (tmp_path / "OUT").exists()
    finally:
        bad.chmod(0o644)
