"""Fuzzing the readers: any bytes in an image, mask, DICOM or volume file either read as an array or end
in a MedsegError naming the file, never in another exception. Valid files of each format are mutated
(bytes overwritten, truncated, extended) by hypothesis; the time is bounded by `max_examples`.
Anything found here becomes a case in tests/bad_inputs."""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from medseg.errors import MedsegError
from medseg.io.images import read_image, read_mask, read_raw, read_volume

sys.path.insert(0, str(Path(__file__).parent))
from replica_ircadb import write_ct_slice  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom and tifffile warn on every mangled header
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(24 * 20).reshape(24, 20) % 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tif() -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, (np.arange(16 * 16 * 3).reshape(16, 16, 3) % 255).astype(np.uint8))
    return buf.getvalue()


def _dicom() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_ct_slice(Path(tmp) / "x.dcm", np.full((16, 16), 1000, np.uint16), (0.0, 0.0, 0.0))
        return path.read_bytes()


def _nrrd() -> bytes:
    import SimpleITK as sitk
    with tempfile.TemporaryDirectory() as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 10, 10), np.int16)), str(Path(tmp) / "v.nrrd"))
        return (Path(tmp) / "v.nrrd").read_bytes()


VALID = {".png": _png(), ".tif": _tif(), ".dcm": _dicom(), ".nrrd": _nrrd()}


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


def _read(path: Path) -> None:
    read_volume.cache_clear()
    try:
        if path.suffix == ".nrrd":
            arr = read_raw(path, 0)
        else:
            arr = read_image(path, 1)
            read_mask([path], arr.shape[1:])
    except MedsegError as e:
        assert str(path) in str(e) or path.name in str(e)


@pytest.mark.parametrize("suffix", sorted(VALID))
def test_mutated_files_read_or_fail_cleanly(suffix, tmp_path):
    path = tmp_path / f"fuzz{suffix}"

    @FUZZ
    @given(mutations(VALID[suffix]))
    def check(data):
        path.write_bytes(data)
        _read(path)

    check()


@FUZZ
@given(st.binary(max_size=512), st.sampled_from(sorted(VALID)))
def test_random_bytes_fail_cleanly(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"random{suffix}"
        path.write_bytes(data)
        _read(path)
