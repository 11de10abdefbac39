"""3D-IRCADb liver CT (IRCAD, 3D-IRCADb-01), per-patient DICOM series as the published zips unpack.

    3Dircadb1/3Dircadb1.<n>/PATIENT_DICOM/image_<k>                 CT slices, DICOM without extension
    3Dircadb1/3Dircadb1.<n>/MASKS_DICOM/<structure>/image_<k>       8-bit 0/255 masks, same geometry

`root` is the `3Dircadb1` folder or one `3Dircadb1.<n>` patient folder. One item per axial slice; the
target structure (default: liver) picks the MASKS_DICOM subfolder. Several targets make a multi-class data
set (`--target liver,livertumor1,livertumor2`); an entry may merge folders, by pattern or by name
(`--target liver,tumour=livertumor*` or `tumour=livertumor1+livertumor2`): each item then lists the mask
file of every structure its patient has, with its class in meta["mask_classes"]. Slices are ordered by their position
along the slice normal (ImagePositionPatient . (row x column direction)), never by file name: image_10
sorts before image_2 as text, and nothing promises that k follows the anatomy. Only headers are read
here; pixels (in HU, through RescaleSlope/Intercept) are read later by imageio.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import MedsegError
from ..io.images import read_dicom
from fnmatch import fnmatchcase

from .base import Adapter, DataSet, Item, class_specs, register

PATIENT_DIR, MASKS_DIR = "PATIENT_DICOM", "MASKS_DICOM"
DEFAULT_TARGET = "liver"
LIVER_WINDOW = {"mode": "window", "low": -100, "high": 400}  # abdominal soft-tissue window, HU
GAP_FACTOR = 1.5  # a step this many times the median slice spacing means a slice is missing


def _is_patient(d: Path) -> bool:
    return (d / PATIENT_DIR).is_dir() and (d / MASKS_DIR).is_dir()


def _natural(p: Path) -> list:
    """`3Dircadb1.2` before `3Dircadb1.10`."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _patient_dirs(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and _is_patient(d)), key=_natural)


def detect(root: Path) -> bool:
    return _is_patient(root) or bool(_patient_dirs(root))


def load(root: Path, target: str | None = None) -> DataSet:
    target = target or DEFAULT_TARGET
    dirs = [root] if _is_patient(root) else _patient_dirs(root)
    found = sorted({p.name for d in dirs for p in (d / MASKS_DIR).iterdir() if p.is_dir() and not p.name.startswith(".")})
    groups = _classes(root, target, found)
    items = [it for d in dirs for it in _patient_items(d, groups)]
    if items and all(it.meta.get("target_absent") for it in items):
        raise MedsegError(root, f"no structure {target!r} in any patient; available: {', '.join(found) or 'none'}")
    classes = [{"name": name, "value": k, "structures": folders}
               for k, (name, folders) in enumerate(groups, 1)] if len(groups) > 1 else []
    return DataSet(root, "ircadb", 1, items, unit="patient", intensity=dict(LIVER_WINDOW),
                   target_values=(), target=target, classes=classes)


def _classes(root: Path, target: str, found: list[str]) -> list[tuple[str, list[str]]]:
    """(class name, structure folders) per --target entry; a pattern takes every folder it matches in any
    patient. A plain name no patient has stays (load names it if no item has it)."""
    out = []
    for name, sources in class_specs(target, root):
        folders = []
        for src in sources:
            matched = [f for f in found if fnmatchcase(f, src)] if any(c in src for c in "*?[") else [src]
            if not matched:
                raise MedsegError(root, f"no structure matches {src!r} in any patient; available: "
                                        f"{', '.join(found) or 'none'}")
            folders += [f for f in matched if f not in folders]
        out.append((name, folders))
    if len(out) > 1:
        missing = [n for n, folders in out if not set(folders) & set(found)]
        if missing:
            raise MedsegError(root, f"no structure {missing[0]!r} in any patient; available: {', '.join(found) or 'none'}")
    return out


def _files(folder: Path) -> list[Path]:
    """The slice files of a series folder (hidden files such as macOS `._image_0` are not slices)."""
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=_natural)


def _vector(ds, keyword: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        vec = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        vec = None
    if vec is None or vec.shape != (n,):
        raise MedsegError(path, f"DICOM header has no valid {keyword} ({value!r}): file truncated, or not a CT slice")
    return vec


def _header(path: Path):
    """The header (no pixels) and its (rows, columns). A file too short for its uncompressed pixel data is
    truncated: say so now rather than in the middle of reading the data set."""
    ds = read_dicom(path, pixels=False)
    if "Rows" not in ds or "Columns" not in ds:
        raise MedsegError(path, "DICOM header has no Rows/Columns: file truncated, or not an image")
    rows, cols = int(ds.Rows), int(ds.Columns)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and not (syntax.is_encapsulated or syntax.is_deflated):
        need = rows * cols * int(ds.get("SamplesPerPixel", 1)) * int(ds.get("BitsAllocated", 8)) // 8
        size = path.stat().st_size
        if size < need:
            raise MedsegError(path, f"DICOM file truncated: {size} bytes, its {cols}x{rows} pixels alone need {need}")
    return ds, (rows, cols)


def ordered_series(images_dir: Path) -> tuple[list[tuple], float]:
    """The DICOM slices of one series folder in anatomical order (by ImagePositionPatient projected on the
    slice normal, not by file name), as (position, path, header, (rows, cols)), and the slice spacing.
    Duplicate positions and missing slices are errors naming the files."""
    files = _files(images_dir)
    if not files:
        raise MedsegError(images_dir, "no DICOM slices in this folder")
    slices = []  # (position along the normal, image file, header, rows x columns)
    normal = None
    for path in files:
        ds, size = _header(path)
        if normal is None:  # one series, one orientation: the first slice's normal orders them all
            iop = _vector(ds, "ImageOrientationPatient", 6, path)
            normal = np.cross(iop[:3], iop[3:])
        slices.append((float(_vector(ds, "ImagePositionPatient", 3, path) @ normal), path, ds, size))
    slices.sort(key=lambda s: s[0])
    positions = np.array([s[0] for s in slices])
    steps = np.diff(positions)
    for (z0, p0, *_), (z1, p1, *_), step in zip(slices, slices[1:], steps):
        if step < 1e-3:
            raise MedsegError(p1, f"duplicate slice position z={z1:.3f} mm, the same as {p0.name}")
    if len(steps):
        spacing_z = float(np.median(steps))
        for (z0, p0, *_), (z1, p1, *_), step in zip(slices, slices[1:], steps):
            if step > GAP_FACTOR * spacing_z:
                raise MedsegError(images_dir, f"missing slice between z={z0:.3f} ({p0.name}) and z={z1:.3f} "
                                              f"({p1.name}): step {step:.3f} mm, median spacing {spacing_z:.3f} mm")
    else:  # a single slice: the header's word is all there is
        first = slices[0][2]
        spacing_z = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 0.0)
    return slices, spacing_z


def _patient_items(d: Path, groups: list[tuple[str, list[str]]]) -> list[Item]:
    images_dir, masks_root = d / PATIENT_DIR, d / MASKS_DIR
    structures = sorted(p.name for p in masks_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    # A patient without this structure (not every 3D-IRCADb patient has livertumor1, say) has an empty
    # mask for it; only a target that no patient has is an error (raised by `load`).
    present = [(k, f) for k, (_, folders) in enumerate(groups, 1) for f in folders if f in structures]
    absent = not present
    multi = {"mask_classes": tuple(k for k, _ in present)} if len(groups) > 1 else {}
    slices, spacing_z = ordered_series(images_dir)
    items = []
    for index, (_, path, ds, (rows, cols)) in enumerate(slices):
        dy, dx = _vector(ds, "PixelSpacing", 2, path)  # DICOM order: between rows, then between columns
        meta = {"spacing": [float(dx), float(dy), spacing_z]}
        if absent:
            items.append(Item(path, (), d.name, index, {**meta, "target_absent": True}))
            continue
        masks = tuple(masks_root / f / path.name for _, f in present)
        for mask in masks:
            _check_mask(mask, path, rows, cols)
        items.append(Item(path, masks, d.name, index, {**meta, **multi}))
    return items


def _check_mask(mask: Path, image: Path, rows: int, cols: int) -> None:
    if not mask.is_file():
        raise MedsegError(mask, f"mask file missing for image slice {image}")
    _, (m_rows, m_cols) = _header(mask)
    if (m_rows, m_cols) != (rows, cols):
        raise MedsegError(mask, f"mask is {m_cols}x{m_rows} but its image {image.name} is {cols}x{rows}")


ADAPTER = register(Adapter(
    "ircadb", "3D-IRCADb 3Dircadb1[/3Dircadb1.<n>] with PATIENT_DICOM/image_<k> + MASKS_DICOM/<structure>/image_<k>",
    detect, load, targets=True))
