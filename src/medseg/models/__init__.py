"""Model registry: a name -> a builder taking (in_channels, out_channels, **kwargs).

Checkpoints store the name and kwargs, so `predict` rebuilds the net without model flags.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import MedsegError
from .unet import build_unet

_MODELS: dict[str, Callable[..., nn.Module]] = {"unet": build_unet}


def build_model(name: str, in_channels: int, out_channels: int = 1, **kwargs) -> nn.Module:
    if name not in _MODELS:
        raise MedsegError(None, f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](in_channels, out_channels, **kwargs)


def models() -> list[str]:
    return sorted(_MODELS)
