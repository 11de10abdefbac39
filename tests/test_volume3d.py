"""The 3D U-Net path: class-balanced patch centres, cropping at the edges, patch training with exact
resume, sliding-window validation/evaluation/prediction back in the input's geometry, and clear errors
where a 3D model meets 2D images."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.adapters import Item
from medseg.data.arrays import Arrays
from medseg.evaluation.evaluate import evaluate
from runs import train
from medseg.data.volumes import crop, sample_patches, to_volumes

from conftest import run_cli, write_busi_replica, write_lgg_replica
from replica_nifti import write_msd_replica
from test_train_engine import assert_clean, assert_same_weights, sigint_at

TINY3D = {"model": "unet3d", "model_args": {"features": [4, 8, 16], "res_units": 1, "norm": "instance"},
          "patch_size": [8, 16, 16]}
KW = dict(image_size=32, batch_size=2, val_fraction=0.34, quiet=True)


def _volumes(fg_voxels: list[int], depth: int = 6, size: int = 16):
    """Arrays of len(fg_voxels) cases, case c with fg_voxels[c] foreground voxels in its first slices."""
    items, images, masks = [], [], []
    for c, n_fg in enumerate(fg_voxels):
        for z in range(depth):
            items.append(Item(image=f"c{c}_{z}.png", masks=(), patient=f"c{c}", case=f"c{c}", index=depth - 1 - z))
            m = np.zeros((1, size, size), np.uint8)
            left = max(0, n_fg - (depth - 1 - z) * size * size)
            m.reshape(-1)[:min(left, size * size)] = 1
            masks.append(m)
            images.append(np.full((1, size, size), z, np.uint8))  # slice z holds the value z
    arr = Arrays(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)), items)
    return to_volumes(arr)


def test_volumes_follow_slice_index_and_centres_are_class_balanced():
    vols = _volumes([5, 0, 40])
    # items were listed in reverse index order; the volume is in index order (value = 5 - index)
    assert [int(v) for v in vols.images[0][0, :, 0, 0]] == [5, 4, 3, 2, 1, 0]
    rng = np.random.default_rng(0)
    centres = sample_patches(vols, 4000, 1.0, rng)
    on_fg = [bool(vols.masks[c][0, z, y, x]) for c, z, y, x in centres]
    with_fg = [c in (0, 2) for c in centres[:, 0]]
    assert on_fg == with_fg  # every draw in a case with foreground is centred on it; none can be in case 1
    centres = sample_patches(vols, 4000, 0.5, np.random.default_rng(1))
    share = np.mean([bool(vols.masks[c][0, z, y, x]) for c, z, y, x in centres if c != 1])
    assert 0.45 < share < 0.55  # ~0.5 + the tiny chance of a uniform draw landing on 5 or 40 of 1536 voxels
    again = sample_patches(vols, 4000, 0.5, np.random.default_rng(1))
    assert np.array_equal(centres, again)


def test_crop_pads_with_zeros_beyond_the_edges():
    vol = torch.arange(1, 1 + 4 * 5 * 6, dtype=torch.int32).reshape(1, 4, 5, 6)
    inner = crop(vol, (2, 2, 3), (2, 3, 4))
    assert torch.equal(inner, vol[:, 1:3, 1:4, 1:5])
    corner = crop(vol, (0, 0, 0), (4, 4, 4))
    assert torch.equal(corner[:, 2:, 2:, 2:], vol[:, :2, :2, :2]) and int(corner[:, :2].abs().sum()) == 0


@pytest.fixture(scope="module")
def msd(tmp_path_factory):
    return write_msd_replica(tmp_path_factory.mktemp("msd") / "Task03_Liver", cases=3, slices=12, size=32)


def test_3d_training_resumes_exactly_mid_epoch(tmp_path, msd):
    settings = {**TINY3D, "time_budget_s": None}
    train(msd, tmp_path / "straight", epochs=3, settings=settings, **KW)

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt, match="--resume"):
        train(msd, cut, epochs=3, settings=settings, callback=sigint_at(2, 3), **KW)
    assert_clean(cut)
    train(resume=cut, quiet=True)
    assert_same_weights(tmp_path / "straight", cut)
    plan = json.loads((cut / "plan.json").read_text())
    assert plan["neighbours"] == 0 and plan["augmentation"] == "3d"  # 3D: no 2.5D channels, the 3D aug set


def test_3d_run_learns_evaluates_and_predicts_in_the_input_geometry(tmp_path, msd):
    run = tmp_path / "run"
    settings = {**TINY3D, "lr": 1e-2, "schedule": "constant", "warmup": 0.0, "time_budget_s": None}
    summary = train(msd, run, epochs=12, settings=settings, **KW)
    # the replica's disc (label 1 + 2, foreground) is easy: a learning 3D model finds it in the held-out case
    assert summary["best_val_dice"] > 0.5, summary
    result = evaluate(run, quiet=True)
    assert result["n_cases"] == 1 and result["dice"]["mean"] > 0.5, result["dice"]
    assert result["tta"] is False  # by default a 3D model predicts once: flips would triple the sliding windows
    image = sorted((msd / "imagesTr").glob("[!.]*.nii.gz"))[0]
    out = tmp_path / "pred"
    assert run_cli("predict", str(run), str(image), "--out", str(out)) == 0
    written = nib.load(str(out / image.name))
    source = nib.load(str(image))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert 0 < int(np.asarray(written.dataobj).sum()) < np.prod(source.shape)


def test_3d_model_on_2d_images_is_one_clear_error(tmp_path, capsys):
    busi = write_busi_replica(tmp_path / "Dataset_BUSI_with_GT", per_class=2)
    assert run_cli("train", str(busi), "--out", str(tmp_path / "r"), "--set", "model=unet3d", "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "3D model" in err and "2D images" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "best").exists()


def test_a_3d_run_takes_stacks_not_single_2d_arrays(tmp_path):
    """The CLI groups a unit-patient run's images into stacks (one stack per folder), the Python API takes one
    2D array as a stack of one slice; only the 2D batch entry point refuses, saying what a 3D model takes."""
    import medseg
    from medseg.errors import MedsegError

    lgg = write_lgg_replica(tmp_path / "kaggle_3m", patients=2, slices=8)
    run = tmp_path / "run"
    train(lgg, run, epochs=1, settings={**TINY3D, "time_budget_s": None}, **{**KW, "val_fraction": 0.5})
    folder = sorted(p for p in lgg.iterdir() if p.is_dir())[0]
    assert run_cli("predict", str(run), str(folder), "--out", str(tmp_path / "out")) == 0
    assert len(list((tmp_path / "out").rglob("*.png"))) == 8
    model = medseg.load(run)
    assert model.predict(np.zeros((3, 64, 64), np.float32)).mask.shape == (64, 64)  # a stack of one slice
    with pytest.raises(MedsegError, match="is 3D"):
        model.predictor.probabilities_batch(np.zeros((2, 3, 64, 64), np.float32))
