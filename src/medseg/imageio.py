"""Reading and writing 2D images and masks (tifffile for TIFF, Pillow for the rest).

Every reader turns a failure into a MedsegError naming the file, so no caller sees a raw traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from .errors import MedsegError, atomic_path

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def is_mask_name(path: Path) -> bool:
    """True for files such as `x_mask.png`, `x_mask_1.png` (masks are never images)."""
    return "_mask" in path.stem


def _read_raw(path: Path) -> np.ndarray:
    if not path.is_file():
        raise MedsegError(path, "file not found")
    if path.stat().st_size == 0:
        raise MedsegError(path, "file is empty (0 bytes)")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = tifffile.imread(path)
        else:
            with Image.open(path) as im:
                if im.mode == "1" or im.mode.startswith("I;16") or im.mode in ("I", "F"):
                    arr = np.asarray(im)
                else:
                    arr = np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB" if im.mode != "L" else "L"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, tifffile.TiffFileError) as e:
        raise MedsegError(path, f"cannot read image ({type(e).__name__}: {e})".replace("\n", " ")) from e
    if arr.ndim == 3 and arr.shape[-1] == 4:  # drop alpha
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3)):
        raise MedsegError(path, f"unsupported image shape {arr.shape} (expected HxW or HxWx3)")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape[0] < 8 or arr.shape[1] < 8 or arr.shape[0] * arr.shape[1] > 20000 * 20000:
        raise MedsegError(path, f"absurd image size {arr.shape[1]}x{arr.shape[0]}")
    return arr


def read_image(path: Path, channels: int) -> np.ndarray:
    """Read an image as float32 CxHxW in [0, 1] with `channels` channels (1: grey, 3: RGB)."""
    arr = _read_raw(Path(path))
    # integers scale by their type's range; bool (1-bit images) and floats are already in [0, 1]
    scale = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
    arr = arr.astype(np.float32) / scale
    if not np.isfinite(arr).all():
        raise MedsegError(path, "image contains NaN or Inf values")
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.moveaxis(arr, -1, 0)
    if arr.shape[0] == channels:
        return np.ascontiguousarray(arr)
    if channels == 1:  # RGB -> grey (ITU-R 601 luma, as Pillow's "L")
        return (0.299 * arr[0:1] + 0.587 * arr[1:2] + 0.114 * arr[2:3]).astype(np.float32)
    return np.repeat(arr, channels, axis=0)


def read_mask(paths: list[Path], shape: tuple[int, int]) -> np.ndarray:
    """Read one or more binary masks (1-bit, 8-bit grey or RGB) as the union, a bool HxW array."""
    out = np.zeros(shape, dtype=bool)
    for p in paths:
        arr = _read_raw(Path(p))
        if arr.ndim == 3:
            arr = arr.max(axis=-1)
        if arr.shape != shape:
            raise MedsegError(p, f"mask is {arr.shape[1]}x{arr.shape[0]} but its image is {shape[1]}x{shape[0]}")
        hi = arr.max() if arr.size else 0
        out |= arr > (0 if hi <= 1 else hi / 2)
    return out


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, reading only what is needed."""
    return _read_raw(Path(path)).shape[:2]


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """Write a bool/0-1 mask as an 8-bit PNG with values 0/255, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(tmp, format="PNG")
