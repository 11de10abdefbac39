"""The training state beside a checkpoint's weights, so `medseg train --resume` continues exactly.

`state.safetensors` (optimizer tensors, RNG states, the current epoch's draws; with a weight average (training.ema)
also the live weights as "raw.*", model.safetensors holding the average) + `state.json` (everything else, and
the index saying which tensor is which). Such a folder is written whole into a temporary sibling and
swapped in by renames, so model and state always come from the same moment. Never pickles.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import MedsegError, fault, writing
from ..inference.checkpoint import WEIGHTS, save_checkpoint

STATE, STATE_INDEX = "state.safetensors", "state.json"
STATE_FORMAT = 1
RAW = "raw."  # state tensor prefix of the live weights when model.safetensors holds their moving average


def save_training_checkpoint(folder: Path, model: torch.nn.Module, config: dict, tensors: dict[str, torch.Tensor],
                             state: dict) -> None:
    """model.safetensors + config.json + state.safetensors + state.json, written into a temporary folder that
    then replaces `folder` (rename the old one aside, rename the new one in, delete the old one). A full disk
    ends in one WriteFailed naming `folder`, the previous checkpoint kept."""
    folder = Path(folder)
    with writing(folder, "the previous checkpoint is kept"):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            _write_folder(tmp, model, config, tensors, state)
            fault(f"checkpoint:{folder.name}:written")  # test hook (errors.fault): the new folder complete, not in place
            _swap_in(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _write_folder(tmp: Path, model: torch.nn.Module, config: dict, tensors: dict[str, torch.Tensor],
                  state: dict) -> None:
    os.chmod(tmp, 0o755)
    save_checkpoint(tmp, model, config)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / STATE),
              metadata={"medseg_state_format": str(STATE_FORMAT)})
    (tmp / STATE_INDEX).write_text(json.dumps({"format": STATE_FORMAT, **state}, default=str) + "\n")
    for f in tmp.iterdir():
        os.chmod(f, 0o644)  # safetensors writes owner-only files; a run folder is meant to be shared


def _swap_in(tmp: Path, folder: Path) -> None:
    """Rename `folder` aside, `tmp` into its place, delete the old one; cut off between the renames, the old one
    stays complete beside it (recover_checkpoint puts it back)."""
    old = folder.parent / f".{folder.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    fault(f"checkpoint:{folder.name}:swap")  # test hook (errors.fault): the old folder aside, the new one not in
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(folder: Path) -> None:
    """Undo a swap cut off between its two renames: the previous checkpoint is still complete beside it."""
    folder = Path(folder)
    old = folder.parent / f".{folder.name}.old"
    if not folder.exists() and old.is_dir():
        os.replace(old, folder)
    for stray in folder.parent.glob(f".{folder.name}.*.tmp"):
        shutil.rmtree(stray, ignore_errors=True) if stray.is_dir() else stray.unlink(missing_ok=True)


def recover_run(run: Path) -> None:
    """Before a run is resumed: its checkpoints recovered, and the temporary files of `plan.json` and `log.csv`
    left by a process killed before their rename removed (the run's lock keeps other writers out)."""
    recover_checkpoint(Path(run) / "last")
    recover_checkpoint(Path(run) / "best")
    for name in ("plan.json", "log.csv"):
        for stray in Path(run).glob(f".{name}.*.tmp"):
            stray.unlink(missing_ok=True)


def load_training_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, torch.Tensor]]:
    """(state tensors, state JSON, model state dict) of a training checkpoint."""
    folder = Path(folder)
    try:
        state = json.loads((folder / STATE_INDEX).read_text())
        tensors = load_file(str(folder / STATE))
        weights = load_file(str(folder / WEIGHTS))
    except FileNotFoundError as e:
        raise MedsegError(folder, f"no training state here ({Path(e.filename).name} missing): cannot resume") from e
    except (SafetensorError, json.JSONDecodeError, OSError) as e:
        raise MedsegError(folder, f"unreadable training state ({type(e).__name__}: {e})") from e
    if state.get("format") != STATE_FORMAT:
        raise MedsegError(folder / STATE_INDEX, f"training state format {state.get('format')!r}, "
                                                f"this medseg reads {STATE_FORMAT}")
    return tensors, state, weights


def optimizer_to_tensors(sd: dict, prefix: str = "optimizer.") -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict -> (flat named tensors for safetensors, a JSON index with everything else)."""
    tensors, index = {}, {}
    for pid, st in sd["state"].items():
        entry = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                name = f"{prefix}{pid}.{k}"
                tensors[name] = v
                entry[k] = {"tensor": name}
            else:
                entry[k] = {"value": v}
        index[str(pid)] = entry
    return tensors, {"state": index, "param_groups": sd["param_groups"]}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], index: dict) -> dict:
    """The inverse of optimizer_to_tensors: a state_dict for `optimizer.load_state_dict`."""
    state = {int(pid): {k: tensors[e["tensor"]] if "tensor" in e else e["value"] for k, e in entry.items()}
             for pid, entry in index["state"].items()}
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in index["param_groups"]]
    return {"state": state, "param_groups": groups}
