"""Items -> arrays at the training size (through an on-disk cache), and the training sample stream.

Data sets of these workflows (hundreds to a few thousand 2D images) fit in memory once resized, so
they are read and resized once, and then only augmented: decoding TIFF/PNG/DICOM every epoch would cost
more than the forward pass on a CPU. The resized arrays are cached on disk (uint8 .npy, memory-mapped)
under a key made of the source files (path, size, mtime) and every preprocessing setting, so a second
run, `evaluate` or a `prepare`d data set reads them in a second. A cache entry becomes visible only by
an atomic rename of its finished folder, so an interrupted `prepare` never leaves one that is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from .adapters import Item
from .errors import MedsegError
from .imageio import read_image, read_mask
from .transforms import IMAGE, LABEL, resize_image, resize_mask

CACHE_VERSION = 1
PREP_KEYS = ("channels", "image_size", "intensity", "target_values", "keep_aspect")


@dataclass
class Arrays:
    images: torch.Tensor  # N x C x S x S uint8 (value / 255 is the [0, 1] intensity)
    masks: torch.Tensor  # N x 1 x S x S uint8 {0, 1}
    items: list[Item]

    def float_images(self) -> torch.Tensor:
        return self.images.float() / 255

    def subset(self, keep: list[bool]) -> "Arrays":
        idx = torch.tensor([i for i, k in enumerate(keep) if k], dtype=torch.long)
        return Arrays(self.images[idx], self.masks[idx], [it for it, k in zip(self.items, keep) if k])


def cache_root() -> Path:
    """$MEDSEG_CACHE, else ~/.cache/medseg (never inside the user's data folder, which may be read-only)."""
    return Path(os.environ.get("MEDSEG_CACHE") or Path.home() / ".cache" / "medseg")


def prep_of(plan: dict) -> dict:
    """The preprocessing settings of a plan that decide the cached arrays."""
    return {k: plan.get(k) for k in PREP_KEYS}


def cache_key(items: list[Item], prep: dict) -> str:
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **prep}, sort_keys=True, default=list).encode())
    for it in items:
        for p in (it.image, *it.extra_channels, *it.masks):
            st = Path(p).stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}|{it.z}\n".encode())
    return h.hexdigest()[:24]


def read_item(it: Item, prep: dict) -> tuple[np.ndarray, np.ndarray]:
    """One item at its own size: (C x H x W float32 image in [0, 1], H x W bool mask)."""
    img = read_image(it.image, prep["channels"], prep.get("intensity"), it.z, it.extra_channels)
    mask = read_mask(list(it.masks), img.shape[1:], tuple(prep.get("target_values") or ()), it.z)
    return img, mask


def load_arrays(items: list[Item], prep: dict, label: str = "reading", cache: bool = True,
                skipped: list[dict] | None = None) -> Arrays:
    """The items at the training size, from the cache if an entry for exactly these files and settings
    exists, else read (with a progress bar) and cached. With a `skipped` list, an item that cannot be read
    is left out and recorded there ({"file", "problem"}) instead of stopping; such a set is not cached."""
    folder = cache_root() / cache_key(items, prep) if cache and items else None
    if folder is not None and (folder / "done.json").is_file():
        return Arrays(torch.from_numpy(np.load(folder / "images.npy", mmap_mode="c")),
                      torch.from_numpy(np.load(folder / "masks.npy", mmap_mode="c")), items)
    size, keep = prep["image_size"], bool(prep.get("keep_aspect"))
    images = torch.empty((len(items), prep["channels"], size, size), dtype=torch.uint8)
    masks = torch.empty((len(items), 1, size, size), dtype=torch.uint8)
    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=len(items))
        good = []
        for i, it in enumerate(items):
            try:
                img, mask = read_item(it, prep)
            except MedsegError as e:
                if skipped is None:
                    raise
                skipped.append({"file": e.path or str(it.image), "problem": e.problem})
                bar.advance(task)
                continue
            good.append(i)
            img = resize_image(torch.from_numpy(img)[None], size, keep)[0]
            images[i] = (img * 255).round().clamp(0, 255).to(torch.uint8)
            masks[i] = resize_mask(torch.from_numpy(mask)[None, None], size, keep)[0].to(torch.uint8)
            bar.advance(task)
    if len(good) < len(items):
        keep_idx = torch.tensor(good, dtype=torch.long)
        return Arrays(images[keep_idx], masks[keep_idx], [items[i] for i in good])
    arrays = Arrays(images, masks, items)
    if folder is not None:
        _write_cache(folder, arrays, prep)
    return arrays


def neighbour_index(items: list[Item], k: int) -> list[list[int]]:
    """For 2.5D input: for each item, the positions (in `items`) of the slices k below .. k above it in
    the same case, ordered by slice index; at a volume's edge the edge slice repeats."""
    by_case: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_case.setdefault(it.case, []).append(i)
    out: list[list[int]] = [[] for _ in items]
    for members in by_case.values():
        members = sorted(members, key=lambda i: items[i].index)
        for pos, i in enumerate(members):
            out[i] = [members[min(max(pos + d, 0), len(members) - 1)] for d in range(-k, k + 1)]
    return out


def with_neighbours(arrays: Arrays, k: int) -> Arrays:
    """Stack each slice with its k neighbours on either side as channels (C -> C * (2k + 1))."""
    if k <= 0:
        return arrays
    idx = torch.tensor(neighbour_index(arrays.items, k), dtype=torch.long).reshape(len(arrays.items), 2 * k + 1)
    images = arrays.images[idx.flatten()].reshape(len(arrays.items), arrays.images.shape[1] * (2 * k + 1),
                                                  *arrays.images.shape[-2:])
    return Arrays(images, arrays.masks, arrays.items)


def prepare(data: str | Path, layout: str = "auto", target: str | None = None, preset: str | None = None,
            settings: dict | None = None, quiet: bool = False) -> dict:
    """Build the cache entry that `train` with the same data and settings will read (`medseg prepare`)."""
    import time

    from .adapters import load_dataset
    from .plan import data_settings, settings_for
    t0 = time.perf_counter()
    ds = load_dataset(data, layout, target)
    plan = settings_for(ds.layout, preset, settings)
    plan.update(data_settings(ds, plan))
    prep = prep_of(plan)
    folder = cache_root() / cache_key(ds.items, prep)
    hit = (folder / "done.json").is_file()
    arrays = load_arrays(ds.items, prep, f"preparing {len(ds.items)} images")
    return {"data": str(ds.root), "layout": ds.layout, "images": len(arrays.items), "cache": str(folder),
            "already_cached": hit, "seconds": round(time.perf_counter() - t0, 1),
            "megabytes": round(sum(f.stat().st_size for f in folder.iterdir()) / 2**20, 1), "prep": prep}


def _write_cache(folder: Path, arrays: Arrays, prep: dict) -> None:
    """Write into a temp folder beside the entry, then rename it into place (atomic on one file system)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        np.save(tmp / "images.npy", arrays.images.numpy())
        np.save(tmp / "masks.npy", arrays.masks.numpy())
        (tmp / "done.json").write_text(json.dumps({**prep, "n": len(arrays.items)}, default=list) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same entry first: theirs is as good as ours
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (of the [0, 1] intensities) over uint8 images: the plan's normalisation."""
    x = (images.float() / 255).transpose(0, 1).reshape(images.shape[1], -1)
    return x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()


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


def batches(arrays: Arrays, indices: np.ndarray, batch_size: int, augment) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield augmented (image float32, label float32) batches for the given sample indices."""
    if getattr(augment, "batched", False):  # a batch augmenter (transforms.BatchDefault): one call per batch
        for start in range(0, len(indices) - batch_size + 1, batch_size):
            idx = torch.as_tensor(np.asarray(indices[start:start + batch_size]), dtype=torch.long)
            yield augment(arrays.images[idx].float() / 255, arrays.masks[idx].float())
        return
    for start in range(0, len(indices) - batch_size + 1, batch_size):
        xs, ys = [], []
        for i in indices[start:start + batch_size]:
            out = augment({IMAGE: arrays.images[i].float() / 255, LABEL: arrays.masks[i].float()})
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
