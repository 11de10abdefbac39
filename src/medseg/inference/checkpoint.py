"""Checkpoints: `model.safetensors` (weights, with the config also in its metadata) + `config.json`.

Never pickles. Each file is written atomically; the config inside the safetensors header is the
authoritative one, so weights and config can never disagree.
A training run's `best` and `last` also hold the training state (training.state).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..errors import MedsegError, atomic_path
from ..planning.plan import Plan
from ..models import build_model

WEIGHTS, CONFIG = "model.safetensors", "config.json"
CV_FILE = "cv.json"  # a cross-validated run: RUN/cv.json names its fold run folders (training.cv)
TRAINING_FILE = "training.json"  # RUN/training.json: epochs, time and the machine of a finished training


def save_checkpoint(folder: Path, model: torch.nn.Module, plan: Plan) -> None:
    """The weights and the plan they were trained with (plan.epoch / val_dice: when they were saved)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    text = json.dumps(plan.to_dict(), indent=2, default=str)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"medseg_config": text})
    with atomic_path(folder / CONFIG) as tmp:
        tmp.write_text(text + "\n")


def read_plan(folder: Path) -> Plan:
    """The plan stored in a checkpoint's safetensors header (also those written by medseg <= 31ad044)."""
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise MedsegError(folder, f"no checkpoint here (missing {WEIGHTS}); is this a medseg run folder?")
    try:
        with safe_open(str(path), framework="pt") as f:
            config = json.loads((f.metadata() or {})["medseg_config"])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
        raise MedsegError(path, f"not a valid medseg checkpoint ({type(e).__name__}: {e})") from e
    return Plan.from_dict(config, path)


def load_checkpoint(folder: Path) -> tuple[torch.nn.Module, Plan]:
    """Rebuild the model from the checkpoint's own plan and load its weights."""
    plan = read_plan(folder)
    model = build_model(plan.model, plan.in_channels, plan.out_channels, **plan.model_args)
    try:
        model.load_state_dict(load_file(str(Path(folder) / WEIGHTS)))
    except (SafetensorError, RuntimeError) as e:
        raise MedsegError(Path(folder) / WEIGHTS, f"weights do not fit the model ({e})".splitlines()[0]) from e
    return model.eval(), plan


def resolve_run(run: Path) -> Path:
    """A run folder -> its best checkpoint folder (or a checkpoint folder itself)."""
    run = Path(run)
    for candidate in (run / "best", run / "last", run):
        if (candidate / WEIGHTS).is_file():
            return candidate
    raise MedsegError(run, "no checkpoint found (expected best/model.safetensors): train a run first")


def fold_runs(run: str | Path) -> list[Path] | None:
    """The fold run folders of a cross-validated run (RUN/cv.json), in fold order; None for any other run."""
    path = Path(run) / CV_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        return [Path(run) / name for name in info["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MedsegError(path, f"cannot read the cross-validation record ({type(e).__name__}: {e})") from e
