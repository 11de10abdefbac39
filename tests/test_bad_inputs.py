"""Bad input: one line naming the file and the problem, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from medseg.app.cli import main

from conftest import write_busi_replica, write_lgg_replica


def run_cli(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return int(e.value.code), capsys.readouterr().err


def _image_without_mask(root):
    (root / "benign" / "benign (2)_mask.png").unlink()
    return root / "benign" / "benign (2).png", "no mask"


def _mask_size_mismatch(root):
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "benign" / "benign (2)_mask.png")
    return root / "benign" / "benign (2)_mask.png", "mask is 12x10 but its image is 52x45"


def _unreadable_image(root):
    (root / "malignant" / "malignant (1).png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root / "malignant" / "malignant (1).png", "cannot read image"


def _zero_byte_image(root):
    (root / "malignant" / "malignant (2).png").write_bytes(b"")
    return root / "malignant" / "malignant (2).png", "empty (0 bytes)"


def _orphan_mask(root):
    (root / "normal" / "normal (3).png").unlink()
    return root / "normal" / "normal (3)_mask.png", "mask has no image"


@pytest.mark.parametrize("breaker", [_image_without_mask, _mask_size_mismatch, _unreadable_image,
                                     _zero_byte_image, _orphan_mask])
def test_bad_busi_files(tmp_path, capsys, breaker):
    root = write_busi_replica(tmp_path / "Dataset_BUSI_with_GT")
    bad, problem = breaker(root)
    out = tmp_path / "run"
    code, err = run_cli(capsys, "train", str(root), "--out", str(out), "--epochs", "1", "--image-size", "32")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and str(bad) in lines[0] and problem in lines[0]
    assert "Traceback" not in err and not out.exists()


def test_lgg_image_without_mask(tmp_path, capsys):
    root = write_lgg_replica(tmp_path / "kaggle_3m", patients=2, slices=3)
    victim = next(root.glob("*/*_2_mask.tif"))
    victim.unlink()
    code, err = run_cli(capsys, "train", str(root), "--out", str(tmp_path / "run"), "--epochs", "1")
    assert code == 2 and victim.name.replace("_mask", "") in err and "no mask" in err


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, "train", str(tmp_path / "empty"), "--out", str(tmp_path / "run"))
    assert code == 2 and "empty" in err and str(tmp_path / "empty") in err


def test_unknown_layout(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    code, err = run_cli(capsys, "train", str(tmp_path / "notes"), "--out", str(tmp_path / "run"))
    assert code == 2 and "unknown layout" in err and len(err.strip().splitlines()) == 1


def test_missing_run_and_missing_input(tmp_path, capsys):
    code, err = run_cli(capsys, "predict", str(tmp_path / "norun"), str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2 and "no checkpoint" in err
    code, err = run_cli(capsys, "evaluate", str(tmp_path / "norun"))
    assert code == 2 and "no checkpoint" in err


def test_real_process_has_no_traceback_but_debug_shows_it(tmp_path):
    (tmp_path / "empty").mkdir()
    cmd = [sys.executable, "-c", "from medseg.app.cli import main; main()", "train", str(tmp_path / "empty"),
           "--out", str(tmp_path / "run")]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and plain.stderr.startswith("error: ")
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_predict_with_one_corrupt_image_writes_nothing(tmp_path, capsys):
    from runs import train
    root = write_busi_replica(tmp_path / "Dataset_BUSI_with_GT")
    train(root, tmp_path / "run", epochs=1, image_size=32, quiet=True)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for src in sorted((root / "benign").glob("benign (?).png")):
        (inputs / src.name).write_bytes(src.read_bytes())
    (inputs / "zz broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "masks"
    code, err = run_cli(capsys, "predict", str(tmp_path / "run"), str(inputs), "--out", str(out))
    assert code == 2 and "zz broken.png" in err and "cannot read image" in err
    assert not out.exists()
    (inputs / "zz broken.png").unlink()
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path / "run"), str(inputs), "--out", str(out)])
    assert e.value.code == 0 and len(list(out.glob("*.png"))) == 3 and not list(out.glob(".*"))
