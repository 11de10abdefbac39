"""Data set -> training plan: the patient split and every setting training needs, in one JSON-able dict.

Training reads only the plan; the plan is saved in every checkpoint, so evaluate and predict reuse it.
"""

from __future__ import annotations

import random
from collections import defaultdict

from .adapters import DataSet
from .errors import MedsegError

# Per-layout defaults, chosen for a 2-core CPU and a ~20 minute budget (see docs/architecture.md).
DEFAULTS = {
    "model": "unet",
    "model_args": {"features": [16, 32, 64, 128, 256], "res_units": 2},
    "loss": "bce+dice",
    "augmentation": "default",
    "image_size": 128,  # measured: 7-min LGG runs reached val Dice 0.73 at 128 vs 0.36 at 256 (4x the samples/s)
    "batch_size": 16,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "lesion_fraction": 0.5,  # share of drawn samples taken from images with foreground (Buda et al.)
    "threshold": 0.5,
    "time_budget_s": 1200.0,
    "epochs": None,
    # engine settings (issue 5); every key is documented in `medseg presets --show NAME`
    "loss_args": {},  # e.g. {"pos_weight": 2.0} or {"alpha": 0.3, "beta": 0.7} for tversky
    "optimizer": "adamw",  # adamw | adam | sgd (momentum 0.9, nesterov)
    "schedule": "cosine",  # cosine (warm-up + cosine over the budget) | onecycle | plateau | constant
    "warmup": 0.03,  # share of the run spent warming the learning rate up
    "sampling": "lesion",  # lesion: lesion_fraction of draws from images with foreground | area: p ~ mask area (Buda) | uniform
    "empty_drop": 0.0,  # probability of dropping an empty-mask image from an epoch (liver-CT workflow: 0.6)
    "patience": None,  # early stopping: epochs without a better validation Dice (None: off)
    "neighbours": 0,  # 2.5D: k slices above and below as extra channels (slice data sets only)
}
LAYOUT_DEFAULTS: dict[str, dict] = {
    "lgg": {},
    "busi": {},
    "folder": {},
}


def split_patients(ds: DataSet, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split patients (never slices) into train/val, stratified by the layout's class key if it has one."""
    if not 0.0 <= val_fraction < 1.0:
        raise MedsegError(None, f"--val-fraction must be in [0, 1), got {val_fraction}")
    key_of: dict[str, str] = {}
    for it in ds.items:
        key_of.setdefault(it.patient, str(it.meta.get(ds.stratify_key, "")) if ds.stratify_key else "")
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, key in sorted(key_of.items()):
        strata[key].append(patient)
    rng = random.Random(seed)
    train, val = [], []
    for key in sorted(strata):
        group = sorted(strata[key])
        rng.shuffle(group)
        n_val = round(len(group) * val_fraction)
        if val_fraction > 0 and n_val == 0 and len(group) > 1:
            n_val = 1
        val += group[:n_val]
        train += group[n_val:]
    if not train:
        raise MedsegError(ds.root, f"only {len(ds.patients)} patient(s): nothing left to train on after the split")
    if val_fraction > 0 and not val:
        raise MedsegError(ds.root, "too few patients for a validation split (use --val-fraction 0)")
    return sorted(train), sorted(val)


def make_plan(ds: DataSet, val_fraction: float = 0.2, seed: int = 0, **overrides) -> dict:
    plan = {**DEFAULTS, **LAYOUT_DEFAULTS.get(ds.layout, {})}
    plan.update({k: v for k, v in overrides.items() if v is not None})
    train, val = split_patients(ds, val_fraction, seed)
    plan.update({
        "data": str(ds.root.resolve()),
        "layout": ds.layout,
        "channels": ds.channels,
        "unit": ds.unit,
        "intensity": ds.intensity,
        "target_values": list(ds.target_values),
        "target": ds.target,
        "target_name": ds.target if ds.target != "foreground" else None,
        "keep_aspect": ds.keep_aspect,
        "seed": seed,
        "val_fraction": val_fraction,
        "split": {"train": train, "val": val},
    })
    return plan
