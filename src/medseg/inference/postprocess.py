"""Post-processing of hard masks, chosen per run on the validation split and applied by predict.

Connected components come from scipy.ndimage (MONAI's KeepLargestConnectedComponent does the same on
tensors; a numpy mask at the input's own size needs no tensor round trip). Components are taken in 2D
for images and in 3D for volumes (26-connectivity in 3D, 8 in 2D), so a tumour that spans slices is
one component.

A setting is a dict: {"threshold": float, "largest": bool, "min_area": float}. `min_area` is a fraction of
one image's (or slice's) area: components with fewer pixels/voxels than that are removed (0 = off). A
fraction rather than a pixel count, so that one setting fits images of different sizes (BUSI, CBIS).
It is saved as RUN/postprocess.json by `medseg evaluate` and read by the Predictor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

FILE = "postprocess.json"


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels (0 = background) and count, with full connectivity in the mask's own dimensionality."""
    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))


def keep_largest(mask: np.ndarray) -> np.ndarray:
    labels, n = components(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 0:
        return mask.astype(bool)
    labels, n = components(mask)
    if n == 0:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def min_pixels(shape: tuple[int, ...], min_area: float) -> int:
    """`min_area` (fraction of one image's area, the last two axes) as a pixel/voxel count."""
    return max(1, int(round(min_area * shape[-1] * shape[-2])))


def apply(prob: np.ndarray, setting: dict) -> np.ndarray:
    """Probability map (2D image or 3D volume) -> hard mask under one post-processing setting."""
    mask = prob >= setting["threshold"]
    if setting.get("min_area"):
        mask = remove_small(mask, min_pixels(mask.shape, setting["min_area"]))
    if setting.get("largest"):
        mask = keep_largest(mask)
    return mask


def describe(setting: dict) -> str:
    parts = [f"threshold {setting['threshold']:g}"]
    if setting.get("min_area"):
        parts.append(f"components < {setting['min_area']:.2%} of the image removed")
    if setting.get("largest"):
        parts.append("largest component only")
    return ", ".join(parts)


def load(run: Path, plan: dict) -> dict:
    """The run's saved setting, or the plan's threshold with no post-processing."""
    path = Path(run) / FILE
    if path.is_file():
        return json.loads(path.read_text())["setting"]
    return {"threshold": float(plan.threshold), "largest": False, "min_area": 0.0}
