"""Model + preprocessing from the plan -> foreground probabilities (shared by validation, evaluate, predict)."""

from __future__ import annotations

import torch

from .transforms import normalize, resize_image, unfit


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, images: torch.Tensor, plan: dict, tta: bool = False,
                  batch_size: int = 16) -> torch.Tensor:
    """Bx C x H x W images in [0, 1], all of one size -> B x H x W probabilities at that same size.

    Images are resized to the plan's training size and normalised as in training; the probabilities
    (not hard masks) are resized back, so thresholding happens at the input's own resolution.
    """
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].float()
        h, w = x.shape[-2:]
        keep = plan.get("keep_aspect", False)
        x = normalize(resize_image(x, plan["image_size"], keep), plan["mean"], plan["std"])
        x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        if tta:  # left-right flip, averaged in logit space
            logits = (logits + model(x.flip(-1)).flip(-1)) / 2
        out.append(unfit(torch.sigmoid(logits), (h, w), keep)[:, 0])
    return torch.cat(out)
