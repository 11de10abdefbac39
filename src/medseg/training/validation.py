"""Validation during training: mean per-patient (per-case) Dice at the training size, 2D slices or 3D volumes.
A multi-class run scores each case by the mean of its classes' Dice (argmax labels against the truth).

Under DDP each rank scores a disjoint set of cases and the confusion counts are gathered, so every rank gets
the same number.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..data.arrays import Arrays
from ..data.volumes import Volumes
from ..evaluation import metrics
from ..inference.engines import activate, squeeze_binary, volume_probs
from ..planning.plan import Plan
from ..transforms import normalize
from .dist import Dist


def _mean_dice(d: Dist, per_case: dict) -> float:
    merged: dict[str, dict] = {}
    for part in d.gather(dict(per_case)):
        merged.update(part)
    return float(np.mean([_case_dice(c) for c in merged.values()]))


def _case_dice(c: dict) -> float:
    """A case's Dice: from its counts, or (multi-class: {class: counts}) the mean over its classes."""
    if "tp" in c:
        return metrics.scores(c)["dice"]
    return float(np.mean([metrics.scores(k)["dice"] for k in c.values()]))


def _counts(prob: np.ndarray, gt: np.ndarray, plan: Plan, into: dict | None = None) -> dict:
    """Confusion counts of one slice or volume (added to `into`): binary at the plan's threshold; multi-class
    (probabilities with the class axis first, or after the slice axis of a volume) per class of the argmax."""
    if not plan.classes:
        return metrics.add(into or {}, metrics.counts(prob >= plan.threshold, gt))
    pred = prob.argmax(-3)
    into = into or {}
    return {k: metrics.add(into.get(k, {}), metrics.counts(pred == k, gt == k)) for k in range(1, len(plan.classes) + 1)}


@torch.inference_mode()
def validate(model: torch.nn.Module, val: Arrays, plan: Plan, device: torch.device | None = None,
             d: Dist | None = None) -> float:
    """Mean per-patient Dice (counts summed over each patient's slices) at the training size."""
    d = d or Dist()
    device = device or torch.device("cpu")
    model.eval()
    cases = sorted({it.case for it in val.items})
    mine = set(cases[d.rank::d.world])
    idx = [i for i, it in enumerate(val.items) if it.case in mine]
    per_case: dict[str, dict] = defaultdict(dict)
    for start in range(0, len(idx), 16):
        sel = idx[start:start + 16]
        x = normalize(val.images[sel].float() / 255, plan.mean, plan.std)
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        probs = squeeze_binary(activate(model(x))).float().cpu().numpy()
        for i, p in zip(sel, probs):
            it = val.items[i]
            per_case[it.case] = _counts(p, val.masks[i, 0].numpy(), plan, per_case[it.case])
    return _mean_dice(d, per_case)


def validate_volumes(model: torch.nn.Module, vols: Volumes, plan: Plan, device, d: Dist) -> float:
    """Mean per-case Dice over whole volumes (sliding window) at the training size."""
    counts = {}
    for c in range(d.rank, len(vols), d.world):
        p = volume_probs(model, vols.images[c].float() / 255, plan, device).numpy()
        counts[vols.cases[c]] = _counts(p, vols.masks[c][0].numpy(), plan)
    return _mean_dice(d, counts)
