"""Preprocessing shared by training and inference, and the training augmentation (MONAI transforms).

Keys follow MONAI's convention: "image" (CxHxW float) and "label" (1xHxW float 0/1). Labels are only
ever moved by nearest-neighbour geometry and never touched by intensity transforms.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai import transforms as mt

IMAGE, LABEL = "image", "label"


def fitted_shape(hw: tuple[int, int], size: int, keep_aspect: bool) -> tuple[int, int]:
    """The size an image of height/width `hw` takes inside the size x size training frame."""
    if not keep_aspect:
        return size, size
    scale = size / max(hw)
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def resize_image(img: torch.Tensor, size: int, keep_aspect: bool = False) -> torch.Tensor:
    """BxCxHxW -> BxCxsize x size, antialiased when shrinking. With `keep_aspect` (mammograms, up to
    5000x3000) the longest side becomes `size` and the rest is zero-padded at the bottom/right, so the
    anatomy keeps its shape; `unfit` undoes it."""
    h, w = fitted_shape(img.shape[-2:], size, keep_aspect)
    if img.shape[-2:] != (h, w):
        img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    if (h, w) != (size, size):
        img = F.pad(img, (0, size - w, 0, size - h))
    return img


def resize_mask(mask: torch.Tensor, size: int, keep_aspect: bool = False) -> torch.Tensor:
    """Bx1xHxW {0,1} -> Bx1xsize x size {0,1} (area-weighted, then halved: smoother than nearest)."""
    if mask.shape[-2:] == (size, size):
        return mask
    return (resize_image(mask.float(), size, keep_aspect) >= 0.5).float()


def unfit(probs: torch.Tensor, hw: tuple[int, int], keep_aspect: bool = False) -> torch.Tensor:
    """Bx1xSxS probabilities in the training frame -> Bx1xHxW at the original image size."""
    h, w = fitted_shape(hw, probs.shape[-1], keep_aspect)
    probs = probs[..., :h, :w]
    if probs.shape[-2:] != tuple(hw):
        probs = F.interpolate(probs, size=tuple(hw), mode="bilinear", align_corners=False)
    return probs


def normalize(img: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Per-channel z-score with the training set's statistics (stored in the checkpoint)."""
    m = torch.tensor(mean, dtype=img.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=img.dtype).view(1, -1, 1, 1)
    return (img - m) / s


def augmentation(name: str) -> mt.Compose:
    """Training augmentation by name. Geometry applies to image and label together."""
    if name == "none":
        return mt.Compose([])
    geometric = [
        mt.RandFlipd(keys=[IMAGE, LABEL], spatial_axis=1, prob=0.5),  # left-right
        mt.RandAffined(keys=[IMAGE, LABEL], prob=0.7, rotate_range=np.pi / 12, scale_range=0.15,
                       translate_range=0.0, mode=("bilinear", "nearest"), padding_mode="zeros"),
    ]
    intensity = [
        mt.RandScaleIntensityd(keys=IMAGE, factors=0.15, prob=0.5),
        mt.RandShiftIntensityd(keys=IMAGE, offsets=0.1, prob=0.5),
        mt.RandAdjustContrastd(keys=IMAGE, gamma=(0.7, 1.5), prob=0.3),
        mt.RandGaussianNoised(keys=IMAGE, std=0.05, prob=0.2),
    ]
    if name == "default":
        return mt.Compose(geometric + intensity)
    if name == "flips":
        return mt.Compose(geometric[:1])
    raise ValueError(f"unknown augmentation {name!r}")
