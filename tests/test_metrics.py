"""Per-slice counts summed per patient give the 3D Dice that MONAI computes on the stacked volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_iou

from medseg.evaluation import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_summed_counts_equal_monai_3d_dice(seed):
    rng = np.random.default_rng(seed)
    gt = rng.random((7, 20, 24)) > 0.7
    pred = gt ^ (rng.random(gt.shape) > 0.85)
    total = {}
    for g, p in zip(gt, pred):
        total = metrics.add(total, metrics.counts(p, g))
    ours = metrics.scores(total)
    to_t = lambda a: torch.from_numpy(a[None, None].astype(np.float32))  # noqa: E731
    assert ours["dice"] == pytest.approx(float(compute_dice(to_t(pred), to_t(gt))), abs=1e-6)
    assert ours["iou"] == pytest.approx(float(compute_iou(to_t(pred), to_t(gt))), abs=1e-6)


def test_empty_mask_conventions():
    empty = np.zeros((4, 4), bool)
    full = np.ones((4, 4), bool)
    assert metrics.scores(metrics.counts(empty, empty))["dice"] == 1.0
    assert metrics.scores(metrics.counts(full, empty))["dice"] == 0.0
    assert metrics.scores(metrics.counts(empty, full))["dice"] == 0.0


def test_summary_statistics():
    s = metrics.summarize([0.0, 0.5, 1.0, 1.0])
    assert s["n"] == 4 and s["mean"] == pytest.approx(0.625) and s["median"] == pytest.approx(0.75)
    assert s["ci95_low"] <= s["mean"] <= s["ci95_high"]
    assert metrics.summarize([]) == {"n": 0, "n_nan": 0}
    with_nan = metrics.summarize([0.5, float("nan"), 1.0])
    assert with_nan["n"] == 2 and with_nan["n_nan"] == 1 and with_nan["mean"] == pytest.approx(0.75)


def test_soft_overlap_equals_hard_on_binary_maps_and_adds_over_slices():
    rng = np.random.default_rng(0)
    gt = rng.random((2, 16, 16)) > 0.6
    pred = rng.random((2, 16, 16)) > 0.5
    soft = metrics.soft_scores(metrics.add(metrics.soft_counts(pred[0], gt[0]), metrics.soft_counts(pred[1], gt[1])))
    hard = metrics.scores(metrics.counts(pred, gt))
    assert soft["soft_dice"] == pytest.approx(hard["dice"]) and soft["soft_iou"] == pytest.approx(hard["iou"])
    half = metrics.soft_scores(metrics.soft_counts(np.full((4, 4), 0.5), np.ones((4, 4), bool)))
    assert half["soft_iou"] == pytest.approx(0.5) and half["soft_dice"] == pytest.approx(2 / 3)
    assert metrics.soft_scores(metrics.soft_counts(np.zeros((2, 2)), np.zeros((2, 2), bool)))["soft_iou"] == 1.0


def _points(shape, *coords):
    a = np.zeros(shape, bool)
    for c in coords:
        a[c] = True
    return a


def test_surface_distances_by_hand_with_anisotropic_spacing():
    # two single pixels 3 rows apart: every surface point is 3 rows from the other surface
    gt, pred = _points((12, 12), (5, 5)), _points((12, 12), (8, 5))
    assert metrics.surface(pred, gt, (1.0, 1.0)) == pytest.approx({"hd95": 3.0, "asd": 3.0})
    assert metrics.surface(pred, gt, (2.0, 0.5)) == pytest.approx({"hd95": 6.0, "asd": 6.0})
    # the same shift along the other axis is short under that spacing
    assert metrics.surface(_points((12, 12), (5, 8)), gt, (2.0, 0.5)) == pytest.approx({"hd95": 1.5, "asd": 1.5})
    # two parallel lines, 3 slices apart in 3D with thick slices: 3 x 3.0 mm
    gt3 = np.zeros((8, 10, 10), bool)
    gt3[1, 2, 2:8] = True
    pred3 = np.zeros_like(gt3)
    pred3[4, 2, 2:8] = True
    assert metrics.surface(pred3, gt3, (3.0, 0.5, 0.5)) == pytest.approx({"hd95": 9.0, "asd": 9.0})
    # one extra far pixel: ASD by hand. gt surface = line of 6 points at distance 9 (the extra point is
    # farther); pred surface = 6 points at 9 mm + 1 point at 5 slices x 3.0 = 15 mm from the line's end
    pred3[6, 2, 7] = True
    asd = (6 * 9.0 + 6 * 9.0 + 15.0) / 13
    assert metrics.surface(pred3, gt3, (3.0, 0.5, 0.5))["asd"] == pytest.approx(asd)


def test_surface_empty_conventions():
    empty, one = np.zeros((6, 6), bool), _points((6, 6), (2, 2))
    assert metrics.surface(empty, empty, (1.0, 1.0)) == {"hd95": 0.0, "asd": 0.0}
    assert all(np.isnan(v) for v in metrics.surface(one, empty, (1.0, 1.0)).values())
    assert all(np.isnan(v) for v in metrics.surface(empty, one, (1.0, 1.0)).values())


@pytest.mark.parametrize("seed", [0, 1])
def test_surface_equals_monai_on_uncropped_blobs(seed):
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    gt = ndimage.binary_dilation(_points((16, 40, 40), (8, 20, 20)), iterations=5)
    pred = ndimage.binary_dilation(gt ^ (rng.random(gt.shape) > 0.97), iterations=1) & (rng.random(gt.shape) > 0.05)
    sp = [2.5, 0.8, 0.6]
    t = lambda a: torch.from_numpy(a[None, None])  # noqa: E731
    hd = float(compute_hausdorff_distance(t(pred), t(gt), include_background=True, percentile=95, spacing=sp))
    asd = float(compute_average_surface_distance(t(pred), t(gt), include_background=True, symmetric=True, spacing=sp))
    assert metrics.surface(pred, gt, sp) == pytest.approx({"hd95": hd, "asd": asd}, rel=1e-5)


def test_volume_in_physical_units():
    gt = np.zeros((4, 10, 10), bool)
    gt[1:3, 2:7, 2:7] = True  # 50 voxels
    pred = np.zeros_like(gt)
    pred[1:3, 2:7, 2:8] = True  # 60 voxels
    v = metrics.volume(pred, gt, (3.0, 0.5, 0.5))  # 0.75 mm^3 per voxel
    assert v == pytest.approx({"gt_volume": 37.5, "pred_volume": 45.0, "volume_diff": 7.5, "rel_volume_diff": 0.2})
    assert np.isnan(metrics.volume(pred, np.zeros_like(gt), (1.0, 1.0, 1.0))["rel_volume_diff"])


def test_lesion_wise_counts():
    gt = np.zeros((30, 30), bool)
    gt[2:6, 2:6] = True      # lesion A: found exactly
    gt[10:14, 10:14] = True  # lesion B: half found
    gt[20:23, 20:23] = True  # lesion C: missed
    pred = np.zeros_like(gt)
    pred[2:6, 2:6] = True
    pred[10:14, 10:12] = True
    pred[2:4, 20:22] = True   # false positive 1
    pred[27:29, 2:4] = True   # false positive 2
    les = metrics.lesions(pred, gt, (0.5, 0.5))
    assert (les["gt_lesions"], les["pred_lesions"], les["detected"], les["missed"]) == (3, 4, 2, 1)
    assert les["false_positive_components"] == 2
    assert les["lesion_dice"] == pytest.approx([1.0, 2 * 8 / (8 + 16), 0.0])
    assert [s["pixels"] for s in les["lesion_sizes"]] == [16, 16, 9]
    assert les["lesion_sizes"][0]["volume"] == pytest.approx(4.0)
    # wrong pixels: fp = 4 + 4, fn = 8 (B's other half) + 9 (C)
    assert les["over_share"] == pytest.approx(8 / 25) and les["under_share"] == pytest.approx(17 / 25)
    perfect = metrics.lesions(gt, gt)
    assert np.isnan(perfect["over_share"]) and perfect["missed"] == 0


def test_lesions_are_3d_components_in_volumes():
    gt = np.zeros((5, 8, 8), bool)
    gt[1:4, 3, 3] = True  # one lesion spanning three slices
    pred = np.zeros_like(gt)
    pred[3, 3, 3] = True  # touches it on one slice only
    les = metrics.lesions(pred, gt)
    assert les["gt_lesions"] == 1 and les["detected"] == 1 and les["lesion_dice"] == pytest.approx([0.5])


def test_size_bins_are_relative_to_the_image():
    assert metrics.size_bin(0.002).startswith("small")
    assert metrics.size_bin(0.03).startswith("medium")
    assert metrics.size_bin(0.2).startswith("large")


def test_paired_test():
    a = [0.5 + 0.01 * i for i in range(20)]
    b = [x + 0.1 for x in a]
    r = metrics.paired_test(a, b)
    assert r["n"] == 20 and r["p_value"] < 0.001 and r["mean_diff"] == pytest.approx(0.1)
    assert r["ci95_low"] == pytest.approx(0.1) and r["ci95_high"] == pytest.approx(0.1)
    same = metrics.paired_test(a, a)
    assert same["p_value"] == 1.0 and same["mean_diff"] == 0.0
    noisy = metrics.paired_test(a, [x + (0.01 if i % 2 else -0.01) for i, x in enumerate(a)])
    assert noisy["p_value"] > 0.5
