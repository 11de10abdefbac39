"""Patients (never slices) -> train / validation split, stratified by the layout's class key; K-fold."""

from __future__ import annotations

import random
from collections import defaultdict

from ..adapters import DataSet
from ..errors import MedsegError


def split_patients(ds: DataSet, val_fraction: float, seed: int, folds: int | None = None,
                   fold: int | None = None) -> tuple[list[str], list[str]]:
    """Split patients (never slices) into train/val, stratified by the layout's class key if it has one.

    With `folds`, K-fold cross-validation: in each stratum the shuffled patients are dealt round-robin into
    K folds and fold `fold` is the validation set, so the K validation sets partition the patients."""
    if folds is not None:
        if folds < 2 or fold is None or not 0 <= fold < folds:
            raise MedsegError(None, f"--folds K needs K >= 2 and --fold i with 0 <= i < K (got {folds}, {fold})")
    elif not 0.0 <= val_fraction < 1.0:
        raise MedsegError(None, f"--val-fraction must be in [0, 1), got {val_fraction}")
    key_of: dict[str, str] = {}
    for it in ds.items:
        key_of.setdefault(it.patient, str(it.meta.get(ds.stratify_key, "")) if ds.stratify_key else "")
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, key in sorted(key_of.items()):
        strata[key].append(patient)
    rng = random.Random(seed)
    train, val = [], []
    offset = 0  # strata continue the round-robin where the last one stopped, so folds stay balanced in size
    for key in sorted(strata):
        group = sorted(strata[key])
        rng.shuffle(group)
        if folds is not None:
            for j, patient in enumerate(group):
                (val if (j + offset) % folds == fold else train).append(patient)
            offset += len(group)
            continue
        n_val = round(len(group) * val_fraction)
        if val_fraction > 0 and n_val == 0 and len(group) > 1:
            n_val = 1
        val += group[:n_val]
        train += group[n_val:]
    if folds is not None and len(ds.patients) < folds:
        raise MedsegError(ds.root, f"{len(ds.patients)} patient(s) cannot make {folds} folds")
    if not train:
        raise MedsegError(ds.root, f"only {len(ds.patients)} patient(s): nothing left to train on after the split")
    if (folds is not None or val_fraction > 0) and not val:
        raise MedsegError(ds.root, "too few patients for a validation split (use --val-fraction 0)")
    return sorted(train), sorted(val)
