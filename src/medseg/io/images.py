"""Reading and writing 2D images and masks: tifffile for TIFF, pydicom for DICOM, SimpleITK for
volumes (NIfTI, NRRD, MHA; an item takes one slice), Pillow for the rest.

Every reader turns a failure into a MedsegError naming the file, so no caller sees a raw traceback.
Intensities become [0, 1] by the data set's rule (see `to_unit`), which the plan stores for prediction.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from ..errors import MedsegError, atomic_path

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DEFAULT_INTENSITY = {"mode": "range"}

# tifffile logs every bad tag of a corrupt file to stderr; the MedsegError already says it in one line
logging.getLogger("tifffile").addHandler(logging.NullHandler())


def is_volume(path: Path) -> bool:
    return Path(path).name.lower().endswith(VOLUME_SUFFIXES)


def is_dicom(path: Path) -> bool:
    """DICOM by extension, or a Part 10 file without one (3D-IRCADb's `image_<k>`): 'DICM' at byte 128."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    if path.suffix or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def volume_stem(path: Path) -> str:
    """`case_0000.nii.gz` -> `case_0000` (both parts of a double suffix go)."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def is_mask_name(path: Path) -> bool:
    """True for files such as `x_mask.png`, `x_mask_1.png` (masks are never images)."""
    return "_mask" in path.stem


def read_dicom(path: Path, pixels: bool = True):
    """A DICOM dataset (pixel data decoded and checked when `pixels`), or a MedsegError naming the file."""
    import pydicom
    _check_file(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
        if pixels:
            ds.pixel_array  # decode now, so that a truncated file fails here
    except Exception as e:  # noqa: BLE001 - pydicom raises a dozen types on corrupt files (found by tests/test_fuzz.py)
        raise MedsegError(path, f"cannot read DICOM ({type(e).__name__}: {e})".replace("\n", " ")[:300]) from e
    return ds


def _dicom_pixels(path: Path) -> np.ndarray:
    """Stored values through the modality LUT (RescaleSlope/Intercept: CT in Hounsfield units)."""
    from pydicom.pixels import apply_modality_lut
    ds = read_dicom(path)
    arr = ds.pixel_array
    if arr.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
        raise MedsegError(path, f"multi-frame DICOM ({arr.shape[0]} frames) where one image was expected")
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        try:
            arr = apply_modality_lut(arr, ds).astype(np.float32)
        except Exception as e:  # noqa: BLE001 - a corrupt rescale value (text, empty) fails in many ways
            raise MedsegError(path, f"invalid RescaleSlope/RescaleIntercept ({type(e).__name__}: {e})"[:300]) from e
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # 0 is white: invert to the usual sense
        arr = arr.max() + arr.min() - arr
    return arr


@functools.lru_cache(maxsize=8)  # a 4-channel case needs 5 volumes (channels + label) per slice
def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A whole volume as (Z x Y x X [x C]) array and its spacing (x, y, z) in mm. Consecutive slices of
    one volume are read in a row, so the last few volumes stay cached."""
    import SimpleITK as sitk
    _check_file(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_complete(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise MedsegError(path, f"cannot read volume ({str(e).strip().splitlines()[-1][:200]})") from e
    arr = sitk.GetArrayFromImage(img)
    if img.GetDimension() == 2:  # not arr.ndim: a 2D RGB image is Y x X x 3 (found by tests/test_fuzz.py)
        arr = arr[None]
    return arr, tuple(float(v) for v in img.GetSpacing())


def _check_nifti_complete(path: Path) -> None:
    """ITK reads a NIfTI file cut short (an interrupted download or copy) without an error, the missing voxels
    as 0 (found by tests/test_fuzz.py): the voxel data must be as long as the header says."""
    import gzip

    import nibabel as nib
    try:
        with gzip.open(path) if path.name.lower().endswith(".gz") else path.open("rb") as f:
            have = f.seek(0, 2)  # in a gzip file: decompresses to the end, EOFError when the stream is cut
    except Exception as e:  # noqa: BLE001 - gzip raises OSError, EOFError, zlib.error, ... (found by tests/test_fuzz.py)
        raise MedsegError(path, f"cannot read NIfTI: corrupt or truncated ({type(e).__name__}: {e})"[:300]) from e
    try:
        data = nib.load(path).dataobj  # the header's offset, shape and type (the loaded header's offset reads 0)
        need = int(data.offset) + int(np.prod(data.shape)) * data.dtype.itemsize
    except Exception:  # noqa: BLE001 - a header nibabel cannot parse is left to ITK, which reports its own error
        return
    if have < need:
        raise MedsegError(path, f"NIfTI file cut short: {have} of the {need} bytes its header announces")


@functools.lru_cache(maxsize=32)
def _volume_percentiles(path: Path, low: float, high: float) -> tuple[float, float]:
    vol = read_volume(path)[0]
    sample = vol.ravel()[:: max(1, vol.size // 2_000_000)]  # a regular subsample keeps this under a second
    lo, hi = np.percentile(sample, [low, high])
    if not np.isfinite([lo, hi]).all():  # else every slice of the volume reads as NaN (found by tests/test_fuzz.py)
        raise MedsegError(path, "volume contains NaN or Inf values")
    return float(lo), float(hi)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise MedsegError(path, "file not found")
    if path.stat().st_size == 0:
        raise MedsegError(path, "file is empty (0 bytes)")


def read_raw(path: Path, z: int | None = None) -> np.ndarray:
    """The stored values of a 2D image, DICOM or volume slice (before any intensity rule), shape-checked."""
    _check_file(path)
    if is_volume(path):
        vol, _ = read_volume(path)
        if z is None:
            if vol.shape[0] != 1:
                raise MedsegError(path, f"a volume of {vol.shape[0]} slices where one 2D image was expected")
            z = 0
        if not 0 <= z < vol.shape[0]:
            raise MedsegError(path, f"slice {z} out of range (volume has {vol.shape[0]} slices)")
        return _checked_shape(path, vol[z])
    if is_dicom(path):
        return _checked_shape(path, _dicom_pixels(path))
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = tifffile.imread(path)
        else:
            with Image.open(path) as im:
                if im.mode == "1" or im.mode.startswith("I;16") or im.mode in ("I", "F"):
                    arr = np.asarray(im)
                else:
                    arr = np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB" if im.mode != "L" else "L"))
    except Image.DecompressionBombError as e:
        raise MedsegError(path, f"image too large to decode safely ({e})".split(", could be")[0] + ")") from e
    except Exception as e:  # noqa: BLE001 - corrupt TIFF/PNG headers raise MemoryError, ZeroDivisionError, ... (fuzzer)
        raise MedsegError(path, f"cannot read image ({type(e).__name__}: {e})".replace("\n", " ")[:300]) from e
    return _checked_shape(path, arr)


def _checked_shape(path: Path, arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] == 4:  # drop alpha
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3)):
        raise MedsegError(path, f"unsupported image shape {arr.shape} (expected HxW or HxWx3)")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape[0] < 8 or arr.shape[1] < 8 or arr.shape[0] * arr.shape[1] > 20000 * 20000:
        raise MedsegError(path, f"absurd image size {arr.shape[1]}x{arr.shape[0]} (too small or too large)")
    return arr


def to_unit(arr: np.ndarray, intensity: dict, path: Path) -> np.ndarray:
    """Raw values -> float32 in [0, 1] by the data set's rule:
    - range: integer types by their type's range (uint8 / 255); bool and floats as they are (clipped);
    - window: a fixed window in the data's units, e.g. CT -100..400 HU for the liver;
    - percentile: the low/high percentiles of the image (of the whole volume: see read_image) map to 0 and 1.
    """
    if not np.isfinite(np.asarray(arr, dtype=np.float32)).all():
        raise MedsegError(path, "image contains NaN or Inf values")
    mode = intensity.get("mode", "range")
    if mode == "range":
        scale = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
        return np.clip(arr.astype(np.float32) / scale, 0, 1)
    if mode == "window":
        lo, hi = float(intensity["low"]), float(intensity["high"])
    elif mode == "percentile":
        lo, hi = (float(v) for v in np.percentile(arr, [intensity.get("low", 0.5), intensity.get("high", 99.5)]))
    else:
        raise MedsegError(None, f"unknown intensity mode {mode!r}")
    return np.clip((arr.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)


def read_image(path: Path, channels: int, intensity: dict | None = None, z: int | None = None,
               extra: tuple[Path, ...] = ()) -> np.ndarray:
    """Read an image (or slice `z` of a volume) as float32 CxHxW in [0, 1] with `channels` channels
    (1: grey, 3: RGB; more: one file per channel, `path` then `extra`)."""
    intensity = intensity or DEFAULT_INTENSITY
    if extra:
        planes = [read_image(p, 1, intensity, z) for p in (Path(path), *extra)]
        if len({p.shape for p in planes}) != 1:
            raise MedsegError(extra[0], "channel files of one case differ in size")
        arr = np.concatenate(planes)
        return arr if arr.shape[0] == channels else _fit_channels(arr, channels)
    path = Path(path)
    raw = read_raw(path, z)
    if intensity.get("mode") == "percentile" and is_volume(path):  # the whole volume's, computed once
        lo, hi = _volume_percentiles(path, float(intensity.get("low", 0.5)), float(intensity.get("high", 99.5)))
        arr = to_unit(raw, {"mode": "window", "low": lo, "high": hi}, path)
    else:
        arr = to_unit(raw, intensity, path)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.moveaxis(arr, -1, 0)
    if arr.shape[0] != 1 and channels not in (1, arr.shape[0]):  # found by tests/test_fuzz.py: 3 -> 4 gave 12
        raise MedsegError(path, f"{arr.shape[0]}-channel image where {channels} channels are expected")
    return _fit_channels(arr, channels)


def _fit_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    if arr.shape[0] == channels:
        return np.ascontiguousarray(arr)
    if channels == 1 and arr.shape[0] == 3:  # RGB -> grey (ITU-R 601 luma, as Pillow's "L")
        return (0.299 * arr[0:1] + 0.587 * arr[1:2] + 0.114 * arr[2:3]).astype(np.float32)
    return np.repeat(arr, channels, axis=0)


def read_mask(paths: list[Path], shape: tuple[int, int], values: tuple[int, ...] = (), z: int | None = None) -> np.ndarray:
    """Read one or more masks (1-bit, 8-bit grey or RGB; a DICOM; slice `z` of a label volume) as the
    union of their foreground, a bool HxW array. With `values`, exactly those label values are the
    foreground (multi-class masks); without, binary masks are thresholded at half their maximum."""
    out = np.zeros(shape, dtype=bool)
    for p in paths:
        arr = mask_array(Path(p), shape, z)
        out |= _foreground(p, arr, values)
    return out


def read_labels(paths: list[Path], shape: tuple[int, int], classes: list[dict], mask_classes: tuple[int, ...] = (),
                z: int | None = None) -> np.ndarray:
    """A multi-class run's label map: H x W uint8 class indices (0 background, k for classes[k - 1]).
    With `mask_classes` (3D-IRCADb: one binary mask file per structure) file j is class mask_classes[j];
    otherwise each file is a label map whose values in class k's "labels" become k. Where classes overlap,
    the later one wins (a tumour inside the liver is tumour)."""
    out = np.zeros(shape, dtype=np.uint8)
    for j, p in enumerate(paths):
        arr = mask_array(Path(p), shape, z)
        if mask_classes:
            out[_foreground(p, arr, ())] = mask_classes[j]
            continue
        for k, c in enumerate(classes, 1):
            out[np.isin(arr, c.get("labels") or [c["value"]])] = k
    return out


def mask_array(p: Path, shape: tuple[int, int], z: int | None) -> np.ndarray:
    """One mask file (slice z) as H x W, checked: finite, grey, the image's size."""
    arr = read_raw(p, z)
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():  # else the whole slice reads as empty (fuzzer)
        raise MedsegError(p, "mask contains NaN or Inf values")
    if arr.ndim == 3:
        if not (arr == arr[..., :1]).all():
            raise MedsegError(p, "colour mask (its channels differ): expected a grey or black/white mask")
        arr = arr[..., 0]
    if arr.shape != tuple(shape):
        raise MedsegError(p, f"mask is {arr.shape[1]}x{arr.shape[0]} but its image is {shape[1]}x{shape[0]}")
    return arr


def _foreground(p: Path, arr: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    if values:
        return np.isin(arr, values)
    hi = arr.max() if arr.size else 0
    _check_binary(p, arr, hi)
    return arr > (0 if hi <= 1 else hi / 2)


def _check_binary(path: Path, arr: np.ndarray, hi) -> None:
    """A binary layout's mask may have anti-aliased edges or JPEG noise near 0 and near its maximum (it is
    thresholded at half the maximum), but when much of its foreground lies well between the two it is
    not a mask: a probability map, an image saved as a mask, or a multi-class label map that needs
    --target."""
    if hi <= 1:
        return
    a = arr.astype(np.float32)
    fg = np.count_nonzero(a > 0.1 * hi)
    mid = np.count_nonzero((a > 0.1 * hi) & (a < 0.9 * hi))
    if fg and mid > 0.2 * fg:
        n = len(np.unique(arr))
        raise MedsegError(path, f"not a binary mask: {n} distinct values, {mid / fg:.0%} of the foreground between "
                                f"10% and 90% of its maximum {hi} (a multi-class label map? pass --target)")


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, reading only what is needed."""
    return read_raw(Path(path)).shape[:2]  # only 2D files: volumes and DICOM go through their adapters


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """Write a bool/0-1 mask as an 8-bit PNG with values 0/255, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(tmp, format="PNG")


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """Write a label map (uint8 class values, as they are) as an 8-bit PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="L").save(tmp, format="PNG")


# One colour per class of a multi-class run (class k: CLASS_COLOURS[(k - 1) % len]); Okabe-Ito's
# colour-blind-safe set, the same in the report's legend, the prediction overlays and the viewer.
CLASS_COLOURS = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
                 (204, 121, 167), (255, 255, 255))


def class_colour(k: int) -> tuple[int, int, int]:
    return CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)]


def overlay_labels(img: np.ndarray, labels: np.ndarray, fill: float = 0.45, max_side: int = 320,
                   outline: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 picture of a multi-class label map (class indices) over the C x H x W image in [0, 1]: each
    class filled in its colour (CLASS_COLOURS) at `fill` opacity; `outline` (another label map, e.g. the
    ground truth) drawn as white outlines. At most `max_side` pixels a side."""
    rgb = img if img.shape[0] == 3 else np.repeat(img[:1], 3, axis=0)
    rgb = (np.moveaxis(rgb, 0, -1) * 255).clip(0, 255).astype(np.float32)
    for k in [int(v) for v in np.unique(labels) if v]:
        rgb[labels == k] = (1 - fill) * rgb[labels == k] + fill * np.array(class_colour(k), np.float32)
    rgb = rgb.astype(np.uint8)
    if outline is not None:
        for k in [int(v) for v in np.unique(outline) if v]:
            m = outline == k
            rgb[m & ~ndimage.binary_erosion(m, iterations=max(1, max(m.shape) // 256))] = class_colour(k)
    step = thumb_step(rgb.shape[:2], max_side)
    return rgb[::step, ::step]


def overlay(img: np.ndarray, gt: np.ndarray, pred: np.ndarray, max_side: int = 320) -> np.ndarray:
    """RGB uint8 picture for reports, overlays and TensorBoard: the C x H x W image in [0, 1] (grey or
    RGB), the ground-truth outline green, the prediction outline red; at most `max_side` pixels a side."""
    rgb = img if img.shape[0] == 3 else np.repeat(img[:1], 3, axis=0)
    rgb = (np.moveaxis(rgb, 0, -1) * 255).clip(0, 255).astype(np.uint8).copy()
    for mask, color in ((gt, (0, 255, 0)), (pred, (255, 40, 40))):
        edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, max(mask.shape) // 256))
        rgb[edge] = color
    step = thumb_step(rgb.shape[:2], max_side)
    return rgb[::step, ::step]


def thumb_step(shape: tuple[int, ...], max_side: int) -> int:
    return max(1, int(np.ceil(max(shape) / max_side)))
