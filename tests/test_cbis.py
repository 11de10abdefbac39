"""CBIS-DDSM masses: real CSV rows with small DICOM replicas at the paths they name, and the real CSVs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medseg.adapters import cbis, load_dataset
from medseg.data.arrays import read_item
from medseg.errors import MedsegError
from medseg.io.images import read_mask

from conftest import need
from replica_cbis import CSV_DIR, CROP_SIZE, SAMPLE, source_rows, write_cbis_replica, write_dicom

PREP = {"channels": 1, "intensity": {"mode": "percentile", "low": 0.5, "high": 99.5}}


@pytest.fixture
def replica(tmp_path) -> Path:
    return write_cbis_replica(tmp_path / "cbis")


def _item(ds, case):
    return next(it for it in ds.items if it.case == case)


def _abnormality(root: Path, patient: str, view: str, id_: int) -> cbis.Abnormality:
    mam = next(m for m in cbis.parse(root) if m.patient == patient and m.first.view == view)
    return next(a for a in mam.abnormalities if a.id == id_)


def test_layout_items_and_ids(replica):
    ds = load_dataset(replica)
    assert (ds.layout, ds.channels, ds.unit, ds.stratify_key, ds.target) == ("cbis", 1, "case", "pathology", "mass")
    assert load_dataset(replica, target="mass").target == "mass"
    with pytest.raises(MedsegError, match="target 'calcification' is not supported"):
        load_dataset(replica, target="calcification")
    assert ds.keep_aspect and ds.intensity == {"mode": "percentile", "low": 0.5, "high": 99.5}
    # 7 rows -> 6 mammograms of 5 patients: the split unit is the patient, the metric unit the mammogram
    assert sorted(it.case for it in ds.items) == ["P_00001_LEFT_CC", "P_00001_LEFT_MLO", "P_00004_LEFT_CC",
                                                  "P_00016_LEFT_CC", "P_00059_LEFT_CC", "P_00419_LEFT_CC"]
    assert ds.patients == ["P_00001", "P_00004", "P_00016", "P_00059", "P_00419"]
    assert {it.patient for it in ds.items if it.case.startswith("P_00001_")} == {"P_00001"}
    assert {it.meta["subset"] for it in ds.items} == {"train", "test"}
    assert _item(ds, "P_00016_LEFT_CC").meta["subset"] == "test"
    for it in ds.items:  # 16-bit mammogram -> [0, 1] by percentiles; every mask non-empty, at the image's size
        img, mask = read_item(it, PREP)
        assert img.shape[0] == 1 and img.shape[1] > img.shape[2] and 0 <= img.min() < img.max() <= 1
        assert mask.shape == img.shape[1:] and mask.any()
        assert all(Path(m).is_file() for m in it.masks)


def test_two_abnormalities_are_merged(replica):
    it = _item(load_dataset(replica), "P_00419_LEFT_CC")
    assert len(it.masks) == 2
    assert it.meta["pathology"] == "BENIGN+MALIGNANT" and it.meta["mass_shape"] == "NA+OVAL"
    assert it.meta["assessment"] == "3+5" and it.meta["subtlety"] == "5"
    lesions = it.meta["abnormalities"]
    assert [(a["id"], a["pathology"], a["mass_shape"]) for a in lesions] == [(1, "BENIGN", "OVAL"),
                                                                             (2, "MALIGNANT", "NA")]
    assert [a["mask"] for a in lesions] == [str(m) for m in it.masks]
    _, union = read_item(it, PREP)
    first, second = (read_mask([Path(a["mask"])], union.shape) for a in lesions)
    assert first.any() and second.any() and not (first & second).any()
    assert np.array_equal(union, first | second)


def test_swapped_mask_and_cropped_paths(replica):
    ds = load_dataset(replica)
    row = _abnormality(replica, "P_00004", "CC", 1)
    it = _item(ds, "P_00004_LEFT_CC")
    assert it.masks == (replica / row.cropped,)  # the replica wrote the mask at the cropped image's path
    assert _item(ds, "P_00001_LEFT_CC").masks == (replica / _abnormality(replica, "P_00001", "CC", 1).mask,)
    assert len(ds.problems) == 1 and ds.problems[0].startswith("1 row(s)")
    _, mask = read_item(it, PREP)
    assert 0 < mask.sum() < mask.size / 4


def test_mask_of_neither_size(replica):
    row = _abnormality(replica, "P_00001", "CC", 1)
    write_dicom(replica / row.mask, np.zeros((30, 30), np.uint8), "x")
    with pytest.raises(MedsegError) as e:
        load_dataset(replica)
    msg = str(e.value)
    assert e.value.path == str(replica / row.mask) and "\n" not in msg
    assert "mass_case_description_train_set.csv line 2" in msg
    assert "30x30" in msg and f"{CROP_SIZE[1]}x{CROP_SIZE[0]}" in msg and "64x96" in msg


@pytest.mark.parametrize("column", ["image", "mask"])
def test_missing_file_names_path_and_line(replica, column):
    row = _abnormality(replica, "P_00059", "CC", 1)
    (replica / getattr(row, column)).unlink()
    with pytest.raises(MedsegError) as e:
        load_dataset(replica)
    assert e.value.path == str(replica / getattr(row, column))
    assert row.line == 8 and "mass_case_description_train_set.csv line 8" in str(e.value)


def test_bad_csvs(replica):
    train = replica / "mass_case_description_train_set.csv"
    with train.open(newline="") as f:
        table = list(csv.reader(f))
    drop = [table[0].index("pathology"), table[0].index("ROI mask file path")]
    with train.open("w", newline="") as f:
        csv.writer(f).writerows([[v for i, v in enumerate(r) if i not in drop] for r in table])
    with pytest.raises(MedsegError, match="missing column\\(s\\) pathology, ROI mask file path") as e:
        load_dataset(replica)
    assert e.value.path == str(train)
    train.write_text("")
    with pytest.raises(MedsegError, match="empty CSV") as e:
        load_dataset(replica)
    assert e.value.path == str(train)
    train.write_text(",".join(table[0]) + "\r\n")
    with pytest.raises(MedsegError, match="a header but no rows"):
        load_dataset(replica)


def test_truncated_dicoms(replica):
    ds = load_dataset(replica)
    it = _item(ds, "P_00059_LEFT_CC")
    whole = it.image.read_bytes()
    it.image.write_bytes(whole[: len(whole) - 500])  # header intact, pixel data cut: fails when read
    with pytest.raises(MedsegError, match="cannot read DICOM") as e:
        read_item(it, PREP)
    assert e.value.path == str(it.image)
    it.image.write_bytes(whole[:100])  # cut inside the preamble: fails when the header is read
    with pytest.raises(MedsegError, match="cannot read DICOM") as e:
        load_dataset(replica)
    assert e.value.path == str(it.image)


def test_tcia_subfolder_and_renamed_files(tmp_path):
    root = write_cbis_replica(tmp_path / "cbis", under="CBIS-DDSM")
    assert [it.case for it in load_dataset(root).items] == [it.case for it in cbis.load(root).items]
    assert all("CBIS-DDSM" in str(it.image) for it in load_dataset(root).items)
    # NBIA Data Retriever names: other inner folders, files 1-1.dcm, 1-2.dcm; found below the top folder
    for top in (root / "CBIS-DDSM").iterdir():
        files = sorted(top.rglob("*.dcm"))
        for n, f in enumerate(files, 1):
            dest = top / "07-20-2016-DDSM-74994" / f"{n}.000000-images-{n}" / f"1-{n}.dcm"
            dest.parent.mkdir(parents=True, exist_ok=True)
            f.rename(dest)
    ds = load_dataset(root)
    assert len(ds.items) == 6 and all(Path(m).name.startswith("1-") for it in ds.items for m in it.masks)
    for it in ds.items:
        _, mask = read_item(it, PREP)
        assert mask.any()


def test_real_csvs_parse():
    real = need(CSV_DIR)
    mams = cbis.parse(real)
    rows, images, patients, cases = 0, set(), set(), set()
    for name in ("mass_case_description_train_set.csv", "mass_case_description_test_set.csv"):
        with (real / name).open(newline="") as f:
            for r in csv.DictReader(f):
                rows += 1
                images.add(r["image file path"].strip())
                patients.add(r["patient_id"])
                cases.add((r["patient_id"], r["left or right breast"], r["image view"]))
    assert (rows, len(images), len(patients)) == (1318 + 378, 1231 + 361, 691 + 201)
    assert sum(len(m.abnormalities) for m in mams) == rows
    assert {m.image for m in mams} == images and len(mams) == len(images) == len(cases)
    assert {m.patient for m in mams} == patients
    assert all(not p.endswith(("\n", " ")) for m in mams for a in m.abnormalities for p in (a.image, a.mask, a.cropped))
    multi = [m for m in mams if len(m.abnormalities) > 1]
    assert len(multi) == 58 + 13 and {m.joined("pathology") for m in multi} >= {"BENIGN+MALIGNANT"}
    # detected as cbis; without the DICOMs the first row's image is named, with its CSV line
    with pytest.raises(MedsegError, match="image file path of mass_case_description_train_set.csv line 2 not found"):
        load_dataset(real)


def test_embedded_sample_is_real():
    need(CSV_DIR)
    for subset, sample in SAMPLE.items():
        header, table = source_rows(subset, CSV_DIR)
        assert header == source_rows(subset, Path("/nonexistent"))[0]
        assert all(r in table for r in sample), f"SAMPLE[{subset!r}] has rows that are not in the real CSV"


def test_smoke_train_and_evaluate(replica, tmp_path):
    from medseg.evaluation.evaluate import evaluate
    from runs import train
    out = tmp_path / "run"
    train(replica, out, epochs=1, image_size=64, batch_size=2, val_fraction=0.5, quiet=True)
    assert (out / "best" / "model.safetensors").is_file()
    m = evaluate(out, quiet=True)
    assert m["layout"] == "cbis" and m["n_cases"] >= 2 and m["n_lesion_cases"] == m["n_cases"]
    with (out / "eval" / "cases.csv").open() as f:
        assert {r["case"] for r in csv.DictReader(f)} <= {it.case for it in load_dataset(replica).items}
