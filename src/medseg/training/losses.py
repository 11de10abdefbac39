"""Loss registry (MONAI where it fits): name -> loss on Bx1xHxW logits and float {0,1} targets.

`build_loss(plan["loss"], **plan["loss_args"])`; every binary loss applies the sigmoid itself. "ce+dice" is
the multi-class loss: B x (K+1) x H x W logits, B x 1 x H x W class indices, softmax inside. Dice-type losses
pool the whole batch (batch=True) so an empty slice does not give a degenerate per-image Dice of 0 or 1.
Any binary loss takes `empty_weight` (and `empty_top`) for an image-level penalty on empty images (`EmptyPenalty`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss, FocalLoss, TverskyLoss

from ..errors import MedsegError


def _positive(name: str, value, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise MedsegError(None, f"loss argument {name} must be a number, got {value!r}") from None
    if not (v >= 0 if allow_zero else v > 0) or v != v or v == float("inf"):
        raise MedsegError(None, f"loss argument {name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def _pos_weight(pos_weight) -> torch.Tensor | None:
    """A weight on the positive class's BCE term (>1: missing foreground costs more; for small lesions)."""
    return None if pos_weight is None else torch.tensor([_positive("pos_weight", pos_weight)])


def _bce(pos_weight: float | None = None) -> nn.Module:
    return nn.BCEWithLogitsLoss(pos_weight=_pos_weight(pos_weight))


def _dice(smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = True) -> nn.Module:
    return DiceLoss(sigmoid=True, batch=bool(batch), smooth_nr=_positive("smooth_nr", smooth_nr, True),
                    smooth_dr=_positive("smooth_dr", smooth_dr, True))


def _bce_dice(pos_weight: float | None = None, lambda_dice: float = 1.0, lambda_bce: float = 1.0,
              smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = True) -> nn.Module:
    # With one output channel MONAI's DiceCELoss passes `weight` to BCEWithLogitsLoss as pos_weight and
    # leaves the Dice term unweighted (MONAI 1.6.1; tests/test_losses.py checks it).
    return DiceCELoss(sigmoid=True, batch=bool(batch), smooth_nr=_positive("smooth_nr", smooth_nr, True),
                      smooth_dr=_positive("smooth_dr", smooth_dr, True), weight=_pos_weight(pos_weight),
                      lambda_dice=_positive("lambda_dice", lambda_dice, True),
                      lambda_ce=_positive("lambda_bce", lambda_bce, True))


def _ce_dice(lambda_dice: float = 1.0, lambda_ce: float = 1.0, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
             batch: bool = True, include_background: bool = False) -> nn.Module:
    """Multi-class: softmax over background + K classes, cross-entropy + soft Dice (the Dice term over the
    foreground classes by default, as nnU-Net's), labels one-hot encoded inside."""
    return DiceCELoss(softmax=True, to_onehot_y=True, include_background=bool(include_background), batch=bool(batch),
                      smooth_nr=_positive("smooth_nr", smooth_nr, True), smooth_dr=_positive("smooth_dr", smooth_dr, True),
                      lambda_dice=_positive("lambda_dice", lambda_dice, True),
                      lambda_ce=_positive("lambda_ce", lambda_ce, True))


def _focal(gamma: float = 2.0, alpha: float | None = None) -> nn.Module:
    if alpha is not None and not 0.0 <= _positive("alpha", alpha, True) <= 1.0:
        raise MedsegError(None, f"focal alpha (the positive class's share of the weight) must be in [0, 1], got {alpha}")
    return FocalLoss(use_softmax=False, gamma=_positive("gamma", gamma, True),
                     alpha=None if alpha is None else float(alpha))


def _tversky(alpha: float = 0.5, beta: float = 0.5, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
             batch: bool = True) -> nn.Module:
    a, b = _positive("alpha", alpha, True), _positive("beta", beta, True)
    if a + b == 0:
        raise MedsegError(None, "tversky needs alpha + beta > 0")
    return TverskyLoss(sigmoid=True, alpha=a, beta=b, batch=bool(batch), smooth_nr=_positive("smooth_nr", smooth_nr, True),
                       smooth_dr=_positive("smooth_dr", smooth_dr, True))


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "bce+dice": _bce_dice,
    "dice": _dice,
    "bce": _bce,
    "focal": _focal,
    "tversky": _tversky,
    "ce+dice": _ce_dice,
}
# One line each for `medseg presets`; loss_args are the keyword arguments named in brackets.
LOSSES: dict[str, str] = {
    "bce+dice": "BCE + soft Dice, MONAI DiceCELoss (pos_weight, lambda_dice, lambda_bce, smooth_nr, smooth_dr, "
                "batch; like every binary loss also empty_weight, empty_top: a penalty on the top logits of "
                "images without foreground)",
    "dice": "soft Dice over the batch (smooth_nr, smooth_dr, batch)",
    "bce": "binary cross-entropy on logits (pos_weight)",
    "focal": "sigmoid focal loss (gamma, alpha: the positive class's weight in [0, 1])",
    "tversky": "Tversky loss (alpha weighs false positives, beta false negatives; 0.3/0.7 favours recall)",
    "ce+dice": "multi-class runs (the default there): softmax cross-entropy + soft Dice over the classes, MONAI "
               "DiceCELoss (lambda_dice, lambda_ce, smooth_nr, smooth_dr, include_background)",
}


class EmptyPenalty(nn.Module):
    """`base` plus a penalty on images whose mask is empty: `weight` x softplus of their "presence logit"
    (the mean of the top `top` share of their pixel logits, a smooth maximum), i.e. the BCE of that logit
    against "no foreground", averaged over the batch (images with foreground add 0).

    Why by hand: MONAI has no image-level term for a segmentation output. A per-image Dice term gives an
    empty image's false blob almost no gradient once the blob is large (d/dS of 1 - 1/(S + 1) is 1/(S + 1)^2),
    and the pixel BCE weighs it by its share of the image; this term pushes down exactly the most confident
    pixels of an image without foreground, with a gradient that does not fade while they are wrong. Only
    empty images: pushing the top logits of a small lesion's image up would grow its mask into the background
    (measured, the two-sided version: BUSI fold validation Dice 0.548 against 0.747). Off by default: on BUSI
    (pooled 5-fold, 30 min) weight 0.2 gave 9 of 24 normal images a false mask against 11, and lesion Dice
    0.654 against 0.675; weight 1 made the models predict nothing for their first 30-40 epochs (README).
    """

    def __init__(self, base: nn.Module, weight: float, top: float):
        super().__init__()
        self.base, self.weight, self.top = base, weight, top

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat = logits.flatten(1)
        k = max(1, int(round(self.top * flat.shape[1])))
        presence = flat.topk(k, dim=1).values.mean(1)
        empty = (target.flatten(1) <= 0.5).all(1).to(presence.dtype)
        return self.base(logits, target) + self.weight * (empty * nn.functional.softplus(presence)).mean()


def build_loss(name: str, empty_weight: float = 0.0, empty_top: float = 0.01, **kwargs) -> nn.Module:
    """`empty_weight` > 0 adds the image-level penalty of `EmptyPenalty` to a binary loss. The loss comes
    wrapped in MONAI's DeepSupervisionLoss, which computes it in fp32: a tensor of logits goes to it as it
    is; a deeply supervised model's list (models.unet.DeepSupervisedUNet) is weighed 1, 0.5, 0.25, ...
    against the mask resized (nearest) to each output."""
    return DeepSupervisionLoss(_build_loss(name, empty_weight, empty_top, **kwargs))


def _build_loss(name: str, empty_weight: float, empty_top: float, **kwargs) -> nn.Module:
    if name not in _BUILDERS:
        raise MedsegError(None, f"unknown loss {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    try:
        loss = _BUILDERS[name](**kwargs)
    except TypeError as e:  # an unknown keyword in loss_args
        raise MedsegError(None, f"loss {name!r}: bad loss_args {kwargs}: {e}") from None
    if not _positive("empty_weight", empty_weight, True):
        return loss
    if name == "ce+dice":
        raise MedsegError(None, "empty_weight applies to binary losses, not to the multi-class ce+dice")
    top = _positive("empty_top", empty_top)
    if top > 1:
        raise MedsegError(None, f"loss argument empty_top must be a share in (0, 1], got {empty_top!r}")
    return EmptyPenalty(loss, float(empty_weight), top)
