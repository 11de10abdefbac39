"""CBIS-DDSM mammogram masses (Lee et al., Scientific Data 4, 2017; TCIA), as downloaded.

    mass_case_description_train_set.csv, mass_case_description_test_set.csv    one row per abnormality
    [CBIS-DDSM/]Mass-Training_P_00001_LEFT_CC/<study UID>/<series UID>/000000.dcm       full mammogram
    [CBIS-DDSM/]Mass-Training_P_00001_LEFT_CC_1/<study UID>/<series UID>/000001.dcm     ROI mask (+ cropped)

The CSVs are the index: the DICOM paths they name are read relative to the data folder, or to its
`CBIS-DDSM/` subfolder where the TCIA download usually sits. Paths in the CSVs end in a line break
inside quotes, which is stripped. Where a named file is absent (the NBIA Data Retriever may name the
files `1-1.dcm`, ... and its "descriptive" directory names differ below the top folder), the DICOMs found
under the path's top folder (`Mass-Training_P_00001_LEFT_CC`, unique per image or abnormality) stand in.

One item per full mammogram: its target is the union of the ROI masks of all its abnormalities. The
split unit (`patient`) is the patient id, so both views (CC, MLO) and both breasts of a patient stay on
one side of the split; the metric unit (`case`) is one mammogram, `<patient>_<side>_<view>`.

Known quirk of the release: the "ROI mask file path" and "cropped image file path" columns are swapped
in some rows (the two files sit in one series folder). The mask is therefore the candidate whose
Rows x Columns equal the full image's, read from the DICOM headers only.

Where the abnormalities of one image disagree (pathology, mass shape, assessment, subtlety), the
image's value is their distinct values sorted and joined with "+" (e.g. "BENIGN+MALIGNANT"; "+" since
the data's own shapes already use "-", e.g. "IRREGULAR-ARCHITECTURAL_DISTORTION"). The per-abnormality
values stay in meta["abnormalities"] for lesion-wise metrics. Calcification CSVs are not read.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MedsegError
from ..io.images import read_dicom
from .base import Adapter, DataSet, Item, register

CSV_GLOB = "mass_case_description_*_set.csv"
SUBFOLDER = "CBIS-DDSM"  # where the TCIA download puts the DICOM folders
# columns as spelt in the release; matched case-insensitively with "_" and " " alike
COLUMNS = {
    "patient": "patient_id", "density": "breast_density", "side": "left or right breast", "view": "image view",
    "id": "abnormality id", "shape": "mass shape", "margins": "mass margins", "assessment": "assessment",
    "pathology": "pathology", "subtlety": "subtlety", "image": "image file path",
    "cropped": "cropped image file path", "mask": "ROI mask file path",
}
PATH_KEYS = ("image", "cropped", "mask")
TARGET = "mass"


@dataclass(frozen=True)
class Abnormality:
    """One CSV row: one outlined mass of one mammogram."""
    csv: Path
    line: int  # line of the CSV where the row starts (1 is the header)
    subset: str  # "train" / "test", from the file name
    patient: str
    side: str
    view: str
    id: int | str
    density: str
    shape: str
    margins: str
    assessment: str
    pathology: str
    subtlety: str
    image: str  # paths relative to the data folder, as the CSV names them (whitespace stripped)
    cropped: str
    mask: str

    @property
    def case(self) -> str:
        return f"{self.patient}_{self.side}_{self.view}"

    def where(self) -> str:
        return f"{self.csv.name} line {self.line}"


@dataclass
class Mammogram:
    """One full mammogram (one `image file path`) with all its abnormalities."""
    image: str
    abnormalities: list[Abnormality] = field(default_factory=list)

    @property
    def first(self) -> Abnormality:
        return self.abnormalities[0]

    @property
    def patient(self) -> str:
        return self.first.patient

    @property
    def case(self) -> str:
        return self.first.case

    def joined(self, key: str) -> str:
        return "+".join(sorted({getattr(a, key) for a in self.abnormalities}))


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", " ", (name or "").strip().lower())


def csv_files(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).glob(CSV_GLOB) if p.is_file())


def detect(root: Path) -> bool:
    return bool(csv_files(root))


def read_rows(path: Path) -> list[Abnormality]:
    """The rows of one case-description CSV, checked but without touching any DICOM."""
    subset = path.name[len("mass_case_description_"):-len("_set.csv")]
    rows: list[Abnormality] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise MedsegError(path, "empty CSV (no header row)")
            index = {_norm(h): i for i, h in enumerate(header)}
            missing = [name for name in COLUMNS.values() if _norm(name) not in index]
            if missing:
                raise MedsegError(path, "not a CBIS-DDSM mass case description: missing column(s) "
                                        + ", ".join(missing))
            col = {key: index[_norm(name)] for key, name in COLUMNS.items()}
            start = reader.line_num + 1
            for record in reader:
                line, start = start, reader.line_num + 1
                if not any(v.strip() for v in record):
                    continue
                vals = {key: (record[i].strip() if i < len(record) else "") for key, i in col.items()}
                empty = [COLUMNS[k] for k in ("patient", "side", "view", "id", *PATH_KEYS) if not vals[k]]
                if empty:
                    raise MedsegError(path, f"line {line}: empty {', '.join(empty)}")
                for k in PATH_KEYS:
                    vals[k] = vals[k].replace("\\", "/")
                    # A CSV names files inside the data set; one that climbs out (`../`) or is absolute is
                    # refused before any file system access, so a crafted CSV cannot make medseg read elsewhere.
                    parts = vals[k].split("/")
                    if vals[k].startswith("/") or ".." in parts or ":" in parts[0]:
                        raise MedsegError(path, f"line {line}: {COLUMNS[k]} {vals[k]!r} points outside the data folder")
                rows.append(Abnormality(
                    csv=path, line=line, subset=subset, patient=vals["patient"], side=vals["side"].upper(),
                    view=vals["view"].upper(), id=int(vals["id"]) if vals["id"].isdigit() else vals["id"],
                    density=vals["density"], shape=vals["shape"], margins=vals["margins"],
                    assessment=vals["assessment"], pathology=vals["pathology"], subtlety=vals["subtlety"],
                    image=vals["image"], cropped=vals["cropped"], mask=vals["mask"]))
    except csv.Error as e:
        raise MedsegError(path, f"cannot parse CSV ({e})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise MedsegError(path, f"cannot read CSV ({type(e).__name__}: {e})") from e
    if not rows:
        raise MedsegError(path, "empty CSV (a header but no rows)")
    return rows


def parse(root: Path) -> list[Mammogram]:
    """Every mass CSV under `root` grouped into mammograms (one per image file path); reads no DICOM."""
    files = csv_files(Path(root))
    if not files:
        raise MedsegError(root, f"no {CSV_GLOB} here")
    by_image: dict[str, Mammogram] = {}
    image_of_case: dict[str, Abnormality] = {}
    for path in files:
        for row in read_rows(path):
            mam = by_image.setdefault(row.image, Mammogram(row.image))
            if mam.abnormalities and mam.case != row.case:
                raise MedsegError(row.csv, f"line {row.line}: image {row.image} is listed for {row.case} "
                                           f"and for {mam.case} ({mam.first.where()})")
            if any(a.id == row.id for a in mam.abnormalities):
                raise MedsegError(row.csv, f"line {row.line}: abnormality {row.id} of {row.case} listed twice")
            other = image_of_case.setdefault(row.case, row)
            if other.image != row.image:
                raise MedsegError(row.csv, f"line {row.line}: {row.case} has two full mammograms "
                                           f"({row.image} and {other.image} at {other.where()})")
            mam.abnormalities.append(row)
    return sorted(by_image.values(), key=lambda m: (m.patient, m.first.side, m.first.view))


def _exact(root: Path, rel: str) -> Path | None:
    for base in (root, root / SUBFOLDER):
        p = base / rel
        if p.is_file():
            return p
    return None


def _under_top_folder(root: Path, rel: str) -> list[Path]:
    """The DICOMs below the path's top folder: the stand-ins where the exact file name is absent."""
    top = rel.split("/", 1)[0]
    for base in (root, root / SUBFOLDER):
        if (base / top).is_dir():
            return sorted(p for p in (base / top).rglob("*.dcm") if p.is_file())
    return []


def _missing(root: Path, row: Abnormality, key: str) -> MedsegError:
    rel = getattr(row, key)
    return MedsegError(root / rel, f"{COLUMNS[key]} of {row.where()} not found "
                                   f"(looked in {root} and {root / SUBFOLDER})")


def _size(path: Path) -> tuple[int, int]:
    ds = read_dicom(path, pixels=False)
    try:
        return int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as e:
        raise MedsegError(path, "DICOM has no valid Rows/Columns") from e


def _wxh(size: tuple[int, int] | None) -> str:
    return "absent" if size is None else f"{size[1]}x{size[0]}"


def _find_image(root: Path, row: Abnormality) -> Path:
    found = _exact(root, row.image)
    if found is None:
        stand_ins = _under_top_folder(root, row.image)
        if len(stand_ins) != 1:
            raise _missing(root, row, "image")
        found = stand_ins[0]
    return found


def _find_mask(root: Path, row: Abnormality, shape: tuple[int, int]) -> tuple[Path, bool]:
    """(the mask file, whether it came from the cropped-image column): the candidate of the image's size."""
    mask, cropped = _exact(root, row.mask), _exact(root, row.cropped)
    if mask is None and cropped is None:
        stand_ins = sorted(set(_under_top_folder(root, row.mask)) | set(_under_top_folder(root, row.cropped)))
        for p in stand_ins:
            if _size(p) == shape:
                return p, False
        raise _missing(root, row, "mask")
    if mask is None:
        raise _missing(root, row, "mask")
    mask_size = _size(mask)
    if mask_size == shape:
        return mask, False
    cropped_size = _size(cropped) if cropped is not None else None
    if cropped_size == shape:
        return cropped, True
    raise MedsegError(mask, f"ROI mask of {row.where()} is {_wxh(mask_size)} and its cropped image is "
                            f"{_wxh(cropped_size)}, but the full mammogram is {_wxh(shape)}: neither can be its mask")


def load(root: Path, target: str | None = None) -> DataSet:
    """`target` is None or "mass": the only structure read (a named target, so evaluate's replay of the
    plan's target name finds it); calcifications would be a second one."""
    root = Path(root)
    if target not in (None, TARGET):
        raise MedsegError(root, f"CBIS-DDSM target {target!r} is not supported; available: {TARGET}")
    items: list[Item] = []
    swapped = 0
    for mam in parse(root):
        image = _find_image(root, mam.first)
        shape = _size(image)
        masks, abnormalities = [], []
        for a in mam.abnormalities:
            mask, was_swapped = _find_mask(root, a, shape)
            swapped += was_swapped
            masks.append(mask)
            abnormalities.append({"id": a.id, "mass_shape": a.shape, "mass_margins": a.margins,
                                  "pathology": a.pathology, "assessment": a.assessment, "subtlety": a.subtlety,
                                  "mask": str(mask)})
        meta = {"pathology": mam.joined("pathology"), "mass_shape": mam.joined("shape"),
                "subset": mam.joined("subset"), "breast_density": mam.joined("density"),
                "assessment": mam.joined("assessment"), "subtlety": mam.joined("subtlety"),
                "abnormalities": abnormalities}
        items.append(Item(image, tuple(masks), mam.patient, 0, meta, case=mam.case))
    problems = []
    if swapped:
        problems.append(f"{swapped} row(s) name the cropped image as ROI mask and vice versa (a known quirk of "
                        "CBIS-DDSM): the file of the full mammogram's size was taken as the mask")
    return DataSet(root, "cbis", 1, items, unit="case", stratify_key="pathology",
                   intensity={"mode": "percentile", "low": 0.5, "high": 99.5}, target=TARGET,
                   keep_aspect=True, problems=problems, subgroup_keys=("pathology", "mass_shape"))


ADAPTER = register(Adapter("cbis", "CBIS-DDSM mass_case_description_*_set.csv + the DICOM folders they name",
                           detect, load, targets=True))
