"""Data set + preset + the user's flags -> a validated Plan (planning.plan): the split and every setting.

Later wins: the field defaults (planning.plan), then the layout's needs, then the preset
(planning/presets/*.json), then `--set key=value` pairs, then the flags actually given.
"""

from __future__ import annotations

import json
from importlib.resources import files

from ..adapters import CHANNEL_NAMES, DataSet
from ..errors import MedsegError
from ..models import SPATIAL_DIMS
from .plan import DEFAULTS, SETTINGS, Plan
from .split import split_patients

# What a layout needs unless a preset or the user says otherwise. kaggle_3m: a missing pre- or post-contrast
# scan is a copy of FLAIR in its channel; training with such copies (each other channel with probability
# 0.15) keeps those patients from an empty mask (transforms.RandFillChannels). BUSI: the Dice term per image
# (smoothing 1, so an empty normal image is not a 0/1 cliff), the metric BUSI reports, instead of over the
# batch: pooled 5-fold lesion Dice 0.659 against 0.612 (paired +0.046, 95% CI +0.008 to +0.082; false masks
# on 11 of the 24 normal images against 9; docs/results.md). kaggle_3m's cases are scaled by the median of their
# body pixels (intensity_norm=median), not their 99th percentile, which lands on the lesion in one patient and on
# bright scalp in another: two pooled 5-fold pairs, +0.034 and +0.005 a patient (+0.020 together, 95% CI +0.004
# to +0.040, 20 of 30 patients better; docs/results.md). BUSI keeps the 99th percentile: with the median, two pooled
# pairs scored the lesions -0.001 and +0.018 (within the noise) while gamma 0.5 cost 0.06-0.10 Dice against
# 0.004-0.012 on their folds' stress tests (an ultrasound's dark lesions move its median under a gamma curve).
# kaggle_3m's body pixels are found by Otsu on log intensity (body_mask=log-otsu: the same pixels under any
# power curve, so a gamma curve on the stored values is a bend about the median's 0.2 after scaling), and the
# augmentation bends its gamma about that 0.2 (augmentation=anchored): two pooled 5-fold pairs, +0.012 and
# +0.010 a patient (over both +0.011, 95% CI +0.006 to +0.017, 24 of 30 better; docs/results.md).
# kaggle_3m draws 70% of its training slices among those with a lesion and the rest uniformly (lesion_fraction 0.7,
# elsewhere 0.5; 36% of its dev slices show one, so 81% of the draws against 68%): its misses are under-segmented
# lesions (recall 0.2-0.5 at precision 0.9), and two pooled 5-fold pairs scored +0.020 and +0.002 a patient
# (over both +0.011, 95% CI +0.003 to +0.020, 41 of 60 better; docs/results.md, "More lesion slices").
# kaggle_3m trains in batches of 8 (16 elsewhere): on a 2-core AVX2 CPU its 45-minute cross-validation gets only
# 10-20 epochs a fold, and twice the optimizer steps for the same images a second scored two pooled 5-fold pairs
# +0.003 and +0.052 a patient (over both +0.028, 95% CI +0.015 to +0.042, 24 of 30 better; batch 32 lost 0.04-0.14
# on its first two folds; docs/results.md, "Changes measured side by side"). BUSI measured batch 8 at -0.014.
LAYOUT_DEFAULTS: dict[str, dict] = {
    "lgg": {"channel_fill": {"source": CHANNEL_NAMES["lgg"].index("FLAIR"), "prob": 0.15},
            "intensity_norm": "median", "body_mask": "log-otsu", "augmentation": "anchored", "lesion_fraction": 0.7,
            "batch_size": 8},
    "busi": {"loss_args": {"batch": False, "smooth_nr": 1.0, "smooth_dr": 1.0}},
}


def presets() -> dict[str, dict]:
    """The presets shipped in medseg/planning/presets/*.json: {name: {"description", "source", "settings"}}."""
    out = {}
    for res in sorted(files("medseg.planning").joinpath("presets").iterdir(), key=lambda r: r.name):
        if res.name.endswith(".json"):
            data = json.loads(res.read_text())
            out[res.name[:-5]] = data
    return out


def settings_for(layout: str, preset: str | None = None, overrides: dict | None = None) -> dict:
    """DEFAULTS, then the layout's needs, then the preset, then the user's flags: the later one wins."""
    plan = {**DEFAULTS, **LAYOUT_DEFAULTS.get(layout, {})}
    if preset:
        known = presets()
        if preset not in known:
            raise MedsegError(None, f"unknown preset {preset!r}; known: {', '.join(known)} (see `medseg presets`)")
        unknown = set(known[preset]["settings"]) - set(SETTINGS)
        if unknown:
            raise MedsegError(None, f"preset {preset!r} sets unknown keys: {', '.join(sorted(unknown))}")
        plan.update(known[preset]["settings"])
        plan["preset"] = preset
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    plan.update(given)
    # The layout's loss_args tune medseg's default loss: a preset's recipe or another loss starts from none.
    if "loss_args" in LAYOUT_DEFAULTS.get(layout, {}) and "loss_args" not in given and (
            preset and "loss_args" not in known[preset]["settings"] or plan["loss"] != DEFAULTS["loss"]):
        plan["loss_args"] = DEFAULTS["loss_args"]
    return plan


def _given(settings: dict | None, flags: dict) -> dict:
    """The user's settings: `--set key=value` pairs (null included: `--set time_budget_s=null` means no
    budget) and then the flags actually given (a flag left out is None and changes nothing)."""
    return {**(settings or {}), **{k: v for k, v in flags.items() if v is not None}}


def make_plan(ds: DataSet, val_fraction: float = 0.2, seed: int = 0, preset: str | None = None,
              folds: int | None = None, fold: int | None = None, settings: dict | None = None, **overrides) -> Plan:
    """The plan of a new run: settings in their order of precedence, the data set's facts, the split; validated."""
    s = settings_for(ds.layout, preset)
    given = _given(settings, overrides)
    s.update(given)
    if s["epochs"] is not None and "time_budget_s" not in given:
        s["time_budget_s"] = None  # an explicit epoch count alone is not cut short by the default budget
    unknown = set(s) - set(SETTINGS) - {"preset"}
    if unknown:
        raise MedsegError(None, f"unknown setting {sorted(unknown)[0]!r}; known: {', '.join(sorted(SETTINGS))}")
    train, val = split_patients(ds, val_fraction, seed, folds, fold)
    s.update(data_settings(ds, s))
    if ds.classes and "loss" not in given:  # softmax over background + classes, whatever the preset's binary loss
        s["loss"] = "ce+dice"
    if SPATIAL_DIMS.get(s["model"], 2) == 3 and s["augmentation"] in ("default", "robust", "anchored", "mri"):
        s["augmentation"] = "3d"  # the 2D default set does not apply to C x D x H x W patches
    plan = Plan(**s, seed=seed, val_fraction=val_fraction, folds=folds, fold=fold,
                split={"train": train, "val": val})
    return plan.validate(SPATIAL_DIMS.get(plan.model, 2))


def data_settings(ds: DataSet, settings: dict) -> dict:
    """What the data set decides in a plan: input channels, intensity rule, target, geometry handling."""
    intensity = settings.get("intensity_override") or ds.intensity
    # per-case scaling is for images read on a relative scale ("range": MRI slices, ultrasound, photographs);
    # a CT window keeps Hounsfield units, and per-volume percentiles (NIfTI MR) already are a per-case rule
    norm = settings.get("intensity_norm", "case") if intensity.get("mode", "range") == "range" else "none"
    return {
        "data": str(ds.root.resolve()),
        "layout": ds.layout,
        "channels": ds.channels,
        "unit": ds.unit,
        "intensity": intensity,
        "intensity_norm": norm,
        "target_values": list(ds.target_values),
        "target": ds.target,
        "target_name": ds.target if ds.target != "foreground" else None,
        "classes": [dict(c) for c in ds.classes],
        "keep_aspect": ds.keep_aspect,
        "neighbours": _neighbours(ds, settings),
    }


def _neighbours(ds: DataSet, settings: dict) -> int:
    """2.5D context: 1 slice each side for slice stacks, 0 for 2D images and for 3D models (which see the
    neighbouring slices through their 3D kernels)."""
    three_d = SPATIAL_DIMS.get(settings.get("model"), 2) == 3
    if three_d and ds.unit != "patient":
        raise MedsegError(ds.root, f"the 3D model {settings['model']!r} needs volumes or slice stacks; "
                                   f"this {ds.layout} data set has 2D images")
    if settings.get("neighbours") is None:
        return 0 if three_d or ds.unit != "patient" else 1
    if three_d and int(settings["neighbours"]):
        raise MedsegError(None, f"neighbours={settings['neighbours']} is for 2D models (2.5D input); the 3D model "
                                f"{settings['model']!r} takes whole patches: leave neighbours unset")
    return int(settings["neighbours"])
