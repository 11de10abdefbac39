"""Crash safety: a process killed at the exact write points (MEDSEG_FAULT, see medseg.errors.fault: between
writing a temporary copy and renaming it into place) leaves the previous complete state for readers, and
`--resume` then ends with the same weights as an uninterrupted run; a full disk (ENOSPC) during a
checkpoint, cache or mask write leaves the previous checkpoint, cache entry or masks as they were, no temporary
file behind, and ends in one line `error: <path>: no space left on device` with exit code 2."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from conftest import run_cli, write_busi_replica, write_lgg_replica
from medseg.inference import predictor as predictor_module
from medseg.inference.checkpoint import read_plan
from medseg.training import state as train_state
from medseg.training.state import load_training_state
from runs import train

TINY = {"model_args": {"features": [8, 16, 32], "res_units": 1}}
ARGS = ["--image-size", "32", "--batch-size", "2", "--epochs", "4", "--set",
        'model_args={"features": [8, 16, 32], "res_units": 1}']
KW = dict(image_size=32, batch_size=2, quiet=True)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from medseg.app.cli import main; main()", *args]


def _weights(run: Path) -> dict:
    return load_file(str(run / "last" / "model.safetensors"))


def _killed_at(point: str, cmd: list[str], cache: Path) -> None:
    """Run `cmd` with MEDSEG_FAULT=point and check that the fault hook killed it (SIGKILL, not a finished run)."""
    proc = subprocess.run(cmd, env={**os.environ, "MEDSEG_CACHE": str(cache), "MEDSEG_FAULT": point},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point} (exit {proc.returncode}): {proc.stderr[-2000:]}"


def _complete_epoch(folder: Path) -> int:
    """The epoch of a checkpoint folder, after checking that it loads whole and that its weights and training
    state come from the same moment."""
    _, state, _ = load_training_state(folder)
    assert read_plan(folder).epoch == state["epoch"] == len(state["log"])
    return state["epoch"]


def test_kill_at_each_write_point_then_resume_equals_uninterrupted(tmp_path):
    data = write_lgg_replica(tmp_path / "kaggle_3m")
    straight, run, cache = tmp_path / "straight", tmp_path / "killed", tmp_path / "cache"
    train(data, straight, epochs=4, settings=TINY, **KW)
    resume = _cli("train", "--resume", str(run), "--epochs", "4")

    # epoch 2's `last`: the old folder renamed aside, the new one complete but not yet in place
    _killed_at("checkpoint:last:swap@2", _cli("train", str(data), "--out", str(run), *ARGS), cache)
    assert not (run / "last").exists() and (run / ".last.old").is_dir() and len(list(run.glob(".last.*.tmp"))) == 1
    train_state.recover_checkpoint(run / "last")  # what --resume does first
    assert _complete_epoch(run / "last") == 1 and not list(run.glob(".last.*"))

    # epoch 2's `last` again: its temporary folder written, nothing renamed
    _killed_at("checkpoint:last:written@1", resume, cache)
    assert len(list(run.glob(".last.*.tmp"))) == 1 and not (run / ".last.old").exists()
    assert _complete_epoch(run / "last") == 1

    # the log of epoch 3 (rewritten whole each epoch): its temporary file written, not renamed
    _killed_at("atomic:log.csv@2", resume, cache)
    assert not list(run.glob(".last.*"))  # the resume before removed the temporary folder of the killed one
    assert len(list(run.glob(".log.csv.*.tmp"))) == 1
    assert [r.split(",")[0] for r in (run / "log.csv").read_text().splitlines()[1:]] == ["1", "2"]
    assert _complete_epoch(run / "last") == 2  # the log is written before the checkpoint of its epoch

    train(resume=run, epochs=4, quiet=True)  # --resume, in this process (no fault set)
    a, b = _weights(straight), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"
    log = (run / "log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == list(range(1, 5))  # each epoch logged once
    assert not [p.name for p in run.iterdir() if p.name.endswith((".tmp", ".old"))]  # no temporary file left


def _no_space_after_half(write, at: int = 0):
    """`write` (its file path argument at position `at`) that leaves half of the file written, then fails as a
    full disk does."""
    def full_disk(*a, **k):
        write(*a, **k)
        path = str(a[at])
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, "No space left on device", path)
    return full_disk


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err
    return lines[-1]


def test_full_disk_during_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    data = write_lgg_replica(tmp_path / "kaggle_3m")
    run = tmp_path / "run"
    train(data, run, epochs=2, settings=TINY, **KW)
    before = _files(run / "last")
    # the disk fills while the training state is written, after the new weights: both must stay the old ones
    monkeypatch.setattr(train_state, "save_file", _no_space_after_half(train_state.save_file, at=1))
    capsys.readouterr()
    assert run_cli("train", "--resume", str(run), "--epochs", "3") == 2
    assert _error_line(capsys.readouterr().err) == \
        f"error: {run / 'last'}: no space left on device; the previous checkpoint is kept"
    monkeypatch.undo()
    assert _files(run / "last") == before and _complete_epoch(run / "last") == 2  # no recovery needed
    assert not [p.name for p in run.iterdir() if p.name.startswith(".last")]
    train(resume=run, epochs=3, quiet=True)  # and the run goes on from there
    assert json.loads((run / "last" / "state.json").read_text())["epoch"] == 3


def test_full_disk_during_cache_write_keeps_the_previous_entry(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDSEG_CACHE", str(cache))
    data = write_lgg_replica(tmp_path / "kaggle_3m", patients=2, slices=3)
    assert run_cli("prepare", str(data), "--image-size", "32") == 0
    before = _files(cache)
    monkeypatch.setattr(np, "save", _no_space_after_half(np.save))
    capsys.readouterr()
    assert run_cli("prepare", str(data), "--image-size", "48") == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {cache}/") and line.endswith(": no space left on device; no cache entry was written")
    assert _files(cache) == before and len(list(cache.iterdir())) == 1  # the old entry whole, no temp folder


def test_full_disk_during_mask_write_keeps_the_previous_masks(tmp_path, monkeypatch, capsys):
    data = write_busi_replica(tmp_path / "Dataset_BUSI_with_GT")
    run, out = tmp_path / "run", tmp_path / "masks"
    train(data, run, epochs=1, **KW)
    inputs = [str(p) for p in sorted((data / "benign").glob("benign (?).png"))]
    assert run_cli("predict", str(run), *inputs, "--out", str(out)) == 0
    before = _files(out)
    assert len(before) == 3
    monkeypatch.setattr(predictor_module, "write_mask_png", _no_space_after_half(predictor_module.write_mask_png))
    capsys.readouterr()
    assert run_cli("predict", str(run), *inputs, "--out", str(out)) == 2
    assert _error_line(capsys.readouterr().err) == \
        f"error: {out}: no space left on device; the folder was left as it was"
    assert _files(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)  # no staging folder
    assert run_cli("predict", str(run), *inputs, "--out", str(tmp_path / "new")) == 2
    assert not (tmp_path / "new").exists()
