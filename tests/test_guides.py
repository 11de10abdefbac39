"""Every shell block of the workflow guides (docs/workflows/*.md) and of the README, run as written against
small replicas of each data set in its published layout, so that the documentation cannot drift from the CLI.

A document's ```bash blocks are run in order, in a fresh folder holding the replicas at the paths the guides
use (data/kaggle_3m, data/Dataset_BUSI_with_GT, data/3Dircadb1, data/CBIS-DDSM, and ImageNet-format VGG16
files in weights/). The README names the real data in ../shared/data and a placeholder patient folder;
`README_PATHS` maps them onto the LGG replica. Each line is one medseg command (a trailing backslash
continues it); the set-up lines (`make ...`, `source ...`: how this test itself is run) and the README's
download lines (`python -c` and `curl`: they fetch VGG16 weights from the internet, which a test may not
reach; the replicas bring their own weights) are skipped; any other command fails the test. Trainings keep
every documented flag and get `--epochs 1 --image-size 32 --batch-size 2 --set compile=false` appended (the
last value of a repeated option wins), so they take seconds: a documented `--time-budget 45m` would otherwise
have torch.compile build the step, 20-40 s with a cold inductor cache, which test_train_engine covers. A
renamed verb or flag makes the command exit 2 and the test fail.

After each command, the files it is documented to write must exist:
- what the README's verb table says each verb writes (`WRITES`, each entry with the README's own words for
  it, which `test_readme_names_the_files_the_test_expects` checks are still there);
- predict: one mask per input image under the image's own relative name and at its own size (+ `_prob.png`,
  `_overlay.png` with --prob/--overlay), a DICOM series as one `<folder>.seg.dcm` referencing every slice
  (or `<folder>.nii.gz` with --format nifti), and nothing else in the output folder;
- every path a command's own comment names (`# RUN/eval/metrics.json, cases.csv, ...`, `# runs/lgg/eval/...`);
- after all of a guide's commands, every output path its text names in backticks (`runs/busi/eval/report.html`,
  `masks/busi/malignant (1).png`, `masks/liver/PATIENT_DICOM.seg.dcm`, ...).
The guides with the heavier models (milesial U-Net, VGG16) are marked `slow` to keep CI under its 10 minutes;
the others and the README run in the default suite.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pydicom
import pytest
import tifffile
import torch
from PIL import Image

from conftest import run_cli, write_busi_replica, write_lgg_replica
from replica_cbis import write_cbis_replica
from replica_ircadb import write_ircadb_replica
from test_vgg16_unet import torchvision_state

ROOT = Path(__file__).resolve().parents[1]
GUIDES = ROOT / "docs" / "workflows"
README = ROOT / "README.md"
SHORT = ["--epochs", "1", "--image-size", "32", "--batch-size", "2", "--set", "compile=false"]
SLOW = {"mammography-cbis-ddsm", "breast-ultrasound-busi"}  # ~15 s each (VGG16, milesial U-Net): run with -m slow
SETUP = ("make ", "source ")  # how this test itself runs: `make test` sets up .venv and runs it inside
DOWNLOADS = ("python -c ", "curl ")  # the README's way to fetch VGG16 weights: needs the internet, which tests may not use
README_PATHS = {  # the README's data paths -> the replicas (the patient folder: the first LGG replica patient)
    "../shared/data/lgg-kaggle_3m-dev/kaggle_3m": "data/kaggle_3m",
    "path/to/patient_folder": "data/kaggle_3m/TCGA_XX_1000_20010100",
}

# What each verb writes, per the README's verb table: file (relative to the run folder) -> the README's words
# for it. `train` writes into --out, `evaluate` into its RUN; RUN/postprocess.json only when evaluate tunes.
WRITES = {
    "train": {"best/model.safetensors": "`RUN/best`", "best/config.json": "safetensors + JSON",
              "last/model.safetensors": "`RUN/last`", "last/config.json": "safetensors + JSON",
              "log.csv": "`RUN/log.csv`", "tb": "`RUN/tb`", "plan.json": "`RUN/plan.json`"},
    "evaluate": {"eval/metrics.json": "`RUN/eval/{metrics.json", "eval/cases.csv": "cases.csv",
                 "eval/slices.csv": "slices.csv", "eval/report.html": "report.html}`"},
}
TUNED = {"postprocess.json": "`RUN/postprocess.json`"}
VALUE_OPTIONS = {"--out", "--format", "--time-budget", "--preset", "--target", "--encoder-weights", "--set",
                 "--epochs", "--image-size", "--batch-size", "--split", "--threshold", "--engine", "--metric", "--seed",
                 "--val-fraction", "--folds", "--fold", "--lr", "--threads", "--resume", "--onnx"}
IMAGE_FILES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".dcm")


def commands(doc: Path) -> list[tuple[list[str], str]]:
    """The medseg commands of a document's ```bash blocks, as (argument list without `medseg`, the line's comment)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line, _, comment = line.partition(" #") if not line.lstrip().startswith("#") else ("", "", "")
            line = line.strip()
            if not line or line.startswith(SETUP + DOWNLOADS):
                continue
            args = shlex.split(line)
            assert args[0] == "medseg", f"{doc.name}: a tested block may hold only medseg commands, got {line!r}"
            out.append((args[1:], comment.strip()))
    return out


def parse(args: list[str]) -> tuple[list[str], dict]:
    """Positional arguments (the verb first) and options (the last value of each; True for a flag)."""
    pos, opts, i = [], {}, 0
    while i < len(args):
        if args[i] in VALUE_OPTIONS:
            opts[args[i]] = args[i + 1]
            i += 2
        elif args[i].startswith("--"):
            opts[args[i]] = True
            i += 1
        else:
            pos.append(args[i])
            i += 1
    return pos, opts


def is_series(folder: Path) -> bool:
    """A DICOM series folder, as predict reads one: two or more DICOM files (3D-IRCADb's have no extension)
    and no subfolders."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    dicoms = [p for p in entries if p.is_file() and (p.suffix == ".dcm" or p.read_bytes()[128:132] == b"DICM")]
    return len(dicoms) > 1 and not any(p.is_dir() for p in entries)


def predicted(pos: list[str], opts: dict) -> dict[Path, Path | None]:
    """predict's documented outputs: mask path -> the input image it is for (None for a series' SEG/NIfTI)."""
    out, fmt = Path(opts["--out"]), opts.get("--format", "auto")
    want: dict[Path, Path | None] = {}
    for inp in map(Path, pos[2:]):
        if inp.is_dir() and is_series(inp):
            want[out / (inp.name + (".nii.gz" if fmt == "nifti" else ".seg.dcm"))] = None
            continue
        files = [inp] if inp.is_file() else sorted(p for p in inp.rglob("*") if p.is_file())
        for f in files:
            if f.suffix.lower() not in IMAGE_FILES or "_mask" in f.stem:
                continue
            stem = out / (f.relative_to(inp).with_suffix("") if inp.is_dir() else Path(f.stem))
            want[stem.with_name(stem.name + (".tif" if fmt == "tif" else ".png"))] = f
            if "--prob" in opts:
                want[stem.with_name(stem.name + "_prob.png")] = f
            if "--overlay" in opts:
                want[stem.with_name(stem.name + "_overlay.png")] = None
    return want


def image_hw(path: Path) -> tuple[int, int]:
    if path.suffix.lower() == ".dcm":
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    if path.suffix.lower() in (".tif", ".tiff"):
        return tifffile.imread(path).shape[:2]
    with Image.open(path) as im:
        return im.size[::-1]


def paths_in_comment(comment: str, run: str | None) -> list[Path]:
    """`# RUN/eval/metrics.json, cases.csv, report.html` -> RUN/eval/metrics.json, RUN/eval/cases.csv, ...
    (RUN: the command's run folder); `# runs/lgg/eval/report.html` -> that path."""
    m = re.search(r"((?:RUN|runs|masks)/[^\s,]+)((?:,\s*[\w.-]+\.\w+)*)", comment)
    if not m:
        return []
    first = Path(run + m[1][3:] if m[1].startswith("RUN/") and run else m[1])
    return [first] + [first.parent / name.strip() for name in m[2].split(",") if name.strip()]


def named_outputs(doc: Path) -> list[Path]:
    """Output paths a document's text names in backticks (`runs/busi/eval/report.html`, `masks/...png`)."""
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    return [Path(p) for p in re.findall(r"`((?:runs|masks)/[^`]+)`", text) if "..." not in p and "<" not in p]


def _multiclass(run: str) -> bool:
    """A multi-class run's evaluate takes the argmax: it tunes no threshold (no RUN/postprocess.json)."""
    plan = Path(run) / "plan.json"
    return plan.is_file() and bool(json.loads(plan.read_text()).get("classes"))


def check_writes(name: str, args: list[str], comment: str) -> None:
    """The files the documentation says `medseg ARGS` writes are there."""
    pos, opts = parse(args)
    verb = pos[0]
    where = f"{name}: after `medseg {shlex.join(args)}`"
    run = opts.get("--out") if verb == "train" else pos[1] if verb == "evaluate" else None
    files = dict(WRITES.get(verb, {}))
    if verb == "evaluate" and (opts.get("--tune") or (len(pos) == 2 and opts.get("--split", "val") == "val"
                                                       and "--no-tune" not in opts)) and not _multiclass(run):
        files.update(TUNED)
    for rel in files:
        path = Path(run) / rel
        assert path.is_file() or (path.is_dir() and any(path.iterdir())), f"{where}: {path} is missing"
    if verb == "predict":
        want = predicted(pos, opts)
        out = Path(opts["--out"])
        got = {p for p in out.rglob("*") if p.is_file()}
        assert want and got == set(want), (f"{where}: missing {sorted(map(str, set(want) - got))[:5]}, "
                                           f"unexpected {sorted(map(str, got - set(want)))[:5]}")
        for mask, image in want.items():
            if image is not None:  # "at its own size"
                assert image_hw(mask) == image_hw(image), f"{where}: {mask} is not the size of {image}"
            elif mask.name.endswith(".seg.dcm"):  # "references every CT slice"
                seg = pydicom.dcmread(mask)
                series = Path(pos[2])
                refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
                uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.iterdir()}
                assert seg.Modality == "SEG" and refs == uids, f"{where}: {mask} does not reference every slice"
    if verb == "weights" and pos[1] == "convert":
        assert Path(pos[3]).is_file(), f"{where}: {pos[3]} is missing"
    for path in paths_in_comment(comment, run):
        assert path.exists(), f"{where}: its comment names {path}, which is missing"


def run_doc(name: str, doc: Path, paths: dict[str, str], capsys) -> None:
    for args, comment in commands(doc):
        args = [paths.get(a, a) for a in args]
        full = args + SHORT if args[0] == "train" else args
        code = run_cli(*full)
        err = capsys.readouterr().err
        assert code == 0, f"{name}: `medseg {shlex.join(full)}` exited {code}: {err[-600:]}"
        check_writes(name, args, comment)


def write_replicas(root: Path) -> None:
    write_lgg_replica(root / "data" / "kaggle_3m", patients=3, slices=5)
    write_busi_replica(root / "data" / "Dataset_BUSI_with_GT", per_class=3)
    write_ircadb_replica(root / "data" / "3Dircadb1", patients=3, slices=6, size=32)
    write_cbis_replica(root / "data" / "CBIS-DDSM")
    (root / "weights").mkdir()
    torch.save(torchvision_state(True), root / "weights" / "vgg16_bn-6c64b313.pth")
    torch.save(torchvision_state(False), root / "weights" / "vgg16-397923af.pth")


def test_every_guide_exists_and_has_commands():
    names = {g.stem for g in GUIDES.glob("*.md")}
    assert names >= {"mammography-cbis-ddsm", "liver-ct-ircadb", "brain-mri-lgg", "breast-ultrasound-busi"}
    for doc in [*GUIDES.glob("*.md"), README]:
        verbs = [args[0] for args, _ in commands(doc)]
        assert "train" in verbs and "predict" in verbs and "evaluate" in verbs, doc.name


def test_every_guide_sets_up_before_its_first_medseg_command():
    """A reader runs the blocks in order: `medseg` exists only after `make .venv/...` and `source ...`."""
    for g in GUIDES.glob("*.md"):
        lines = [ln.strip() for block in re.findall(r"```bash\n(.*?)```", g.read_text(), re.S)
                 for ln in block.splitlines() if ln.strip()]
        first = next(i for i, ln in enumerate(lines) if ln.startswith("medseg "))
        before = lines[:first]
        assert any(ln.startswith("make .venv") for ln in before) and "source .venv/bin/activate" in before, \
            f"{g.name}: {lines[first]!r} comes before the set-up (make .venv/.medseg-installed; source .venv/bin/activate)"


def test_readme_names_the_files_the_test_expects():
    """`WRITES` is the README's verb table: each file the test expects is one the README names."""
    text = README.read_text()
    for verb, files in [*WRITES.items(), ("evaluate", TUNED)]:
        assert any(ln.startswith(f"| `medseg {verb} ") for ln in text.splitlines()), f"README's verb table lacks {verb}"
        for rel, words in files.items():
            assert words in text, f"README no longer says `medseg {verb}` writes {rel} ({words!r})"
    for src in README_PATHS:  # the mapped paths are the README's own
        assert src in text, f"README_PATHS maps {src!r}, which the README no longer names"


@pytest.mark.parametrize("name", [pytest.param(g.stem, marks=pytest.mark.slow) if g.stem in SLOW else g.stem
                                  for g in sorted(GUIDES.glob("*.md"))])
def test_guide_commands_run_as_written(name, tmp_path, monkeypatch, capsys):
    write_replicas(tmp_path)
    monkeypatch.chdir(tmp_path)
    doc = GUIDES / f"{name}.md"
    run_doc(name, doc, {}, capsys)
    for path in named_outputs(doc):
        assert path.exists(), f"{name}: the guide names {path} as an output, but its commands did not write it"


def test_readme_commands_run_as_written(tmp_path, monkeypatch, capsys):
    write_lgg_replica(tmp_path / "data" / "kaggle_3m", patients=3, slices=5)
    assert all((tmp_path / p).is_dir() for p in README_PATHS.values())
    monkeypatch.chdir(tmp_path)
    run_doc("README", README, README_PATHS, capsys)
