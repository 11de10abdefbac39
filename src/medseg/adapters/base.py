"""The contract every data-set adapter fulfils: a layout on disk -> a list of 2D items with masks.

An item is one 2D image (a slice or a whole image) with its mask files. `patient` groups items for
splitting (never split a patient); `case` groups them for metrics (LGG: the patient, so its Dice is the
3D Dice over all slices; CBIS-DDSM: one mammogram, while the split stays by patient).

Files are 2D images (PNG/TIF/JPG/BMP), single-frame DICOM, or volumes (NIfTI/NRRD/MHA) of which the
item takes slice `z`. How intensities become [0, 1] (`DataSet.intensity`) and which mask values are
foreground (`DataSet.target_values`) belong to the data set and are stored in the training plan, so
prediction repeats them exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import MedsegError


@dataclass(frozen=True)
class Item:
    image: Path
    masks: tuple[Path, ...]
    patient: str  # split and metric unit
    index: int = 0  # slice position within the patient (0 for single images)
    meta: dict = field(default_factory=dict, hash=False, compare=False)  # subgroup data, e.g. {"class": "benign"}
    z: int | None = None  # slice of a volume file (NIfTI/NRRD) to read; None for 2D files
    case: str = ""  # metric unit; defaults to `patient`
    extra_channels: tuple[Path, ...] = ()  # further channel files (nnU-Net `_0001`, ...), stacked after `image`

    def __post_init__(self) -> None:
        if not self.case:
            object.__setattr__(self, "case", self.patient)


@dataclass
class DataSet:
    root: Path
    layout: str
    channels: int  # input channels the layout carries (LGG: 3, BUSI: 1)
    items: list[Item]
    unit: str = "case"  # "patient" for slice data sets, "case" for single images
    stratify_key: str | None = None  # meta key with a class to keep balanced across the split
    # how raw values become [0, 1]: {"mode": "range"} (integer type's range), {"mode": "window",
    # "low": -100, "high": 400} (CT, in HU), {"mode": "percentile", "low": 0.5, "high": 99.5} (per volume)
    intensity: dict = field(default_factory=lambda: {"mode": "range"})
    target_values: tuple[int, ...] = ()  # mask values that are foreground; () = any non-zero value
    target: str = "foreground"  # the structure's name, for reports
    keep_aspect: bool = False  # resize the longest side and pad (mammograms) instead of squashing
    problems: list[str] = field(default_factory=list)  # non-fatal findings for `medseg inspect`
    subgroup_keys: tuple[str, ...] = ()  # meta keys tabulated in the evaluation (besides stratify_key)
    # multi-class: the foreground classes in order, [{"name", "value", "labels" | "structures"}] (planning.plan);
    # empty for a binary data set
    classes: list[dict] = field(default_factory=list)

    @property
    def patients(self) -> list[str]:
        return sorted({it.patient for it in self.items})


@dataclass(frozen=True)
class Adapter:
    name: str
    description: str
    detect: Callable[[Path], bool]
    load: Callable[..., DataSet]  # load(root) or, with `targets`, load(root, target=None)
    generic: bool = False  # generic layouts are used only when no specific one matches
    targets: bool = False  # the layout has several structures/labels; `--target` picks one (None: default)


_REGISTRY: dict[str, Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    _REGISTRY[adapter.name] = adapter
    return adapter


def adapters() -> dict[str, Adapter]:
    return dict(_REGISTRY)


def load_dataset(root: str | Path, layout: str = "auto", target: str | None = None) -> DataSet:
    """Detect (or take) the layout of `root` and read its items; bad input raises MedsegError.
    `target` picks the structure where the layout has several (3D-IRCADb organs, NIfTI label names)."""
    root = Path(root)
    if not root.exists():
        raise MedsegError(root, "data folder not found")
    if not root.is_dir():
        raise MedsegError(root, "expected a data folder, got a file")
    if not any(root.iterdir()):
        raise MedsegError(root, "data folder is empty")
    if layout != "auto":
        if layout not in _REGISTRY:
            raise MedsegError(None, f"unknown format {layout!r}; known: auto, {', '.join(sorted(_REGISTRY))}")
        return _load(_REGISTRY[layout], root, target)
    specific = [a for a in _REGISTRY.values() if not a.generic and a.detect(root)]
    if not specific:
        inner = _unwrap(root)
        if inner is not None:  # e.g. lgg-mri-segmentation/kaggle_3m: read the published folder inside
            return load_dataset(inner, layout, target)
    if len(specific) > 1:
        raise MedsegError(root, f"matches several layouts ({', '.join(a.name for a in specific)}): pass --format")
    found = specific or [a for a in _REGISTRY.values() if a.generic and a.detect(root)]
    if not found:
        known = "; ".join(f"{a.name}: {a.description}" for a in _REGISTRY.values())
        raise MedsegError(root, f"unknown layout, no known data set found here (known layouts: {known})")
    return _load(found[0], root, target)


def _unwrap(root: Path, depth: int = 2) -> Path | None:
    """The published folder inside wrapper folders (a download unzipped into a folder of its own name):
    followed only while each level holds exactly one sub-folder, and only to a specific layout, so that the
    generic folder layout never claims a known data set given one level too high (it would split LGG by
    slice instead of by patient)."""
    subs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "__"))]
    if len(subs) != 1 or depth == 0:
        return None
    if any(not a.generic and a.detect(subs[0]) for a in _REGISTRY.values()):
        return subs[0]
    return _unwrap(subs[0], depth - 1)


def _load(adapter: Adapter, root: Path, target: str | None) -> DataSet:
    if adapter.targets:
        ds = adapter.load(root, target=target)
    else:
        ds = adapter.load(root)
        if target not in (None, "foreground", ds.target):
            raise MedsegError(root, f"layout {adapter.name!r} has a single target ({ds.target}); --target does not apply")
    if not ds.items:
        raise MedsegError(ds.root, f"no image/mask pairs found for layout {ds.layout!r}")
    return ds


def spacing_xyz(it: Item) -> tuple[float, float, float] | None:
    """An item's voxel spacing in mm as (x, y, z), z = 1 for 2D images; None when the data carry none.
    (Array axes run z, y, x: reverse it for them.)"""
    sp = it.meta.get("spacing")
    if not sp:
        return None
    sp = [float(v) for v in sp]
    return (sp[0], sp[1], sp[2] if len(sp) > 2 and sp[2] > 0 else 1.0)


ALL = "all"  # --target all: every label of a label map as its own class (the default for label maps)



def class_specs(target: str, where: Path | None) -> list[tuple[str, list[str]]]:
    """`--target liver,tumour=livertumor*,a+b` -> [("liver", ["liver"]), ("tumour", ["livertumor*"]),
    ("a+b", ["a", "b"])]: one (class name, sources) per comma-separated entry, in order. A name defaults to
    its entry without pattern characters ("livertumor*" -> "livertumor")."""
    out = []
    for entry in (e.strip() for e in target.split(",")):
        name, _, spec = entry.rpartition("=")
        sources = [s.strip() for s in spec.split("+") if s.strip()]
        if not sources or (entry.count("=") > 1):
            raise MedsegError(where, f"--target entry {entry!r}: expected NAME, NAME=a+b or a pattern (see --help)")
        out.append((name.strip() or re.sub(r"[*?\[\]]", "", spec).strip() or spec, sources))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise MedsegError(where, f"--target names a class twice: {', '.join(names)}")
    return out
