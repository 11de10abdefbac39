"""The bad-input catalogue: each case breaks one thing in a replica of a published layout (or in a run, an
output path or the command line) and expects exit code 2, one line `error: <path>: <problem>` naming the
culprit by its full path, no traceback, and no file or folder written anywhere under the case's folder.

Cases marked `as_user` need a user whom permissions stop (unreadable input, unwritable output): when the suite
runs as root (as `make test` does here) their command runs in a subprocess as `nobody` in a world-readable temp
folder, or, where nobody cannot start this Python (it lives under /root), as root without the capabilities that
bypass file permissions (as_unprivileged), all in one child process for the module. Add a case here for every
bad input found in the wild or by the fuzzer.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import write_busi_replica, write_lgg_replica  # noqa: E402
from replica_cbis import write_cbis_replica  # noqa: E402
from replica_ircadb import write_ircadb_replica  # noqa: E402
from replica_nifti import write_pair_replica  # noqa: E402

from medseg.app.cli import main  # noqa: E402

CASES = {}
AS_USER = set()  # cases whose command runs as an unprivileged user (permissions do not stop root)
_SHARED: dict[str, Path] = {}


def case(fn=None, *, as_user: bool = False):
    def register(f):
        CASES[f.__name__] = f
        if as_user:
            AS_USER.add(f.__name__)
        return f
    return register(fn) if fn is not None else register


def busi(tmp):
    return write_busi_replica(tmp / "Dataset_BUSI_with_GT")


def lgg(tmp):
    return write_lgg_replica(tmp / "kaggle_3m")


def train(data, tmp):
    return ["train", str(data), "--out", str(tmp / "OUT"), "--epochs", "1", "--image-size", "32"]


@case
def corrupt_png(tmp):
    root = busi(tmp)
    bad = root / "benign" / "benign (1).png"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    return train(root, tmp), bad, "cannot read image"


@case
def truncated_png(tmp):
    root = busi(tmp)
    bad = root / "malignant" / "malignant (2).png"
    bad.write_bytes(bad.read_bytes()[:60])
    return train(root, tmp), bad, "cannot read"


@case
def zero_byte_tif_mask(tmp):
    root = lgg(tmp)
    bad = next(root.glob("*/*_2_mask.tif"))
    bad.write_bytes(b"")
    return train(root, tmp), bad, "0 bytes"


@case
def truncated_tif(tmp):
    root = lgg(tmp)
    bad = next(root.glob("*/*_3.tif"))
    bad.write_bytes(bad.read_bytes()[:200])
    return train(root, tmp), bad, "cannot read"


@case
def mask_size_mismatch(tmp):
    root = lgg(tmp)
    bad = next(root.glob("*/*_1_mask.tif"))
    tifffile.imwrite(bad, np.zeros((20, 30), np.uint8))
    return train(root, tmp), bad, "mask is 30x20"


@case
def non_binary_mask(tmp):
    root = busi(tmp)
    bad = root / "benign" / "benign (2)_mask.png"
    Image.fromarray(np.tile(np.arange(52, dtype=np.uint8) * 4, (45, 1))).save(bad)
    return train(root, tmp), bad, "not a binary mask"


@case
def three_channel_mask_with_colours(tmp):
    root = busi(tmp)
    bad = root / "benign" / "benign (3)_mask.png"
    rgb = np.zeros((45, 52, 3), np.uint8)
    rgb[5:20, 5:20, 0] = 255
    rgb[25:40, 25:40, 1] = 255
    Image.fromarray(rgb).save(bad)
    return train(root, tmp), bad, "colour mask"


@case
def missing_mask(tmp):
    root = lgg(tmp)
    gone = next(root.glob("*/*_4_mask.tif"))
    gone.unlink()
    return train(root, tmp), gone.with_name(gone.name.replace("_mask", "")), "no mask"


@case
def orphan_mask(tmp):
    root = lgg(tmp)
    img = next(root.glob("*/*_5.tif"))
    img.unlink()
    return train(root, tmp), img.with_name(img.stem + "_mask.tif"), "mask has no image"


@case
def empty_data_set(tmp):
    (tmp / "empty").mkdir()
    return train(tmp / "empty", tmp), tmp / "empty", "data folder is empty"


@case
def all_masks_empty(tmp):
    root = lgg(tmp)
    for m in root.glob("*/*_mask.tif"):
        tifffile.imwrite(m, np.zeros((64, 64), np.uint8))
    return train(root, tmp), root, "nothing to learn"


@case
def nan_in_volume(tmp):
    # NRRD: ITK's NIfTI reader turns NaN into 0 itself, NRRD and MHA keep them
    root = write_pair_replica(tmp / "pairs", ext=".nrrd")
    bad = sorted((root / "images").glob("*"))[0]
    import SimpleITK as sitk
    img = sitk.ReadImage(str(bad), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(img)
    arr[1, 3, 3] = np.nan
    arr[2, 4, 4] = np.inf
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(bad))
    return train(root, tmp), bad, "NaN or Inf"


@case
def corrupt_nifti(tmp):
    root = write_pair_replica(tmp / "pairs", ext=".nii.gz")
    bad = sorted((root / "images").glob("*"))[0]
    bad.write_bytes(gzip.compress(b"\x00" * 100))
    return train(root, tmp), bad, "cannot read volume"


@case
def truncated_dicom(tmp):
    root = write_ircadb_replica(tmp / "3Dircadb1", slices=6, truncate=2)
    return train(root, tmp), root / "3Dircadb1.1" / "PATIENT_DICOM" / "image_3", "truncated"


@case
def wrong_channel_count_volume(tmp):
    root = write_pair_replica(tmp / "pairs", ext=".nii.gz")
    run = tmp / "run"
    assert main_rc(train(root, tmp)) == 0
    import shutil
    shutil.move(str(tmp / "OUT"), str(run))
    import SimpleITK as sitk
    vec = sitk.Compose([sitk.Image(16, 16, 4, sitk.sitkFloat32)] * 2)
    bad = tmp / "two_channels.nii.gz"
    sitk.WriteImage(vec, str(bad))
    return ["predict", str(run), str(bad), "--out", str(tmp / "OUT")], bad, "channel"


@case
def absurd_image_size(tmp):
    root = busi(tmp)
    bad = root / "benign" / "benign (1).png"
    Image.new("1", (40000, 40000)).save(bad)  # 200 kB on disk, 1.6 G pixels decoded
    return train(root, tmp), bad, "too large"


@case
def duplicate_case_ids(tmp):
    root = tmp / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for ext in (".png", ".bmp"):
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "images" / f"case1{ext}")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "masks" / "case1.png")
    return train(root, tmp), root / "images" / "case1.png", "duplicate image: case1.bmp has the same name"


def _cbis_with_image_path(tmp, value: str) -> Path:
    """A CBIS replica whose first case row names `value` as its image file; returns the CSV."""
    root = write_cbis_replica(tmp / "cbis")
    csv_path = next(root.rglob("mass_case_description_train_set.csv"))
    text = csv_path.read_text().splitlines()
    cols = text[1].split(",")
    cols[next(i for i, c in enumerate(cols) if c.endswith(".dcm") or "/" in c)] = value
    text[1] = ",".join(cols)
    csv_path.write_text("\n".join(text) + "\n")
    return csv_path


@case
def csv_row_pointing_to_missing_file(tmp):
    missing = "Mass-Training_P_99999_LEFT_CC/1.3.6/1.3.6.2/000000.dcm"
    csv_path = _cbis_with_image_path(tmp, missing)
    return train(tmp / "cbis", tmp), tmp / "cbis" / missing, f"path of {csv_path.name} line 2 not found"


@case
def csv_path_traversal(tmp):
    csv_path = _cbis_with_image_path(tmp, "../../../../etc/passwd")
    return train(tmp / "cbis", tmp), csv_path, "outside the data folder"


@case
def corrupt_checkpoint(tmp):
    root = busi(tmp)
    assert main_rc(train(root, tmp)) == 0
    bad = tmp / "OUT" / "best" / "model.safetensors"
    bad.write_bytes(b"\x00" * 64)
    img = root / "benign" / "benign (1).png"
    return ["predict", str(tmp / "OUT"), str(img), "--out", str(tmp / "OUT2")], bad, "not a valid medseg checkpoint"


@case
def bad_setting_value(tmp):
    root = busi(tmp)
    return train(root, tmp) + ["--set", "lr=-1"], None, "setting lr must be > 0, got -1"


@case
def unknown_setting(tmp):
    root = busi(tmp)
    return train(root, tmp) + ["--set", "learning_rate=0.1"], None, "unknown setting 'learning_rate'"


@case(as_user=True)
def unreadable_permissions(tmp):
    root = busi(tmp)
    bad = root / "malignant" / "malignant (1).png"
    bad.chmod(0)
    return train(root, tmp), bad, "permission denied"


# ---- output paths: checked before any work (exists as the wrong kind, not writable, under a file)

def _a_file(path: Path) -> Path:
    path.write_text("notes\n")
    return path


@case
def train_out_is_a_file(tmp):
    root, out = busi(tmp), _a_file(tmp / "run_notes.txt")
    return ["train", str(root), "--out", str(out), "--epochs", "1"], out, "exists and is a file"


@case(as_user=True)
def train_out_not_writable(tmp):
    root, out = busi(tmp), locked(tmp / "locked_runs") / "run1"
    return ["train", str(root), "--out", str(out), "--epochs", "1"], out, "locked_runs is not writable"


@case
def train_out_under_a_file(tmp):
    root, out = busi(tmp), _a_file(tmp / "notes.txt") / "run1"
    return ["train", str(root), "--out", str(out), "--epochs", "1"], out, "notes.txt is a file, not a folder"


@case(as_user=True)
def train_resume_run_not_writable(tmp):
    run = locked(trained_run(tmp))
    return ["train", "--resume", str(run), "--epochs", "2"], run, "not writable"


@case
def predict_out_is_a_file(tmp):
    run, out = trained_run(tmp), _a_file(tmp / "masks.txt")
    return ["predict", str(run), str(_SHARED["folder"] / "Dataset_BUSI_with_GT" / "benign"), "--out", str(out)], \
        out, "exists and is a file"


@case(as_user=True)
def predict_out_not_writable(tmp):
    run, out = trained_run(tmp), locked(tmp / "locked_masks")
    return ["predict", str(run), str(_SHARED["folder"] / "Dataset_BUSI_with_GT" / "benign"), "--out", str(out)], \
        out, "locked_masks is not writable"


@case
def predict_out_under_a_file(tmp):
    run, out = trained_run(tmp), _a_file(tmp / "notes.txt") / "masks"
    return ["predict", str(run), str(_SHARED["folder"] / "Dataset_BUSI_with_GT" / "benign"), "--out", str(out)], \
        out, "notes.txt is a file, not a folder"


@case
def export_onnx_is_a_folder(tmp):
    run, out = trained_run(tmp), tmp / "model_dir.onnx"
    out.mkdir()
    return ["export", str(run), "--onnx", str(out)], out, "exists and is a folder"


@case(as_user=True)
def export_onnx_folder_not_writable(tmp):
    run, out = trained_run(tmp), locked(tmp / "locked_models") / "model.onnx"
    return ["export", str(run), "--onnx", str(out)], out, "locked_models is not writable"


@case
def export_onnx_under_a_file(tmp):
    run, out = trained_run(tmp), _a_file(tmp / "notes.txt") / "model.onnx"
    return ["export", str(run), "--onnx", str(out)], out, "notes.txt is a file, not a folder"


@case(as_user=True)
def export_into_run_not_writable(tmp):
    run = locked(trained_run(tmp))
    return ["export", str(run)], run / "model.onnx", "not writable"


def _nnunet(root: Path, out: Path) -> list[str]:
    return ["export-nnunet", str(root), str(out), "--id", "7", "--name", "Busi"]


@case
def nnunet_out_is_a_file(tmp):
    out = _a_file(tmp / "nnUNet_raw.txt")
    return _nnunet(busi(tmp), out), out, "exists and is a file"


@case(as_user=True)
def nnunet_out_not_writable(tmp):
    out = locked(tmp / "locked_raw")
    return _nnunet(busi(tmp), out), out, "locked_raw is not writable"


@case
def nnunet_out_under_a_file(tmp):
    out = _a_file(tmp / "notes.txt") / "nnUNet_raw"
    return _nnunet(busi(tmp), out), out, "notes.txt is a file, not a folder"


@case
def evaluate_eval_is_a_file(tmp):
    run = trained_run(tmp)
    return ["evaluate", str(run)], _a_file(run / "eval"), "exists and is a file"


@case(as_user=True)
def evaluate_run_not_writable(tmp):
    run = locked(trained_run(tmp))
    return ["evaluate", str(run)], run / "eval", "not writable"


@case
def evaluate_report_is_a_folder(tmp):
    run = trained_run(tmp)
    (run / "eval" / "report.html").mkdir(parents=True)
    return ["evaluate", str(run)], run / "eval" / "report.html", "exists and is a folder"


@case
def evaluate_postprocess_is_a_folder(tmp):
    run = trained_run(tmp)
    (run / "postprocess.json").mkdir()
    return ["evaluate", str(run)], run / "postprocess.json", "exists and is a folder"


@case
def demo_out_is_a_file(tmp):
    out = _a_file(tmp / "demo.txt")
    return ["demo", "--out", str(out)], out, "exists and is a file"


@case
def prepare_cache_is_a_file(tmp):
    cache = _a_file(tmp / "cache.txt")
    return ["prepare", str(busi(tmp)), "--image-size", "32"], cache, "exists and is a file", {"MEDSEG_CACHE": str(cache)}


@case(as_user=True)
def prepare_cache_not_writable(tmp):
    cache = locked(tmp / "locked_cache") / "medseg"
    return ["prepare", str(busi(tmp)), "--image-size", "32"], cache, "locked_cache is not writable", \
        {"MEDSEG_CACHE": str(cache)}


@case
def weights_convert_under_a_file(tmp):
    src, dst = _a_file(tmp / "vgg16.pth"), _a_file(tmp / "notes.txt") / "vgg16.safetensors"
    return ["weights", "convert", str(src), str(dst)], dst, "notes.txt is a file, not a folder"


def main_rc(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="module", autouse=True)
def _shared_folder():
    """A world-readable folder for the module: the run trained once for the output-path cases."""
    folder = Path(tempfile.mkdtemp(prefix="medseg-catalogue-"))
    folder.chmod(0o755)
    _SHARED["folder"] = folder
    yield
    if "runner" in _SHARED:
        _SHARED.pop("runner").close()
    shutil.rmtree(folder, ignore_errors=True)


def trained_run(tmp: Path) -> Path:
    """tmp/run: a copy of a 1-epoch BUSI run trained once for the module (its data stays in the shared folder)."""
    shared = _SHARED["folder"]
    if not (shared / "run" / "plan.json").is_file():
        assert main_rc(train(busi(shared), shared)[:3] + [str(shared / "run"), "--epochs", "1", "--image-size", "32"]) == 0
    shutil.copytree(shared / "run", tmp / "run")
    return tmp / "run"


def locked(folder: Path) -> Path:
    """An existing folder closed to writing (for `as_user` cases run as root: closed to their command too)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return folder


def _others_can_run_python() -> bool:
    """Whether a user other than root can start this interpreter and read its libraries."""
    for path in {os.path.realpath(sys.executable), sys.base_prefix, sys.prefix}:
        if not all(q.stat().st_mode & stat.S_IXOTH for q in [Path(path), *Path(path).parents]):
            return False
    return True


# Run first in the child, a fresh process (no Python code runs between fork and exec, which could deadlock a
# parent with threads): drop from the bounding set what lets root ignore file permissions, then exec the command;
# after the exec root keeps no capability outside the bounding set, and is held to permission bits like any owner.
DROP_CAPS = """
import ctypes, os, sys
prctl = ctypes.CDLL(None, use_errno=True).prctl
for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
    if prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _unprivileged_cmd(args: list[str]) -> tuple[list[str], dict]:
    """How to start `python ARGS` as the user nobody where nobody can start this Python, else as root without
    the capabilities that bypass file permissions (DROP_CAPS): (command, subprocess keyword arguments)."""
    if _others_can_run_python():
        nobody = pwd.getpwnam("nobody")
        return [sys.executable, *args], dict(user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
    return [sys.executable, "-c", DROP_CAPS, *args], {}


def _unprivileged(args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd, kw = _unprivileged_cmd(args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, **kw)


def _unprivileged_env() -> dict:
    """The environment of those commands: a HOME of their own, shared by the module, where matplotlib has
    built its font cache beforehand (it says so on stderr the first time)."""
    home = _SHARED["folder"] / "home"
    env = {**os.environ, "HOME": str(home), "MEDSEG_CACHE": str(home / "cache"), "MPLCONFIGDIR": str(home / "mpl")}
    if not home.is_dir():
        home.mkdir(mode=0o777)
        home.chmod(0o777)
        _unprivileged(["-c", "import matplotlib.font_manager"], env)
    return env


# The unprivileged commands run one after another in one child process (started once for the module: a fresh
# Python per case spent 7 s a case importing torch and MONAI), each as `main(argv)` with the case's environment
# on top of the child's, as the in-process cases run. The child checks first that it cannot write a folder closed
# to it. Each command's file descriptors 1 and 2 go to files, so whatever reaches stderr by any route (Python,
# logging, C libraries) is what the user would see; requests and answers travel as JSON lines on other pipes.
SERVER = """
import json, os, sys, tempfile, traceback
closed, req_fd, ans_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
assert not os.access(closed, os.W_OK), "still privileged"
from medseg.app.cli import main
answers = os.fdopen(ans_fd, "w")
for line in os.fdopen(req_fd):
    req = json.loads(line)
    saved = dict(os.environ)
    os.environ.update(req["env"])
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush(); sys.stderr.flush()
        keep = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            main(req["argv"])
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            rc = 1
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(keep[0], 1); os.dup2(keep[1], 2)
        os.close(keep[0]); os.close(keep[1])
        err.seek(0)
        text = err.read()
    os.environ.clear(); os.environ.update(saved)
    answers.write(json.dumps({"rc": rc, "err": text}) + "\\n")
    answers.flush()
"""


class UnprivilegedRunner:
    """The child process above, and how to send it one command."""

    def __init__(self):
        closed = locked(_SHARED["folder"] / "closed")
        (req_r, self.req), (self.ans, ans_w) = os.pipe(), os.pipe()
        cmd, kw = _unprivileged_cmd(["-c", SERVER, str(closed), str(req_r), str(ans_w)])
        self.proc = subprocess.Popen(cmd, env=_unprivileged_env(), pass_fds=(req_r, ans_w), stdin=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, **kw)
        os.close(req_r), os.close(ans_w)
        self.requests, self.answers = os.fdopen(self.req, "w"), os.fdopen(self.ans)

    def run(self, argv: list[str], env: dict) -> tuple[int, str]:
        self.requests.write(json.dumps({"argv": argv, "env": env}) + "\n")
        self.requests.flush()
        line = self.answers.readline()
        assert line, f"the unprivileged child ended: {self.proc.wait(timeout=60)}, {self.proc.stderr.read()[-3000:]}"
        answer = json.loads(line)
        return answer["rc"], answer["err"]

    def close(self):
        self.requests.close()
        self.proc.wait(timeout=60)
        self.answers.close()
        self.proc.stderr.close()


def as_unprivileged(argv: list[str], env: dict) -> tuple[int, str]:
    """`medseg ARGV` in the module's child process that file permissions stop although the suite runs as root:
    (exit code, stderr)."""
    if "runner" not in _SHARED:
        _SHARED["runner"] = UnprivilegedRunner()
    return _SHARED["runner"].run(argv, env)


def tree(root: Path) -> dict[str, tuple]:
    """Every file and folder under `root`: what a failed command must leave unchanged."""
    return {str(p.relative_to(root)): (p.is_dir(),) if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.fixture
def case_folder(request, tmp_path):
    """tmp_path, or for an `as_user` case run as root a world-readable temp folder (pytest's is private)."""
    private = request.node.callspec.params["name"] not in AS_USER or os.geteuid() != 0
    folder = tmp_path if private else Path(tempfile.mkdtemp(prefix="medseg-bad-"))
    folder.chmod(0o755)
    yield folder
    for p in [folder, *folder.rglob("*")]:  # what a case closed, opened again for the clean-up
        p.chmod(0o755 if p.is_dir() else 0o644)
    if not private:
        shutil.rmtree(folder, ignore_errors=True)


def printed_logs(records: list[logging.LogRecord]) -> list[str]:
    """The log records a plain CLI run would print to stderr: warnings that meet no handler on their way up
    (logging's last resort), pytest's capturing handlers not counted."""
    out = []
    for r in records:
        lg = logging.getLogger(r.name)
        while lg is not None:
            if any(not type(h).__module__.startswith("_pytest") for h in lg.handlers) or not lg.propagate:
                break
            lg = lg.parent
        if lg is None and r.levelno >= logging.WARNING:
            out.append(r.getMessage())
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, case_folder, capsys, caplog, monkeypatch):
    tmp = case_folder
    argv, culprit, problem, *extra = CASES[name](tmp)
    env = extra[0] if extra else {}
    assert problem.strip() and (culprit is None or Path(culprit).is_absolute()), "say which file and what problem"
    capsys.readouterr()
    before = tree(tmp)
    if name in AS_USER and os.geteuid() == 0:
        rc, err = as_unprivileged(argv, env)
    else:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        caplog.clear()
        rc, err = main_rc(argv), capsys.readouterr().err
        err = "\n".join(printed_logs(caplog.records) + [err])
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2, f"exit {rc}; stderr:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    if culprit is not None:  # the whole path, as the one the line is about (not a folder above it)
        assert lines[0].startswith(f"error: {culprit}: "), f"{culprit} not named in: {err}"
    assert problem.lower() in lines[0].lower(), f"{problem!r} not in: {err}"
    after = tree(tmp)
    assert after == before, f"written: {sorted(set(after) - set(before)) or 'changed files'}"


def test_catalogue_size():
    assert len(CASES) >= 35


def test_skip_bad_leaves_out_the_corrupt_slice_and_lists_it(tmp_path, capsys):
    root = lgg(tmp_path)
    bad = sorted(root.glob("*/*_3.tif"))[0]
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "run"
    assert main_rc(["train", str(root), "--out", str(out), "--epochs", "1", "--image-size", "32", "--skip-bad"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert [s["file"] for s in plan["skipped"]] == [str(bad)] and "cannot read" in plan["skipped"][0]["problem"]
    assert bad.name in capsys.readouterr().err
    assert main_rc(["evaluate", str(out), "--split", "all"]) == 0
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert [s["file"] for s in metrics["skipped"]] == [str(bad)]
    assert "left out" in (out / "eval" / "report.html").read_text()


def test_odd_unicode_file_names_work(tmp_path):
    root = busi(tmp_path)
    for p in sorted((root / "benign").glob("benign (1)*")):
        p.rename(p.with_name(p.name.replace("benign (1)", "benign (1) é ✓ 日本")))
    out = tmp_path / "run"
    assert main_rc(train(root, tmp_path)[:3] + [str(out), "--epochs", "1", "--image-size", "32"]) == 0
