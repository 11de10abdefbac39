"""Model + preprocessing from the plan -> foreground probabilities (shared by validation, evaluate, predict).

A binary model has one output channel (sigmoid: the foreground probability, returned without a class axis);
a multi-class model K + 1 (softmax: per-class probabilities, background first, returned with a class axis
after the batch/slice axis)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from ..transforms import fill_views, normalize, resize_image, tta_flips, unfit

OVERLAP = 0.25  # sliding-window overlap between neighbouring patches (MONAI's default is 0.25)
SIZE_MULTIPLE = 16  # a 2D network's input height and width: multiples of this (its four 2x poolings)


def activate(logits: torch.Tensor) -> torch.Tensor:
    """B x C x ... logits -> probabilities: sigmoid for one channel (binary), softmax over C otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)


def squeeze_binary(prob: torch.Tensor) -> torch.Tensor:
    """B x C x ... probabilities -> B x ... for a binary model (its one channel), unchanged otherwise."""
    return prob[:, 0] if prob.shape[1] == 1 else prob


class Normalised(torch.nn.Module):
    """The network with the plan's per-channel normalisation in front of it."""

    def __init__(self, model: torch.nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.mean, self.std = list(mean), list(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(normalize(x, self.mean, self.std))


class Ensemble(torch.nn.Module):
    """The fold models of a cross-validated run, each with its own normalisation (its training folds'
    statistics), averaged in probability space as nnU-Net does. forward() returns the logit of the mean
    probability, so every path that applies a sigmoid (2D, TTA, sliding window) averages probabilities."""

    includes_normalization = True

    def __init__(self, nets: list[torch.nn.Module], means: list[list[float]], stds: list[list[float]]):
        super().__init__()
        self.nets = torch.nn.ModuleList(Normalised(n, m, s) for n, m, s in zip(nets, means, stds))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.stack([activate(net(x).float()) for net in self.nets]).mean(0)
        # the logit of the mean probability (binary); multi-class: its log, which softmax maps back to it
        return torch.logit(p, eps=1e-6) if p.shape[1] == 1 else torch.log(p.clamp_min(1e-12))


class Bf16Autocast(torch.nn.Module):
    """The `torch-bf16` engine: the (fp32) network run under bf16 autocast, logits returned in fp32.
    benchmarks.inference: 1.5-1.8x the eager fp32 reference on a CPU with AVX512-BF16, masks Dice ~0.999
    against fp32; on CPUs without native bf16 it is slower. Opt-in: masks may differ at the boundary."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.net(x).float()


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, images: torch.Tensor, plan: dict, tta: bool = False,
                  batch_size: int = 16) -> torch.Tensor:
    """Bx C x H x W images in [0, 1], all of one size -> B x H x W probabilities at that same size
    (multi-class: B x (K+1) x H x W).

    Images are resized to the plan's training size and normalised as in training; the probabilities
    (not hard masks) are resized back, so thresholding happens at the input's own resolution. With `tta` the
    probabilities are averaged over the flips the model was trained with, the plan's scales (tta_scales) and,
    for a run trained with a channel fill, over the image as it is and its filled views (transforms.tta_fills):
    each view its scales' and flips' passes.
    """
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].float()
        h, w = x.shape[-2:]
        keep = plan.keep_aspect
        x = resize_image(x, plan.image_size, keep)
        views = fill_views(x, plan) if tta else [x]  # with a channel fill: its patterns, as it trained
        prob = sum(_scale_averaged(model, _normalized(model, v, plan), plan, tta) for v in views) / len(views)
        out.append(squeeze_binary(unfit(prob, (h, w), keep)))
    return torch.cat(out)


def _normalized(model: torch.nn.Module, x: torch.Tensor, plan) -> torch.Tensor:
    if not getattr(model, "includes_normalization", False):  # an ONNX graph normalises inside itself
        x = normalize(x, plan.mean, plan.std)
    return x.contiguous(memory_format=torch.channels_last)


def tta_sizes(size: int, scales: list[float]) -> list[int]:
    """The input sizes of the scaled TTA views: `size` times each factor, to the nearest multiple of
    SIZE_MULTIPLE; the training size itself and duplicates left out (128 with 0.875, 1.125: 112, 144)."""
    sizes = {max(SIZE_MULTIPLE, round(size * f / SIZE_MULTIPLE) * SIZE_MULTIPLE) for f in scales}
    return sorted(sizes - {size})


def _scale_averaged(model: torch.nn.Module, x: torch.Tensor, plan, tta: bool) -> torch.Tensor:
    """_flip_averaged of x and, with tta, of x resized to each of the plan's TTA scales (tta_sizes), their
    probabilities resized back and averaged. The U-Net is fully convolutional and trained on content scaled
    by up to +-15%, so a view 0.875 or 1.125 times the size is one it has seen, not a new input. MONAI's
    TTA utilities invert random transforms one sample at a time; these few fixed views batch as they are."""
    prob = _flip_averaged(model, x, plan, tta)
    sizes = tta_sizes(x.shape[-1], plan.tta_scales) if tta and x.shape[-2] == x.shape[-1] else []
    for s in sizes:
        view = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        scaled = _flip_averaged(model, view.contiguous(memory_format=torch.channels_last), plan, tta)
        prob = prob + F.interpolate(scaled, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return prob / (1 + len(sizes))


def _flip_averaged(model: torch.nn.Module, x: torch.Tensor, plan, tta: bool) -> torch.Tensor:
    """Probabilities of x; with tta, averaged with those of the flips the model was trained with
    (transforms.tta_flips)."""
    prob = activate(model(x))
    flips = tta_flips(plan.augmentation) if tta else ()
    return (prob + sum(activate(model(x.flip(a))).flip(a) for a in flips)) / (1 + len(flips))


@torch.inference_mode()
def volume_probs(model: torch.nn.Module, volume: torch.Tensor, plan: dict, device=None) -> torch.Tensor:
    """C x D x S x S float volume in [0, 1] (training size in-plane) -> D x S x S probabilities (multi-class:
    D x (K+1) x S x S), by sliding-window inference with Gaussian-weighted overlapping patches."""
    model.eval()
    device = device or torch.device("cpu")
    x = volume[None].float()
    if not getattr(model, "includes_normalization", False):  # an ensemble normalises per fold inside itself
        x = normalize(x, plan.mean, plan.std)
    x = x.to(device)
    logits = sliding_window_inference(x, plan.patch, sw_batch_size=4, predictor=model, overlap=OVERLAP,
                                      mode="gaussian")
    prob = activate(logits)[0].float().cpu()  # C x D x S x S
    return prob[0] if prob.shape[0] == 1 else prob.transpose(0, 1)
