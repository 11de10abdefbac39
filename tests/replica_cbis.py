"""A small CBIS-DDSM replica: real rows of the mass case-description CSVs, and small DICOMs at the
paths those rows name.

    <root>/mass_case_description_{train,test}_set.csv     header + the chosen real rows, byte for byte
    <root>/[<under>/]<image file path>                    full mammogram: MG, MONOCHROME2, uint16, BitsStored 12
    <root>/[<under>/]<ROI mask file path>                 uint8 0/255, the full mammogram's size
    <root>/[<under>/]<cropped image file path>            uint16 crop around the mass (another size)

The rows come from ../shared/data/cbis-ddsm-csv when present, else from SAMPLE below (the same real rows,
copied from the release). The default rows cover a patient with CC and MLO views (P_00001), an image
with two abnormalities of different pathology (P_00419 LEFT CC), a benign and a malignant image, a row
whose mask lies in another series folder than its cropped image (P_00059), and a test-set row. For the
rows in `swapped` the files are written the wrong way round (mask at the cropped path and vice versa),
the known quirk of the release. Masses of abnormality k of an image lie at (0.3 + 0.4 k) of its height.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from conftest import SHARED, blob

CSV_DIR = SHARED / "cbis-ddsm-csv"
Key = tuple[str, str, str, str, str]  # (subset, patient_id, side, view, abnormality id)

DEFAULT_ROWS: tuple[Key, ...] = (
    ("train", "P_00001", "LEFT", "CC", "1"),
    ("train", "P_00001", "LEFT", "MLO", "1"),
    ("train", "P_00004", "LEFT", "CC", "1"),
    ("train", "P_00059", "LEFT", "CC", "1"),
    ("train", "P_00419", "LEFT", "CC", "1"),
    ("train", "P_00419", "LEFT", "CC", "2"),
    ("test", "P_00016", "LEFT", "CC", "1"),
)
DEFAULT_SWAPPED: tuple[Key, ...] = (("train", "P_00004", "LEFT", "CC", "1"),)
IMAGE_SIZES = ((96, 64), (100, 60), (90, 66))  # (rows, columns): taller than wide, as mammograms
CROP_SIZE = (24, 20)

HEADER = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
          "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
          "image file path", "cropped image file path", "ROI mask file path"]
_U = "1.3.6.1.4.1.9590.100.1.2."
SAMPLE: dict[str, list[list[str]]] = {  # real rows of the release (see test_embedded_sample_is_real)
    "train": [
        ["P_00001", "3", "LEFT", "CC", "1", "mass", "IRREGULAR-ARCHITECTURAL_DISTORTION", "SPICULATED", "4",
         "MALIGNANT", "4",
         f"Mass-Training_P_00001_LEFT_CC/{_U}422112722213189649807611434612228974994/{_U}342386194811267636608694132590482924515/000000.dcm",
         f"Mass-Training_P_00001_LEFT_CC_1/{_U}108268213011361124203859148071588939106/{_U}296736403313792599626368780122205399650/000000.dcm",
         f"Mass-Training_P_00001_LEFT_CC_1/{_U}108268213011361124203859148071588939106/{_U}296736403313792599626368780122205399650/000001.dcm\n"],
        ["P_00001", "3", "LEFT", "MLO", "1", "mass", "IRREGULAR-ARCHITECTURAL_DISTORTION", "SPICULATED", "4",
         "MALIGNANT", "4",
         f"Mass-Training_P_00001_LEFT_MLO/{_U}319478999311971442426185353560182990988/{_U}359308329312397897125630708681441180834/000000.dcm",
         f"Mass-Training_P_00001_LEFT_MLO_1/{_U}188473874511440575807446266233629582526/{_U}227955274711225756835838775062793186053/000000.dcm",
         f"Mass-Training_P_00001_LEFT_MLO_1/{_U}188473874511440575807446266233629582526/{_U}227955274711225756835838775062793186053/000001.dcm\n"],
        ["P_00004", "3", "LEFT", "CC", "1", "mass", "ARCHITECTURAL_DISTORTION", "ILL_DEFINED", "4", "BENIGN", "3",
         f"Mass-Training_P_00004_LEFT_CC/{_U}347107867812656628709864319310977895697/{_U}89180046211022531834352631483669346540/000000.dcm",
         f"Mass-Training_P_00004_LEFT_CC_1/{_U}414182170112396175925115449620455230167/{_U}429120414011832984817094399141838850375/000000.dcm",
         f"Mass-Training_P_00004_LEFT_CC_1/{_U}414182170112396175925115449620455230167/{_U}429120414011832984817094399141838850375/000001.dcm\n"],
        ["P_00059", "1", "LEFT", "CC", "1", "mass", "OVAL", "OBSCURED", "3", "MALIGNANT", "4",
         f"Mass-Training_P_00059_LEFT_CC/{_U}244333476513014374236524940141235965702/{_U}62520602613602980418030688082379323379/000000.dcm",
         f"Mass-Training_P_00059_LEFT_CC_1/{_U}48879868112616314014628722363459317695/{_U}11686230612923981409805359571305102767/000000.dcm",
         f"Mass-Training_P_00059_LEFT_CC_1/{_U}401398924711581741339345765413987838707/{_U}203970065112706924324370021454096282600/000000.dcm\n"],
        ["P_00419", "2", "LEFT", "CC", "1", "mass", "OVAL", "CIRCUMSCRIBED", "3", "BENIGN", "5",
         f"Mass-Training_P_00419_LEFT_CC/{_U}185385464112640817231484525363691131563/{_U}175043772610570804328930190413021504082/000000.dcm",
         f"Mass-Training_P_00419_LEFT_CC_1/{_U}364380877410451490835437482611931111685/{_U}367538824911271703840592313643968598953/000000.dcm",
         f"Mass-Training_P_00419_LEFT_CC_1/{_U}364380877410451490835437482611931111685/{_U}367538824911271703840592313643968598953/000001.dcm\n"],
        ["P_00419", "2", "LEFT", "CC", "2", "mass", "NA", "ILL_DEFINED", "5", "MALIGNANT", "5",
         f"Mass-Training_P_00419_LEFT_CC/{_U}185385464112640817231484525363691131563/{_U}175043772610570804328930190413021504082/000000.dcm",
         f"Mass-Training_P_00419_LEFT_CC_2/{_U}67263285411337048620966122671267935581/{_U}417009583312382634503537924402100480108/000000.dcm",
         f"Mass-Training_P_00419_LEFT_CC_2/{_U}67263285411337048620966122671267935581/{_U}417009583312382634503537924402100480108/000001.dcm\n"],
    ],
    "test": [
        ["P_00016", "4", "LEFT", "CC", "1", "mass", "IRREGULAR", "SPICULATED", "5", "MALIGNANT", "5",
         f"Mass-Test_P_00016_LEFT_CC/{_U}416403281812750683720028031170500130104/{_U}245063149211255120613007755642780114172/000000.dcm",
         f"Mass-Test_P_00016_LEFT_CC_1/{_U}259596319110047779433501728143778409887/{_U}30820586311062570442302321942433426184/000000.dcm",
         f"Mass-Test_P_00016_LEFT_CC_1/{_U}259596319110047779433501728143778409887/{_U}30820586311062570442302321942433426184/000001.dcm\n"],
    ],
}


def key_of(subset: str, row: list[str]) -> Key:
    return (subset, row[0], row[2], row[3], row[4])


def source_rows(subset: str, source: Path | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the real CSV of `subset` where available, else of SAMPLE."""
    source = CSV_DIR if source is None else source
    path = source / f"mass_case_description_{subset}_set.csv"
    if path.is_file():
        with path.open(newline="") as f:
            table = list(csv.reader(f))
        return table[0], table[1:]
    return HEADER, SAMPLE.get(subset, [])


def write_dicom(path: Path, pixels: np.ndarray, patient_id: str, bits_stored: int | None = None) -> Path:
    """A single-frame MG secondary-capture DICOM, MONOCHROME2, as the files of the release."""
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid
    ds.Modality, ds.PatientID, ds.PatientName = "MG", patient_id, patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored = bits, bits_stored or bits
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    ds.PixelData = np.ascontiguousarray(pixels, pixels.dtype.newbyteorder("<")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_cbis_replica(root: Path, rows: tuple[Key, ...] = DEFAULT_ROWS, swapped: tuple[Key, ...] = DEFAULT_SWAPPED,
                       under: str = "", source: Path | None = None) -> Path:
    """Write the CSVs (the chosen rows, in the release's order and CSV format: CRLF records, quoted paths
    ending in a line break) and the DICOMs they name under `root/under`. Returns `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    images: dict[str, tuple[np.ndarray, str, int]] = {}  # image path -> (pixels, patient, abnormalities so far)
    for subset in ("train", "test"):
        wanted = [k for k in rows if k[0] == subset]
        if not wanted:
            continue
        header, table = source_rows(subset, source)
        chosen = [r for r in table if key_of(subset, r) in wanted]
        found = {key_of(subset, r) for r in chosen}
        if set(wanted) - found:
            raise KeyError(f"rows not in the {subset} source: {sorted(set(wanted) - found)}")
        with (root / f"mass_case_description_{subset}_set.csv").open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\r\n")
            w.writerow(header)
            w.writerows(chosen)
        base = root / under
        for r in chosen:
            image_rel, cropped_rel, mask_rel = (r[i].strip() for i in (11, 12, 13))
            if image_rel not in images:
                h, w_ = IMAGE_SIZES[len(images) % len(IMAGE_SIZES)]
                yy, xx = np.mgrid[0:h, 0:w_]
                breast = ((yy - h / 2) / (h / 2)) ** 2 + (xx / (w_ * 0.9)) ** 2 < 1  # chest wall on the left
                img = rng.integers(80, 300, (h, w_)) + 1200 * breast + rng.integers(0, 200, (h, w_)) * breast
                images[image_rel] = (img.astype(np.uint16), r[0], 0)
            img, patient, k = images[image_rel]
            h, w_ = img.shape
            cy, cx = h * (0.3 + 0.4 * k), w_ * 0.45
            mask = blob(h, w_, cy, cx, min(h, w_) / 7)
            img[mask] = 3000 + rng.integers(0, 900, int(mask.sum()))
            images[image_rel] = (img, patient, k + 1)
            top, left = int(cy) - CROP_SIZE[0] // 2, int(cx) - CROP_SIZE[1] // 2
            crop = img[max(top, 0):max(top, 0) + CROP_SIZE[0], max(left, 0):max(left, 0) + CROP_SIZE[1]].copy()
            mask_pixels, crop_pixels = (mask * 255).astype(np.uint8), crop
            if key_of(subset, r) in swapped:
                mask_rel, cropped_rel = cropped_rel, mask_rel
            write_dicom(base / mask_rel, mask_pixels, f"{image_rel.split('/')[0]}_{r[4]}")
            write_dicom(base / cropped_rel, crop_pixels, f"{image_rel.split('/')[0]}_{r[4]}", bits_stored=12)
    for image_rel, (img, _patient, _k) in images.items():
        write_dicom(root / under / image_rel, img, image_rel.split("/")[0], bits_stored=12)
    return root
