"""Items -> arrays in memory at the training size, and the training sample stream.

Data sets of these workflows (hundreds to a few thousand 2D images) fit in memory once resized, so
they are read once, resized once, and then only augmented: reading TIFF/PNG every epoch would cost more
than the forward pass on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from rich.progress import Progress

from .adapters import Item
from .imageio import read_image, read_mask
from .transforms import IMAGE, LABEL, resize_image, resize_mask


@dataclass
class Arrays:
    images: torch.Tensor  # N x C x S x S float16 in [0, 1]
    masks: torch.Tensor  # N x 1 x S x S uint8 {0, 1}
    items: list[Item]


def load_arrays(items: list[Item], channels: int, size: int, label: str = "reading") -> Arrays:
    images = torch.empty((len(items), channels, size, size), dtype=torch.float16)
    masks = torch.empty((len(items), 1, size, size), dtype=torch.uint8)
    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=len(items))
        for i, it in enumerate(items):
            img = read_image(it.image, channels)
            mask = read_mask(list(it.masks), img.shape[1:])
            images[i] = resize_image(torch.from_numpy(img)[None], size)[0].to(torch.float16)
            masks[i] = resize_mask(torch.from_numpy(mask)[None, None], size)[0].to(torch.uint8)
            bar.advance(task)
    return Arrays(images, masks, items)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over a set of images (the normalisation stored in the plan)."""
    x = images.float().transpose(0, 1).reshape(images.shape[1], -1)
    return x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()


def sample_indices(masks: torch.Tensor, n: int, lesion_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Draw `n` indices: `lesion_fraction` of them among images with foreground, the rest uniformly."""
    has = masks.flatten(1).any(1).numpy()
    pos = np.flatnonzero(has)
    n_pos = int(round(n * lesion_fraction)) if len(pos) else 0
    drawn = np.concatenate([rng.choice(pos, n_pos) if n_pos else np.empty(0, int), rng.integers(0, len(has), n - n_pos)])
    rng.shuffle(drawn)
    return drawn


def batches(arrays: Arrays, indices: np.ndarray, batch_size: int, augment) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield augmented (image float32, label float32) batches for the given sample indices."""
    for start in range(0, len(indices) - batch_size + 1, batch_size):
        xs, ys = [], []
        for i in indices[start:start + batch_size]:
            out = augment({IMAGE: arrays.images[i].float(), LABEL: arrays.masks[i].float()})
            xs.append(torch.as_tensor(out[IMAGE]))
            ys.append(torch.as_tensor(out[LABEL]))
        yield torch.stack(xs), torch.stack(ys)
