"""LGG brain MRI, Kaggle "kaggle_3m" layout (Buda et al. 2019).

    kaggle_3m/<case id>/<case id>_<slice>.tif        256x256x3 uint8 (pre-contrast, FLAIR, post-contrast)
    kaggle_3m/<case id>/<case id>_<slice>_mask.tif   256x256 uint8, 0/255
    kaggle_3m/data.csv                                optional per-patient metadata

Slice numbers are not zero-padded (sorted numerically); the patient is the case id without its date.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ..errors import MedsegError
from .base import Adapter, DataSet, Item, register

_SLICE = re.compile(r"^(?P<case>.+)_(?P<n>\d+)$")


def _patient_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and any(d.glob(f"{d.name}_*_mask.tif")))


def detect(root: Path) -> bool:
    return bool(_patient_dirs(root)) or any(root.glob(f"{root.name}_*_mask.tif"))


def patient_id(case_id: str) -> str:
    """`TCGA_CS_4941_19960909` -> `TCGA_CS_4941` (the date is the scan, not the patient)."""
    return re.sub(r"_\d{8}$", "", case_id)


# Evaluated per subgroup: the TCGA tissue source site, and from data.csv the genomic clusters Buda et al.
# relate to tumour shape (RNASeqCluster, the DNA-methylation cluster) and the histologic grade.
SUBGROUPS = ("institution", "RNASeqCluster", "MethylationCluster", "neoplasm_histologic_grade")


def institution(patient: str) -> str:
    """`TCGA_CS_4941` -> `CS`: the TCGA tissue source site code (the contributing institution)."""
    parts = patient.split("_")
    return parts[1] if len(parts) > 2 and parts[0] == "TCGA" else ""


def _metadata(root: Path) -> dict[str, dict]:
    path = root / "data.csv"
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as f:
            return {row["Patient"]: row for row in csv.DictReader(f) if row.get("Patient")}
    except (OSError, KeyError, csv.Error, UnicodeDecodeError) as e:
        raise MedsegError(path, f"cannot read metadata CSV ({e})") from e


def load(root: Path) -> DataSet:
    dirs = _patient_dirs(root) or ([root] if detect(root) else [])
    meta = _metadata(root)
    items: list[Item] = []
    for d in dirs:
        slices = []
        for img in d.glob("*.tif"):
            if "_mask" in img.stem:
                continue
            m = _SLICE.match(img.stem)
            if not m:
                raise MedsegError(img, "file name does not end in _<slice number>")
            mask = img.with_name(f"{img.stem}_mask{img.suffix}")
            if not mask.is_file():
                raise MedsegError(img, f"image has no mask (expected {mask.name})")
            slices.append((int(m["n"]), img, mask, m["case"]))
        for img_mask in d.glob("*_mask.tif"):
            if not img_mask.with_name(img_mask.name.replace("_mask.tif", ".tif")).is_file():
                raise MedsegError(img_mask, "mask has no image")
        for n, img, mask, case in sorted(slices):
            pid = patient_id(case)
            info = {k: v for k, v in meta.get(pid, {}).items() if k != "Patient"}
            info["institution"] = institution(pid)
            items.append(Item(img, (mask,), pid, n, info))
    return DataSet(root, "lgg", 3, items, unit="patient", subgroup_keys=SUBGROUPS)


ADAPTER = register(Adapter("lgg", "kaggle_3m patient folders of <case>_<n>.tif + <case>_<n>_mask.tif", detect, load))
