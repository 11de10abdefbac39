"""`medseg inspect`: a data set's fingerprint and every problem in it, before anything is trained.

Like nnU-Net's dataset fingerprint (sizes, spacings, intensity percentiles), plus the checks a fresh
download needs: unreadable files, masks that do not fit their image, non-binary masks, duplicated images,
NaN/Inf. Adapters raise at load for structural problems (then nothing can be inspected: one error line);
per-file problems found while reading pixels are collected instead, so one bad file never hides the others.
Everything goes through the generic DataSet/Item interfaces, so any registered layout is inspected alike.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..adapters import DataSet, Item, channel_names, load_dataset
from ..errors import MedsegError
from ..io.images import read_labels, read_raw, read_image, to_unit

PERCENTILES = (0.5, 50.0, 99.5)
SAMPLE_PER_IMAGE = 10_000  # pixels per image and channel pooled for the percentiles (nnU-Net samples too)
MAX_SAMPLES = 2_000_000  # pooled pixels per channel at most (percentiles of 10 M values cost seconds)
MAX_SUBGROUP_VALUES = 12  # a meta key with more distinct values is not a subgroup (age, ids)
MAX_MASK_VALUES = 64  # beyond this many distinct mask values, only their count is kept
# Per-case intensity spread (MRI, ultrasound: no absolute scale, the same tissue differs 2-4x between scanners):
# each case's 99th percentile of body pixels by transforms.case_percentiles, the statistic intensity_norm=case
# scales by, over at most CASE_SAMPLE_PER_IMAGE pixels of each of its images (every k-th beyond).
CASE_SAMPLE_PER_IMAGE = 65_536
SPREAD_WARN = 2.0  # p90/p10 of the per-case percentiles above this: a finding
HU_NOTE = "HU scale, not applicable"


def _luma(arr: np.ndarray) -> np.ndarray:
    """RGB (3 x H x W) -> grey as imageio does for 1-channel layouts, keeping integer types (Pillow's "L")."""
    grey = 0.299 * arr[0].astype(np.float32) + 0.587 * arr[1] + 0.114 * arr[2]
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return np.clip(np.rint(grey), info.min, info.max).astype(arr.dtype)[None]
    return grey[None]


def _fit(arr: np.ndarray, channels: int, path: Path) -> np.ndarray:
    if arr.shape[0] == channels:
        return arr
    if channels == 1 and arr.shape[0] == 3:
        return _luma(arr)
    if arr.shape[0] == 1:
        return np.repeat(arr, channels, axis=0)
    raise MedsegError(path, f"{arr.shape[0]} channels where the layout has {channels}")


def _planes(path: Path, z: int | None) -> np.ndarray:
    arr = read_raw(Path(path), z)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def raw_planes(it: Item, channels: int) -> np.ndarray:
    """The item's image as C x H x W in its stored values and type (no intensity rule), with the channels
    the layout feeds the model: the same channel handling as imageio.read_image, without the scaling."""
    if not it.extra_channels:
        return _fit(_planes(it.image, it.z), channels, it.image)
    planes = [_fit(_planes(p, it.z), 1, p) for p in (it.image, *it.extra_channels)]
    if len({p.shape for p in planes}) != 1:
        raise MedsegError(it.extra_channels[0], "channel files of one case differ in size")
    return _fit(np.concatenate(planes), channels, it.image)


def _unit(it: Item, raw: np.ndarray, intensity: dict, channels: int) -> np.ndarray:
    """The [0, 1] values by the data set's rule. Fixed rules (range, window) are applied to the raw planes
    already read (imageio.to_unit; reading every file once halves the time; after an RGB -> grey conversion
    this differs from read_image's order by at most half a grey level); rules that need more than the
    slice (per-volume percentiles) go through imageio.read_image, exactly as training reads them."""
    if intensity.get("mode", "range") in ("range", "window"):
        return to_unit(raw, intensity, it.image)
    return read_image(it.image, channels, intensity, it.z, it.extra_channels)


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"min": float(a.min()), "median": float(np.median(a)), "max": float(a.max())}


def _percentiles(samples: list[np.ndarray]) -> dict:
    a = np.concatenate(samples)
    lo, hi = float(a.min()), float(a.max())
    a = a[:: max(1, a.size // MAX_SAMPLES)].astype(np.float64)
    out = {f"p{p:g}": float(v) for p, v in zip(PERCENTILES, np.percentile(a, PERCENTILES))}
    return {**out, "min": lo, "max": hi}


def _sample(plane: np.ndarray) -> np.ndarray:
    flat = plane.ravel()
    return flat[:: max(1, flat.size // SAMPLE_PER_IMAGE)]


def _mask_values(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == bool:  # 1-bit PNG
        arr = arr.astype(np.uint8)  # not .view: Pillow stores True as byte 255
    if arr.dtype == np.uint8:  # bincount: ~10x faster than np.unique on 8-bit masks
        return np.flatnonzero(np.bincount(arr.ravel(), minlength=256))
    return np.unique(arr)


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _sort_key(v: str):
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


def subgroups(ds: DataSet) -> dict[str, dict[str, int]]:
    """Counts per unit (patient or case) of the stratification key and of every other categorical meta key
    with few values (LGG data.csv columns, BUSI class, CBIS pathology): the groups to report results by."""
    first: dict[str, dict] = {}
    for it in ds.items:
        first.setdefault(it.patient if ds.unit == "patient" else it.case, it.meta)
    keys = list(dict.fromkeys(k for m in first.values() for k in m))
    if ds.stratify_key in keys:
        keys.remove(ds.stratify_key)
        keys.insert(0, ds.stratify_key)
    out = {}
    for k in keys:
        values = [m.get(k) for m in first.values()]
        if not all(_is_scalar(v) for v in values):
            continue
        counts = Counter("(missing)" if v in (None, "") else str(v) for v in values)
        if k == ds.stratify_key or (1 < len(counts) <= MAX_SUBGROUP_VALUES and len(counts) < len(first)):
            out[k] = {v: counts[v] for v in sorted(counts, key=_sort_key)}
    return out


@dataclass
class _Scan:
    """What one pass over a data set's items accumulates for its fingerprint."""

    problems: list[dict]
    raw_samples: list[list[np.ndarray]]
    unit_samples: list[list[np.ndarray]]
    sizes: list[tuple] = field(default_factory=list)
    spacings: list[tuple] = field(default_factory=list)
    dtypes: Counter = field(default_factory=Counter)
    by_hash: dict[str, list[Item]] = field(default_factory=lambda: defaultdict(list))
    case_hashes: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    mask_values: set[int | float] = field(default_factory=set)
    mask_value_overflow: bool = False
    all_binary: bool = True  # every mask file holds 0 and at most one other value (its own maximum)
    fg_pixels: int = 0
    total_pixels: int = 0
    empty_images: int = 0
    read_ok: int = 0
    case_fg: dict[str, bool] = field(default_factory=dict)
    case_spread: bool = True  # gather the per-case percentiles (not for a CT window: HU are absolute)
    case_left: Counter = field(default_factory=Counter)  # items of each case not scanned yet
    case_images: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    case_p99: dict[str, np.ndarray] = field(default_factory=dict)  # per channel, cases with body pixels
    class_voxels: Counter = field(default_factory=Counter)  # multi-class: voxels per class index
    case_classes: dict[str, set] = field(default_factory=lambda: defaultdict(set))  # classes each case shows

    def problem(self, kind: str, path, detail: str) -> None:
        """Record one problem found in a file (or in none)."""
        self.problems.append({"kind": kind, "file": None if path is None else str(path), "detail": detail})


def fingerprint(data: str | Path | DataSet, layout: str = "auto", target: str | None = None,
                progress: bool = True) -> dict:
    """Read every image and mask of a data set once and return its fingerprint (JSON-able), with the
    problems found listed per file. A layout that cannot be loaded raises MedsegError."""
    from rich.console import Console
    from rich.progress import Progress

    t0 = time.perf_counter()
    ds = data if isinstance(data, DataSet) else load_dataset(data, layout, target)
    scan = _Scan(problems=[{"kind": "adapter", "file": str(ds.root), "detail": p} for p in ds.problems],
                 raw_samples=[[] for _ in range(ds.channels)], unit_samples=[[] for _ in range(ds.channels)],
                 case_spread=ds.intensity.get("mode", "range") != "window",
                 case_left=Counter(it.case for it in ds.items))
    with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task(f"inspecting {len(ds.items)} images", total=len(ds.items))
        for it in ds.items:
            bar.advance(task)
            _scan_item(ds, it, scan)
            _case_done(it.case, scan)
    _duplicates(ds, scan.by_hash, scan.case_hashes, scan.problem)
    return _result(ds, scan, t0)


def _scan_item(ds: DataSet, it: Item, s: _Scan) -> None:
    """Read one item's image and masks and add what they show to the scan."""
    if "spacing" in it.meta and it.meta["spacing"] is not None:
        s.spacings.append(tuple(float(v) for v in it.meta["spacing"]))
    try:
        raw = raw_planes(it, ds.channels)
    except MedsegError as e:
        s.problem("unreadable file", e.path or it.image, e.problem)
        return
    finite = _scan_image(ds, it, raw, s)
    fg = np.zeros(raw.shape[1:], dtype=bool)
    masks_ok = _scan_masks(ds, it, raw, fg, s)
    if not (finite and masks_ok):
        return
    try:
        img = _unit(it, raw, ds.intensity, ds.channels)
    except MedsegError as e:
        s.problem("unreadable file", e.path or it.image, e.problem)
        return
    s.read_ok += 1
    for c in range(ds.channels):
        s.unit_samples[c].append(_sample(img[c]))
    if s.case_spread:
        flat = img.reshape(img.shape[0], -1)
        s.case_images[it.case].append(np.array(flat[:, :: max(1, flat.shape[1] // CASE_SAMPLE_PER_IMAGE)],
                                               dtype=np.float32))
    if ds.classes:
        _scan_classes(ds, it, raw, s)
    n_fg = int(fg.sum())
    s.fg_pixels += n_fg
    s.total_pixels += fg.size
    s.empty_images += n_fg == 0
    s.case_fg[it.case] = s.case_fg.get(it.case, False) or n_fg > 0


def _scan_classes(ds: DataSet, it: Item, raw: np.ndarray, s: _Scan) -> None:
    """Multi-class: the item's voxels per class (its masks read as training reads them) and its case's classes."""
    labels = read_labels(list(it.masks), raw.shape[1:], ds.classes, it.meta.get("mask_classes", ()), it.z)
    counts = np.bincount(labels.ravel(), minlength=len(ds.classes) + 1)
    s.case_classes[it.case]  # noqa: B018  (a case without any class is listed as missing them all)
    for k in np.flatnonzero(counts[1:]) + 1:
        s.class_voxels[int(k)] += int(counts[k])
        s.case_classes[it.case].add(int(k))


def _classes(ds: DataSet, s: _Scan) -> list[dict] | None:
    """Per class: voxels, their share of all foreground, the cases that show it and those that miss it."""
    if not ds.classes:
        return None
    total = sum(s.class_voxels.values()) or 1
    out = []
    for k, c in enumerate(ds.classes, 1):
        missing = sorted(case for case, ks in s.case_classes.items() if k not in ks)
        out.append({"name": c["name"], "value": c["value"], "voxels": s.class_voxels[k],
                    "foreground_share": s.class_voxels[k] / total, "cases": len(s.case_classes) - len(missing),
                    "cases_missing": len(missing), "missing": missing[:20] + (["..."] if len(missing) > 20 else [])})
    return out


def _case_done(case: str, s: _Scan) -> None:
    """Count one item of a case as scanned; after its last one, its percentiles (and its pixels freed)."""
    from ..io.intensity import case_percentiles

    s.case_left[case] -= 1
    if s.case_left[case] > 0:
        return
    images = s.case_images.pop(case, None)
    hi = case_percentiles(images) if images else None
    if hi is not None:
        s.case_p99[case] = hi


def _scan_image(ds: DataSet, it: Item, raw: np.ndarray, s: _Scan) -> bool:
    """Record the raw image's size, type, hash and samples; False where it holds NaN or Inf."""
    s.sizes.append(raw.shape[1:])
    s.dtypes[raw.dtype.name] += 1
    digest = hashlib.sha1(f"{raw.dtype}{raw.shape}".encode() + raw.tobytes()).hexdigest()
    s.case_hashes[it.case].append((it.index, digest))
    if raw.size and raw.min() != raw.max():  # blank slices (all one value) are alike, not duplicates
        s.by_hash[digest].append(it)
    finite = bool(np.isfinite(raw).all()) if raw.dtype.kind == "f" else True
    if not finite:
        s.problem("NaN/Inf", it.image, f"{int((~np.isfinite(raw)).sum())} pixel(s) are NaN or Inf")
    else:
        for c in range(ds.channels):
            s.raw_samples[c].append(_sample(raw[c]))
    return finite


def _scan_masks(ds: DataSet, it: Item, raw: np.ndarray, fg: np.ndarray, s: _Scan) -> bool:
    """Read every mask of an item into fg (in place); False where one is missing, unreadable or misfit."""
    ok = True
    if not it.masks:
        s.problem("missing mask", it.image, "item has no mask file")
        ok = False
    for m in it.masks:
        arr = _read_mask(it, m, raw, s)
        if arr is None:
            ok = False
            continue
        _scan_mask(ds, m, arr, fg, s)
    return ok


def _read_mask(it: Item, m, raw: np.ndarray, s: _Scan) -> np.ndarray | None:
    """One mask file as H x W, or None (with its problem recorded) where it cannot be used."""
    if not Path(m).is_file():
        s.problem("missing mask", m, "mask file not found")
        return None
    try:
        arr = read_raw(Path(m), it.z)
    except MedsegError as e:
        s.problem("unreadable file", e.path or m, e.problem)
        return None
    if arr.ndim == 3:
        arr = arr.max(axis=-1)
    if arr.shape != raw.shape[1:]:
        s.problem("size mismatch", m, f"mask is {arr.shape[1]}x{arr.shape[0]} but its image "
                  f"({Path(it.image).name}) is {raw.shape[2]}x{raw.shape[1]}")
        return None
    return arr


def _scan_mask(ds: DataSet, m, arr: np.ndarray, fg: np.ndarray, s: _Scan) -> None:
    """Add one mask's foreground to fg (in place) and record its values."""
    vals = _mask_values(arr)
    values = ds.target_values or tuple(v for c in ds.classes for v in c.get("labels", ()))
    if values:  # the rule of imageio.read_mask, on the array already read
        fg |= np.isin(arr, values)
    elif len(vals):
        fg |= arr > (0 if vals[-1] <= 1 else vals[-1] / 2)
    if not s.mask_value_overflow:
        s.mask_values.update(int(v) if float(v).is_integer() else float(v) for v in vals)
        if len(s.mask_values) > MAX_MASK_VALUES:
            s.mask_value_overflow = True
    binary = len(vals) <= 1 or (len(vals) == 2 and vals[0] == 0)
    s.all_binary = s.all_binary and binary
    if not values and not binary:
        shown = ", ".join(f"{v:g}" for v in vals[:8]) + (", ..." if len(vals) > 8 else "")
        s.problem("non-binary mask", m, f"{len(vals)} values ({shown}) where 0 and one maximum "
                  "were expected: thresholded at half the maximum")


def _result(ds: DataSet, s: _Scan, t0: float) -> dict:
    """The fingerprint dict (JSON-able) from a finished scan."""
    names = channel_names(ds)
    mask_kind = None
    spread = _case_intensity(ds, s, names)
    _spread_problems(spread, s)
    if s.mask_values:
        labelled = ds.target_values or any(c.get("labels") for c in ds.classes)
        mask_kind = "binary" if s.all_binary else "multi-class" if labelled else "non-binary"
    out = {
        "data": str(ds.root),
        "layout": ds.layout,
        "unit": ds.unit,
        "channels": ds.channels,
        "channel_names": names,
        "intensity_rule": ds.intensity,
        "target": ds.target,
        "target_values": list(ds.target_values),
        "classes": _classes(ds, s),
        "counts": {"patients": len(ds.patients), "cases": len({it.case for it in ds.items}),
                   "images": len(ds.items), "read": s.read_ok},
        "image_size": None if not s.sizes else {
            "height": _stats([z[0] for z in s.sizes]), "width": _stats([z[1] for z in s.sizes]),
            "distinct": len(set(s.sizes)), "most_common": list(Counter(s.sizes).most_common(1)[0][0])},
        "spacing": None if not s.spacings else {
            "items": len(s.spacings), "distinct": len(set(s.spacings)),
            **{axis: _stats([p[i] for p in s.spacings if len(p) > i]) for i, axis in enumerate("xyz")
               if any(len(p) > i for p in s.spacings)}},
        "dtypes": dict(s.dtypes),
        "intensity_raw": [{"channel": names[c], **_percentiles(s.raw_samples[c])}
                          for c in range(ds.channels) if s.raw_samples[c]],
        "intensity_unit": [{"channel": names[c], **_percentiles(s.unit_samples[c])}
                           for c in range(ds.channels) if s.unit_samples[c]],
        "foreground": None if not s.total_pixels else {
            "pixel_fraction": s.fg_pixels / s.total_pixels,
            "empty_images": s.empty_images, "empty_image_share": s.empty_images / s.read_ok,
            "empty_cases": sum(not v for v in s.case_fg.values()),
            "empty_case_share": sum(not v for v in s.case_fg.values()) / len(s.case_fg)},
        "mask_values": {"values": None if s.mask_value_overflow else sorted(s.mask_values),
                        "distinct": len(s.mask_values) if not s.mask_value_overflow else f">{MAX_MASK_VALUES}",
                        "kind": mask_kind},
        "case_intensity": spread,
        "subgroups": subgroups(ds),
        "subgroup_unit": "patient" if ds.unit == "patient" else "case",
        "problems": s.problems,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return out


def _case_intensity(ds: DataSet, s: _Scan, names: list[str]) -> dict | None:
    """Per channel: the spread over cases of their body pixels' 99th percentile ([0, 1] values); None where
    no case has body pixels. Under a CT window HU are absolute: the note says so instead."""
    if not s.case_spread:
        return {name: {"note": HU_NOTE} for name in names}
    if not s.case_p99:
        return None
    per_case = np.array(list(s.case_p99.values()), dtype=np.float64)  # cases x channels
    out = {}
    for c, name in enumerate(names):
        v = per_case[:, c][per_case[:, c] > 1e-6]  # a channel all zero in a case has no scale to compare
        if not v.size:
            continue
        p10, p90 = (float(x) for x in np.percentile(v, [10, 90]))
        out[name] = {"cases": int(v.size), **_stats(v), "p10": p10, "p90": p90,
                     "ratio_max_min": float(v.max() / v.min()), "ratio_90_10": p90 / p10}
    return out or None


def _spread_problems(spread: dict | None, s: _Scan) -> None:
    """A finding per channel whose cases' p90/p10 ratio exceeds SPREAD_WARN."""
    for name, r in (spread or {}).items():
        if r.get("ratio_90_10", 0.0) > SPREAD_WARN:
            s.problem("intensity spread", None, (
                f"{name}: the 99th percentile of each case's body pixels spans {r['min']:.3f}..{r['max']:.3f} "
                f"([0, 1] values, {r['cases']} cases): p90/p10 ratio {r['ratio_90_10']:.2f}, max/min "
                f"{r['ratio_max_min']:.2f}. medseg scales each case by its own statistics (plan setting "
                "intensity_norm=case or median, the default for such data); a model trained with intensity_norm=none "
                "would be sensitive to this spread"))


def _duplicates(ds: DataSet, by_hash: dict, case_hashes: dict, problem) -> None:
    """Whole cases of several slices with identical pixels are one finding each ("duplicate case": the same
    scan under two ids leaks between train and validation); other identical images are listed per group."""
    first_file = {}
    for it in ds.items:
        first_file.setdefault(it.case, it.image)
    by_case: dict[str, list[str]] = defaultdict(list)
    for case, hashes in case_hashes.items():
        if len(hashes) > 1:
            by_case[hashlib.sha1("".join(h for _, h in sorted(hashes)).encode()).hexdigest()].append(case)
    covered = set()
    for cases in by_case.values():
        if len(cases) > 1:
            covered.update(cases)
            problem("duplicate case", first_file[cases[0]], f"case {cases[0]} has the same pixels, slice for slice, "
                    f"as case(s) {', '.join(cases[1:])}")
    for group in by_hash.values():
        group = [g for g in group if g.case not in covered]
        if len(group) > 1:
            problem("duplicate image", group[0].image, "identical pixels in " + ", ".join(
                _rel(g.image, ds.root) for g in group[1:]))


def _rel(path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _num(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) and not float(v).is_integer() else f"{v:g}"


def print_fingerprint(fp: dict, console=None) -> None:
    """The fingerprint as rich tables: summary, intensities, subgroups, problems (all of them)."""
    from rich.console import Console

    console = console or Console()
    console.print(_summary_table(fp))
    if fp["intensity_raw"]:
        console.print(_intensity_table(fp))
    if fp["subgroups"]:
        console.print(_subgroup_table(fp))
    if fp["problems"]:
        console.print(_problem_table(fp))
    else:
        console.print("no problems found")


def _summary_table(fp: dict):
    """The summary table: layout, counts, sizes, spacings, types, intensity rule, foreground, mask values."""
    from rich.table import Table

    c = fp["counts"]
    t = Table(title=f"medseg inspect: {fp['data']}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("layout", f"{fp['layout']} (unit: {fp['unit']}; channels: {', '.join(fp['channel_names'])})")
    t.add_row("target", fp["target"] + (f" (label values {fp['target_values']})" if fp["target_values"] else ""))
    for k in fp.get("classes") or []:
        gone = f"; missing in {k['cases_missing']}: {', '.join(k['missing'])}" if k["cases_missing"] else ""
        t.add_row(f"class {k['name']} ({k['value']})", f"{k['voxels']} voxels ({100 * k['foreground_share']:.1f}% of "
                  f"the foreground), in {k['cases']} cases{gone}")
    t.add_row("counts", f"{c['patients']} patients, {c['cases']} cases, {c['images']} images "
                        f"({c['read']} read without problems)")
    if fp["image_size"]:
        s = fp["image_size"]
        t.add_row("image size (HxW)", f"min {_num(s['height']['min'])}x{_num(s['width']['min'])}, "
                  f"median {_num(s['height']['median'])}x{_num(s['width']['median'])}, "
                  f"max {_num(s['height']['max'])}x{_num(s['width']['max'])}; {s['distinct']} distinct "
                  f"(most common {s['most_common'][0]}x{s['most_common'][1]})")
    if fp["spacing"]:
        sp = fp["spacing"]
        axes = ", ".join(f"{a} {_num(sp[a]['min'])}..{_num(sp[a]['max'])} (median {_num(sp[a]['median'])})"
                         for a in "xyz" if a in sp)
        t.add_row("spacing (mm)", f"{axes}; {sp['distinct']} distinct over {sp['items']} images")
    else:
        t.add_row("spacing (mm)", "not recorded by this layout")
    t.add_row("stored types", ", ".join(f"{k} ({v})" for k, v in fp["dtypes"].items()))
    rule = fp["intensity_rule"]
    t.add_row("intensity rule", ", ".join(f"{k}={v}" for k, v in rule.items()))
    if fp["foreground"]:
        f = fp["foreground"]
        t.add_row("foreground", f"{100 * f['pixel_fraction']:.2f}% of pixels; empty masks: {f['empty_images']} images "
                  f"({100 * f['empty_image_share']:.1f}%), {f['empty_cases']} cases with no foreground at all "
                  f"({100 * f['empty_case_share']:.1f}%)")
    mv = fp["mask_values"]
    if mv["kind"]:
        shown = mv["values"] if mv["values"] is not None and len(mv["values"]) <= 12 else f"{mv['distinct']} values"
        note = ("0 and one maximum per file" if mv["kind"] == "binary"
                else "see problems" if mv["kind"] == "non-binary" else "label values")
        t.add_row("mask values", f"{mv['kind']} ({note}): {shown}")
    t.add_row("inspected in", f"{fp['seconds']:.1f} s")
    return t


def _intensity_table(fp: dict):
    """Intensity percentiles per channel, stored values beside the [0, 1] values after the rule."""
    from rich.table import Table

    it = Table(title="intensity percentiles per channel (0.5 / 50 / 99.5; sampled pixels)")
    for col in ("channel", "stored values", "min..max", "[0, 1] after the rule"):
        it.add_column(col)
    unit = {u["channel"]: u for u in fp["intensity_unit"]}
    for r in fp["intensity_raw"]:
        u = unit.get(r["channel"])
        it.add_row(r["channel"], " / ".join(_num(r[k]) for k in ("p0.5", "p50", "p99.5")),
                   f"{_num(r['min'])}..{_num(r['max'])}",
                   " / ".join(f"{u[k]:.3f}" for k in ("p0.5", "p50", "p99.5")) if u else "-")
    _case_rows(it, fp.get("case_intensity"))
    return it


def _case_rows(table, spread: dict | None) -> None:
    """Rows of the per-case spread of each channel's 99th percentile of body pixels (fingerprint's case_intensity)."""
    if not spread:
        return
    table.add_section()
    for name, r in spread.items():
        text = r["note"] if "note" in r else (f"{r['min']:.3f} / {r['median']:.3f} / {r['max']:.3f}; "
                                              f"max/min {r['ratio_max_min']:.2f}, p90/p10 {r['ratio_90_10']:.2f}")
        table.add_row(name, "case p99 (body)", "-", text)
    cases = max((r.get("cases", 0) for r in spread.values()), default=0)
    if cases:
        table.caption = (f"case p99 (body): each case's 99th percentile of its body pixels ([0, 1] values), "
                         f"min / median / max over {cases} cases and their ratios")


def _subgroup_table(fp: dict):
    """Counts per value of every subgroup key."""
    from rich.table import Table

    g = Table(title=f"subgroups (counted per {fp['subgroup_unit']})")
    g.add_column("key")
    g.add_column("counts")
    for k, counts in fp["subgroups"].items():
        g.add_row(k, ", ".join(f"{v}: {n}" for v, n in counts.items()))
    return g


def _problem_table(fp: dict):
    """Every problem found, with its file relative to the data folder."""
    from rich.table import Table

    root = Path(fp["data"])
    p = Table(title=f"{len(fp['problems'])} problem(s) found")
    for col in ("problem", "file", "detail"):
        p.add_column(col, overflow="fold")
    for r in fp["problems"]:
        p.add_row(r["kind"], _rel(r["file"], root) if r["file"] else "-", r["detail"])
    return p
