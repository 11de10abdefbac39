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


def resize_image(img: torch.Tensor, size: int) -> torch.Tensor:
    """BxCxHxW -> BxCxsize x size, antialiased when shrinking."""
    if img.shape[-2:] == (size, size):
        return img
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Bx1xHxW {0,1} -> Bx1xsize x size {0,1} (area-weighted, then halved: smoother than nearest)."""
    if mask.shape[-2:] == (size, size):
        return mask
    return (resize_image(mask.float(), size) >= 0.5).float()


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
