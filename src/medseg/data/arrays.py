"""Items -> arrays at the training size, through an on-disk cache; 2.5D neighbour stacking.

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
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from ..adapters import Item
from ..errors import MedsegError, check_output, writing
from ..planning.plan import Plan
from ..planning.planner import data_settings, settings_for
from ..io.images import read_image, read_labels, read_mask
from ..io.intensity import scale_case
from ..transforms import resize_image, resize_labels, resize_mask

CACHE_VERSION = 1
PREP_KEYS = ("channels", "image_size", "intensity", "target_values", "keep_aspect", "intensity_norm", "body_mask",
             "classes", "soft_labels")


@dataclass
class Arrays:
    images: torch.Tensor  # N x C x S x S uint8 (value / 255 is the [0, 1] intensity)
    masks: torch.Tensor  # N x 1 x S x S uint8 {0, 1}; a multi-class run's: class indices 0..K
    items: list[Item]
    # soft_labels: N x 1 x S x S uint8, each pixel's share inside the mask at the training size x 255
    shares: torch.Tensor | None = None

    def float_images(self) -> torch.Tensor:
        return self.images.float() / 255

    def targets(self, idx) -> torch.Tensor:
        """The training targets of samples `idx`, float: the shares in [0, 1] where the arrays have them (a
        soft_labels run), else the masks."""
        return self.masks[idx].float() if self.shares is None else self.shares[idx].float() / 255

    def subset(self, keep: list[bool]) -> "Arrays":
        idx = torch.tensor([i for i, k in enumerate(keep) if k], dtype=torch.long)
        return Arrays(self.images[idx], self.masks[idx], [it for it, k in zip(self.items, keep) if k],
                      None if self.shares is None else self.shares[idx])


def cache_root() -> Path:
    """$MEDSEG_CACHE, else ~/.cache/medseg (never inside the user's data folder, which may be read-only)."""
    return Path(os.environ.get("MEDSEG_CACHE") or Path.home() / ".cache" / "medseg")


def prep_of(plan: Plan) -> dict:
    """The preprocessing settings of a plan that decide the cached arrays."""
    return {k: getattr(plan, k) for k in PREP_KEYS}


def cache_key(items: list[Item], prep: dict) -> str:
    # settings at their value from before they existed leave the key as it was, so those caches stay valid
    # (a binary run: no "classes"; the body mask of before: "fraction"; no soft_labels)
    prep = {k: v for k, v in prep.items() if not (k in ("classes", "soft_labels") and not v)
            and not (k == "body_mask" and v in (None, "fraction"))}
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **prep}, sort_keys=True, default=list).encode())
    for it in items:
        for p in (it.image, *it.extra_channels, *it.masks):
            st = Path(p).stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}|{it.z}\n".encode())
    return h.hexdigest()[:24]


def read_item(it: Item, prep: dict) -> tuple[np.ndarray, np.ndarray]:
    """One item at its own size: (C x H x W float32 image in [0, 1], H x W bool mask); with classes in
    `prep` (a multi-class run) the mask is an H x W uint8 label map of class indices."""
    img = read_image(it.image, prep["channels"], prep.get("intensity"), it.z, it.extra_channels)
    if prep.get("classes"):  # with a class_index (evaluation.multiclass): that class's bool mask
        labels = read_labels(list(it.masks), img.shape[1:], prep["classes"], it.meta.get("mask_classes", ()), it.z)
        return img, (labels == prep["class_index"] if prep.get("class_index") else labels)
    mask = read_mask(list(it.masks), img.shape[1:], tuple(prep.get("target_values") or ()), it.z)
    return img, mask


def load_arrays(items: list[Item], prep: dict, label: str = "reading", cache: bool = True,
                skipped: list[dict] | None = None) -> Arrays:
    """The items at the training size, from the cache if an entry for exactly these files and settings
    exists, else read (with a progress bar) and cached. With a `skipped` list, an item that cannot be read
    is left out and recorded there ({"file", "problem"}) instead of stopping; such a set is not cached."""
    folder = cache_root() / cache_key(items, prep) if cache and items else None
    soft = bool(prep.get("soft_labels")) and not prep.get("classes")
    if folder is not None and (folder / "done.json").is_file():
        return Arrays(*(torch.from_numpy(np.load(folder / f"{name}.npy", mmap_mode="c")) for name in ("images", "masks")),
                      items, torch.from_numpy(np.load(folder / "shares.npy", mmap_mode="c")) if soft else None)
    if folder is not None:
        check_output(folder.parent)  # the entry will be written: check the cache folder before reading
    size, keep = prep["image_size"], bool(prep.get("keep_aspect"))
    images = torch.empty((len(items), prep["channels"], size, size), dtype=torch.uint8)
    masks = torch.empty((len(items), 1, size, size), dtype=torch.uint8)
    shares = torch.empty_like(masks) if soft else None
    good: list[int] = []
    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=len(items))
        for case in _by_case(items):  # a case is read whole: its intensity statistics span all its slices
            read = _read_case(items, case, prep, skipped, bar, task)
            scaled = scale_case([img for _, img, _ in read], prep.get("intensity_norm"), prep.get("body_mask"))
            for (i, _, mask), img in zip(read, scaled):
                good.append(i)
                img = resize_image(torch.from_numpy(img)[None], size, keep)[0]
                images[i] = (img * 255).round().clamp(0, 255).to(torch.uint8)
                if shares is None:
                    masks[i] = _resize_mask(mask, prep, size, keep)
                else:  # the area-weighted mask, which resize_mask halves to 0/1: one resize gives both
                    share = resize_image(torch.from_numpy(mask.astype(np.float32))[None, None], size, keep)[0]
                    masks[i] = (share >= 0.5).to(torch.uint8)
                    shares[i] = (share * 255).round().clamp(0, 255).to(torch.uint8)
    good.sort()
    if len(good) < len(items):
        readable = set(good)
        return Arrays(images, masks, items, shares).subset([i in readable for i in range(len(items))])
    arrays = Arrays(images, masks, items, shares)
    if folder is not None:
        _write_cache(folder, arrays, prep)
    return arrays


def _resize_mask(mask: np.ndarray, prep: dict, size: int, keep: bool) -> torch.Tensor:
    m = torch.from_numpy(mask)[None, None]
    if prep.get("classes"):
        return resize_labels(m, size, len(prep["classes"]), keep)[0]
    return resize_mask(m, size, keep)[0].to(torch.uint8)


def _by_case(items: list[Item]) -> list[list[int]]:
    """Item positions grouped by case, cases in order of first appearance."""
    cases: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        cases.setdefault(it.case, []).append(i)
    return list(cases.values())


def _read_case(items: list[Item], case: list[int], prep: dict, skipped: list[dict] | None, bar, task) -> list:
    """(position, image, mask) of a case's readable items; with a `skipped` list the others are recorded there."""
    out = []
    for i in case:
        try:
            img, mask = read_item(items[i], prep)
        except MedsegError as e:
            if skipped is None:
                raise
            skipped.append({"file": e.path or str(items[i].image), "problem": e.problem})
        else:
            out.append((i, img, mask))
        bar.advance(task)
    return out


def neighbour_positions(pos: int, k: int, n: int) -> list[int]:
    """2.5D input: the positions of the slices k below .. k above slice `pos` of an n-slice stack, in slice
    order; at the stack's edge the edge slice repeats. Training (neighbour_index) and prediction
    (stream_with_neighbours) both stack by this rule."""
    return [min(max(pos + d, 0), n - 1) for d in range(-k, k + 1)]


def neighbour_index(items: list[Item], k: int) -> list[list[int]]:
    """For each item, the positions (in `items`) of its 2.5D neighbours in the same case, by slice index."""
    by_case: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_case.setdefault(it.case, []).append(i)
    out: list[list[int]] = [[] for _ in items]
    for members in by_case.values():
        members = sorted(members, key=lambda i: items[i].index)
        for pos, i in enumerate(members):
            out[i] = [members[j] for j in neighbour_positions(pos, k, len(members))]
    return out


def stream_with_neighbours(slices: Iterable[np.ndarray], k: int, n: int) -> Iterator[np.ndarray]:
    """n C x H x W slices in order -> each with its 2.5D neighbours as channels (C -> C * (2k + 1)), holding
    only the 2k + 1 slices needed at a time (prediction streams whole volumes)."""
    if k <= 0:
        yield from slices
        return
    it, held = iter(slices), {}
    for pos in range(n):
        need = neighbour_positions(pos, k, n)
        while len(held) == 0 or max(held) < need[-1]:
            held[len(held) and max(held) + 1] = next(it)
        yield np.concatenate([held[j] for j in need])
        for j in [j for j in held if j < pos + 1 - k]:
            del held[j]


def with_neighbours(arrays: Arrays, k: int) -> Arrays:
    """Stack each slice with its k neighbours on either side as channels (C -> C * (2k + 1))."""
    if k <= 0:
        return arrays
    idx = torch.tensor(neighbour_index(arrays.items, k), dtype=torch.long).reshape(len(arrays.items), 2 * k + 1)
    images = arrays.images[idx.flatten()].reshape(len(arrays.items), arrays.images.shape[1] * (2 * k + 1),
                                                  *arrays.images.shape[-2:])
    return Arrays(images, arrays.masks, arrays.items, arrays.shares)


def prepare(data: str | Path, layout: str = "auto", target: str | None = None, preset: str | None = None,
            settings: dict | None = None, quiet: bool = False) -> dict:
    """Build the cache entry that `train` with the same data and settings will read (`medseg prepare`)."""
    import time

    from ..adapters import load_dataset
    t0 = time.perf_counter()
    check_output(cache_root())
    ds = load_dataset(data, layout, target)
    s = settings_for(ds.layout, preset, settings)
    s.update(data_settings(ds, s))
    prep = {k: s[k] for k in PREP_KEYS}
    folder = cache_root() / cache_key(ds.items, prep)
    hit = (folder / "done.json").is_file()
    arrays = load_arrays(ds.items, prep, f"preparing {len(ds.items)} images")
    return {"data": str(ds.root), "layout": ds.layout, "images": len(arrays.items), "cache": str(folder),
            "already_cached": hit, "seconds": round(time.perf_counter() - t0, 1),
            "megabytes": round(sum(f.stat().st_size for f in folder.iterdir()) / 2**20, 1), "prep": prep}


def _write_cache(folder: Path, arrays: Arrays, prep: dict) -> None:
    """Write into a temp folder beside the entry, then rename it into place (atomic on one file system); a full
    disk ends in one WriteFailed naming the entry, with no entry and no temp folder left."""
    with writing(folder, "no cache entry was written"):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            np.save(tmp / "images.npy", arrays.images.numpy())
            np.save(tmp / "masks.npy", arrays.masks.numpy())
            if arrays.shares is not None:
                np.save(tmp / "shares.npy", arrays.shares.numpy())
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
