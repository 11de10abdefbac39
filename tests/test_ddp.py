"""`medseg train` under torchrun: 2 CPU processes on the gloo backend, DDP, rank-0-only writing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from medseg.training.state import load_training_state

from conftest import write_lgg_replica

# Each rank runs the real CLI; the callback records a hash of that rank's own weights after every epoch.
LAUNCHER = '''
import functools, hashlib, os, sys
from pathlib import Path
import medseg.training.train as T

def record(event, info):
    if event == "epoch":
        sd = info["model"].state_dict()
        h = hashlib.sha256(b"".join(sd[k].detach().cpu().contiguous().numpy().tobytes() for k in sorted(sd)))
        Path(sys.argv[1], f"rank{os.environ['RANK']}-epoch{info['epoch']}.sha").write_text(h.hexdigest())

_Options = T.Options
T.Options = lambda **kw: _Options(**{"callback": record, **kw})
from medseg.app.cli import main
main(sys.argv[2:])
'''


def state_hash(sd: dict[str, torch.Tensor]) -> str:
    return hashlib.sha256(b"".join(sd[k].contiguous().numpy().tobytes() for k in sorted(sd))).hexdigest()


def test_torchrun_two_cpu_processes(tmp_path):
    data = write_lgg_replica(tmp_path / "kaggle_3m")
    run, hashes = tmp_path / "run", tmp_path / "hashes"
    hashes.mkdir()
    (tmp_path / "launch.py").write_text(LAUNCHER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "launch.py"), str(hashes), "train", str(data), "--out", str(run), "--epochs", "2",
           "--image-size", "32", "--batch-size", "2", "--val-fraction", "0.34"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("2 processes") == 1  # only rank 0 prints
    # every rank ended each epoch with the same weights, and rank 0's are the ones in the checkpoint
    for epoch in (1, 2):
        assert (hashes / f"rank0-epoch{epoch}.sha").read_text() == (hashes / f"rank1-epoch{epoch}.sha").read_text()
    weights = load_file(str(run / "last" / "model.safetensors"))  # the weights' moving average (EMA)
    live = {k[len("raw."):]: v for k, v in load_file(str(run / "last" / "state.safetensors")).items()
            if k.startswith("raw.")}  # the live weights, kept for an exact resume
    assert state_hash(live) == (hashes / "rank0-epoch2.sha").read_text()
    assert not any(k.startswith("module.") for k in weights) and set(weights) == set(live)  # the unwrapped module's keys
    # one writer: one TensorBoard event file, one log with both ranks' samples (2 x 16 per epoch)
    assert len(list((run / "tb").iterdir())) == 1
    rows = (run / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and all(r.split(",")[-1] == "32" for r in rows[1:])
    tensors, state, _ = load_training_state(run / "last")
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and "rng.1.torch" in tensors
    assert json.loads((run / "last" / "config.json").read_text())["epoch"] == 2
    assert not (run / ".lock").exists()
