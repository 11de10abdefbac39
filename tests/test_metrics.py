"""Per-slice counts summed per patient give the 3D Dice that MONAI computes on the stacked volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_iou

from medseg import metrics


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
    assert metrics.summarize([]) == {"n": 0}


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
