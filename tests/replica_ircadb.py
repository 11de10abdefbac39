"""A small 3D-IRCADb replica in the published layout, written with pydicom as real-looking CT DICOM.

    <root>/3Dircadb1.<n>/PATIENT_DICOM/image_<k>                 CT Image Storage, Explicit VR Little Endian,
                                                                16-bit, RescaleSlope 1 / RescaleIntercept -1024
    <root>/3Dircadb1.<n>/MASKS_DICOM/{liver,livertumor1}/image_<k>   uint8 0/255, same geometry

File names carry no extension and their order deliberately does not follow the anatomy: volume slice i
(position i * slice spacing along the normal) is written as image_<slices-1-i>, so an adapter that sorts
by file name gets the volume upside down. The HU values are exact integers so tests can predict them:
air -1000, body 40 (+ integer noise in 0..9), liver 150 (no noise), tumour 60.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AIR_HU, BODY_HU, LIVER_HU, TUMOUR_HU = -1000, 40, 150, 60
PIXEL_MM, SLICE_MM = 0.75, 1.6


def _ds(value: float) -> str:
    """DS strings are at most 16 characters."""
    return f"{value:.10g}"


def write_ct_slice(path: Path, pixels: np.ndarray, position, *, orientation=(1, 0, 0, 0, 1, 0),
                   pixel_mm: float = PIXEL_MM, slice_mm: float = SLICE_MM, name: str = "liver_1^patient",
                   intercept: float = -1024, instance: int = 0, study: str = "", series: str = "") -> Path:
    """One single-frame CT DICOM file. `pixels`: uint8 (a mask), int16 or uint16 (stored values)."""
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
    ds.Modality, ds.InstitutionName = "CT", "IRCAD"
    ds.PatientName, ds.PatientID = name, ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), series or generate_uid()
    ds.InstanceNumber = instance
    ds.SliceThickness = ds.SpacingBetweenSlices = _ds(slice_mm)
    ds.ImagePositionPatient = [_ds(float(v)) for v in position]
    ds.ImageOrientationPatient = [_ds(float(v)) for v in orientation]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [_ds(pixel_mm), _ds(pixel_mm)]
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.RescaleIntercept, ds.RescaleSlope = _ds(intercept), "1"
    ds.PixelData = np.ascontiguousarray(pixels, pixels.dtype.newbyteorder("<")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _disc(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.hypot(yy - cy, xx - cx) < r


def replica_volume(slices: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HU int16, liver bool, tumour bool), each Z x Y x X in volume order. The liver is absent from the
    first and last slice and grows towards the middle; the tumour sits in the middle third."""
    rng = np.random.default_rng(seed)
    hu = np.full((slices, size, size), AIR_HU, np.int16)
    liver = np.zeros(hu.shape, bool)
    tumour = np.zeros(hu.shape, bool)
    body = _disc(size, size / 2, size / 2, size * 0.45)
    for i in range(slices):
        hu[i][body] = BODY_HU + rng.integers(0, 10, int(body.sum()))
        if 0 < i < slices - 1:
            liver[i] = _disc(size, size * 0.45, size * 0.4, size * (0.12 + 0.1 * min(i, slices - 1 - i) / slices))
        if slices / 3 <= i < 2 * slices / 3:
            tumour[i] = _disc(size, size * 0.45, size * 0.4, size * 0.05) & liver[i]
    hu[liver] = LIVER_HU
    hu[tumour] = TUMOUR_HU
    return hu, liver, tumour


def file_of(index: int, slices: int) -> str:
    """The file name of volume slice `index`: reversed, so that file-name order is not volume order."""
    return f"image_{slices - 1 - index}"


def write_ircadb_replica(root: Path, patients: int = 1, slices: int = 8, size: int = 64, *, signed: bool = False,
                         orientation=(1, 0, 0, 0, 1, 0), drop: int | None = None,
                         truncate: int | None = None, keep_bytes: int | None = None) -> Path:
    """Write `root` (a `3Dircadb1` folder) with `patients` folders 3Dircadb1.1, 3Dircadb1.2, ...

    - signed: int16 stored values instead of uint16 (both occur; stored = HU + 1024 either way);
    - orientation: ImageOrientationPatient; positions run along its normal (row x column direction);
    - drop: volume index of a slice left out (image and masks) in every patient: a gap in the positions;
    - truncate: volume index of a slice whose image file (patient 1) is cut to `keep_bytes` (default:
      half the file, inside the pixel data).
    """
    iop = np.asarray(orientation, float)
    normal = np.cross(iop[:3], iop[3:])
    for p in range(1, patients + 1):
        folder = root / f"3Dircadb1.{p}"
        hu, liver, tumour = replica_volume(slices, size, seed=p)
        stored = (hu.astype(np.int32) + 1024).astype(np.int16 if signed else np.uint16)
        study, series, mask_series = generate_uid(), generate_uid(), generate_uid()
        for i in range(slices):
            if i == drop:
                continue
            name = file_of(i, slices)
            pos = np.array([-size * PIXEL_MM / 2, -size * PIXEL_MM / 2, 0.0]) + normal * (i * SLICE_MM - 100.0)
            k = slices - 1 - i
            write_ct_slice(folder / "PATIENT_DICOM" / name, stored[i], pos, orientation=orientation,
                           name=f"liver_{p}^patient", instance=k, study=study, series=series)
            for organ, mask in (("liver", liver), ("livertumor1", tumour)):
                write_ct_slice(folder / "MASKS_DICOM" / organ / name, (mask[i] * 255).astype(np.uint8), pos,
                               orientation=orientation, name=f"liver_{p}^{organ}", intercept=0, instance=k,
                               study=study, series=mask_series)
        if truncate is not None and p == 1:
            path = folder / "PATIENT_DICOM" / file_of(truncate, slices)
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2 if keep_bytes is None else keep_bytes])
    return root


def read_position(path: Path) -> list[float]:
    return [float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient]
