"""Masks of a DICOM series: a DICOM Segmentation (highdicom) or NIfTI in the series' patient geometry.

highdicom builds the SEG: it references the source series and every source instance (frames in the
source slice order, BINARY) so that viewers and PACS place it on the images it came from. A binary run
writes one segment; a multi-class run one per class (segment k = class k, with its name and a coded
category: an organ's SNOMED CT code where known, else a lesion).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..version import __version__
from ..errors import MedsegError, atomic_path


def _segments(plan) -> list:
    """The SEG's segment descriptions: one for a binary run (its target), one per class otherwise."""
    if plan.classes:
        return [_segment(str(c["name"]), k) for k, c in enumerate(plan.classes, 1)]
    return [_segment(str(plan.target_name or plan.target or "foreground"))]


def _segment(name: str, number: int = 1):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    organs = {"liver": codes.SCT.Liver, "spleen": codes.SCT.Spleen, "kidney": codes.SCT.Kidney,
              "pancreas": codes.SCT.Pancreas, "prostate": codes.SCT.Prostate, "gallbladder": codes.SCT.Gallbladder}
    organ = organs.get(name.lower().replace(" ", "").replace("_", ""))
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:64],
        segmented_property_category=codes.SCT.AnatomicalStructure if organ else codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=organ or codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="medseg", version=__version__, family=codes.DCM.ArtificialIntelligence))


# Type 2 attributes that highdicom copies from the sources into the SEG; some published data sets (3D-IRCADb
# among them) leave some out, and a present-but-empty value is what the standard asks for then.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _complete(images: list) -> None:
    """Fill what the SEG needs and the sources lack, in memory only (the source files are not touched).
    3D-IRCADb has no FrameOfReferenceUID: one is derived from the SeriesInstanceUID, so that every SEG
    written for the same series carries the same one."""
    from pydicom.uid import generate_uid
    for ds in images:
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
        if "FrameOfReferenceUID" not in ds:
            ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(ds.get("SeriesInstanceUID", "")), "medseg-for"])


def write_seg(path: Path, sources: list[Path], labels: np.ndarray, plan: dict) -> None:
    """`labels` (one frame per source file, in the order of `sources`; 0/1, or a multi-class run's class
    indices, which are the segment numbers) -> one SEG file, atomically."""
    import highdicom as hd
    import pydicom

    images = [pydicom.dcmread(p) for p in sources]
    _complete(images)
    try:
        seg = hd.seg.Segmentation(
            source_images=images, pixel_array=labels.astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=_segments(plan),
            series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="medseg", manufacturer_model_name=f"medseg {plan.model}",
            software_versions=__version__, device_serial_number="medseg", series_description="medseg segmentation",
            omit_empty_frames=False)
    except (ValueError, AttributeError, TypeError) as e:
        raise MedsegError(sources[0].parent, f"cannot build a DICOM SEG for this series ({e})") from e
    with atomic_path(path) as tmp:
        seg.save_as(tmp)


def series_geometry(headers: list, spacing_z: float) -> dict:
    """SimpleITK geometry (x, y, z order) of slices in anatomical order."""
    first = headers[0]
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    dy, dx = (float(v) for v in first.PixelSpacing)
    return {"spacing": (dx, dy, spacing_z or 1.0), "origin": tuple(float(v) for v in first.ImagePositionPatient),
            "direction": tuple(np.column_stack([row, col, normal]).ravel())}


def write_series_nifti(path: Path, headers: list, labels: np.ndarray, spacing_z: float) -> None:
    import SimpleITK as sitk

    g = series_geometry(headers, spacing_z)
    img = sitk.GetImageFromArray(labels.astype(np.uint8))
    img.SetSpacing(g["spacing"])
    img.SetOrigin(g["origin"])
    img.SetDirection(g["direction"])
    sitk.WriteImage(img, str(path), True)
