"""3D patch training and sliding-window inference, for the 3D U-Net ("unet3d").

The slices of each case, read and cached at the training size exactly as for 2D training, are stacked in
slice order into one C x D x S x S volume per case. Training draws patches (the plan's `patch_size`,
D x H x W); `lesion_fraction` of them are centred on a foreground voxel and the rest anywhere, so the
lesion is seen in a fixed share of patches however small it is (class-balanced sampling, as nnU-Net's
oversampling of foreground); in a multi-class run a centred draw first picks one of the case's classes
uniformly, then a voxel of it, so a small tumour class is centred on as often as the liver. Validation and prediction run MONAI's sliding-window inference over the
whole volume with Gaussian-weighted overlapping patches (inference.engines.volume_probs).

Patch centres are drawn up front for the whole epoch into one N x 4 array (case, z, y, x), from the
run's numpy generator: that array is what a checkpoint stores, so a resumed epoch replays the same
patches. (MONAI's RandCropByPosNegLabeld draws its centres inside the transform, out of reach of the
checkpoint: that is why this sampler is written here.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .arrays import Arrays
from ..transforms import IMAGE, LABEL



@dataclass
class Volumes:
    images: list[torch.Tensor]  # per case: C x D x S x S uint8
    masks: list[torch.Tensor]  # per case: 1 x D x S x S uint8 {0, 1} (multi-class: class indices)
    cases: list[str]
    foreground: list[np.ndarray]  # per case: flat indices of the foreground voxels (for centred draws)
    by_class: list[list[np.ndarray]] | None = None  # multi-class: per case, per present class, its voxels

    def __len__(self) -> int:
        return len(self.cases)


def to_volumes(arrays: Arrays, n_classes: int = 0) -> Volumes:
    """Arrays of slices -> one volume per case, slices ordered by their index in the case; with n_classes
    (a multi-class run) each case's voxels are also indexed per class."""
    by_case: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(arrays.items):
        by_case[it.case].append(i)
    images, masks, cases, fg = [], [], [], []
    for case in sorted(by_case):
        idx = torch.tensor(sorted(by_case[case], key=lambda i: arrays.items[i].index), dtype=torch.long)
        images.append(arrays.images[idx].permute(1, 0, 2, 3).contiguous())
        m = arrays.masks[idx].permute(1, 0, 2, 3).contiguous()
        masks.append(m)
        fg.append(np.flatnonzero(m[0].numpy()))
        cases.append(case)
    by_class = None
    if n_classes:
        flat = [m[0].flatten().numpy() for m in masks]
        by_class = [[v for v in (np.flatnonzero(f == k) for k in range(1, n_classes + 1)) if len(v)] for f in flat]
    return Volumes(images, masks, cases, fg, by_class)


def sample_patches(vols: Volumes, n: int, fg_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """n patch centres (case, z, y, x), cases drawn uniformly; `fg_fraction` of draws centred on foreground
    (in cases that have some), the rest on any voxel. Deterministic given `rng`."""
    case = rng.integers(0, len(vols), n)
    on_fg = rng.random(n) < fg_fraction
    out = np.empty((n, 4), dtype=np.int64)
    out[:, 0] = case
    for j in range(n):
        c = int(case[j])
        shape = vols.masks[c].shape[1:]
        fg = vols.foreground[c]
        if vols.by_class is not None and on_fg[j] and len(fg):  # multi-class: a class first, then its voxel
            fg = vols.by_class[c][rng.integers(0, len(vols.by_class[c]))]
        flat = fg[rng.integers(0, len(fg))] if on_fg[j] and len(fg) else rng.integers(0, int(np.prod(shape)))
        out[j, 1:] = np.unravel_index(int(flat), shape)
    return out


def crop(vol: torch.Tensor, centre, size: tuple[int, int, int]) -> torch.Tensor:
    """C x D x H x W -> C x size patch around `centre`, zero beyond the volume's edges."""
    out = torch.zeros((vol.shape[0], *size), dtype=vol.dtype)
    src, dst = [], []
    for c, s, n in zip(centre, size, vol.shape[1:]):
        lo = int(c) - s // 2
        a, b = max(lo, 0), min(lo + s, n)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[(slice(None), *dst)] = vol[(slice(None), *src)]
    return out


def patch_batches(vols: Volumes, centres: np.ndarray, batch_size: int, size: tuple[int, int, int],
                  augment) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Augmented (B x C x D x H x W image float32 in [0, 1], B x 1 x D x H x W label) batches."""
    for start in range(0, len(centres) - batch_size + 1, batch_size):
        xs, ys = [], []
        for c, z, y, x in centres[start:start + batch_size]:
            out = augment({IMAGE: crop(vols.images[c], (z, y, x), size).float() / 255,
                           LABEL: crop(vols.masks[c], (z, y, x), size).float()})
            xs.append(torch.as_tensor(out[IMAGE]))
            ys.append(torch.as_tensor(out[LABEL]))
        yield torch.stack(xs), torch.stack(ys)
