"""Stress test: the evaluated cases predicted again under controlled input shifts (`medseg evaluate --stress`).

A shift is a function on one case's images (a list of C x H x W float32 arrays in [0, 1], as read) that
returns the shifted images at the same size. Each case is then predicted whole, exactly as `evaluate`
predicts it (`Predictor.volume_probabilities`: the plan's per-case intensity scaling, 2.5D neighbours, 3D
sliding window), thresholded and post-processed with the run's setting, and scored as evaluate scores a
case: confusion counts over all its slices (the 3D Dice of a patient). Masks are compared at the input's
own size; a geometric shift's prediction is mapped back onto the unshifted input first (`UNDO`: the
left-right flip flips the prediction back; the truth is never changed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from scipy import ndimage

from . import metrics
from ..inference import postprocess

console = Console(stderr=True)

Images = list[np.ndarray]
NOISE_STD = 0.05
NOISE_SEED = 0
BLUR_SIGMA = 1.0


def _intensity(factor: float) -> Callable[[Images], Images]:
    """Every channel multiplied by `factor`, no clipping: a scanner with another intensity scale."""
    return lambda images: [np.asarray(im, dtype=np.float32) * np.float32(factor) for im in images]


def _gamma(g: float) -> Callable[[Images], Images]:
    """x ** g on the [0, 1] image (g < 1 brightens the mid-tones, g > 1 darkens them)."""
    return lambda images: [np.asarray(im, dtype=np.float32) ** np.float32(g) for im in images]


def noise(images: Images) -> Images:
    """Additive Gaussian noise (std NOISE_STD, no clipping); the same seed for every case, so the noise of a
    case depends only on its shapes and the row is reproducible."""
    rng = np.random.default_rng(NOISE_SEED)
    return [np.asarray(im, dtype=np.float32) + rng.normal(0.0, NOISE_STD, im.shape).astype(np.float32)
            for im in images]


def blur(images: Images) -> Images:
    """Gaussian blur in-plane (sigma BLUR_SIGMA pixels; channels and slices apart), scipy.ndimage."""
    return [ndimage.gaussian_filter(np.asarray(im, dtype=np.float32), sigma=(0, BLUR_SIGMA, BLUR_SIGMA))
            for im in images]


def half_resolution(images: Images) -> Images:
    """In-plane resolution halved: each slice down by 2 (bilinear, which at factor 2 averages 2 x 2 pixels)
    and back up to its own size (bilinear)."""
    out = []
    for im in images:
        x = torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32))[None]
        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(max(1, h // 2), max(1, w // 2)), mode="bilinear", align_corners=False)
        out.append(F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0].numpy())
    return out


def flip_lr(images: Images) -> Images:
    """Left-right flip (the last axis); its own inverse."""
    return [np.ascontiguousarray(np.asarray(im, dtype=np.float32)[..., ::-1]) for im in images]


# name -> shift of one case's images; "none" is the reference the other rows are compared with
SHIFTS: dict[str, Callable[[Images], Images]] = {
    "none": lambda images: images,
    "intensity x0.33": _intensity(0.33),
    "intensity x0.5": _intensity(0.5),
    "intensity x2": _intensity(2.0),
    "intensity x3": _intensity(3.0),
    "gamma 0.5": _gamma(0.5),
    "gamma 2": _gamma(2.0),
    "noise std 0.05": noise,
    "blur sigma 1": blur,
    "resolution /2": half_resolution,
    "flip left-right": flip_lr,
}
DESCRIPTIONS = {
    "none": "the images as read (reference)",
    "intensity x0.33": "every channel x 0.33, not clipped",
    "intensity x0.5": "every channel x 0.5, not clipped",
    "intensity x2": "every channel x 2, not clipped",
    "intensity x3": "every channel x 3, not clipped",
    "gamma 0.5": "x ** 0.5 on the [0, 1] image",
    "gamma 2": "x ** 2 on the [0, 1] image",
    "noise std 0.05": f"additive Gaussian noise, std {NOISE_STD} on [0, 1], seed {NOISE_SEED}, not clipped",
    "blur sigma 1": f"Gaussian blur, sigma {BLUR_SIGMA:g} pixel, in-plane",
    "resolution /2": "in-plane resolution halved: down by 2 and back up, bilinear, per slice",
    "flip left-right": "left-right flip; the prediction is flipped back before scoring",
}
# predictions (n x H x W) of geometric shifts, mapped back onto the unshifted input before scoring
UNDO: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "flip left-right": lambda probs: probs[..., ::-1],
}


def case_dice(probs: np.ndarray, truths: list[np.ndarray], setting: dict) -> float:
    """One case's Dice as evaluate counts it: its slices stacked into one volume, thresholded and
    post-processed (in 3D) with `setting`, counts over the whole volume."""
    pred = postprocess.apply(np.asarray(probs), setting)
    return metrics.scores(metrics.counts(pred, np.stack(truths)))["dice"]


def shift_dice(predictor, name: str, cases: list[tuple[str, Images, list]], setting: dict) -> dict[str, float]:
    """Dice per case id with shift `name` applied to every case."""
    shift, undo = SHIFTS[name], UNDO.get(name, lambda probs: probs)
    out = {}
    for case, images, truths in cases:
        shifted = shift(images)
        probs = predictor.volume_probabilities(iter(shifted), len(shifted))
        out[case] = case_dice(undo(probs), truths, setting)
    return out


def _row(name: str, dice: dict[str, float], lesion: set[str]) -> dict:
    worst = min(dice, key=dice.get)
    les = [d for c, d in dice.items() if c in lesion]
    return {"shift": name, "description": DESCRIPTIONS.get(name, name), "n_cases": len(dice),
            "dice_mean": float(np.mean(list(dice.values()))),
            "dice_mean_lesion": float(np.mean(les)) if les else float("nan"),
            "worst_case": worst, "worst_dice": float(dice[worst])}


def stress_test(groups: Iterable[tuple[object, list]], setting: dict, quiet: bool = False,
                names: Iterable[str] | None = None) -> list[dict]:
    """The stress table: one row per shift (all of SHIFTS by default). `groups`: (predictor, cases) pairs,
    cases as (case id, images, truths): the run's model with its cases, or, for a pooled cross-validation,
    each fold's model with its own validation cases; a predictor needs only `volume_probabilities`. Each row:
    the mean Dice over all cases and over the cases with a lesion, the change of the all-case mean against
    the "none" row, and the worst case with its Dice."""
    groups = [(predictor, list(cases)) for predictor, cases in groups]
    names = list(names or SHIFTS)
    lesion = {case for _, cases in groups for case, _, truths in cases if any(t.any() for t in truths)}
    n = sum(len(cases) for _, cases in groups)
    rows = []
    with Progress(console=console, disable=quiet, transient=True) as bar:
        task = bar.add_task(f"stress test: {len(names)} shifts x {n} cases", total=len(names))
        for name in names:
            bar.update(task, description=f"stress test: {name}")
            dice = {}
            for predictor, cases in groups:
                dice.update(shift_dice(predictor, name, cases, setting))
            rows.append(_row(name, dice, lesion))
            bar.advance(task)
    ref = next((r["dice_mean"] for r in rows if r["shift"] == "none"), float("nan"))
    for r in rows:
        r["change"] = r["dice_mean"] - ref
    return rows


def print_table(rows: list[dict]) -> None:
    """The stress table on the console (rich)."""
    t = Table(title="stress test (Dice: mean over all cases; lesion: over the cases with a lesion)")
    for col in ("shift", "Dice", "change", "lesion", "worst case", "its Dice"):
        left = col in ("shift", "worst case")
        t.add_column(col, justify="left" if left else "right", no_wrap=left)
    for r in rows:
        change = "reference" if r["shift"] == "none" else f"{r['change']:+.3f}"
        t.add_row(escape(r["shift"]), f"{r['dice_mean']:.3f}", change, f"{r['dice_mean_lesion']:.3f}",
                  escape(str(r["worst_case"])), f"{r['worst_dice']:.3f}")
    Console().print(t)
