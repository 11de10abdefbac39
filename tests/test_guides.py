"""Every shell block of the workflow guides (docs/workflows/*.md), run as written against small replicas of
each data set in its published layout, so that a guide cannot drift from the CLI.

A guide's ```bash blocks are run in order, in a fresh folder holding the replicas at the paths the guides
use (data/kaggle_3m, data/Dataset_BUSI_with_GT, data/3Dircadb1, data/CBIS-DDSM, and an ImageNet-format
VGG16 file at weights/vgg16-397923af.pth). Each line is one medseg command (a trailing backslash continues
it); `make ...` and `source ...` lines are the set-up this test runs under and are skipped; any other
command fails the test. Trainings keep every documented flag and get `--epochs 1 --image-size 32
--batch-size 2` appended (the last value of a repeated option wins), so they take seconds. A renamed verb
or flag makes the command exit 2 and the test fail. The guides with the heavier models (milesial U-Net,
VGG16) are marked `slow` to keep CI under its 10 minutes; the others run in the default suite.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import torch

from conftest import run_cli, write_busi_replica, write_lgg_replica
from replica_cbis import write_cbis_replica
from replica_ircadb import write_ircadb_replica
from test_vgg16_unet import torchvision_state

GUIDES = Path(__file__).resolve().parents[1] / "docs" / "workflows"
SHORT = ["--epochs", "1", "--image-size", "32", "--batch-size", "2"]
SLOW = {"mammography-cbis-ddsm", "breast-ultrasound-busi"}  # ~15 s each (VGG16, milesial U-Net): run with -m slow


def commands(guide: Path) -> list[list[str]]:
    """The medseg commands of a guide's ```bash blocks, as argument lists (without `medseg`)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", guide.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
            if not line or line.startswith(("make ", "source ")):
                continue
            args = shlex.split(line)
            assert args[0] == "medseg", f"{guide.name}: a tested block may hold only medseg commands, got {line!r}"
            out.append(args[1:])
    return out


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
    for g in GUIDES.glob("*.md"):
        cmds = commands(g)
        assert any(c[0] == "train" for c in cmds) and any(c[0] == "predict" for c in cmds), g.name


def test_every_guide_sets_up_before_its_first_medseg_command():
    """A reader runs the blocks in order: `medseg` exists only after `make .venv/...` and `source ...`."""
    for g in GUIDES.glob("*.md"):
        lines = [ln.strip() for block in re.findall(r"```bash\n(.*?)```", g.read_text(), re.S)
                 for ln in block.splitlines() if ln.strip()]
        first = next(i for i, ln in enumerate(lines) if ln.startswith("medseg "))
        before = lines[:first]
        assert any(ln.startswith("make .venv") for ln in before) and "source .venv/bin/activate" in before, \
            f"{g.name}: {lines[first]!r} comes before the set-up (make .venv/.medseg-installed; source .venv/bin/activate)"


@pytest.mark.parametrize("name", [pytest.param(g.stem, marks=pytest.mark.slow) if g.stem in SLOW else g.stem
                                  for g in sorted(GUIDES.glob("*.md"))])
def test_guide_commands_run_as_written(name, tmp_path, monkeypatch, capsys):
    write_replicas(tmp_path)
    monkeypatch.chdir(tmp_path)
    for args in commands(GUIDES / f"{name}.md"):
        full = args + SHORT if args[0] == "train" else args
        code = run_cli(*full)
        err = capsys.readouterr().err
        assert code == 0, f"{name}: `medseg {shlex.join(full)}` exited {code}: {err[-600:]}"
    assert os.listdir(tmp_path / "runs")
