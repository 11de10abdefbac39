"""Adapters read each layout as published: replicas written here, and the real data where present."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.adapters import adapters, load_dataset
from medseg.errors import MedsegError
from medseg.io.images import read_image, read_mask

from conftest import write_lgg_replica


def test_registry_lists_layouts():
    assert {"lgg", "busi", "folder"} <= set(adapters())


@pytest.mark.parametrize("compress", [False, True])
def test_lgg_replica_numeric_order_and_patient_ids(tmp_path, compress):
    root = write_lgg_replica(tmp_path / "kaggle_3m", patients=2, slices=12, compress=compress)
    ds = load_dataset(root)
    assert ds.layout == "lgg" and ds.channels == 3 and ds.unit == "patient"
    assert ds.patients == ["TCGA_XX_1000", "TCGA_XX_1001"]
    first = [it.index for it in ds.items if it.patient == "TCGA_XX_1000"]
    assert first == list(range(1, 13))  # 1, 2, ..., 10, 11, 12: not 1, 10, 11, 12, 2
    img = read_image(ds.items[0].image, 3)
    assert img.shape == (3, 64, 64) and img.dtype == np.float32 and 0 <= img.min() <= img.max() <= 1


def test_busi_replica_union_and_mask_encodings(busi_replica):
    ds = load_dataset(busi_replica)
    assert ds.layout == "busi" and ds.channels == 1 and ds.stratify_key == "class"
    assert len(ds.items) == 9
    assert {it.meta["class"] for it in ds.items} == {"benign", "malignant", "normal"}
    one = next(it for it in ds.items if it.patient == "benign (1)")
    assert len(one.masks) == 2
    union = read_mask(list(one.masks), (45, 52))
    single = read_mask([one.masks[0]], (45, 52))
    assert union.sum() > single.sum() and union[6, 6] and not single[6, 6]
    for it in ds.items:  # 1-bit, 8-bit and RGB masks all read as the same kind of bool mask
        m = read_mask(list(it.masks), (45, 52))
        assert m.dtype == bool and (m.any() == (it.meta["class"] != "normal"))


def test_real_lgg(lgg_real):
    ds = load_dataset(lgg_real)
    assert ds.layout == "lgg" and len(ds.patients) == 30 and len(ds.items) == 912
    assert all("_" in p and not p[-8:].isdigit() for p in ds.patients)
    assert ds.items[0].meta.get("age_at_initial_pathologic")  # data.csv joined on the patient id


def test_real_busi(busi_real):
    ds = load_dataset(busi_real)
    classes = [it.meta["class"] for it in ds.items]
    assert (classes.count("benign"), classes.count("malignant"), classes.count("normal")) == (79, 38, 24)
    multi = [it for it in ds.items if len(it.masks) > 1]
    assert multi, "the dev set has images with several lesion masks"


def test_format_override_and_unknown_format(busi_replica):
    assert load_dataset(busi_replica, "busi").layout == "busi"
    with pytest.raises(MedsegError, match="unknown format"):
        load_dataset(busi_replica, "nope")


def test_a_download_wrapped_in_a_folder_is_read_as_its_layout_not_as_generic_folders(tmp_path):
    """`lgg-mri-segmentation/kaggle_3m/...` given one level too high: read as LGG (split by patient), never
    as the generic folder layout, which would make every slice a case and split slices of one patient."""
    from medseg.adapters import load_dataset
    from conftest import write_busi_replica, write_lgg_replica
    write_lgg_replica(tmp_path / "lgg-mri-segmentation" / "kaggle_3m", patients=2, slices=3)
    ds = load_dataset(tmp_path / "lgg-mri-segmentation")
    assert ds.layout == "lgg" and ds.root.name == "kaggle_3m" and len(ds.patients) == 2
    write_busi_replica(tmp_path / "busi" / "inner" / "Dataset_BUSI_with_GT", per_class=1)
    assert load_dataset(tmp_path / "busi").layout == "busi"  # two wrapper levels
    (tmp_path / "lgg-mri-segmentation" / "other").mkdir()  # two sub-folders: nothing is guessed
    assert load_dataset(tmp_path / "lgg-mri-segmentation").layout == "folder"
