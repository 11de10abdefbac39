"""Generic 2D folder adapter: `<stem>_mask` side by side and `images/` + `masks/`, mixed extensions,
label-map masks picked by value, the errors naming the file, and that published layouts still win."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg.adapters import folder, load_dataset
from medseg.data.arrays import read_item
from medseg.errors import MedsegError
from medseg.io.images import read_mask

from conftest import blob, write_busi_replica, write_lgg_replica
from replica_nifti import write_pair_replica

H, W = 40, 48


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, arr)
    else:
        Image.fromarray(arr).save(path)
    return path


def _pair(n: int, labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(grey uint8 image, uint8 mask): 0/255, or with `labels` 0/1/2 (a disc with a smaller one inside)."""
    outer, inner = blob(H, W, H / 2, W / 2, 10 + n), blob(H, W, H / 2, W / 2, 5)
    img = (np.random.default_rng(n).integers(20, 80, (H, W)) + 120 * outer).astype(np.uint8)
    mask = (outer.astype(np.uint8) + inner) if labels else (outer * 255).astype(np.uint8)
    return img, mask


def write_side_by_side(root):
    exts = [(".png", ".png"), (".jpg", ".png"), (".tif", ".tif"), (".bmp", ".png")]
    for n, (ie, me) in enumerate(exts):
        img, mask = _pair(n)
        sub = root / ("a" if n % 2 else "b")
        _save(sub / f"case{n}{ie}", img)
        _save(sub / f"case{n}_mask{me}", mask)
    _save(root / "b" / "case0_mask_1.png", (blob(H, W, 5, 5, 4) * 255).astype(np.uint8))  # second lesion
    return root


def write_images_masks(root, masks="masks", labels=False, n=4, mask_suffix=""):
    exts = [(".png", ".png"), (".jpg", ".png"), (".tif", ".tif"), (".bmp", ".bmp")]
    for i in range(n):
        ie, me = exts[i % 4]
        img, mask = _pair(i, labels)
        sub = "" if i < 2 else "more/"
        _save(root / "images" / f"{sub}img_{i}{ie}", img)
        _save(root / masks / f"{sub}img_{i}{mask_suffix}{me}", mask)
    return root


def test_side_by_side_layout(tmp_path):
    root = write_side_by_side(tmp_path / "data")
    ds = load_dataset(root)
    assert ds.layout == "folder" and ds.channels == 1 and ds.unit == "case"
    assert ds.target == "foreground" and ds.target_values == ()
    assert [it.case for it in ds.items] == ["a/case1", "a/case3", "b/case0", "b/case2"]
    by = {it.case: it for it in ds.items}
    assert by["a/case1"].image.suffix == ".jpg" and by["a/case1"].masks[0].suffix == ".png"
    assert [m.name for m in by["b/case0"].masks] == ["case0_mask.png", "case0_mask_1.png"]
    img, mask = read_item(by["b/case0"], {"channels": 1, "intensity": {"mode": "range"}})
    assert img.shape == (1, H, W)
    np.testing.assert_array_equal(mask, blob(H, W, H / 2, W / 2, 10) | blob(H, W, 5, 5, 4))  # the union


@pytest.mark.parametrize("masks, mask_suffix", [("masks", ""), ("labels", ""), ("masks", "_mask")])
def test_images_masks_layout(tmp_path, masks, mask_suffix):
    root = write_images_masks(tmp_path / "kvasir", masks, mask_suffix=mask_suffix)
    ds = load_dataset(root)
    assert ds.layout == "folder" and ds.target_values == ()
    assert [it.case for it in ds.items] == ["img_0", "img_1", "more/img_2", "more/img_3"]
    it = ds.items[1]
    assert it.image == root / "images" / "img_1.jpg" and it.masks == (root / masks / f"img_1{mask_suffix}.png",)
    for i, it in enumerate(ds.items):
        _, mask = read_item(it, {"channels": 1, "intensity": {"mode": "range"}})
        np.testing.assert_array_equal(mask, blob(H, W, H / 2, W / 2, 10 + i))


def test_label_map_masks_by_value(tmp_path):
    root = write_images_masks(tmp_path / "data", labels=True)
    assert [c["value"] for c in load_dataset(root).classes] == [1, 2]  # by default each label its own class
    ds = load_dataset(root, target="foreground")
    assert ds.target == "foreground" and ds.target_values == (1, 2)  # every label, not the top one only
    it = ds.items[0]
    _, lab = _pair(0, labels=True)
    np.testing.assert_array_equal(read_mask(list(it.masks), (H, W), ds.target_values), lab > 0)
    two = load_dataset(root, target="2")
    assert two.target == "2" and two.target_values == (2,)
    np.testing.assert_array_equal(read_item(two.items[0], {"channels": 1, "target_values": (2,)})[1], lab == 2)
    with pytest.raises(MedsegError, match="no mask value 7; values found: 1, 2"):
        load_dataset(root, target="7")
    with pytest.raises(MedsegError, match="mask value \\(an integer\\), got 'tumour'"):
        load_dataset(root, target="tumour")


def test_rare_label_outside_the_sample_is_found(tmp_path, monkeypatch):
    root = write_images_masks(tmp_path / "data", labels=True, n=6)
    rare = root / "masks" / "more" / "img_2.tif"  # not among the 2 sampled (first and last)
    arr = tifffile.imread(rare)
    arr[:3, :3] = 3
    tifffile.imwrite(rare, arr)
    monkeypatch.setattr(folder, "SAMPLE", 2)
    assert load_dataset(root, target="foreground").target_values == (1, 2, 3)
    assert [c["value"] for c in load_dataset(root).classes] == [1, 2, 3]
    assert load_dataset(root, target="3").target_values == (3,)


def test_binary_masks_and_value_target(tmp_path):
    root = write_images_masks(tmp_path / "data")
    assert load_dataset(root, target="255").target_values == (255,)
    with pytest.raises(MedsegError, match="no mask value 1; values found: 255"):
        load_dataset(root, target="1")


def test_jpeg_masks_are_binary(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        img, mask = _pair(i)
        _save(root / "images" / f"x{i}.jpg", img)
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask).save(root / "masks" / f"x{i}.jpg", quality=70)
    values = np.unique(np.asarray(Image.open(root / "masks" / "x0.jpg")))
    assert 2 < len(values)  # compression noise: many grey levels, yet no label map
    ds = load_dataset(root)
    assert ds.target_values == ()
    _, mask = read_item(ds.items[0], {"channels": 1})
    assert (mask ^ blob(H, W, H / 2, W / 2, 10)).sum() < 10


def _no_mask_side(root):
    (root / "a" / "case3_mask.png").unlink()
    return root / "a" / "case3.bmp", "image has no mask (expected case3_mask.bmp)"


def _orphan_side(root):
    (root / "b" / "case2.tif").unlink()
    return root / "b" / "case2_mask.tif", "mask has no image"


def _duplicate_side(root):
    _save(root / "a" / "case1.png", _pair(1)[0])
    return root / "a" / "case1.png", "duplicate image: case1.jpg"


def _no_mask_pair(root):
    (root / "masks" / "more" / "img_2.tif").unlink()
    return root / "images" / "more" / "img_2.tif", "image has no mask (expected masks/more/img_2."


def _orphan_pair(root):
    (root / "images" / "img_1.jpg").unlink()
    return root / "masks" / "img_1.png", "mask has no image (expected images/img_1."


def _duplicate_pair_image(root):
    _save(root / "images" / "img_0.tif", _pair(0)[0])
    return root / "images" / "img_0.tif", "duplicate image: img_0.png"


def _duplicate_pair_mask(root):
    _save(root / "masks" / "img_0.bmp", _pair(0)[1])
    return root / "masks" / "img_0.png", "duplicate mask: img_0.bmp"


@pytest.mark.parametrize("layout, breaker", [("side", _no_mask_side), ("side", _orphan_side), ("side", _duplicate_side),
                                             ("pair", _no_mask_pair), ("pair", _orphan_pair),
                                             ("pair", _duplicate_pair_image), ("pair", _duplicate_pair_mask)])
def test_errors_name_the_file(tmp_path, layout, breaker):
    root = write_side_by_side(tmp_path / "d") if layout == "side" else write_images_masks(tmp_path / "d")
    bad, problem = breaker(root)
    with pytest.raises(MedsegError) as e:
        load_dataset(root)
    assert str(e.value).startswith(f"{bad}: ") and problem in str(e.value), str(e.value)


def test_published_layouts_still_win(tmp_path):
    assert load_dataset(write_busi_replica(tmp_path / "Dataset_BUSI_with_GT")).layout == "busi"
    assert load_dataset(write_lgg_replica(tmp_path / "kaggle_3m", patients=2, slices=3)).layout == "lgg"
    assert load_dataset(write_pair_replica(tmp_path / "vol", ext=".nii.gz")).layout == "nifti"
    assert folder.detect(write_images_masks(tmp_path / "flat"))
    assert not folder.detect(tmp_path / "vol")  # volumes in images/ are not 2D images


@pytest.mark.parametrize("paired", [False, True])
def test_per_patient_folders_are_one_split_unit_and_class_folders_are_not(tmp_path, paired):
    """12 patient folders of 3 slices each: every patient's slices land on one side of the split, each image
    is still its own metric case. 2 class folders of many images: split by image, as before."""
    from medseg.planning.planner import make_plan

    def write(root, folders, per):
        for f in range(folders):
            for s in range(per):
                img, mask = _pair(f * per + s)
                name = f"f{f:02d}/slice_{s}.png"
                if paired:
                    _save(root / "images" / name, img)
                    _save(root / "masks" / name, mask)
                else:
                    _save(root / name, img)
                    _save(root / name.replace(".png", "_mask.png"), mask)
        return root

    ds = load_dataset(write(tmp_path / "patients", 12, 3))
    assert ds.layout == "folder" and len({it.patient for it in ds.items}) == 12
    assert len({it.case for it in ds.items}) == 36 and ds.items[0].patient == "f00"
    split = make_plan(ds).split
    assert set(split["train"]).isdisjoint(split["val"]) and len(split["train"]) + len(split["val"]) == 12
    ds = load_dataset(write(tmp_path / "classes", 2, 12))
    assert len({it.patient for it in ds.items}) == 24
