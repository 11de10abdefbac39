"""Overlap metrics from confusion counts, so that per-slice counts add up to per-patient 3D metrics.

Summing true/false positives over a patient's slices and then computing Dice equals the Dice of the
stacked 3D volume (tests check this against MONAI's `compute_dice`). Empty-mask convention: when both
ground truth and prediction are empty, Dice/IoU are 1.0; when only one is empty they are 0.0. Such
cases are flagged (`gt_empty`) and summarised apart from the lesion cases.
"""

from __future__ import annotations

import warnings

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
    """Mean, median, quartiles and a 95% bootstrap CI of the mean; NaN values (undefined metrics) are left
    out and counted as `n_nan`."""
    v = np.asarray(values, dtype=float)
    n_nan = int(np.isnan(v).sum())
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"n": 0, "n_nan": n_nan}
    boot = np.random.default_rng(seed).choice(v, size=(2000, v.size)).mean(1)
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
            "q1": float(np.percentile(v, 25)), "q3": float(np.percentile(v, 75)),
            "ci95_low": float(np.percentile(boot, 2.5)), "ci95_high": float(np.percentile(boot, 97.5)),
            "n_nan": n_nan}


SURFACE_POLICY = ("HD95 and average surface distance (symmetric) are 0.0 when ground truth and prediction are both "
                  "empty and undefined (NaN, left out of means and counted as n_nan) when only one is empty.")


def surface(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """HD95 and symmetric average surface distance of a 2D image or 3D volume, in the units of `spacing`
    (per array axis). MONAI computes them; both masks are first cropped to their joint bounding box plus a
    one-voxel margin, which leaves the distances unchanged and makes a CT-sized volume take milliseconds."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if not pred.any() and not gt.any():
        return {"hd95": 0.0, "asd": 0.0}
    if not pred.any() or not gt.any():
        return {"hd95": float("nan"), "asd": float("nan")}
    both = pred | gt
    box = tuple(slice(max(0, int(ix.min()) - 1), int(ix.max()) + 2) for ix in np.nonzero(both))
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    p = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None]
    g = torch.from_numpy(np.ascontiguousarray(gt[box]))[None, None]
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal get_mask_edges argument
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=sp)
        asd = compute_average_surface_distance(p, g, include_background=True, symmetric=True, spacing=sp)
    return {"hd95": float(hd.item()), "asd": float(asd.item())}


def volume(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Volumes (areas in 2D) in units of `spacing` cubed (squared), their difference, and the difference
    relative to the ground truth (NaN when the ground truth is empty)."""
    unit = float(np.prod(spacing))
    pv, gv = float(np.count_nonzero(pred)) * unit, float(np.count_nonzero(gt)) * unit
    return {"gt_volume": gv, "pred_volume": pv, "volume_diff": pv - gv,
            "rel_volume_diff": (pv - gv) / gv if gv else float("nan")}


def lesions(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...] | None = None) -> dict:
    """Lesion-wise analysis with connected components (8-connected in 2D, 26 in 3D).

    A ground-truth lesion counts as detected when any predicted component overlaps it by at least one
    pixel (the overlap rule of lesion-wise detection in LiTS-style evaluation: it separates "found but
    poorly outlined", which per-lesion Dice then shows, from "missed"). A predicted component that touches
    no ground-truth lesion is a false positive. Per-lesion Dice compares a lesion with the union of the
    predicted components that touch it. `over_share` / `under_share` split the wrong pixels into false
    positives (over-segmentation) and false negatives (under-segmentation); NaN when nothing is wrong.
    """
    from ..inference.postprocess import components

    pred, gt = pred.astype(bool), gt.astype(bool)
    g_lab, n_g = components(gt)
    p_lab, n_p = components(pred)
    unit = float(np.prod(spacing)) if spacing is not None else 1.0
    detected, lesion_dice, sizes = 0, [], []
    touched_pred: set[int] = set()
    for i in range(1, n_g + 1):
        lesion = g_lab == i
        hits = np.unique(p_lab[lesion])
        hits = hits[hits > 0]
        size = int(lesion.sum())
        sizes.append({"pixels": size, "volume": size * unit})
        if hits.size:
            detected += 1
            touched_pred.update(int(h) for h in hits)
            seg = np.isin(p_lab, hits)
            lesion_dice.append(2 * int((seg & lesion).sum()) / (int(seg.sum()) + size))
        else:
            lesion_dice.append(0.0)
    fp_components = sum(1 for j in range(1, n_p + 1) if j not in touched_pred and not (gt & (p_lab == j)).any())
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(gt & ~pred))
    err = fp + fn
    return {"gt_lesions": int(n_g), "pred_lesions": int(n_p), "detected": detected, "missed": int(n_g) - detected,
            "false_positive_components": int(fp_components), "lesion_dice": lesion_dice, "lesion_sizes": sizes,
            "over_share": fp / err if err else float("nan"), "under_share": fn / err if err else float("nan")}


# Lesion-size bins by the share of the image (or volume) the ground truth covers: relative, so that the
# bins mean the same for 256x256 MRI slices, 500x500 ultrasound and full mammograms.
SIZE_EDGES = (0.01, 0.05)


def size_bin(fraction: float, edges: tuple[float, ...] = SIZE_EDGES) -> str:
    """'small (< 1%)', 'medium (1-5%)' or 'large (>= 5%)' of the image area by default."""
    if fraction < edges[0]:
        return f"small (< {edges[0]:.0%})"
    for lo, hi in zip(edges, edges[1:]):
        if fraction < hi:
            return f"medium ({lo:.0%}-{hi:.0%})"
    return f"large (>= {edges[-1]:.0%})"


def paired_test(a: list[float], b: list[float], seed: int = 0) -> dict[str, float]:
    """Paired comparison of two runs on the same cases: Wilcoxon signed-rank p-value (scipy), mean of
    b - a and a 95% bootstrap CI of that mean, its median, and how many cases b scores higher / lower than a
    (a mean carried by one or two cases shows as a median near 0 and as many cases worse as better)."""
    from scipy.stats import wilcoxon

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError("paired_test needs the same cases in both runs")
    d = y - x
    ok = ~np.isnan(d)
    d = d[ok]
    if d.size == 0:
        return {"n": 0, "p_value": float("nan"), "mean_diff": float("nan"), "ci95_low": float("nan"),
                "ci95_high": float("nan"), "median_diff": float("nan"), "better": 0, "worse": 0}
    p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    boot = np.random.default_rng(seed).choice(d, size=(2000, d.size)).mean(1)
    return {"n": int(d.size), "p_value": p, "mean_diff": float(d.mean()),
            "ci95_low": float(np.percentile(boot, 2.5)), "ci95_high": float(np.percentile(boot, 97.5)),
            "median_diff": float(np.median(d)), "better": int((d > 0).sum()), "worse": int((d < 0).sum())}
