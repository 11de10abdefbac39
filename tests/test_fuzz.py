"""Fuzzing the readers (medseg.io.images: read_image, read_mask, read_raw, read_volume) with hypothesis.

Two kinds of input:
- broken files: valid PNG, TIFF, JPEG, BMP, DICOM, NRRD and NIfTI files mutated (bytes overwritten, cut
  short, extended), NIfTI header fields set to hostile values (NaN, Inf, huge or negative sizes, unknown
  data types), files cut at any byte, and random bytes under every suffix;
- valid files: random arrays (sizes, dtypes, grey/colour/palette/1-bit, constant, binary, noisy, with
  NaN/Inf) written by the formats' own writers (Pillow, tifffile, SimpleITK).

Every read either succeeds with a checked result or raises a MedsegError naming the file; any other
exception fails the test. A successful image read is float32 C x H x W with the requested channels, finite,
in [0, 1]; a mask is a bool H x W array of the given shape; a volume has finite positive spacing. Valid
files must read, and (lossless formats) give back what was written by the documented intensity rule; a
file cut short must fail or read exactly as the whole file; NaN/Inf never reach a successful read.

The examples are fixed: tests/conftest.py loads a derandomised hypothesis profile with a fixed example
count (`HYPOTHESIS_PROFILE=explore` outside CI for a longer random search). Anything found here becomes a
case in tests/bad_inputs or a fix in medseg.io.images (see the notes at the fixes there)."""

from __future__ import annotations

import gzip
import io
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from hypothesis import HealthCheck, example, given, settings, strategies as st
from PIL import Image

from medseg.errors import MedsegError
from medseg.io.images import _volume_percentiles, is_volume, read_image, read_mask, read_raw, read_volume

sys.path.insert(0, str(Path(__file__).parent))
from replica_ircadb import write_ct_slice  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning",
                                        "ignore::DeprecationWarning")  # pydicom, tifffile, Pillow warn on mangled headers
# the example count and seed come from the profile in conftest.py; tmp_path is reused across examples on purpose
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEWER = settings(FUZZ, max_examples=max(10, settings.default.max_examples // 3))  # the slower writers (SimpleITK)


# --- valid seed files -----------------------------------------------------------------------------------------

def _picture(h: int, w: int, c: int = 0) -> np.ndarray:
    a = (np.arange(h * w * max(c, 1)).reshape(h, w, max(c, 1)) * 7 % 251).astype(np.uint8)
    return a if c else a[..., 0]


def _pil(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _tif() -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, _picture(16, 16, 3))
    return buf.getvalue()


def _dicom() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_ct_slice(Path(tmp) / "x.dcm", np.full((16, 16), 1000, np.uint16), (0.0, 0.0, 0.0))
        return path.read_bytes()


def _sitk(name: str, arr: np.ndarray, spacing=(0.8, 0.9, 2.5)) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing[:img.GetDimension()])
        sitk.WriteImage(img, str(Path(tmp) / name))
        return (Path(tmp) / name).read_bytes()


VOLUME = (np.arange(3 * 10 * 12).reshape(3, 10, 12) * 37 % 1000 - 200).astype(np.int16)
NII = _sitk("v.nii", VOLUME)  # uncompressed: the header lies at fixed offsets
# case: (suffix written, valid bytes, what is done to the mutated bytes before writing)
CASES = {
    "png": (".png", _pil(_picture(24, 20), "PNG"), None),
    "tif": (".tif", _tif(), None),
    "jpg": (".jpg", _pil(_picture(24, 20, 3), "JPEG"), None),
    "bmp": (".bmp", _pil(_picture(18, 20, 3), "BMP"), None),
    "dcm": (".dcm", _dicom(), None),
    "nrrd": (".nrrd", _sitk("v.nrrd", np.ones((3, 10, 10), np.int16)), None),
    "nii": (".nii", NII, None),
    "nii.gz": (".nii.gz", _sitk("v.nii.gz", VOLUME), None),  # the compressed stream mutated
    "nii.gz-inner": (".nii.gz", NII, gzip.compress),  # header and voxels mutated, then compressed
}


# --- reading every way a caller does, checking each result -----------------------------------------------

def _attempt(path: Path, fn, *args, **kwargs):
    """fn(*args) or None when it raised a MedsegError, which must name the file; any other exception escapes."""
    try:
        return fn(*args, **kwargs)
    except MedsegError as e:
        assert str(path) in str(e), f"the error does not name the file: {e}"
        return None


def check_image(img: np.ndarray, channels: int, hw: tuple[int, int]) -> None:
    assert isinstance(img, np.ndarray) and img.dtype == np.float32, f"image dtype {img.dtype}, expected float32"
    assert img.shape == (channels, *hw), f"image shape {img.shape}, expected {(channels, *hw)}"
    assert np.isfinite(img).all(), "image has NaN or Inf values"
    assert img.min() >= 0 and img.max() <= 1, f"image values {img.min()}..{img.max()} outside [0, 1]"


def check_mask(mask: np.ndarray, hw: tuple[int, int]) -> None:
    assert isinstance(mask, np.ndarray) and mask.dtype == bool, f"mask dtype {mask.dtype}, expected bool"
    assert mask.shape == hw, f"mask shape {mask.shape}, expected {hw}"


def read_all(path: Path, channels: int = 1, intensity: dict | None = None) -> tuple:
    """Read `path` as a volume (when it is one), then as raw values, an image and a mask (of a volume: its first
    and last slices), and check every result that comes back. Returns (volume, {z: (raw, image, mask)}), None
    for each read that ended in a MedsegError."""
    read_volume.cache_clear()  # the caches key on the path, and each example rewrites the same path
    _volume_percentiles.cache_clear()
    slices: dict = {}
    zs: list = [None]
    volume = _attempt(path, read_volume, path) if is_volume(path) else None
    if volume is not None:
        vol, spacing = volume
        assert vol.ndim in (3, 4) and vol.shape[0] >= 1, f"volume shape {vol.shape}"
        assert len(spacing) >= 2 and all(np.isfinite(s) and s > 0 for s in spacing), f"spacing {spacing}"
        zs = sorted({0, vol.shape[0] - 1})
    for z in zs:
        raw = _attempt(path, read_raw, path, z)
        if raw is not None:
            assert raw.ndim == 2 or (raw.ndim == 3 and raw.shape[-1] == 3), f"raw shape {raw.shape}"
            assert min(raw.shape[:2]) >= 8, f"raw shape {raw.shape} below the documented 8 x 8"
        img = _attempt(path, read_image, path, channels, intensity, z)
        if img is not None:
            assert raw is not None, "read_image succeeded where read_raw failed"
            check_image(img, channels, raw.shape[:2])
        hw = raw.shape[:2] if raw is not None else (16, 16)
        mask = _attempt(path, read_mask, [path], hw, z=z)
        if mask is not None:
            check_mask(mask, hw)
            assert raw is not None and np.isfinite(raw.astype(np.float64)).all(), \
                "a mask with NaN/Inf values was read instead of refused"
        slices[z] = (raw, img, mask)
    return volume, slices


# --- broken files -------------------------------------------------------------------------------------------

def mutations(data: bytes):
    """A valid file with some bytes overwritten, then possibly cut short or extended."""
    n = len(data)
    edits = st.lists(st.tuples(st.integers(0, n - 1), st.binary(min_size=1, max_size=8)), max_size=6)
    return st.tuples(edits, st.one_of(st.none(), st.integers(0, n)), st.binary(max_size=16)).map(
        lambda t: _apply(data, *t))


def _apply(data: bytes, edits, cut, tail) -> bytes:
    b = bytearray(data)
    for pos, chunk in edits:
        b[pos:pos + len(chunk)] = chunk
    if cut is not None:
        b = b[:cut]
    return bytes(b) + tail


@pytest.mark.parametrize("case", sorted(CASES))
def test_mutated_files_read_or_fail_cleanly(case, tmp_path):
    suffix, valid, post = CASES[case]
    path = tmp_path / f"fuzz{suffix}"

    @FUZZ
    @given(mutations(valid), st.sampled_from([1, 3]))
    def check(data, channels):
        path.write_bytes(post(data) if post else data)
        read_all(path, channels)

    check()


@pytest.mark.parametrize("case", sorted(CASES))
def test_files_cut_short_fail_or_read_as_whole(case, tmp_path):
    """An interrupted download or copy: the file cut at any byte fails cleanly, or reads exactly as the whole
    file (a PNG without its end chunk still has all its pixels)."""
    suffix, valid, post = CASES[case]
    path = tmp_path / f"whole{suffix}"
    path.write_bytes(post(valid) if post else valid)
    whole = read_all(path)[1]
    assert all(raw is not None and img is not None for raw, img, _ in whole.values()), "the valid file must read"
    data = path.read_bytes()

    @FUZZ
    @given(st.integers(0, len(data) - 1))
    def check(cut):
        path.write_bytes(data[:cut])
        for z, (_, img, _) in read_all(path)[1].items():
            if img is not None:
                assert z in whole and np.array_equal(img, whole[z][1]), \
                    f"cut at byte {cut} of {len(data)}, the file read as an image that differs from the whole file's"

    check()


NIFTI_FIELDS = {  # name: (offset, struct format, count) in the NIfTI-1 header
    "sizeof_hdr": (0, "<i", 1), "dim": (40, "<h", 8), "datatype": (70, "<h", 1), "bitpix": (72, "<h", 1),
    "pixdim": (76, "<f", 8), "vox_offset": (108, "<f", 1), "scl_slope": (112, "<f", 1), "scl_inter": (116, "<f", 1),
    "qform_code": (252, "<h", 1), "sform_code": (254, "<h", 1), "quatern": (256, "<f", 6), "srow": (280, "<f", 12),
}
SHORTS = st.one_of(st.sampled_from([0, 1, -1, 2, 3, 4, 5, 7, 8, 16, 64, 128, 256, 512, 768, 1024, 1536, 2304, 32767,
                                    -32768]), st.integers(-32768, 32767))
FLOATS = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"),
                                    float("-inf"), 352.0, 348.0, 1e9]), st.floats(width=32))
VALUES = {"<h": SHORTS, "<f": FLOATS, "<i": st.one_of(st.just(348), st.just(540), st.integers(-2**31, 2**31 - 1))}


@st.composite
def nifti_header_edits(draw):
    edits = []
    for name in draw(st.lists(st.sampled_from(sorted(NIFTI_FIELDS)), min_size=1, max_size=4)):
        offset, fmt, count = NIFTI_FIELDS[name]
        i = draw(st.integers(0, count - 1))
        value = draw(VALUES[fmt])
        if name == "dim" and i > 0:  # sizes stay small enough to allocate; the huge ones come one at a time
            value = draw(st.one_of(st.integers(-2, 40), st.sampled_from([0, 32767, -32768])))
        edits.append((offset + struct.calcsize(fmt) * i, fmt, value))
    return edits


@pytest.mark.parametrize("gz", [False, True], ids=["nii", "nii.gz"])
def test_nifti_header_fields_read_or_fail_cleanly(gz, tmp_path):
    """Hostile values in the header fields a reader relies on: sizes, data type, spacing, offsets, scaling."""
    path = tmp_path / ("h.nii.gz" if gz else "h.nii")

    @FUZZ
    @given(nifti_header_edits(), st.sampled_from([1, 3]), st.sampled_from([None, {"mode": "percentile"}]))
    def check(edits, channels, intensity):
        b = bytearray(NII)
        for offset, fmt, value in edits:
            struct.pack_into(fmt, b, offset, value)
        path.write_bytes(gzip.compress(bytes(b)) if gz else bytes(b))
        read_all(path, channels, intensity)

    check()


@FUZZ
@given(st.binary(max_size=512), st.sampled_from(sorted({s for s, _, _ in CASES.values()} | {".mha", ".jpeg", ".tiff"})))
def test_random_bytes_fail_cleanly(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"random{suffix}"
        path.write_bytes(data)
        read_all(path)


# --- valid files of random content ---------------------------------------------------------------------------

# per format, the layouts it stores: (name, dtype, channels in the file, lossless)
LAYOUTS = {
    ".png": [("L", "uint8", 1, True), ("RGB", "uint8", 3, True), ("RGBA", "uint8", 4, True), ("1", "bool", 1, True),
             ("P", "uint8", 3, False), ("I;16", "uint16", 1, True)],
    ".bmp": [("L", "uint8", 1, True), ("RGB", "uint8", 3, True), ("1", "bool", 1, True), ("P", "uint8", 3, False)],
    ".jpg": [("L", "uint8", 1, False), ("RGB", "uint8", 3, False)],
    ".tif": [("L", "uint8", 1, True), ("RGB", "uint8", 3, True), ("RGBA", "uint8", 4, True), ("uint16", "uint16", 1, True),
             ("int16", "int16", 1, True), ("float32", "float32", 1, True), ("float64", "float64", 1, True),
             ("RGBf", "float32", 3, True), ("bool", "bool", 1, True), ("RGB16", "uint16", 3, True)],
}
CONTENTS = ["noise", "constant", "binary", "ramp"]


def layout_of(suffix: str, name: str) -> tuple:
    return next(la for la in LAYOUTS[suffix] if la[0] == name)


FLOAT_CONTENTS = CONTENTS + ["specials", "specials"]  # specials: a few NaN/Inf/huge values among the others


def content(rng: np.random.Generator, kind: str, dtype: str, shape: tuple[int, ...], channels: int = 0) -> np.ndarray:
    """Random values of one kind in an array of `shape` (+ `channels` as the last axis); binary colour images
    are grey (equal channels), so that they are valid masks."""
    dt = np.dtype(dtype)
    hi = 1 if dt == bool else np.iinfo(dt).max if dt.kind in "iu" else 1.0
    lo = np.iinfo(dt).min if dt.kind == "i" else 0
    if kind == "binary":
        arr = np.where(rng.random(shape) < rng.uniform(0.05, 0.6), hi, 0)
        return (np.repeat(arr[..., None], channels, -1) if channels else arr).astype(dt)
    shape = (*shape, channels) if channels else shape
    if kind == "constant":
        arr = np.full(shape, rng.uniform(lo, hi) if dt.kind == "f" else rng.integers(lo, int(hi), endpoint=True))
    elif kind == "ramp":
        arr = np.linspace(lo, hi, int(np.prod(shape))).reshape(shape)
    elif dt.kind == "f":
        arr = rng.normal(0.5, 2.0, shape) * 10.0 ** rng.integers(-3, 6)
        if kind == "specials":
            flat = arr.reshape(-1)
            flat[rng.integers(0, flat.size, rng.integers(1, 4))] = rng.choice([np.nan, np.inf, -np.inf, 3e38])
    else:
        arr = rng.integers(lo, int(hi), shape, endpoint=True) if dt != bool else rng.random(shape) < 0.5
    return arr.astype(dt)


def expected_unit(arr: np.ndarray, intensity: dict | None = None) -> np.ndarray:
    """The documented rule (medseg.io.images.to_unit): integers by their type's range, bool and floats as they
    are; a window maps low..high to 0..1; clipped to [0, 1]."""
    a = arr.astype(np.float64)
    if intensity and intensity["mode"] == "window":
        a = (a - intensity["low"]) / (intensity["high"] - intensity["low"])
    elif arr.dtype.kind in "iu":
        a = a / np.iinfo(arr.dtype).max
    return np.clip(a, 0, 1)


@st.composite
def image_files(draw):
    suffix, layout = draw(st.sampled_from([(s, la) for s in sorted(LAYOUTS) for la in LAYOUTS[s]]))
    kinds = FLOAT_CONTENTS if layout[1].startswith("float") else CONTENTS
    size = st.one_of(st.integers(8, 40), st.integers(1, 7))
    return suffix, layout, (draw(size), draw(size)), draw(st.sampled_from(kinds)), draw(st.integers(0, 2**32 - 1))


def write_image(path: Path, layout, arr: np.ndarray) -> None:
    name = layout[0]
    if path.suffix == ".tif":
        tifffile.imwrite(path, arr, photometric="rgb" if arr.ndim == 3 else "minisblack")
    elif name == "P":
        Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    else:
        Image.fromarray(arr).save(path)


@FUZZ
@given(image_files(), st.sampled_from([1, 2, 3, 4]))
@example((".tif", layout_of(".tif", "float32"), (16, 12), "specials", 2), 1)  # a NaN/Inf float TIFF (tests/bad_inputs has one too)
@example((".png", layout_of(".png", "I;16"), (9, 10), "ramp", 2), 1)  # 16-bit PNG: by the uint16 range
@example((".png", layout_of(".png", "RGB"), (8, 8), "binary", 3), 4)  # an RGB image where 4 channels are expected
def test_valid_images_read_as_written(spec, channels):
    suffix, layout, (h, w), kind, seed = spec
    _, dtype, c, lossless = layout
    arr = content(np.random.default_rng(seed), kind, dtype, (h, w), c if c > 1 else 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"img{suffix}"
        write_image(path, layout, arr)
        raw, img, mask = read_all(path, channels)[1][None]
    readable = min(h, w) >= 8 and np.isfinite(arr).all()
    if not readable:
        assert img is None and mask is None, f"{'a tiny' if min(h, w) < 8 else 'a NaN/Inf'} image was read"
        return
    stored = arr[..., :3] if c == 4 else arr  # alpha is dropped
    colour = stored.ndim == 3
    if channels in (1, 3) or not colour:
        assert img is not None, "a valid image was refused"
    if img is not None and lossless and (channels == 3 or not colour):
        want = np.moveaxis(expected_unit(stored), -1, 0) if colour else np.repeat(expected_unit(stored)[None], channels, 0)
        assert np.allclose(img, want, atol=1e-6), "the image's values differ from the file's by the documented rule"
    if kind == "binary" and lossless:
        assert mask is not None, "a valid binary mask was refused"
        assert np.array_equal(mask, (stored[..., 0] if colour else stored) != 0), "the mask differs from the file's"


VOLUME_SUFFIXES = [".nii.gz", ".nii", ".nrrd", ".mha"]
INTENSITIES = st.one_of(st.none(), st.just({"mode": "percentile"}),
                        st.tuples(st.floats(-1000, 1000), st.floats(1, 2000)).map(
                            lambda t: {"mode": "window", "low": t[0], "high": t[0] + t[1]}))


@st.composite
def volume_files(draw):
    suffix = draw(st.sampled_from(VOLUME_SUFFIXES))
    dtype = draw(st.sampled_from(["uint8", "int16", "uint16", "float32", "float64"]))
    shape = (draw(st.integers(1, 4)), draw(st.integers(5, 24)), draw(st.integers(5, 24)))
    components = draw(st.sampled_from([1, 1, 1, 3]))
    spacing = tuple(draw(st.floats(0.05, 10)) for _ in range(3))
    kind = draw(st.sampled_from(FLOAT_CONTENTS if dtype.startswith("float") else CONTENTS))
    return suffix, dtype, shape, components, spacing, kind, draw(st.integers(0, 2**32 - 1))


@FEWER
@given(volume_files(), st.sampled_from([1, 3]), INTENSITIES)
@example((".nrrd", "float32", (3, 8, 9), 1, (1.0, 1.0, 2.0), "specials", 40), 1, {"mode": "percentile"})  # NaN in slice 1 only
@example((".mha", "uint8", (1, 10, 9), 3, (0.5, 0.5, 1.0), "binary", 5), 3, None)  # one RGB slice: a 2D vector image
def test_valid_volumes_read_as_written(spec, channels, intensity):
    suffix, dtype, shape, components, spacing, kind, seed = spec
    arr = content(np.random.default_rng(seed), kind, dtype, shape, components if components > 1 else 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"vol{suffix}"
        img = sitk.GetImageFromArray(arr, isVector=components > 1)
        img.SetSpacing(spacing)
        sitk.WriteImage(img, str(path))
        volume, slices = read_all(path, channels, intensity)
    assert volume is not None, "a valid volume was refused"
    vol, read_spacing = volume
    assert vol.shape == arr.shape, f"volume shape {vol.shape}, written {arr.shape}"
    assert np.allclose(read_spacing, spacing[:len(read_spacing)], rtol=1e-5), f"spacing {read_spacing}, written {spacing}"
    # ITK's NIfTI reader turns NaN/Inf into 0 itself (see tests/bad_inputs); NRRD and MHA keep them
    stored = np.where(np.isfinite(arr), arr, 0) if suffix.startswith(".nii") else arr
    finite = np.isfinite(arr.astype(np.float64))
    assert np.array_equal(vol, stored, equal_nan=True) or (suffix.startswith(".nii") and np.array_equal(
        vol[finite], arr[finite])), "the voxels differ from the ones written"
    for z, (raw, im, mask) in slices.items():
        plane = stored[z]
        whole_finite = np.isfinite(stored.astype(np.float64)).all()
        if not np.isfinite(plane.astype(np.float64)).all():
            assert im is None and mask is None, f"slice {z} with NaN/Inf was read"
            continue
        if min(shape[1:]) < 8:
            assert raw is None and im is None and mask is None, f"slice {z} of {shape[2]} x {shape[1]} was read"
            continue
        if intensity is None or intensity["mode"] == "window" or whole_finite:
            assert im is not None, f"slice {z} of a valid volume was refused"
        if im is not None and intensity != {"mode": "percentile"} and (components == 1 or channels == 3):
            want = expected_unit(plane, intensity)
            want = np.moveaxis(want, -1, 0) if components > 1 else np.repeat(want[None], channels, 0)
            assert np.allclose(im, want, atol=1e-5), f"slice {z}: values differ from the file's by the documented rule"
        if kind == "binary" and components == 1:
            assert mask is not None and np.array_equal(mask, plane != 0), f"slice {z}: a valid binary mask misread"
