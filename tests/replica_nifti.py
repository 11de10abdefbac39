"""Small volume replicas in the exact on-disk layouts, written with SimpleITK.

    nnU-Net v2 raw:  dataset.json {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, ...},
                     "numTraining", "file_ending": ".nii.gz"}, imagesTr/<case>_0000.nii.gz + _0001, labelsTr/<case>.nii.gz
    MSD (Decathlon): dataset.json {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", ...},
                     "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]},
                     imagesTr/<case>.nii.gz, plus the macOS `._<case>.nii.gz` files the MSD tarballs carry
    plain pair:      images/<name>.nrrd + labels/<name>.nrrd

Arrays are Z x Y x X (SimpleITK's order). Geometry is deliberately not the identity (anisotropic spacing,
an origin, a flipped direction), so that a reader which drops it is caught. Label 1 ("organ") is a disc
in the middle slices with label 2 ("tumour") inside it; the first and last slices are empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SPACING = (0.8, 0.9, 2.5)  # x, y, z in mm
ORIGIN = (-12.5, 30.0, 7.25)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # LPS <-> RAS flip, as scanners write
NNUNET_LABELS = {"background": 0, "organ": 1, "tumour": 2, "whole": [1, 2]}


def write_volume(path: Path, arr: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION,
                 vector: bool = False) -> Path:
    img = sitk.GetImageFromArray(arr, isVector=vector)
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=True)
    return path


def phantom(slices: int = 6, size: int = 32, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """([channel 0 float32, channel 1 int16], label uint8 with 0/1/2), each Z x Y x X."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    label = np.zeros((slices, size, size), np.uint8)
    for z in range(1, slices - 1):
        label[z][np.hypot(yy - size * 0.5, xx - size * 0.45) < size * 0.3] = 1
        if slices // 3 <= z < slices - slices // 3:
            label[z][np.hypot(yy - size * 0.5, xx - size * 0.5) < size * 0.12] = 2
    t2 = (100 + 20 * rng.standard_normal(label.shape) + 80 * (label == 1) + 200 * (label == 2)).astype(np.float32)
    adc = (1000 + rng.integers(0, 50, label.shape) - 300 * (label > 0)).astype(np.int16)
    return [t2, adc], label


def write_nnunet_replica(root: Path, cases: int = 2, slices: int = 6, size: int = 32, channels: int = 2) -> Path:
    names = ["T2", "ADC"][:channels]
    for i in range(cases):
        case = f"prostate_{i:03d}"
        images, label = phantom(slices, size, seed=i)
        for ch in range(channels):
            write_volume(root / "imagesTr" / f"{case}_{ch:04d}.nii.gz", images[ch])
        write_volume(root / "labelsTr" / f"{case}.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): n for i, n in enumerate(names)}, "labels": NNUNET_LABELS,
        "regions_class_order": [1, 2], "numTraining": cases, "file_ending": ".nii.gz"}, indent=4))
    return root


def write_msd_replica(root: Path, cases: int = 2, slices: int = 6, size: int = 32) -> Path:
    training = []
    for i in range(cases):
        case = f"liver_{i}"
        images, label = phantom(slices, size, seed=10 + i)
        write_volume(root / "imagesTr" / f"{case}.nii.gz", images[0])
        write_volume(root / "labelsTr" / f"{case}.nii.gz", label)
        for sub in ("imagesTr", "labelsTr"):  # AppleDouble junk from the MSD tarballs: not NIfTI at all
            (root / sub / f"._{case}.nii.gz").write_bytes(b"\0\5\26\7" + b"\0" * 80)
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    write_volume(root / "imagesTs" / "liver_99.nii.gz", phantom(slices, size)[0][0])
    (root / "dataset.json").write_text(json.dumps({
        "name": "Liver", "tensorImageSize": "3D", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"}, "numTraining": cases, "numTest": 1,
        "training": training, "test": ["./imagesTs/liver_99.nii.gz"]}, indent=4))
    return root


def write_pair_replica(root: Path, cases: int = 2, slices: int = 5, size: int = 32, ext: str = ".nrrd",
                       labels_dir: str = "labels") -> Path:
    for i in range(cases):
        images, label = phantom(slices, size, seed=20 + i)
        write_volume(root / "images" / f"scan{i}{ext}", images[1])
        write_volume(root / labels_dir / f"scan{i}{ext}", (label > 0).astype(np.uint8))
    return root


def ircadb_to_nifti(patient: Path, out_root: Path, case: str = "ircadb_017", step_xy: int = 8,
                    step_z: int = 5) -> dict:
    """One nnU-Net case from a real 3D-IRCADb patient folder: the CT series (HU) and the liver mask series
    read with SimpleITK's GDCM series reader (sorted by position), both subsampled on the same grid
    (every `step_xy`-th pixel, every `step_z`-th slice), liver as label 1. Returns what the test checks."""
    def series(folder: Path) -> sitk.Image:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
        return reader.Execute()[::step_xy, ::step_xy, ::step_z]

    ct = series(patient / "PATIENT_DICOM")
    liver = sitk.Cast(series(patient / "MASKS_DICOM" / "liver") > 0, sitk.sitkUInt8)
    liver.CopyInformation(ct)
    image = out_root / "imagesTr" / f"{case}_0000.nii.gz"
    label = out_root / "labelsTr" / f"{case}.nii.gz"
    for img, path in ((sitk.Cast(ct, sitk.sitkInt16), image), (liver, label)):
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(path), useCompression=True)
    (out_root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 1,
        "file_ending": ".nii.gz"}))
    return {"hu": sitk.GetArrayFromImage(ct), "liver": sitk.GetArrayFromImage(liver) > 0,
            "spacing": ct.GetSpacing(), "step_xy": step_xy, "step_z": step_z}
