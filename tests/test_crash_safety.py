"""Crash safety: SIGKILL at random points (checkpoint writes included), then `--resume`, ends with the
same weights as an uninterrupted run; a checkpoint is never seen half-written; a full disk during a
checkpoint write leaves the previous checkpoint valid."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_lgg_replica
from medseg.inference import checkpoint as ckpt
from medseg.training import state as train_state
from medseg.training.state import load_training_state
from runs import train

TINY = {"model_args": {"features": [8, 16, 32], "res_units": 1}}
ARGS = ["--image-size", "32", "--batch-size", "2", "--epochs", "6", "--set",
        'model_args={"features": [8, 16, 32], "res_units": 1}']
KW = dict(image_size=32, batch_size=2, quiet=True)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from medseg.app.cli import main; main()", *args]


def _weights(run: Path) -> dict:
    return load_file(str(run / "last" / "model.safetensors"))


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    data = write_lgg_replica(tmp_path / "kaggle_3m")
    straight = tmp_path / "straight"
    t0 = time.time()
    train(data, straight, epochs=6, settings=TINY, **KW)
    span = time.time() - t0  # kills land anywhere in a run of this length (setup, epochs, checkpoint writes)
    run = tmp_path / "killed"
    env = {**os.environ, "MEDSEG_CACHE": str(tmp_path / "cache")}
    rng = random.Random(7)
    kills, cmd = 0, _cli("train", str(data), "--out", str(run), *ARGS)
    for attempt in range(25):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60

        def started() -> bool:  # the run's lock holds this process's PID once it works on the folder
            try:
                return (run / ".lock").read_text().split()[0] == str(proc.pid)
            except (OSError, IndexError):
                return False

        while not started() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        # later attempts wait longer, so a machine slower than the in-process `span` suggests still finishes
        time.sleep(rng.uniform(0.3, 1.6) * span * 1.15 ** attempt)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            if (run / "last").exists() or any(run.glob("last*")):
                train_state.recover_checkpoint(run / "last")
                if (run / "last").is_dir():
                    load_training_state(run / "last")  # never half-written: loads completely or not at all
        else:
            err = proc.stderr.read().decode()
            assert proc.returncode == 0, err
            break
        if (run / "plan.json").exists():
            cmd = _cli("train", "--resume", str(run), "--epochs", "6")
    else:
        pytest.fail("the run never finished")
    assert kills >= 2, f"only {kills} kills landed: the run was too quick to test"
    a, b = _weights(straight), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"
    log = (run / "log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == list(range(1, 7))  # each epoch logged once


def test_full_disk_during_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    data = write_lgg_replica(tmp_path / "kaggle_3m")
    run = tmp_path / "run"
    train(data, run, epochs=2, settings=TINY, **KW)
    before = _weights(run)
    state_before = json.loads((run / "last" / "state.json").read_text())

    real = ckpt.save_file

    def full_disk(tensors, path, *a, **k):
        real(tensors, path, *a, **k)
        with open(path, "r+b") as f:  # a partial file, then the error a full disk gives
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(OSError):
        train(resume=run, epochs=3, quiet=True)
    monkeypatch.undo()
    train_state.recover_checkpoint(run / "last")
    after = _weights(run)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((run / "last" / "state.json").read_text())["epoch"] == state_before["epoch"]
    train(resume=run, epochs=3, quiet=True)  # and the run goes on from there
    assert json.loads((run / "last" / "state.json").read_text())["epoch"] == 3
