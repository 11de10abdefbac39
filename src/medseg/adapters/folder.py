"""Generic 2D folder, for data that follow no published layout (and `medseg demo`). Two layouts:

    <root>/**/<stem>.<ext> with <stem>_mask.<ext> side by side (further masks <stem>_mask_1.<ext> ...: union)
    <root>/images/**/<stem>.<ext> with <root>/masks/**/<stem>.<ext> (or labels/; `<stem>_mask` also matches)

<ext>: png, jpg, tif, bmp; an image and its mask may differ in extension (a JPEG photo with a PNG mask).
Each image is its own case (the metric unit). The split unit is the image too, unless the images sit in
per-patient folders: when they lie in at least GROUP_MIN_FOLDERS folders below the root (not at its top)
and some folder holds several, the images of one folder (the first level below the root if that alone has
enough folders, else the image's own folder) go to the same side of the split, so that slices or views of
one patient never sit on both sides. Fewer folders are read as classes (benign/, malignant/), not patients.
Masks are binary (0/1, 0/255, thresholded at half their maximum), or label maps
with a few values (0, 1, 2, ...): then by default (`--target all`) each non-zero value is its own class (a
multi-class run, the class named by its value), `--target V` picks value V, `--target 1,2` or `--target
organ=1+2,lesion=3` picks and merges classes, and `--target foreground` makes every non-zero value one
(binary); a half-maximum threshold would silently keep only the highest label.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import MedsegError
from ..io.images import IMAGE_SUFFIXES, read_raw
from .base import ALL, Adapter, DataSet, Item, class_specs, register

MASK_DIRS = ("masks", "labels")
LOSSY = (".jpg", ".jpeg")  # JPEG masks carry compression noise: their values are not labels
MAX_LABELS = 64  # more distinct values than this are grey levels of a soft mask, not labels
SAMPLE = 64  # masks read to tell binary from label-map masks
GROUP_MIN_FOLDERS = 10  # this many image folders or more are patients (a split unit), fewer are classes
_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?$")


def _files(folder: Path) -> list[Path]:
    """2D image files below `folder`; hidden files (macOS `._x.png`, `.DS_Store`) are not data."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _paired_dirs(root: Path) -> tuple[Path, Path] | None:
    images = root / "images"
    if images.is_dir():
        for name in MASK_DIRS:
            if (root / name).is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.rglob("*")):
                return images, root / name
    return None


def _images(root: Path) -> list[Path]:
    return [p for p in _files(root) if "_mask" not in p.stem]


def _mask_of(img: Path) -> Path | None:
    for suffix in (img.suffix, *IMAGE_SUFFIXES):
        m = img.with_name(f"{img.stem}_mask{suffix}")
        if m.is_file():
            return m
    return None


def detect(root: Path) -> bool:
    return _paired_dirs(root) is not None or any(_mask_of(p) for p in _images(root)[:50])


def _key(path: Path, base: Path, stem: str | None = None) -> str:
    return (path.parent.relative_to(base) / (stem or path.stem)).as_posix()


def _unique(files: list[tuple[str, Path]], what: str) -> dict[str, Path]:
    """key -> file; the same name twice (`a.png` and `a.jpg`) is ambiguous, so an error."""
    out: dict[str, Path] = {}
    for key, p in files:
        if key in out:
            raise MedsegError(p, f"duplicate {what}: {out[key].name} has the same name with another extension")
        out[key] = p
    return out


def _side_by_side(root: Path) -> list[Item]:
    files = _files(root)
    images = _unique([(_key(p, root), p) for p in files if "_mask" not in p.stem], "image")
    masks: dict[str, list[Path]] = {}
    for p in _unique([(_key(p, root), p) for p in files if _MASK.match(p.stem)], "mask").values():
        masks.setdefault(_key(p, root, _MASK.match(p.stem)["stem"]), []).append(p)
    items = []
    for key, img in images.items():
        if key not in masks:
            raise MedsegError(img, f"image has no mask (expected {img.stem}_mask{img.suffix})")
        items.append(Item(img, tuple(sorted(masks.pop(key))), key, 0, {}))
    for key, orphans in masks.items():
        raise MedsegError(sorted(orphans)[0], f"mask has no image (expected {Path(key).name}.<png|jpg|tif|bmp>)")
    return items


def _paired(images_dir: Path, masks_dir: Path) -> list[Item]:
    images = _unique([(_key(p, images_dir), p) for p in _files(images_dir)], "image")
    masks = _unique([(_key(p, masks_dir, _MASK.sub(r"\g<stem>", p.stem)), p) for p in _files(masks_dir)], "mask")
    items = []
    for key, img in images.items():
        if key not in masks:
            raise MedsegError(img, f"image has no mask (expected {masks_dir.name}/{key}.<png|jpg|tif|bmp>)")
        items.append(Item(img, (masks.pop(key),), key, 0, {}))
    for key, orphan in masks.items():
        raise MedsegError(orphan, f"mask has no image (expected {images_dir.name}/{key}.<png|jpg|tif|bmp>)")
    return items


def _group_by_folder(items: list[Item]) -> list[Item]:
    """Items with `patient` set to their patient folder where the folders look like patients (see above)."""
    keys = [Path(it.case) for it in items]
    if any(len(k.parts) < 2 for k in keys):  # some images at the top: no folder structure to trust
        return items
    for level in (lambda k: k.parts[0], lambda k: k.parent.as_posix()):
        groups = [level(k) for k in keys]
        if len(set(groups)) >= GROUP_MIN_FOLDERS and len(set(groups)) < len(groups):
            return [replace(it, patient=g) for it, g in zip(items, groups)]
    return items


def _values(paths: list[Path]) -> set[int]:
    found: set[int] = set()
    for p in paths:
        arr = read_raw(p)
        found |= {int(v) for v in np.unique(arr.max(axis=-1) if arr.ndim == 3 else arr)}
    return found


def mask_values(items: list[Item]) -> tuple[set[int], bool]:
    """(values of the lossless masks, whether they are label maps). A spread sample of masks decides;
    label maps are then read in full, so that no rare label is missed."""
    paths = [m for it in items for m in it.masks if m.suffix.lower() not in LOSSY]
    if not paths:
        return set(), False
    sample = [paths[i] for i in dict.fromkeys(np.linspace(0, len(paths) - 1, min(SAMPLE, len(paths))).round().astype(int))]
    found = _values(sample)
    labels = 2 < len(found) <= MAX_LABELS
    if labels and len(sample) < len(paths):
        found |= _values([p for p in paths if p not in set(sample)])
    return found, labels


def load(root: Path, target: str | None = None) -> DataSet:
    dirs = _paired_dirs(root)
    items = _group_by_folder(_paired(*dirs) if dirs else _side_by_side(root))
    found, labels = mask_values(items)
    nonzero = tuple(sorted(v for v in found if v != 0))
    if target in (None, ALL) and labels:
        classes = [{"name": str(v), "value": v, "labels": [v]} for v in nonzero]
        return DataSet(root, "folder", 1, items, unit="case", target=ALL, classes=classes)
    if target in (None, ALL, "foreground"):
        name, values = "foreground", (nonzero if labels else ())
    elif len(specs := class_specs(target, root)) > 1:
        classes = [{"name": n, "value": min(vals), "labels": vals}
                   for n, vals in ((n, sorted({_value(root, s, found, nonzero) for s in srcs})) for n, srcs in specs)]
        return DataSet(root, "folder", 1, items, unit="case", target=target, classes=classes)
    else:
        v = _value(root, target, found, nonzero)
        name, values = str(v), (v,)
    return DataSet(root, "folder", 1, items, unit="case", target_values=values, target=name)


def _value(root: Path, target: str, found: set[int], nonzero: tuple[int, ...]) -> int:
    """A --target entry of a folder of masks: a mask value that occurs."""
    if not re.fullmatch(r"\d+", target.strip()):
        raise MedsegError(root, f"--target for a folder of masks is a mask value (an integer), got {target!r}")
    if not found:
        raise MedsegError(root, "--target picks a mask value, but the masks are JPEG (lossy): their values are "
                                "not exact labels")
    v = int(target)
    if v == 0 or v not in found:
        raise MedsegError(root, f"no mask value {v}; values found: {', '.join(map(str, nonzero)) or 'none'}")
    return v


ADAPTER = register(Adapter(
    "folder", "<stem>.png with <stem>_mask.png side by side, or images/<stem>.png with masks/<stem>.png",
    detect, load, generic=True, targets=True))
