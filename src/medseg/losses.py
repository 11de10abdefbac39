"""Loss registry (MONAI): name -> loss on logits of shape Bx1xHxW and float targets."""

from __future__ import annotations

import torch.nn as nn
from monai.losses import DiceCELoss, DiceLoss, FocalLoss

from .errors import MedsegError

_LOSSES = {
    # batch=True: Dice over the whole batch, so empty slices do not give a degenerate per-image Dice.
    "bce+dice": lambda: DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5),
    "dice": lambda: DiceLoss(sigmoid=True, batch=True),
    "bce": lambda: nn.BCEWithLogitsLoss(),
    "focal": lambda: FocalLoss(use_softmax=False),
}


def build_loss(name: str) -> nn.Module:
    if name not in _LOSSES:
        raise MedsegError(None, f"unknown loss {name!r}; known: {', '.join(sorted(_LOSSES))}")
    return _LOSSES[name]()
