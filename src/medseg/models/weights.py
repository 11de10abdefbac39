"""Pretrained encoder weights from a local file: never downloaded (hospital and CI machines are offline).

Accepted: a torchvision-format state dict as `.pth`/`.pt` (read with `torch.load(weights_only=True)`, so a
pickle that carries code is refused) or a `.safetensors` file. When no path is given, the standard
PyTorch hub cache folder is searched for torchvision's file names, so weights once downloaded on another
machine work after a plain copy.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import MedsegError, atomic_path, check_output

# torchvision's file names for the ImageNet weights (IMAGENET1K_V1)
HUB_FILES = {False: "vgg16-397923af.pth", True: "vgg16_bn-6c64b313.pth"}


def hub_cache() -> Path:
    """$TORCH_HOME/hub/checkpoints, else ~/.cache/torch/hub/checkpoints (PyTorch's own rule)."""
    home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch"
    return Path(home) / "hub" / "checkpoints"


def find_vgg16(batch_norm: bool) -> Path | None:
    path = hub_cache() / HUB_FILES[batch_norm]
    return path if path.is_file() else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise MedsegError(path, "weights file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise MedsegError(path, f"not a valid safetensors file ({e})") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise MedsegError(path, f"refused or unreadable: only plain tensor state dicts load, never code ({first})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MedsegError(path, "not a state dict of tensors")
    return state


def load_encoder_weights(model: torch.nn.Module, path: str | Path) -> None:
    try:
        model.load_encoder(read_state_dict(path))
    except ValueError as e:
        raise MedsegError(path, str(e)) from e


def encoder_settings(plan, quiet: bool = False) -> dict:
    """For a model with a pretrained encoder: which weights file (the one given, else torchvision's file in
    the hub cache) and the normalisation that goes with it. ImageNet mean/std replace the data set's only
    when ImageNet weights are used (grey input: the mean of the three channels' values); the plan records it."""
    if plan.model != "vgg16-unet":
        return {"normalization": "dataset"}
    path = plan.encoder_weights or find_vgg16(bool(plan.model_args.get("batch_norm", False)))
    if path is None:
        if not quiet:
            print("note: no VGG16 ImageNet weights given (--encoder-weights) or found in "
                  f"{hub_cache()}: the encoder trains from scratch", file=sys.stderr)
        return {"encoder_weights": None, "normalization": "dataset"}
    from .vgg16_unet import IMAGENET_MEAN, IMAGENET_STD, VGG16UNet
    # check the file now, before the run folder gets its plan: a wrong file is bad input, not a crash later
    load_encoder_weights(VGG16UNet(len(plan.mean), 1, bool(plan.model_args.get("batch_norm", False))), path)
    c = len(plan.mean)
    mean = list(IMAGENET_MEAN) if c == 3 else [sum(IMAGENET_MEAN) / 3] * c
    std = list(IMAGENET_STD) if c == 3 else [sum(IMAGENET_STD) / 3] * c
    return {"encoder_weights": str(Path(path).resolve()), "normalization": "imagenet", "mean": mean, "std": std}


def convert(src: str | Path, dst: str | Path) -> Path:
    """torchvision state dict (.pth) -> safetensors with the same keys (`medseg weights convert`)."""
    dst = check_output(dst, "file")
    state = {k: v.contiguous() for k, v in read_state_dict(src).items()}
    with atomic_path(dst) as tmp:
        save_file(state, str(tmp), metadata={"source": Path(src).name, "format": "torchvision state dict"})
    return dst
