"""The training sample stream: which images an epoch draws, augmented batches, and a prefetch thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch

from ..transforms import IMAGE, LABEL
from .arrays import Arrays


SAMPLING = {
    "lesion": "lesion_fraction of the draws among images with foreground, the rest uniformly",
    "area": "probability proportional to the mask area plus a floor of 10% of the mean area (Buda et al.)",
    "uniform": "every image equally likely",
}


def mask_areas(masks: torch.Tensor) -> np.ndarray:
    """Foreground pixels per image (N x 1 x S x S -> N): computed once per run, used by every epoch's draw."""
    return masks.flatten(1).sum(1, dtype=torch.int64).numpy()


def epoch_pool(areas: np.ndarray, empty_drop: float, rng: np.random.Generator) -> np.ndarray:
    """The images eligible this epoch: each empty-mask image is left out with probability `empty_drop`
    (the liver-CT workflow drops 60% of the mostly empty slices each epoch). Uses no randomness when 0."""
    if not 0.0 <= empty_drop <= 1.0:
        raise ValueError(f"empty_drop must be in [0, 1], got {empty_drop}")
    if empty_drop == 0.0:
        return np.arange(len(areas))
    keep = (areas > 0) | (rng.random(len(areas)) >= empty_drop)
    pool = np.flatnonzero(keep)
    return pool if len(pool) else np.arange(len(areas))  # never an empty epoch


def sample_indices(masks: torch.Tensor | np.ndarray, n: int, lesion_fraction: float, rng: np.random.Generator,
                   mode: str = "lesion", empty_drop: float = 0.0) -> np.ndarray:
    """Draw `n` indices (with replacement) for one epoch; deterministic given `rng`.

    `masks` is N x 1 x S x S, or the N mask areas from `mask_areas`. Modes (see SAMPLING): "lesion" draws
    `lesion_fraction` of them among images with foreground and the rest uniformly (the default, and with
    empty_drop 0 exactly the draws of earlier medseg versions), "area" with probability proportional to
    the mask area plus a floor, "uniform" uniformly. `empty_drop` first removes empty images (see epoch_pool).
    """
    areas = masks if isinstance(masks, np.ndarray) else mask_areas(masks)
    pool = epoch_pool(areas, empty_drop, rng)
    if mode == "lesion":
        pos = pool[areas[pool] > 0]
        n_pos = int(round(n * lesion_fraction)) if len(pos) else 0
        drawn = np.concatenate([rng.choice(pos, n_pos) if n_pos else np.empty(0, int),
                                pool[rng.integers(0, len(pool), n - n_pos)]])
        rng.shuffle(drawn)
        return drawn
    if mode == "area":
        a = areas[pool].astype(np.float64)
        w = a + max(0.1 * a.mean(), 1e-12)  # Buda et al.: weight = area + 10% of the mean area
        return pool[rng.choice(len(pool), n, p=w / w.sum())]
    if mode == "uniform":
        return pool[rng.integers(0, len(pool), n)]
    raise ValueError(f"unknown sampling {mode!r}; known: {', '.join(SAMPLING)}")


def class_presence(masks: torch.Tensor, n_classes: int) -> np.ndarray:
    """Multi-class runs: which classes (1..K) each image shows, N x K bool (computed once per run)."""
    flat = masks.flatten(1)
    return np.stack([(flat == k).any(1).numpy() for k in range(1, n_classes + 1)], 1)


def sample_balanced(presence: np.ndarray, n: int, lesion_fraction: float, rng: np.random.Generator,
                    empty_drop: float = 0.0) -> np.ndarray:
    """The "lesion" draws of a multi-class run, balanced over the foreground classes: `lesion_fraction` of
    the draws pick a class uniformly among those present this epoch, then an image that shows it, so a
    small class (tumour) is drawn as often as a large one (liver); the rest are uniform. (nnU-Net picks
    its foreground patch centres the same way: a class first, then a voxel of it.)"""
    pool = epoch_pool(presence.any(1).astype(np.int64), empty_drop, rng)
    present = [k for k in range(presence.shape[1]) if presence[pool, k].any()]
    n_pos = int(round(n * lesion_fraction)) if present else 0
    picks = rng.choice(present, n_pos) if n_pos else np.empty(0, int)
    drawn = [rng.choice(pool[presence[pool, k]], int((picks == k).sum())) for k in present]
    drawn = np.concatenate([*drawn, pool[rng.integers(0, len(pool), n - n_pos)]]).astype(np.int64)
    rng.shuffle(drawn)
    return drawn


def batches(arrays: Arrays, indices: np.ndarray, batch_size: int, augment) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield augmented (image float32, label float32) batches for the given sample indices."""
    if getattr(augment, "batched", False):  # a batch augmenter (transforms.BatchDefault): one call per batch
        for start in range(0, len(indices) - batch_size + 1, batch_size):
            idx = torch.as_tensor(np.asarray(indices[start:start + batch_size]), dtype=torch.long)
            yield augment(arrays.images[idx].float() / 255, arrays.targets(idx))
        return
    for start in range(0, len(indices) - batch_size + 1, batch_size):
        xs, ys = [], []
        for i in indices[start:start + batch_size]:
            out = augment({IMAGE: arrays.images[i].float() / 255, LABEL: arrays.targets(i)})
            xs.append(torch.as_tensor(out[IMAGE]))
            ys.append(torch.as_tensor(out[LABEL]))
        # plain tensors: MONAI returns MetaTensors, whose dispatch torch.compile's graphs do not take
        yield torch.stack(xs).as_subclass(torch.Tensor), torch.stack(ys).as_subclass(torch.Tensor)


class Prefetch:
    """Draw batches from `source` in a background thread, up to `depth` ahead of the training step.

    Training runs on one thread by default (train.DEFAULT_THREADS), so on a 2-core machine the second core
    can augment the next batches while the first runs the step; torch's kernels release the GIL. Written
    here rather than with torch's DataLoader: its workers are processes, each with its own copy of the
    augmenter, whose random state (saved in checkpoints for an exact resume) would then live elsewhere.

    `capture()` is called after each batch is made and `restore(state)` by `close()`: the augmenter is left
    in the state right after the last batch handed out, as if the batches ahead had never been drawn, so a
    checkpoint taken after `close()` resumes exactly."""

    _END = object()

    def __init__(self, source: Iterator, depth: int, capture: Callable[[], object],
                 restore: Callable[[object], None]):
        self._q: queue.Queue = queue.Queue(max(1, depth))
        self._stop = threading.Event()
        self._capture, self._restore = capture, restore
        self._after = capture()  # (closed before any batch was consumed: back to where it started)
        self._thread = threading.Thread(target=self._produce, args=(source,), name="medseg-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, source: Iterator) -> None:
        try:
            for batch in source:
                if not self._put((batch, self._capture())):
                    return
            self._put(self._END)
        except BaseException as e:  # handed to the consumer, which raises it in the training thread
            self._put(e)

    def __iter__(self) -> "Prefetch":
        return self

    def __next__(self):
        item = self._q.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        batch, self._after = item
        return batch

    def close(self) -> None:
        """Stop the thread and rewind the augmenter to just after the last batch consumed."""
        self._stop.set()
        self._thread.join()
        if self._after is not None:
            self._restore(self._after)
        self._after = None
