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
from pathlib import Path

import numpy as np

from .adapters import DataSet, Item, load_dataset
from .errors import MedsegError
from .imageio import read_raw, read_image, to_unit

PERCENTILES = (0.5, 50.0, 99.5)
SAMPLE_PER_IMAGE = 10_000  # pixels per image and channel pooled for the percentiles (nnU-Net samples too)
MAX_SAMPLES = 2_000_000  # pooled pixels per channel at most (percentiles of 10 M values cost seconds)
MAX_SUBGROUP_VALUES = 12  # a meta key with more distinct values is not a subgroup (age, ids)
MAX_MASK_VALUES = 64  # beyond this many distinct mask values, only their count is kept


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


def channel_names(ds: DataSet) -> list[str]:
    """Names of the input channels (nnU-Net's dataset.json `channel_names`; "CT" selects its CT normalisation)."""
    from .nnunet_export import CHANNEL_NAMES
    names = CHANNEL_NAMES.get(ds.layout) or _dataset_json_names(Path(ds.root))
    if names and len(names) == ds.channels:
        return list(names)
    return ["image"] if ds.channels == 1 else [f"image{i}" for i in range(ds.channels)]


def _unit(it: Item, raw: np.ndarray, intensity: dict, channels: int) -> np.ndarray:
    """The [0, 1] values by the data set's rule. Fixed rules (range, window) are applied to the raw planes
    already read (imageio.to_unit; reading every file once halves the time; after an RGB -> grey conversion
    this differs from read_image's order by at most half a grey level); rules that need more than the
    slice (per-volume percentiles) go through imageio.read_image, exactly as training reads them."""
    if intensity.get("mode", "range") in ("range", "window"):
        return to_unit(raw, intensity, it.image)
    return read_image(it.image, channels, intensity, it.z, it.extra_channels)


def _dataset_json_names(root: Path) -> list[str] | None:
    """Channel names of an MSD / nnU-Net folder's dataset.json ("channel_names" or "modality"), if any."""
    import json
    try:
        meta = json.loads((root / "dataset.json").read_text())
        raw = meta.get("channel_names", meta.get("modality"))
        return [str(raw[k]) for k in sorted(raw, key=int)]
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


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


def fingerprint(data: str | Path | DataSet, layout: str = "auto", target: str | None = None,
                progress: bool = True) -> dict:
    """Read every image and mask of a data set once and return its fingerprint (JSON-able), with the
    problems found listed per file. A layout that cannot be loaded raises MedsegError."""
    from rich.console import Console
    from rich.progress import Progress

    t0 = time.perf_counter()
    ds = data if isinstance(data, DataSet) else load_dataset(data, layout, target)
    problems: list[dict] = [{"kind": "adapter", "file": str(ds.root), "detail": p} for p in ds.problems]

    def problem(kind: str, path, detail: str) -> None:
        problems.append({"kind": kind, "file": None if path is None else str(path), "detail": detail})

    sizes, spacings, dtypes = [], [], Counter()
    raw_samples: list[list[np.ndarray]] = [[] for _ in range(ds.channels)]
    unit_samples: list[list[np.ndarray]] = [[] for _ in range(ds.channels)]
    by_hash: dict[str, list[Item]] = defaultdict(list)
    case_hashes: dict[str, list[tuple[int, str]]] = defaultdict(list)
    mask_values: set[int | float] = set()
    mask_value_overflow = False
    all_binary = True  # every mask file holds 0 and at most one other value (its own maximum)
    fg_pixels = total_pixels = empty_images = read_ok = 0
    case_fg: dict[str, bool] = {}

    with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task(f"inspecting {len(ds.items)} images", total=len(ds.items))
        for it in ds.items:
            bar.advance(task)
            if "spacing" in it.meta and it.meta["spacing"] is not None:
                spacings.append(tuple(float(v) for v in it.meta["spacing"]))
            try:
                raw = raw_planes(it, ds.channels)
            except MedsegError as e:
                problem("unreadable file", e.path or it.image, e.problem)
                continue
            sizes.append(raw.shape[1:])
            dtypes[raw.dtype.name] += 1
            digest = hashlib.sha1(f"{raw.dtype}{raw.shape}".encode() + raw.tobytes()).hexdigest()
            case_hashes[it.case].append((it.index, digest))
            if raw.size and raw.min() != raw.max():  # blank slices (all one value) are alike, not duplicates
                by_hash[digest].append(it)
            finite = bool(np.isfinite(raw).all()) if raw.dtype.kind == "f" else True
            if not finite:
                problem("NaN/Inf", it.image, f"{int((~np.isfinite(raw)).sum())} pixel(s) are NaN or Inf")
            else:
                for c in range(ds.channels):
                    raw_samples[c].append(_sample(raw[c]))
            ok = finite
            fg = np.zeros(raw.shape[1:], dtype=bool)
            if not it.masks:
                problem("missing mask", it.image, "item has no mask file")
                ok = False
            for m in it.masks:
                if not Path(m).is_file():
                    problem("missing mask", m, "mask file not found")
                    ok = False
                    continue
                try:
                    arr = read_raw(Path(m), it.z)
                except MedsegError as e:
                    problem("unreadable file", e.path or m, e.problem)
                    ok = False
                    continue
                if arr.ndim == 3:
                    arr = arr.max(axis=-1)
                if arr.shape != raw.shape[1:]:
                    problem("size mismatch", m, f"mask is {arr.shape[1]}x{arr.shape[0]} but its image "
                            f"({Path(it.image).name}) is {raw.shape[2]}x{raw.shape[1]}")
                    ok = False
                    continue
                vals = _mask_values(arr)
                if ds.target_values:  # the rule of imageio.read_mask, on the array already read
                    fg |= np.isin(arr, ds.target_values)
                elif len(vals):
                    fg |= arr > (0 if vals[-1] <= 1 else vals[-1] / 2)
                if not mask_value_overflow:
                    mask_values.update(int(v) if float(v).is_integer() else float(v) for v in vals)
                    if len(mask_values) > MAX_MASK_VALUES:
                        mask_value_overflow = True
                binary = len(vals) <= 1 or (len(vals) == 2 and vals[0] == 0)
                all_binary = all_binary and binary
                if not ds.target_values and not binary:
                    shown = ", ".join(f"{v:g}" for v in vals[:8]) + (", ..." if len(vals) > 8 else "")
                    problem("non-binary mask", m, f"{len(vals)} values ({shown}) where 0 and one maximum "
                            "were expected: thresholded at half the maximum")
            if not ok:
                continue
            try:
                img = _unit(it, raw, ds.intensity, ds.channels)
            except MedsegError as e:
                problem("unreadable file", e.path or it.image, e.problem)
                continue
            read_ok += 1
            for c in range(ds.channels):
                unit_samples[c].append(_sample(img[c]))
            n_fg = int(fg.sum())
            fg_pixels += n_fg
            total_pixels += fg.size
            empty_images += n_fg == 0
            case_fg[it.case] = case_fg.get(it.case, False) or n_fg > 0

    _duplicates(ds, by_hash, case_hashes, problem)

    names = channel_names(ds)
    mask_kind = None
    if mask_values:
        mask_kind = "binary" if all_binary else "multi-class" if ds.target_values else "non-binary"
    out = {
        "data": str(ds.root),
        "layout": ds.layout,
        "unit": ds.unit,
        "channels": ds.channels,
        "channel_names": names,
        "intensity_rule": ds.intensity,
        "target": ds.target,
        "target_values": list(ds.target_values),
        "counts": {"patients": len(ds.patients), "cases": len({it.case for it in ds.items}),
                   "images": len(ds.items), "read": read_ok},
        "image_size": None if not sizes else {
            "height": _stats([s[0] for s in sizes]), "width": _stats([s[1] for s in sizes]),
            "distinct": len(set(sizes)), "most_common": list(Counter(sizes).most_common(1)[0][0])},
        "spacing": None if not spacings else {
            "items": len(spacings), "distinct": len(set(spacings)),
            **{axis: _stats([s[i] for s in spacings if len(s) > i]) for i, axis in enumerate("xyz")
               if any(len(s) > i for s in spacings)}},
        "dtypes": dict(dtypes),
        "intensity_raw": [{"channel": names[c], **_percentiles(raw_samples[c])}
                          for c in range(ds.channels) if raw_samples[c]],
        "intensity_unit": [{"channel": names[c], **_percentiles(unit_samples[c])}
                           for c in range(ds.channels) if unit_samples[c]],
        "foreground": None if not total_pixels else {
            "pixel_fraction": fg_pixels / total_pixels,
            "empty_images": empty_images, "empty_image_share": empty_images / read_ok,
            "empty_cases": sum(not v for v in case_fg.values()),
            "empty_case_share": sum(not v for v in case_fg.values()) / len(case_fg)},
        "mask_values": {"values": None if mask_value_overflow else sorted(mask_values),
                        "distinct": len(mask_values) if not mask_value_overflow else f">{MAX_MASK_VALUES}",
                        "kind": mask_kind},
        "subgroups": subgroups(ds),
        "subgroup_unit": "patient" if ds.unit == "patient" else "case",
        "problems": problems,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return out


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
    from rich.table import Table

    console = console or Console()
    root = Path(fp["data"])
    c = fp["counts"]
    t = Table(title=f"medseg inspect: {fp['data']}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("layout", f"{fp['layout']} (unit: {fp['unit']}; channels: {', '.join(fp['channel_names'])})")
    t.add_row("target", fp["target"] + (f" (label values {fp['target_values']})" if fp["target_values"] else ""))
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
        t.add_row("mask values", f"{mv['kind']} ({'0 and one maximum per file' if mv['kind'] == 'binary' else 'see problems' if mv['kind'] == 'non-binary' else 'label values'}): {shown}")
    t.add_row("inspected in", f"{fp['seconds']:.1f} s")
    console.print(t)

    if fp["intensity_raw"]:
        it = Table(title="intensity percentiles per channel (0.5 / 50 / 99.5; sampled pixels)")
        for col in ("channel", "stored values", "min..max", "[0, 1] after the rule"):
            it.add_column(col)
        unit = {u["channel"]: u for u in fp["intensity_unit"]}
        for r in fp["intensity_raw"]:
            u = unit.get(r["channel"])
            it.add_row(r["channel"], " / ".join(_num(r[k]) for k in ("p0.5", "p50", "p99.5")),
                       f"{_num(r['min'])}..{_num(r['max'])}",
                       " / ".join(f"{u[k]:.3f}" for k in ("p0.5", "p50", "p99.5")) if u else "-")
        console.print(it)

    if fp["subgroups"]:
        g = Table(title=f"subgroups (counted per {fp['subgroup_unit']})")
        g.add_column("key")
        g.add_column("counts")
        for k, counts in fp["subgroups"].items():
            g.add_row(k, ", ".join(f"{v}: {n}" for v, n in counts.items()))
        console.print(g)

    if fp["problems"]:
        p = Table(title=f"{len(fp['problems'])} problem(s) found")
        for col in ("problem", "file", "detail"):
            p.add_column(col, overflow="fold")
        for r in fp["problems"]:
            p.add_row(r["kind"], _rel(r["file"], root) if r["file"] else "-", r["detail"])
        console.print(p)
    else:
        console.print("no problems found")
