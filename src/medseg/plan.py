"""Data set -> training plan: the patient split and every setting training needs, in one JSON-able dict.

Training reads only the plan; the plan is saved in every checkpoint, so evaluate and predict reuse it.
"""

from __future__ import annotations

import json
import random
from importlib.resources import files
from collections import defaultdict

from .adapters import DataSet
from .errors import MedsegError
from .models import SPATIAL_DIMS

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
    # 2.5D: k slices above and below as extra channels. None: 1 for data sets of slice stacks (unit
    # "patient": LGG, CT/MR volumes), 0 for 2D images. Measured on LGG dev (30 min, 6 validation patients):
    # per-patient Dice 0.792 with k = 1 against 0.766 for single slices (README).
    "neighbours": None,
    "skip_bad": False,  # leave out unreadable images (listed in the plan as "skipped") instead of stopping
    "intensity_override": None,  # replaces the layout's intensity rule, e.g. a CT window for NIfTI CT
    "headline_metric": "dice",  # dice | iou: the metric the report leads with
    "encoder_weights": None,  # pretrained encoder file (vgg16-unet); None: torchvision's file in the hub cache if present
    "freeze_encoder_epochs": 0,  # keep a pretrained encoder fixed for the first N epochs
    "compile": "auto",  # torch.compile the training step: auto (2D, a budget >= 10 min, a C++ compiler) | true | false
    "prefetch": "auto",  # augment the next batches in a thread while the step runs: auto (when the process
    # has a CPU core to spare, or trains on a GPU) | true | false
    "precision": "auto",  # forward pass in bf16 autocast: auto (CUDA only) | bf16 (also on CPUs) | fp32
    "patch_size": None,  # 3D models: training patch D x H x W (None: [32, 64, 64]); lesion_fraction of the
    # patches are centred on foreground (class-balanced), validation and prediction use a sliding window
}
# What a layout needs whatever the preset: CT-sized images with much background are mostly empty slices.
LAYOUT_DEFAULTS: dict[str, dict] = {
    "lgg": {},
    "busi": {},
    "folder": {},
}


def presets() -> dict[str, dict]:
    """The presets shipped in medseg/presets/*.json: {name: {"description", "source", "settings"}}."""
    out = {}
    for res in sorted(files("medseg").joinpath("presets").iterdir(), key=lambda r: r.name):
        if res.name.endswith(".json"):
            data = json.loads(res.read_text())
            out[res.name[:-5]] = data
    return out


def parse_setting(text: str) -> tuple[str, object]:
    """`key=value` from the command line: the value is JSON if it parses (numbers, lists, null), else a
    string. Parsed, never evaluated; the key must be a known plan setting."""
    if "=" not in text:
        raise MedsegError(None, f"--set expects key=value, got {text!r}")
    key, raw = (t.strip() for t in text.split("=", 1))
    if key not in DEFAULTS:
        raise MedsegError(None, f"unknown setting {key!r}; known: {', '.join(sorted(DEFAULTS))}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def settings_for(layout: str, preset: str | None = None, overrides: dict | None = None) -> dict:
    """DEFAULTS, then the layout's needs, then the preset, then the user's flags: the later one wins."""
    plan = {**DEFAULTS, **LAYOUT_DEFAULTS.get(layout, {})}
    if preset:
        known = presets()
        if preset not in known:
            raise MedsegError(None, f"unknown preset {preset!r}; known: {', '.join(known)} (see `medseg presets`)")
        unknown = set(known[preset]["settings"]) - set(DEFAULTS)
        if unknown:
            raise MedsegError(None, f"preset {preset!r} sets unknown keys: {', '.join(sorted(unknown))}")
        plan.update(known[preset]["settings"])
        plan["preset"] = preset
    plan.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return plan


def _given(settings: dict | None, flags: dict) -> dict:
    """The user's settings: `--set key=value` pairs (null included: `--set time_budget_s=null` means no
    budget) and then the flags actually given (a flag left out is None and changes nothing)."""
    return {**(settings or {}), **{k: v for k, v in flags.items() if v is not None}}


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


def make_plan(ds: DataSet, val_fraction: float = 0.2, seed: int = 0, preset: str | None = None,
              folds: int | None = None, fold: int | None = None, settings: dict | None = None, **overrides) -> dict:
    plan = settings_for(ds.layout, preset)
    plan.update(_given(settings, overrides))
    train, val = split_patients(ds, val_fraction, seed, folds, fold)
    plan.update(data_settings(ds, plan))
    if SPATIAL_DIMS.get(plan["model"], 2) == 3 and plan["augmentation"] == "default":
        plan["augmentation"] = "3d"  # the 2D default set does not apply to C x D x H x W patches
    plan.update({
        "seed": seed,
        "val_fraction": val_fraction,
        "folds": folds,
        "fold": fold,
        "split": {"train": train, "val": val},
    })
    check_settings(plan)
    return plan


# Numeric settings and the values that make sense; a wrong one stops before any work, naming the setting.
_RANGES = {"lr": (0, None, False), "batch_size": (1, None, True), "image_size": (16, 4096, True),
           "weight_decay": (0, None, True), "threshold": (0, 1, False), "warmup": (0, 1, True),
           "empty_drop": (0, 1, True), "lesion_fraction": (0, 1, True), "neighbours": (0, 8, True),
           "epochs": (1, None, True), "patience": (1, None, True), "time_budget_s": (0, None, False)}


def check_settings(plan: dict) -> None:
    for key, (lo, hi, closed) in _RANGES.items():
        v = plan.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise MedsegError(None, f"setting {key} must be a number, got {v!r}")
        low_ok = v >= lo if closed else v > lo
        if not low_ok or (hi is not None and v > hi):
            span = f"{'>=' if closed else '>'} {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise MedsegError(None, f"setting {key} must be {span}, got {v}")


def data_settings(ds: DataSet, settings: dict) -> dict:
    """What the data set decides in a plan: input channels, intensity rule, target, geometry handling."""
    return {
        "data": str(ds.root.resolve()),
        "layout": ds.layout,
        "channels": ds.channels,
        "unit": ds.unit,
        "intensity": settings.get("intensity_override") or ds.intensity,
        "target_values": list(ds.target_values),
        "target": ds.target,
        "target_name": ds.target if ds.target != "foreground" else None,
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
