"""Overlap metrics from confusion counts, so that per-slice counts add up to per-patient 3D metrics.

Summing true/false positives over a patient's slices and then computing Dice equals the Dice of the
stacked 3D volume (tests check this against MONAI's `compute_dice`). Empty-mask convention: when both
ground truth and prediction are empty, Dice/IoU are 1.0; when only one is empty they are 0.0. Such
cases are flagged (`gt_empty`) and summarised apart from the lesion cases.
"""

from __future__ import annotations

import numpy as np

EMPTY_POLICY = ("Dice and IoU are 1.0 when ground truth and prediction are both empty and 0.0 when only one "
                "is empty; cases with an empty ground truth are reported separately from the headline Dice.")


def counts(pred: np.ndarray, gt: np.ndarray) -> dict[str, int]:
    pred, gt = pred.astype(bool), gt.astype(bool)
    tp = int(np.count_nonzero(pred & gt))
    return {"tp": tp, "fp": int(np.count_nonzero(pred)) - tp, "fn": int(np.count_nonzero(gt)) - tp,
            "n": int(gt.size)}


def scores(c: dict[str, int]) -> dict[str, float]:
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    tn = c["n"] - tp - fp - fn
    both_empty = tp + fp + fn == 0
    return {
        "dice": 1.0 if both_empty else 2 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if both_empty else tp / (tp + fp + fn),
        "precision": (tp / (tp + fp)) if tp + fp else (1.0 if fn == 0 else 0.0),
        "recall": (tp / (tp + fn)) if tp + fn else (1.0 if fp == 0 else 0.0),
        "specificity": tn / (tn + fp) if tn + fp else 1.0,
    }


def soft_counts(prob: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Sums for overlap of a probability map with the ground truth (the seeds' Keras metrics score
    sigmoid outputs this way); like `counts`, they add up over a patient's slices."""
    p, g = prob.astype(np.float64), gt.astype(np.float64)
    return {"soft_i": float((p * g).sum()), "soft_p": float(p.sum()), "soft_g": float(g.sum())}


def soft_scores(c: dict) -> dict[str, float]:
    i, p, g = c["soft_i"], c["soft_p"], c["soft_g"]
    if p + g == 0:
        return {"soft_dice": 1.0, "soft_iou": 1.0}
    return {"soft_dice": 2 * i / (p + g), "soft_iou": i / (p + g - i)}


def add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b[k] for k in b}


def summarize(values: list[float], seed: int = 0) -> dict[str, float]:
    """Mean, median, quartiles and a 95% bootstrap CI of the mean (NaN-free input)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"n": 0}
    boot = np.random.default_rng(seed).choice(v, size=(2000, v.size)).mean(1)
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
            "q1": float(np.percentile(v, 25)), "q3": float(np.percentile(v, 75)),
            "ci95_low": float(np.percentile(boot, 2.5)), "ci95_high": float(np.percentile(boot, 97.5))}
