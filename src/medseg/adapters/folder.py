"""Generic 2D folder: `<stem>.<ext>` with `<stem>_mask.<ext>` side by side, in any sub-folders.

Each image is its own case. Used by `medseg demo` and for data that follow no published layout.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MedsegError
from ..imageio import IMAGE_SUFFIXES
from .base import Adapter, DataSet, Item, register


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and "_mask" not in p.stem and p.is_file())


def _mask_of(img: Path) -> Path | None:
    for suffix in (img.suffix, *IMAGE_SUFFIXES):
        m = img.with_name(f"{img.stem}_mask{suffix}")
        if m.is_file():
            return m
    return None


def detect(root: Path) -> bool:
    return any(_mask_of(p) for p in _images(root)[:50])


def load(root: Path) -> DataSet:
    items, channels = [], 1
    for img in _images(root):
        mask = _mask_of(img)
        if mask is None:
            raise MedsegError(img, f"image has no mask (expected {img.stem}_mask{img.suffix})")
        case = str(img.relative_to(root).with_suffix(""))
        items.append(Item(img, (mask,), case, 0, {}))
    return DataSet(root, "folder", channels, items, unit="case")


ADAPTER = register(Adapter("folder", "<stem>.png with <stem>_mask.png side by side", detect, load, generic=True))
