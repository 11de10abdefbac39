"""BUSI breast ultrasound (Al-Dhabyani et al. 2020), `Dataset_BUSI_with_GT` layout.

    Dataset_BUSI_with_GT/<class>/<class> (<n>).png            RGB ultrasound image
    Dataset_BUSI_with_GT/<class>/<class> (<n>)_mask.png       1-bit, 8-bit grey or RGB mask
    Dataset_BUSI_with_GT/<class>/<class> (<n>)_mask_1.png ... further lesions: the target is the union

Classes: benign, malignant, normal (normal masks are empty). The class comes from the folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import MedsegError
from .base import Adapter, DataSet, Item, register

CLASSES = ("benign", "malignant", "normal")
_NAME = re.compile(r"^(?P<cls>[a-z]+) \((?P<n>\d+)\)$")


def detect(root: Path) -> bool:
    return any((root / c).is_dir() and any((root / c).glob(f"{c} (*)_mask*.png")) for c in CLASSES)


def load(root: Path) -> DataSet:
    items: list[Item] = []
    for cls in CLASSES:
        folder = root / cls
        if not folder.is_dir():
            continue
        masks_by_stem: dict[str, list[Path]] = {}
        for m in folder.glob("*_mask*.png"):
            masks_by_stem.setdefault(m.stem.split("_mask")[0], []).append(m)
        images = sorted((p for p in folder.glob("*.png") if "_mask" not in p.stem), key=lambda p: _number(p))
        for img in images:
            masks = sorted(masks_by_stem.pop(img.stem, []))
            if not masks:
                raise MedsegError(img, f"image has no mask (expected {img.stem}_mask.png)")
            items.append(Item(img, tuple(masks), img.stem, 0, {"class": cls}))
        for stem, orphans in masks_by_stem.items():
            raise MedsegError(orphans[0], f"mask has no image (expected {stem}.png)")
    return DataSet(root, "busi", 1, items, unit="case", stratify_key="class")


def _number(p: Path) -> tuple[int, str]:
    m = _NAME.match(p.stem)
    return (int(m["n"]) if m else 1 << 30, p.name)


ADAPTER = register(Adapter("busi", "Dataset_BUSI_with_GT/<class>/<class> (<n>).png + _mask*.png", detect, load))
