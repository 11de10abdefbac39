"""Volumes in NIfTI/NRRD/MHA: the Medical Segmentation Decathlon / nnU-Net raw layout, or a plain pair of folders.

    <root>/dataset.json                        channel names and label names (nnU-Net v2 or MSD/nnU-Net v1 style)
    <root>/imagesTr/<case>_0000.nii.gz ...     one file per channel (nnU-Net), or <case>.nii.gz (one channel,
                                               or MSD's channels in a vector image)
    <root>/labelsTr/<case>.nii.gz              integer label map, same geometry as the image

    <root>/images/<name>.nii.gz|.nrrd|.mha     plain pair: one image per case ...
    <root>/labels/<name>.nii.gz (or masks/)    ... and its label map, matched by name

One item per slice along the volume's first array axis (SimpleITK's z). At load only headers are read
(SimpleITK ReadImageInformation), so a label whose size or geometry differs from its image is named before
any training starts: a resampled or flipped label would otherwise train on misaligned masks without a word.
`--target` picks a label by name (dataset.json) or value. By default (`--target all`) every label of a
label map with two or more is its own class, named as dataset.json names it (a multi-class run; nnU-Net
region labels, which overlap, are left out of the default); `--target foreground` merges every non-zero
label into one (binary), `--target liver,tumour` or `--target organ=1+2,lesion=3` picks and merges.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MedsegError
from ..io.images import VOLUME_SUFFIXES, is_volume, volume_stem
from .base import ALL, Adapter, DataSet, Item, class_specs, register

PERCENTILE = {"mode": "percentile", "low": 0.5, "high": 99.5}
TOLERANCE = 1e-3  # mm (spacing, origin) and cosines (direction): header floats differ in their last digits
LABEL_SAMPLE = 8  # label volumes read to find the label values where no dataset.json names them
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


@dataclass(frozen=True)
class Header:
    dim: int
    size: tuple[int, ...]  # x, y[, z]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int

    @property
    def slices(self) -> int:
        return self.size[2] if self.dim >= 3 else 1


def read_header(path: Path) -> Header:
    """The geometry of a volume file without reading its pixels."""
    import SimpleITK as sitk
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise MedsegError(path, f"cannot read volume header ({str(e).strip().splitlines()[-1][:200]})") from e
    return Header(reader.GetDimension(), tuple(reader.GetSize()), tuple(reader.GetSpacing()),
                  tuple(reader.GetOrigin()), tuple(reader.GetDirection()), reader.GetNumberOfComponents())


def _layout_dirs(root: Path) -> tuple[Path, Path | None] | None:
    """(images folder, labels folder) of either layout, or None."""
    if (root / "imagesTr").is_dir() and ((root / "labelsTr").is_dir() or (root / "dataset.json").is_file()):
        return root / "imagesTr", (root / "labelsTr") if (root / "labelsTr").is_dir() else None
    if (root / "images").is_dir() and any(_volumes(root / "images")):
        for name in ("labels", "masks"):
            if (root / name).is_dir():
                return root / "images", root / name
    return None


def _volumes(folder: Path) -> list[Path]:
    """Volume files of a folder; hidden files (macOS `._case.nii.gz` in the MSD tarballs) are not cases."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_volume(p))


def detect(root: Path) -> bool:
    return _layout_dirs(root) is not None


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MedsegError(path, f"cannot read dataset.json ({type(e).__name__}: {e})".replace("\n", " ")) from e
    if not isinstance(data, dict):
        raise MedsegError(path, "dataset.json is not a JSON object")
    return data


def channel_names(meta: dict, path: Path) -> list[str] | None:
    """nnU-Net v2 `channel_names` or MSD `modality`, {"0": "T2", "1": "ADC"} -> ["T2", "ADC"]."""
    raw = meta.get("channel_names", meta.get("modality"))
    if raw is None:
        return None
    try:
        by_index = {int(k): str(v) for k, v in raw.items()}
    except (AttributeError, TypeError, ValueError) as e:
        raise MedsegError(path, f"channel_names/modality must map channel numbers to names, got {raw!r}") from e
    if sorted(by_index) != list(range(len(by_index))) or not by_index:
        raise MedsegError(path, f"channel numbers must run 0..n-1, got {sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


def label_values(meta: dict, path: Path) -> dict[str, tuple[int, ...]]:
    """Foreground labels, name -> values. nnU-Net v2: {"background": 0, "tumour": 1, "whole": [1, 2]}
    (lists are region labels); MSD / nnU-Net v1: {"0": "background", "1": "tumour"}."""
    raw = meta.get("labels")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise MedsegError(path, f"labels must be a JSON object, got {raw!r}")
    out: dict[str, tuple[int, ...]] = {}
    try:
        if raw and all(isinstance(v, str) for v in raw.values()):  # MSD: value -> name
            for k, name in raw.items():
                out[name] = (int(k),)
        else:  # nnU-Net v2: name -> value or list of values
            for name, v in raw.items():
                vals = v if isinstance(v, list) else [v]
                if not vals or not all(isinstance(x, int) and not isinstance(x, bool) for x in vals):
                    raise ValueError(f"label {name!r}: {v!r}")
                out[str(name)] = tuple(vals)
    except ValueError as e:
        raise MedsegError(path, f"labels must map names to integer values (or values to names): {e}") from e
    return {k: v for k, v in out.items() if v != (0,)}


def _describe(labels: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{k} ({'/'.join(map(str, v))})" for k, v in labels.items()) or "none"


def pick_target(labels: dict[str, tuple[int, ...]], target: str | None, where: Path) -> tuple[str, tuple[int, ...]]:
    """--target by label name (exact, then ignoring case) or by value; None: every non-zero label."""
    if target in (None, "foreground", ALL):
        return "foreground", tuple(sorted({v for vals in labels.values() for v in vals}))
    if target in labels:
        return target, labels[target]
    folded = {k.lower(): k for k in labels}
    if target.lower() in folded:
        return folded[target.lower()], labels[folded[target.lower()]]
    if re.fullmatch(r"\d+", target) and (not labels or any(int(target) in v for v in labels.values())):
        return target, (int(target),)
    if not labels:
        raise MedsegError(where, f"no label names here (no dataset.json): --target takes a label value, got {target!r}")
    raise MedsegError(where, f"no label {target!r}; labels: {_describe(labels)}")


def _fmt(v: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{round(x, 6) + 0.0:.6g}" for x in v) + ")"  # + 0.0: no "-0"


def _check_same_grid(path: Path, h: Header, ref_path: Path, ref: Header, what: str) -> None:
    """`path` must lie on the voxel grid of `ref_path` (its channel 0): same size, spacing, origin, direction."""
    if h.dim != ref.dim or h.size != ref.size:
        raise MedsegError(path, f"{what} is {'x'.join(map(str, h.size))} but its image {ref_path.name} is "
                                f"{'x'.join(map(str, ref.size))}")
    for name in ("spacing", "origin", "direction"):
        a, b = np.array(getattr(h, name)), np.array(getattr(ref, name))
        if np.abs(a - b).max(initial=0) > TOLERANCE:
            raise MedsegError(path, f"{what} {name} {_fmt(tuple(a))} differs from its image {ref_path.name}'s "
                                    f"{_fmt(tuple(b))} (tolerance {TOLERANCE})")


def _unsupported_4d(path: Path, h: Header) -> MedsegError:
    return MedsegError(path, f"{h.dim}D image {'x'.join(map(str, h.size))} (channels in a 4th dimension, as in the "
                             "original MSD Task folders) is not supported: SimpleITK reads it as a 4D scalar image, "
                             "not as channels. Split it into <case>_0000.nii.gz, <case>_0001.nii.gz, ... "
                             "(nnUNetv2_convert_MSD_dataset does this)")


def _group(images_dir: Path, labels: dict[str, Path]) -> dict[str, dict[int | None, Path]]:
    """case -> {channel: file}; channel None for a case in a single file. A stem that is itself a label's
    name is a whole case (MSD `la_003`), else `<case>_<dddd>` is channel dddd (nnU-Net)."""
    cases: dict[str, dict[int | None, Path]] = {}
    for p in _volumes(images_dir):
        stem = volume_stem(p)
        m = _CHANNEL.match(stem)
        case, ch = (m["case"], int(m["ch"])) if m and stem not in labels else (stem, None)
        files = cases.setdefault(case, {})
        if ch in files:
            raise MedsegError(p, f"duplicate image: {files[ch].name} is the same "
                                 f"{'case' if ch is None else f'channel {ch:04d}'} in another format")
        files[ch] = p
    for case, files in cases.items():
        if None in files and len(files) > 1:
            other = next(f for k, f in files.items() if k is not None)
            raise MedsegError(other, f"case {case!r} is both a single file ({files[None].name}) and channel files")
    return cases


def _labels(labels_dir: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in _volumes(labels_dir):
        stem = volume_stem(p)
        if stem in out:
            raise MedsegError(p, f"duplicate label: {out[stem].name} has the same name in another format")
        out[stem] = p
    return out


def _found_values(paths: list[Path]) -> tuple[int, ...]:
    """Non-zero values of a few label volumes spread over the data set (no dataset.json names them)."""
    from ..io.images import read_volume
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, min(LABEL_SAMPLE, len(paths))).round().astype(int)]
    found: set[int] = set()
    for p in dict.fromkeys(picks):
        vals = np.unique(read_volume(p)[0])
        if not np.all(vals == np.round(vals)):
            raise MedsegError(p, f"label volume has non-integer values ({vals[:5].tolist()} ...)")
        found |= {int(v) for v in vals if v != 0}
    return tuple(sorted(found))


def load(root: Path, target: str | None = None) -> DataSet:
    images_dir, labels_dir = _dirs(root)
    json_path = root / "dataset.json"
    meta = read_json(json_path) if json_path.is_file() and images_dir.name == "imagesTr" else {}
    names = channel_names(meta, json_path)
    named_labels = label_values(meta, json_path)
    _check_file_ending(meta, json_path)
    problems: list[str] = []

    labels = _labels(labels_dir)
    cases = _group(images_dir, labels)
    _check_pairs(images_dir, labels, cases)
    channels, items = _items(cases, labels, images_dir, labels_dir, names)

    n_training = meta.get("numTraining")
    if isinstance(n_training, int) and n_training != len(cases):
        problems.append(f"dataset.json says numTraining {n_training}, found {len(cases)} cases")
    where = json_path if meta else labels_dir
    classes = _classes(named_labels, target, labels, where)
    name, values = (target or ALL, ()) if classes else _target(named_labels, target, labels, where)
    return DataSet(root, "nifti", channels or 1, items, unit="patient", intensity=dict(PERCENTILE),
                   target_values=values, target=name, problems=problems, classes=classes)


def _dirs(root: Path) -> tuple[Path, Path]:
    """(images folder, labels folder) of `root`, or the error naming what is missing."""
    dirs = _layout_dirs(root)
    if dirs is None:
        raise MedsegError(root, "no imagesTr/ (+ labelsTr/, dataset.json) nor images/ + labels/ of volume files here")
    images_dir, labels_dir = dirs
    if labels_dir is None:
        raise MedsegError(root / "labelsTr", "folder not found: imagesTr/ without labelsTr/ has nothing to train on")
    return images_dir, labels_dir


def _check_file_ending(meta: dict, json_path: Path) -> None:
    """dataset.json's file_ending, where given, must be a volume suffix."""
    ending = meta.get("file_ending")
    if ending is not None and not str(ending).lower().endswith(VOLUME_SUFFIXES):
        raise MedsegError(json_path, f"file_ending {ending!r}: this layout reads volumes only "
                                     f"({', '.join(VOLUME_SUFFIXES)})")


def _check_pairs(images_dir: Path, labels: dict[str, Path], cases: dict[str, dict[int | None, Path]]) -> None:
    """There are cases, and every label has an image."""
    if not cases:
        raise MedsegError(images_dir, f"no volume files ({', '.join(VOLUME_SUFFIXES)}) in this folder")
    for stem, lab in labels.items():
        if stem not in cases:
            raise MedsegError(lab, f"label has no image (expected {images_dir.name}/{stem}_0000{_suffix(lab)} "
                                   f"or {images_dir.name}/{stem}{_suffix(lab)})")


def _items(cases: dict[str, dict[int | None, Path]], labels: dict[str, Path], images_dir: Path, labels_dir: Path,
           names: list[str] | None) -> tuple[int | None, list[Item]]:
    """One item per slice of every case, in case order, and the data set's channel count."""
    channels = len(names) if names else None
    items: list[Item] = []
    for case in sorted(cases):
        files = cases[case]
        label = labels.get(case)
        first = _first(files)
        if label is None:
            raise MedsegError(first, f"image has no label (expected {labels_dir.name}/{case}{_suffix(first)})")
        if None in files:  # one file: one channel, or channels as vector components
            n, order, h0 = _single_file(files[None])
        else:
            n, order, h0 = _channel_files(case, files, images_dir, channels, names)
        if channels is None:
            channels = n
        elif n != channels:
            raise MedsegError(order[0], f"case {case!r} has {n} channels, the data set {channels}"
                                        f"{' (dataset.json)' if names else ''}")
        _check_case_grids(order, h0, label)
        spacing = [float(v) for v in h0.spacing] + [1.0] * (3 - len(h0.spacing))
        for z in range(h0.slices):
            items.append(Item(order[0], (label,), case, z, {"spacing": list(spacing)}, z=z,
                              extra_channels=tuple(order[1:])))
    return channels, items


def _first(files: dict[int | None, Path]) -> Path:
    """The case's single file, else its channel 0 (else its lowest channel)."""
    return files.get(None) or files.get(0) or files[min(files)]


def _single_file(path: Path) -> tuple[int, list[Path], Header]:
    """(channels, files in channel order, header) of a case in one file: one channel, or 1 or 3 components."""
    h0 = read_header(path)
    if h0.dim > 3:
        raise _unsupported_4d(path, h0)
    if h0.components not in (1, 3):
        raise MedsegError(path, f"vector image with {h0.components} components per voxel: only 1 or 3 "
                                "are read; split the channels into <case>_0000, <case>_0001, ... files")
    return h0.components, [path], h0


def _channel_files(case: str, files: dict[int | None, Path], images_dir: Path, channels: int | None,
                   names: list[str] | None) -> tuple[int, list[Path], Header]:
    """(channels, files in channel order, channel 0's header) of a case in channel files: none missing, none extra."""
    first = _first(files)
    n = channels if channels is not None else max(files) + 1
    for ch in range(n):
        if ch not in files:
            raise MedsegError(images_dir / f"{case}_{ch:04d}{_suffix(first)}",
                              f"channel file missing for case {case!r} ({n} channels"
                              f"{' named in dataset.json' if channels else ''})")
    extra = sorted(set(files) - set(range(n)))
    if extra:
        raise MedsegError(files[extra[0]], f"channel {extra[0]:04d} but dataset.json names {n} channels "
                                           f"({', '.join(names or [])})")
    order = [files[ch] for ch in range(n)]
    h0 = read_header(order[0])
    if h0.dim > 3:
        raise _unsupported_4d(order[0], h0)
    return n, order, h0


def _check_case_grids(order: list[Path], h0: Header, label: Path) -> None:
    """The other channel files and the label lie on channel 0's voxel grid, with one component each."""
    for p in order[1:]:
        h = read_header(p)
        if h.components != 1:
            raise MedsegError(p, f"channel file with {h.components} components per voxel (expected 1)")
        _check_same_grid(p, h, order[0], h0, "channel")
    hl = read_header(label)
    if hl.components != 1:
        raise MedsegError(label, f"label has {hl.components} components per voxel (expected one label map)")
    _check_same_grid(label, hl, order[0], h0, "label")


def _target(named_labels: dict[str, tuple[int, ...]], target: str | None, labels: dict[str, Path],
            where: Path) -> tuple[str, tuple[int, ...]]:
    """(target name, label values): --target among the named labels, or every non-zero value found."""
    if not named_labels and target in (None, "foreground", ALL):
        found = _found_values(sorted(labels.values()))  # binary maps read as they are; several values all count
        return "foreground", (found if len(found) > 1 else ())
    return pick_target(named_labels, target, where)


def _classes(named_labels: dict[str, tuple[int, ...]], target: str | None, labels: dict[str, Path],
             where: Path) -> list[dict]:
    """The classes of a multi-class run ([] for a binary one): by default (or `all`) every single-valued
    label when there are two or more; with several --target entries, those, each a label or NAME=a+b."""
    if target is None or target == ALL:
        single = {n: v for n, v in named_labels.items() if len(v) == 1} if named_labels else \
            {str(v): (v,) for v in _found_values(sorted(labels.values()))}
        return [{"name": n, "value": v[0], "labels": [v[0]]} for n, v in single.items()] if len(single) > 1 else []
    specs = class_specs(target, where)
    if len(specs) < 2:
        return []
    out = []
    for name, sources in specs:
        values = sorted({v for src in sources for v in pick_target(named_labels, src, where)[1]})
        plain = sources == [name]  # a bare label: its name as dataset.json spells it
        out.append({"name": pick_target(named_labels, name, where)[0] if plain else name, "value": values[0],
                    "labels": values})
    return out


def _suffix(path: Path) -> str:
    return path.name[len(volume_stem(path)):]


ADAPTER = register(Adapter(
    "nifti", "MSD / nnU-Net imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz (+ dataset.json), "
             "or images/ + labels/ (or masks/) of .nii.gz/.nrrd/.mha volumes", detect, load, targets=True))
