"""`medseg inspect`: the fingerprint's figures against numpy computed independently, every per-file
problem listed (not raised), JSON on stdout only, and the exit codes (0 with findings, 2 when unreadable)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import BUSI, LGG, need
from medseg.adapters import DataSet, Item
from medseg.app.cli import main
from medseg.errors import MedsegError
from medseg.planning.fingerprint import fingerprint


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """The real entry point in-process (its MedsegError -> exit 2 handling included)."""
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return (e.value.code or 0), out.out, out.err


def test_lgg_replica_fingerprint(lgg_replica):
    (lgg_replica / "data.csv").write_text("Patient,gender,age\nTCGA_XX_1000,1,40\nTCGA_XX_1001,2,51\nTCGA_XX_1002,1,62\n")
    fp = fingerprint(lgg_replica, progress=False)
    assert fp["layout"] == "lgg" and fp["channels"] == 3
    assert fp["counts"] == {"patients": 3, "cases": 3, "images": 15, "read": 15}
    masks = [tifffile.imread(p) > 0 for p in sorted(lgg_replica.rglob("*_mask.tif"))]
    assert fp["foreground"]["pixel_fraction"] == pytest.approx(np.mean([m.mean() for m in masks]))
    assert fp["foreground"]["empty_images"] == sum(not m.any() for m in masks) == 3  # slices 3 of each patient
    assert fp["foreground"]["empty_cases"] == 0
    assert fp["image_size"]["distinct"] == 1 and fp["image_size"]["most_common"] == [64, 64]
    assert fp["mask_values"] == {"values": [0, 255], "distinct": 2, "kind": "binary"}
    assert fp["channel_names"] == ["pre-contrast", "FLAIR", "post-contrast"]
    imgs = np.stack([tifffile.imread(p) for p in sorted(lgg_replica.rglob("*.tif")) if "_mask" not in p.name])
    raw_max = [r["max"] for r in fp["intensity_raw"]]
    assert raw_max == [float(imgs[..., c].max()) for c in range(3)]
    assert [u["max"] for u in fp["intensity_unit"]] == pytest.approx([m / 255 for m in raw_max])
    # gender has 2 values over 3 patients: a subgroup; age is distinct per patient: not one
    assert fp["subgroups"] == {"gender": {"1": 2, "2": 1}}
    assert fp["spacing"] is None and fp["problems"] == []


def test_busi_replica_fingerprint(busi_replica):
    fp = fingerprint(busi_replica, progress=False)
    assert fp["counts"]["images"] == fp["counts"]["cases"] == 9
    assert fp["subgroups"]["class"] == {"benign": 3, "malignant": 3, "normal": 3}
    fg = total = 0
    for img in sorted(p for p in busi_replica.rglob("*.png") if "_mask" not in p.name):
        union = np.zeros((45, 52), bool)
        for m in img.parent.glob(f"{img.stem}_mask*.png"):
            a = np.asarray(Image.open(m).convert("L"))
            union |= a > 0
        fg += union.sum()
        total += union.size
    assert fp["foreground"]["pixel_fraction"] == pytest.approx(fg / total)
    assert fp["foreground"]["empty_cases"] == 3 and fp["foreground"]["empty_case_share"] == pytest.approx(1 / 3)
    # 1-bit masks (0/1) beside 8-bit ones (0/255): each file is binary, so the data set is
    assert fp["mask_values"]["kind"] == "binary" and set(fp["mask_values"]["values"]) == {0, 1, 255}
    assert fp["problems"] == []


def test_problems_are_listed_not_raised(busi_replica, capsys):
    b = busi_replica
    data = (b / "benign" / "benign (2).png").read_bytes()
    (b / "benign" / "benign (2).png").write_bytes(data[: len(data) // 2])  # truncated PNG
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(b / "malignant" / "malignant (1)_mask.png")  # wrong size
    shutil.copy(b / "benign" / "benign (3).png", b / "normal" / "normal (3).png")  # same pixels
    grey = np.zeros((45, 52), np.uint8)
    grey[:10], grey[10:20] = 255, 128
    Image.fromarray(grey).save(b / "malignant" / "malignant (2)_mask.png")  # 0, 128, 255
    fp = fingerprint(b, progress=False)
    found = {(p["kind"], Path(p["file"]).name) for p in fp["problems"]}
    assert ("unreadable file", "benign (2).png") in found
    assert ("size mismatch", "malignant (1)_mask.png") in found
    assert ("duplicate image", "benign (3).png") in found
    assert ("non-binary mask", "malignant (2)_mask.png") in found
    assert len(fp["problems"]) == 4
    dup = next(p for p in fp["problems"] if p["kind"] == "duplicate image")
    assert "normal (3).png" in dup["detail"]
    assert fp["counts"]["read"] == 7  # all but the truncated image and the misfit mask
    assert fp["mask_values"]["kind"] == "non-binary"

    rc, out, err = run_cli(["inspect", str(b)], capsys)
    assert rc == 0  # problems are findings
    assert "4 problem(s) found" in out and "size mismatch" in out and "benign (2).png" in out
    rc, out, _ = run_cli(["inspect", str(b), "--json"], capsys)
    assert rc == 0 and json.loads(out)["counts"]["images"] == 9  # stdout is the JSON and nothing else


def test_item_level_problems_and_adapter_notes(tmp_path):
    """Missing mask files, NaN/Inf and the adapter's own notes, on a DataSet built by hand."""
    bad = np.ones((16, 16), np.float32)
    bad[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "a.tif", bad)
    tifffile.imwrite(tmp_path / "a_mask.tif", np.zeros((16, 16), np.uint8))
    tifffile.imwrite(tmp_path / "b.tif", np.ones((16, 16), np.float32))
    items = [Item(tmp_path / "a.tif", (tmp_path / "a_mask.tif",), "a"),
             Item(tmp_path / "b.tif", (tmp_path / "b_mask.tif",), "b")]
    ds = DataSet(tmp_path, "folder", 1, items, problems=["3 rows name a file twice"])
    fp = fingerprint(ds, progress=False)
    kinds = {(p["kind"], Path(p["file"]).name) for p in fp["problems"]}
    assert kinds == {("adapter", tmp_path.name), ("NaN/Inf", "a.tif"), ("missing mask", "b_mask.tif")}
    assert fp["counts"]["read"] == 0 and fp["foreground"] is None


def test_unreadable_data_exits_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no images here")
    rc, out, err = run_cli(["inspect", str(tmp_path)], capsys)
    assert rc == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1
    with pytest.raises(MedsegError, match="not found"):
        fingerprint(tmp_path / "absent", progress=False)


def test_real_lgg_dev():
    fp = fingerprint(need(LGG), progress=False)
    assert fp["counts"] == {"patients": 30, "cases": 30, "images": 912, "read": 912}
    assert fp["image_size"]["most_common"] == [256, 256] and fp["image_size"]["distinct"] == 1
    assert fp["problems"] == [] and fp["mask_values"]["kind"] == "binary"
    assert 0 < fp["foreground"]["pixel_fraction"] < 0.05
    assert sum(fp["subgroups"]["gender"].values()) == 30
    assert fp["seconds"] < 60


def test_real_busi_dev():
    fp = fingerprint(need(BUSI), progress=False)
    assert fp["counts"]["images"] == 141
    assert fp["subgroups"]["class"] == {"benign": 79, "malignant": 38, "normal": 24}
    assert fp["foreground"]["empty_cases"] == 24  # the normal images


def test_duplicate_patient_is_one_finding_and_blank_slices_are_not(lgg_replica):
    src, dst = "TCGA_XX_1000_20010100", "TCGA_XX_1009_20010109"
    (lgg_replica / dst).mkdir()
    for f in (lgg_replica / src).iterdir():
        (lgg_replica / dst / f.name.replace(src, dst)).write_bytes(f.read_bytes())
    for case in ("TCGA_XX_1001_20010101", "TCGA_XX_1002_20010102"):  # one all-black slice in two patients
        tifffile.imwrite(lgg_replica / case / f"{case}_5.tif", np.zeros((64, 64, 3), np.uint8))
    fp = fingerprint(lgg_replica, progress=False)
    assert [(p["kind"], Path(p["file"]).name) for p in fp["problems"]] == [("duplicate case", f"{src}_1.tif")]
    assert "TCGA_XX_1009" in fp["problems"][0]["detail"]


def test_percentile_rule_goes_through_read_image(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for k in range(3):
        arr = rng.integers(100, 4000, (20, 24)).astype(np.uint16)
        tifffile.imwrite(tmp_path / f"{k}.tif", arr)
        tifffile.imwrite(tmp_path / f"{k}_mask.tif", (arr > 3000).astype(np.uint8))
        items.append(Item(tmp_path / f"{k}.tif", (tmp_path / f"{k}_mask.tif",), str(k)))
    ds = DataSet(tmp_path, "folder", 1, items, intensity={"mode": "percentile", "low": 0.5, "high": 99.5})
    fp = fingerprint(ds, progress=False)
    u = fp["intensity_unit"][0]
    assert u["min"] == 0 and u["max"] == 1 and 0.4 < u["p50"] < 0.6
    assert fp["intensity_raw"][0]["max"] < 4000 and fp["dtypes"] == {"uint16": 3}
    assert fp["mask_values"]["values"] == [0, 1] and fp["problems"] == []


def _body_p99(slices: list[np.ndarray]) -> np.ndarray:
    """Per channel: the 99th percentile of a case's body pixels (channel mean above 5% of its 99.9th
    percentile), on the [0, 1] values of its H x W x 3 uint8 slices, written out here with numpy alone."""
    x = np.concatenate([s.reshape(-1, 3) for s in slices]).astype(np.float64) / 255
    level = x.mean(1)
    return np.percentile(x[level > 0.05 * np.percentile(level, 99.9)], 99, axis=0)


def test_case_intensity_spread_is_reported_and_warned(lgg_replica, capsys):
    fp = fingerprint(lgg_replica, progress=False)
    assert fp["problems"] == [] and set(fp["case_intensity"]) == set(fp["channel_names"])
    assert all(r["cases"] == 3 and r["ratio_90_10"] < 1.2 for r in fp["case_intensity"].values())

    case = "TCGA_XX_1001_20010101"  # one patient's whole stack at 0.3x the intensity (another scanner)
    for f in (lgg_replica / case).glob("*.tif"):
        if "_mask" not in f.name:
            tifffile.imwrite(f, np.round(tifffile.imread(f) * 0.3).astype(np.uint8))
    per_case = np.array([_body_p99([tifffile.imread(f) for f in d.glob("*.tif") if "_mask" not in f.name])
                         for d in sorted(lgg_replica.iterdir())])
    fp = fingerprint(lgg_replica, progress=False)
    for c, name in enumerate(fp["channel_names"]):
        r, v = fp["case_intensity"][name], per_case[:, c]
        assert r["min"] == pytest.approx(v.min(), rel=1e-4) and r["max"] == pytest.approx(v.max(), rel=1e-4)
        assert r["ratio_max_min"] == pytest.approx(v.max() / v.min(), rel=1e-4)
        assert r["ratio_90_10"] == pytest.approx(np.percentile(v, 90) / np.percentile(v, 10), rel=1e-4)
        assert 2.0 < r["ratio_90_10"] and 3.0 < r["ratio_max_min"] < 3.7  # ~1 / 0.3
    found = [p for p in fp["problems"] if p["kind"] == "intensity spread"]
    assert len(found) == len(fp["problems"]) == 3 and all("intensity_norm=case or median" in p["detail"] for p in found)

    rc, out, _ = run_cli(["inspect", str(lgg_replica)], capsys)
    assert rc == 0 and "case p99 (body)" in out and "3 problem(s) found" in out


def test_case_intensity_not_applicable_to_a_ct_window(tmp_path):
    rng = np.random.default_rng(3)
    items = []
    for k, scale in enumerate((1.0, 0.3, 1.0)):
        tifffile.imwrite(tmp_path / f"{k}.tif", (rng.integers(0, 400, (20, 24)) * scale).astype(np.int16))
        tifffile.imwrite(tmp_path / f"{k}_mask.tif", np.zeros((20, 24), np.uint8))
        items.append(Item(tmp_path / f"{k}.tif", (tmp_path / f"{k}_mask.tif",), str(k)))
    ds = DataSet(tmp_path, "folder", 1, items, intensity={"mode": "window", "low": -100, "high": 400})
    fp = fingerprint(ds, progress=False)
    assert fp["case_intensity"] == {"image": {"note": "HU scale, not applicable"}} and fp["problems"] == []
