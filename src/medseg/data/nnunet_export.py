"""`medseg export-nnunet`: any data set medseg reads -> an nnU-Net v2 raw dataset, to compare with the
field's reference pipeline on exactly the same images and masks.

    OUT/Dataset<id:03d>_<name>/dataset.json
    OUT/Dataset<id:03d>_<name>/imagesTr/<case>_<channel:04d>.nii.gz
    OUT/Dataset<id:03d>_<name>/labelsTr/<case>.nii.gz            uint8 0/1 (the data set's target); several
                                                                  classes: 0..K, dataset.json naming each

Slice data sets (unit "patient": LGG, 3D-IRCADb) become one 3D volume per case, slices stacked in index
order; single 2D images (unit "case": BUSI) become 1 x H x W volumes with a z spacing of 999, nnU-Net's own
convention for 2D data (its 2D readers report spacing (999, 1, 1)), so it plans them as 2D. Images keep
their stored values (nnU-Net normalises itself, per channel name: "CT" selects its CT scheme).
The dataset is written into a hidden temp folder beside its final place and renamed at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..adapters import DataSet, Item, channel_names, load_dataset
from ..adapters.base import spacing_xyz
from ..errors import MedsegError, check_output
from ..io.images import read_labels, read_mask

Z_SPACING_2D = 999.0
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def safe_id(text: str) -> str:
    """A case id nnU-Net and every file system accept: letters, digits, _ and - only
    (`benign (12)` -> `benign_12`, `sub/x.png` -> `sub_x_png`)."""
    return re.sub(r"[^A-Za-z0-9-]+", "_", text).strip("_") or "case"


def _cases(ds: DataSet) -> list[tuple[str, list[Item]]]:
    """(case id, items in slice order): a volume per case for slice data sets, one image per case else.
    Ids are made safe and, where two become equal, numbered."""
    groups: dict[str, list[Item]] = defaultdict(list)
    if ds.unit == "patient":
        for it in ds.items:
            groups[it.case].append(it)
        raw = [(case, sorted(items, key=lambda i: i.index)) for case, items in groups.items()]
    else:
        raw = [(it.case if it.z is None else f"{it.case}_{it.z}", [it]) for it in ds.items]
    out, used = [], set()
    for case, items in raw:
        cid, n = safe_id(case), 2
        while cid in used:
            cid, n = f"{safe_id(case)}_{n}", n + 1
        used.add(cid)
        out.append((cid, items))
    return out


def _stored_type(arr: np.ndarray) -> np.ndarray:
    """Keep the stored values, in a type NIfTI writers and nnU-Net read everywhere: CT in HU that came
    through a float rescale goes back to int16; bool -> uint8; float64 -> float32."""
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if arr.size and np.isfinite(arr).all() and arr.min() >= -32768 and arr.max() <= 32767 \
                and np.array_equal(arr, np.rint(arr)):
            return arr.astype(np.int16)
        return arr.astype(np.float32)
    if arr.dtype == np.int64 or arr.dtype == np.uint64:
        return arr.astype(np.int32) if arr.min() >= -2**31 and arr.max() < 2**31 else arr.astype(np.float64)
    return arr


def _write(arr: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(arr)  # Z x H x W -> an image of size (W, H, Z)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path), True)


def _check_name(dataset_id: int, name: str) -> None:
    if not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise MedsegError(None, f"--id must be a whole number from 1 to 999 (nnU-Net's Dataset<id:03d>), got {dataset_id}")
    if not _NAME.match(name or ""):
        raise MedsegError(None, f"--name must use only letters, digits, _ and - (it becomes a folder name), got {name!r}")


def export_nnunet(data: str | Path | DataSet, out: str | Path, dataset_id: int, name: str, layout: str = "auto",
                  target: str | None = None, force: bool = False, progress: bool = True) -> Path:
    """Write OUT/Dataset<id>_<name> (nnU-Net v2 raw format) and return its path. An existing dataset folder
    is replaced only with `force`; another dataset with the same id in OUT is always refused (nnU-Net
    finds datasets by id). A failure leaves nothing behind."""
    _check_name(dataset_id, name)
    out = Path(out)
    final = out / f"Dataset{dataset_id:03d}_{name}"
    _check_out(out, final, dataset_id, force)
    ds = data if isinstance(data, DataSet) else load_dataset(data, layout, target)
    names = channel_names(ds)
    cases = _cases(ds)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=out))
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        _export_cases(ds, cases, tmp, progress)
        meta = _dataset_json(ds, cases, names, name)
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes a private folder; a dataset is meant to be shared
        _publish(tmp, final, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    return final


def _check_out(out: Path, final: Path, dataset_id: int, force: bool) -> None:
    """OUT is a folder (or not there yet), holds no `final` unless `force`, and no other dataset with this id."""
    check_output(out)
    if final.exists() and not force:
        raise MedsegError(final, "already exists; pass --force to replace it")
    if out.is_dir():
        clash = [d.name for d in out.glob(f"Dataset{dataset_id:03d}_*") if d.is_dir() and d.name != final.name]
        if clash:
            raise MedsegError(out / clash[0], f"has the same dataset id {dataset_id:03d}; nnU-Net needs unique ids")


def _export_cases(ds: DataSet, cases: list[tuple[str, list[Item]]], folder: Path, progress: bool) -> None:
    """Every case's images and label into `folder`, with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task(f"exporting {len(cases)} cases", total=len(ds.items))
        for cid, items in cases:
            _export_case(ds, cid, items, folder, bar, task)


def _dataset_json(ds: DataSet, cases: list[tuple[str, list[Item]]], names: list[str], name: str) -> dict:
    """nnU-Net's dataset.json, with where the data came from under "medseg"."""
    from ..version import __version__

    return {
        "channel_names": {str(i): n for i, n in enumerate(names)},
        "labels": {"background": 0, **({str(c["name"]): k for k, c in enumerate(ds.classes, 1)} or {ds.target: 1})},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "SimpleITKIO",
        "name": name,
        "description": f"Exported by medseg {__version__} from the {ds.layout!r} layout at {Path(ds.root).resolve()}",
        "medseg": {"source": str(Path(ds.root).resolve()), "layout": ds.layout, "unit": ds.unit,
                   "target": ds.target, "target_values": list(ds.target_values),
                   "note": "images keep their stored values; labels are the target's union of masks as 0/1; "
                           + ("one volume per case, slices in index order" if ds.unit == "patient" else
                              f"one 1 x H x W volume per 2D image, z spacing {Z_SPACING_2D:g} (nnU-Net's 2D convention)"),
                   "cases": {cid: items[0].case for cid, items in cases}},
    }


def _publish(tmp: Path, final: Path, out: Path) -> None:
    """Rename the finished `tmp` to `final`; with --force an old `final` is swapped out, then deleted."""
    if final.exists():  # --force: swap, then delete the old one
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=out))
        os.replace(final, old / final.name)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _export_case(ds: DataSet, cid: str, items: list[Item], folder: Path, bar, task) -> None:
    from ..planning.fingerprint import raw_planes
    images, labels = [], []
    for it in items:
        img = raw_planes(it, ds.channels)
        if images and img.shape != images[0].shape:
            raise MedsegError(it.image, f"slice is {img.shape[2]}x{img.shape[1]} but the first slice of case "
                                        f"{items[0].case} is {images[0].shape[2]}x{images[0].shape[1]}: cannot stack")
        if not it.masks:
            raise MedsegError(it.image, "image has no mask")
        images.append(img)
        labels.append(read_labels(list(it.masks), img.shape[1:], ds.classes, it.meta.get("mask_classes", ()), it.z)
                      if ds.classes else read_mask(list(it.masks), img.shape[1:], tuple(ds.target_values), it.z))
        bar.advance(task)
    dtype = np.result_type(*[i.dtype for i in images])
    vol = _stored_type(np.stack(images, axis=1).astype(dtype, copy=False))  # C x Z x H x W
    sp = spacing_xyz(items[0])
    if ds.unit == "patient":
        spacing = sp or (1.0, 1.0, 1.0)
    else:
        spacing = (sp[0], sp[1], Z_SPACING_2D) if sp else (1.0, 1.0, Z_SPACING_2D)
    for c in range(vol.shape[0]):
        _write(np.ascontiguousarray(vol[c]), spacing, folder / "imagesTr" / f"{cid}_{c:04d}.nii.gz")
    _write(np.stack(labels).astype(np.uint8), spacing, folder / "labelsTr" / f"{cid}.nii.gz")
