"""Preprocessing shared by training and inference, and the training augmentation (MONAI transforms).

Keys follow MONAI's convention: "image" (CxHxW float) and "label" (1xHxW float 0/1). Labels are only
ever moved by nearest-neighbour geometry and never touched by intensity transforms.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
import torch.nn.functional as F
from monai import transforms as mt

from .io.intensity import RULES

IMAGE, LABEL = "image", "label"


def fitted_shape(hw: tuple[int, int], size: int, keep_aspect: bool) -> tuple[int, int]:
    """The size an image of height/width `hw` takes inside the size x size training frame."""
    if not keep_aspect:
        return size, size
    scale = size / max(hw)
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def resize_image(img: torch.Tensor, size: int, keep_aspect: bool = False) -> torch.Tensor:
    """BxCxHxW -> BxCxsize x size, antialiased when shrinking. With `keep_aspect` (mammograms, up to
    5000x3000) the longest side becomes `size` and the rest is zero-padded at the bottom/right, so the
    anatomy keeps its shape; `unfit` undoes it."""
    h, w = fitted_shape(img.shape[-2:], size, keep_aspect)
    if img.shape[-2:] != (h, w):
        img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    if (h, w) != (size, size):
        img = F.pad(img, (0, size - w, 0, size - h))
    return img


def resize_mask(mask: torch.Tensor, size: int, keep_aspect: bool = False) -> torch.Tensor:
    """Bx1xHxW {0,1} -> Bx1xsize x size {0,1} (area-weighted, then halved: smoother than nearest)."""
    if mask.shape[-2:] == (size, size):
        return mask
    return (resize_image(mask.float(), size, keep_aspect) >= 0.5).float()


def resize_labels(labels: torch.Tensor, size: int, n_classes: int, keep_aspect: bool = False) -> torch.Tensor:
    """Bx1xHxW class indices -> Bx1xsize x size: each class's one-hot map resized as resize_mask does, then
    the class of the largest share per pixel (the multi-class form of area-weighting and halving)."""
    if labels.shape[-2:] == (size, size):
        return labels
    onehot = F.one_hot(labels[:, 0].long(), n_classes + 1).permute(0, 3, 1, 2).float()
    return resize_image(onehot, size, keep_aspect).argmax(1, keepdim=True).to(labels.dtype)


def coarse_batch(x: torch.Tensor, y: torch.Tensor, size: int, n_classes: int, soft: bool = False):
    """A 2D training batch shrunk to size x size for the coarse start of progressive resizing (the plan's
    `coarse_share`): a step there costs about (size / image_size)^2 as much, and the fully convolutional
    U-Net's weights carry over to the full size. Images as `resize_image`, masks as the cache made them
    (`resize_mask`, `resize_labels`; soft labels keep their shares). MONAI has no batch-level resize."""
    if x.shape[-2:] == (size, size):
        return x, y
    if n_classes:
        y = resize_labels(y, size, n_classes)
    else:
        y = resize_image(y.float(), size) if soft else resize_mask(y, size)
    return resize_image(x, size), y


def unfit(probs: torch.Tensor, hw: tuple[int, int], keep_aspect: bool = False) -> torch.Tensor:
    """Bx1xSxS probabilities in the training frame -> Bx1xHxW at the original image size."""
    h, w = fitted_shape(hw, probs.shape[-1], keep_aspect)
    probs = probs[..., :h, :w]
    if probs.shape[-2:] != tuple(hw):
        probs = F.interpolate(probs, size=tuple(hw), mode="bilinear", align_corners=False)
    return probs


def normalize(img: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Per-channel z-score with the training set's statistics (stored in the checkpoint)."""
    shape = (1, -1, *[1] * (img.ndim - 2))  # B x C x H x W, or B x C x D x H x W for 3D patches
    m = torch.tensor(mean, dtype=img.dtype, device=img.device).view(shape)
    s = torch.tensor(std, dtype=img.dtype, device=img.device).view(shape)
    return (img - m) / s


def _flip(axis: int) -> mt.RandFlipd:
    """axis 1: left-right, axis 0: up-down (of a CxHxW image)."""
    return mt.RandFlipd(keys=[IMAGE, LABEL], spatial_axis=axis, prob=0.5)


def _affine(prob: float, degrees: float, scale: float) -> mt.RandAffined:
    """Rotation by up to +-degrees and per-axis scaling by 1 +- scale, one resampling for both."""
    return mt.RandAffined(keys=[IMAGE, LABEL], prob=prob, rotate_range=np.deg2rad(degrees), scale_range=scale,
                          mode=("bilinear", "nearest"), padding_mode="zeros")


def _default() -> list:
    # Exactly the set the measured runs used (keep it: results in docs/ and checkpoints refer to it).
    geometric = [
        mt.RandFlipd(keys=[IMAGE, LABEL], spatial_axis=1, prob=0.5),  # left-right
        mt.RandAffined(keys=[IMAGE, LABEL], prob=0.7, rotate_range=np.pi / 12, scale_range=0.15,
                       translate_range=0.0, mode=("bilinear", "nearest"), padding_mode="zeros"),
    ]
    intensity = [
        mt.RandScaleIntensityd(keys=IMAGE, factors=0.15, prob=0.5),
        mt.RandShiftIntensityd(keys=IMAGE, offsets=0.1, prob=0.5),
        mt.RandAdjustContrastd(keys=IMAGE, gamma=(0.7, 1.5), prob=0.3),
        mt.RandGaussianNoised(keys=IMAGE, std=0.05, prob=0.2),
    ]
    return geometric + intensity


def _robust() -> list:
    """The "default" set with gamma drawn from 0.5-2 (0.7-1.5 there): the stress test's gamma 0.5 and 2 (a
    scanner's or a viewer's different contrast curve) cost up to 0.21 Dice with the narrower range."""
    sets = _default()
    return [mt.RandAdjustContrastd(keys=IMAGE, gamma=(0.5, 2.0), prob=0.3)
            if isinstance(t, mt.RandAdjustContrastd) else t for t in sets]


class RandAnchoredGamma(mt.Randomizable):
    """With probability `prob`, gamma drawn from `gamma` about `anchor`: x -> clip(anchor * (x / anchor) ** g, 0, 1).

    After per-case scaling (io.intensity) a case's reference statistic sits at the rule's value (the median of
    the body pixels at 0.2, or their 99th percentile at 0.75), whatever the scanner. A scanner's or a viewer's
    other contrast curve, a gamma on the stored grey values, therefore reaches the model as a gamma about that
    value: the reference stays where it is, and the tissue above and below it bends. MONAI's RandAdjustContrast
    bends each image about its own range (its maximum stays, so with the median rule the brain moves from 0.2
    to 0.45 under gamma 0.5, a level no scaled case has) or, with retain_stats, restores mean and std by
    shifting the zero background; neither is this, so it is written here. Works on one sample (dict, C x ...).

    With the 5% body threshold alone it traded (two pooled 5-fold LGG pairs against "robust": +0.008 a patient
    each; gamma 2 on the stored values cost 0.005 Dice against 0.061, gamma 0.5 0.282 against 0.162, since a
    real gamma 0.5 also lifts the near-black background into the body pixels the median is taken over). With
    the log-Otsu body mask, which a gamma does not move, it is LGG's default (planning.planner; docs/results.md)."""

    def __init__(self, anchor: float, prob: float = 0.3, gamma: tuple[float, float] = (0.5, 2.0)):
        self.anchor, self.prob, self.gamma = float(anchor), float(prob), (float(gamma[0]), float(gamma[1]))

    def randomize(self, data=None) -> float | None:
        """The gamma of this sample, or None (no change)."""
        return self.R.uniform(*self.gamma) if self.R.rand() < self.prob else None

    def __call__(self, data):
        g = self.randomize()
        if g is None:
            return data
        out = dict(data)
        x = torch.as_tensor(out[IMAGE])
        out[IMAGE] = (self.anchor * (x.clamp_min(0) / self.anchor) ** g).clamp(0.0, 1.0)
        return out


def _anchored(anchor: float = 1.0) -> list:
    """The "robust" set with its gamma (0.5-2, probability 0.3) about the intensity rule's anchor."""
    return [RandAnchoredGamma(anchor) if isinstance(t, mt.RandAdjustContrastd) else t for t in _robust()]


def _mri(anchor: float = 1.0) -> list:
    """The "anchored" set without its additive shift (+-0.1 on half the samples): an MR image's zero is air and
    no scanner adds an offset, while under the median rule (brain at 0.2) that shift moved the whole image,
    background included, by up to half the tissue's level. Measured on LGG (two pooled 5-fold pairs against
    "anchored", docs/results.md): +0.007 and -0.004 a patient, the same patients traded in both; an option only."""
    return [t for t in _anchored(anchor) if not isinstance(t, mt.RandShiftIntensityd)]


def _made_elastic(sets: list) -> list:
    """`sets` with its affine step made elastic: the same rotation and scale, plus a smooth random deformation
    (random offsets of 1-3 px at control points 32 px apart), in one resampling (MONAI's Rand2DElastic takes the
    affine ranges too). Pixels move 2-3.5 px on average at 128 px; part of that is MONAI's own: its bicubic
    upsampling of the control grid (PyTorch's a=-0.75 kernel does not reproduce a linear ramp) bends even a
    zero-offset grid by up to +-1.5 px with a 32 px period. Soft tissue deforms; a rigid map does not."""
    return [mt.Rand2DElasticd(keys=[IMAGE, LABEL], spacing=(32, 32), magnitude_range=(1, 3), prob=0.7,
                              rotate_range=np.pi / 12, scale_range=0.15, mode=("bilinear", "nearest"),
                              padding_mode="zeros")
            if isinstance(t, mt.RandAffined) else t for t in sets]


def _elastic() -> list:
    """The "robust" set made elastic (`_made_elastic`). Measured on BUSI in docs/results.md ("Elastic
    augmentation")."""
    return _made_elastic(_robust())


def _anchored_elastic(anchor: float = 1.0) -> list:
    """The "anchored" set (LGG's default) made elastic (`_made_elastic`)."""
    return _made_elastic(_anchored(anchor))


def _busi() -> list:
    return [_flip(1), _affine(0.5, 10, 0.1),
            mt.RandShiftIntensityd(keys=IMAGE, offsets=0.1, prob=0.5),  # brightness
            mt.RandScaleIntensityFixedMeand(keys=IMAGE, factors=0.2, prob=0.5)]  # contrast about the mean


def _lgg() -> list:
    # Buda et al.'s transforms(scale=0.05, angle=15, flip_prob=0.5), always scaled and rotated, in their order:
    # isotropic zoom (centre crop or zero pad back to size), rotation, left-right flip.
    return [mt.RandZoomd(keys=[IMAGE, LABEL], prob=1.0, min_zoom=0.95, max_zoom=1.05, mode=("bilinear", "nearest"),
                         padding_mode="constant", keep_size=True),
            mt.RandRotated(keys=[IMAGE, LABEL], range_x=np.deg2rad(15), prob=1.0, mode=("bilinear", "nearest"),
                           padding_mode="zeros"),
            _flip(1)]


def _liver_ct() -> list:
    # The liver-CT tutorial's blur-then-noise: a 3x3 median or a light Gaussian blur (or neither), then noise
    # of ~10 HU in a 500 HU window. No geometry: CT slices come in a fixed orientation.
    return [mt.OneOf([mt.MedianSmoothd(keys=IMAGE, radius=1),
                      mt.RandGaussianSmoothd(keys=IMAGE, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), prob=1.0),
                      mt.Identityd(keys=IMAGE)]),
            mt.RandGaussianNoised(keys=IMAGE, std=0.02, prob=0.5)]


def _cbis() -> list:
    # The mammography tutorial's Keras generator: horizontal and vertical flips and a brightness range.
    return [_flip(1), _flip(0), mt.RandScaleIntensityd(keys=IMAGE, factors=0.2, prob=0.5)]


def _strong() -> list:
    # Elastic spacing/magnitude are in pixels: ~4 px displacements on a 32 px control grid at any image size.
    return [_flip(1), _flip(0), _affine(0.7, 30, 0.2),
            mt.Rand2DElasticd(keys=[IMAGE, LABEL], spacing=(32, 32), magnitude_range=(1, 3), prob=0.3,
                              mode=("bilinear", "nearest"), padding_mode="zeros"),
            mt.RandScaleIntensityd(keys=IMAGE, factors=0.2, prob=0.5),
            mt.RandShiftIntensityd(keys=IMAGE, offsets=0.1, prob=0.5),
            mt.RandAdjustContrastd(keys=IMAGE, gamma=(0.7, 1.5), prob=0.3),
            mt.RandGaussianNoised(keys=IMAGE, std=0.05, prob=0.2),
            mt.RandGaussianSmoothd(keys=IMAGE, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), prob=0.2)]


def _wide() -> list:
    """Wider, nnU-Net-like ranges: the robust set's intensities with rotation +-25 deg, scale 0.7-1.3, blur
    and a simulated lower resolution, left-right flip only. Not the default: in pooled 5-fold runs against
    "robust" (same budget, side by side) it cost LGG 0.013-0.019 Dice; on BUSI it raised the lesion Dice in
    three pairs (+0.015, +0.015, +0.036) and gave more normal images a false mask (28 of 72 against 21):
    a trade, not a gain (docs/results.md, "Wider augmentation")."""
    return [_flip(1), _affine(0.8, 25, 0.3),
            mt.RandSimulateLowResolutiond(keys=IMAGE, prob=0.25, zoom_range=(0.5, 1.0), upsample_mode="bilinear"),
            mt.RandGaussianSmoothd(keys=IMAGE, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), prob=0.2),
            mt.RandScaleIntensityd(keys=IMAGE, factors=0.25, prob=0.5),
            mt.RandShiftIntensityd(keys=IMAGE, offsets=0.1, prob=0.5),
            mt.RandAdjustContrastd(keys=IMAGE, gamma=(0.5, 2.0), prob=0.3),
            mt.RandGaussianNoised(keys=IMAGE, std=0.05, prob=0.2)]


def _volume() -> list:
    # 3D patches (C x D x H x W): flips on all three axes, in-plane quarter turns, intensity only otherwise;
    # a 3D affine resampling would cost more than the patch's forward pass on a CPU.
    return [mt.RandFlipd(keys=[IMAGE, LABEL], spatial_axis=a, prob=0.5) for a in (0, 1, 2)] + [
        mt.RandRotate90d(keys=[IMAGE, LABEL], prob=0.5, spatial_axes=(1, 2)),
        mt.RandScaleIntensityd(keys=IMAGE, factors=0.15, prob=0.5),
        mt.RandShiftIntensityd(keys=IMAGE, offsets=0.1, prob=0.5),
        mt.RandAdjustContrastd(keys=IMAGE, gamma=(0.7, 1.5), prob=0.3),
        mt.RandGaussianNoised(keys=IMAGE, std=0.03, prob=0.2)]


class BatchDefault(mt.Randomizable):
    """The "default" set (flip, rotation +-15 deg with scale +-15% in one resampling, brightness, shift,
    gamma, noise; same probabilities and ranges as `_default`), applied to a whole batch at once.

    MONAI's transforms work one sample at a time; on a CPU their per-sample cost (about 4 ms for a
    9 x 128 x 128 slice stack, `benchmarks.pipeline`) is a third of the training step. Here each random
    parameter is drawn for the whole batch from one numpy RandomState (`self.R`, saved in checkpoints
    like MONAI's) and applied with vectorised torch ops: one affine_grid/grid_sample for the batch."""

    batched = True
    label_mode = "nearest"  # soft_geometry: "bilinear"

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x C x H x W float images in [0, 1] and B x 1 x H x W labels -> augmented; writes into x and y
        (data.batches hands it fresh tensors). Each step touches only the samples it draws."""
        b, r = x.shape[0], self.R
        flip = torch.from_numpy(np.flatnonzero(r.random_sample(b) < 0.5))
        if len(flip):
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        moved = np.flatnonzero(r.random_sample(b) < 0.7)
        angle = r.uniform(-np.pi / 12, np.pi / 12, b)
        scale = 1.0 + r.uniform(-0.15, 0.15, (b, 2))
        if len(moved):
            a, sx, sy = angle[moved], scale[moved, 0], scale[moved, 1]
            theta = torch.tensor(np.stack([np.stack([np.cos(a) * sx, -np.sin(a) * sy, np.zeros_like(a)], -1),
                                           np.stack([np.sin(a) * sx, np.cos(a) * sy, np.zeros_like(a)], -1)], 1),
                                 dtype=x.dtype)
            idx = torch.from_numpy(moved)
            grid = F.affine_grid(theta, [len(moved), 1, *x.shape[-2:]], align_corners=False)
            x[idx] = F.grid_sample(x[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            y[idx] = F.grid_sample(y[idx], grid, mode=self.label_mode, padding_mode="zeros", align_corners=False)

        def drawn(prob: float, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
            """(indices of the samples the transform hits, their values, shaped k x 1 x 1 x 1)."""
            on, values = r.random_sample(b) < prob, r.uniform(low, high, b)
            idx = np.flatnonzero(on)
            return torch.from_numpy(idx), torch.tensor(values[idx], dtype=x.dtype).view(-1, 1, 1, 1)

        for prob, low, high, op in ((0.5, 0.85, 1.15, "mul"), (0.5, -0.1, 0.1, "add")):  # brightness, shift
            idx, v = drawn(prob, low, high)
            if len(idx):
                x[idx] = x[idx] * v if op == "mul" else x[idx] + v
        idx, gamma = drawn(0.3, 0.7, 1.5)  # contrast: gamma on each image's own range
        if len(idx):
            sel = x[idx]
            lo = sel.amin(dim=(1, 2, 3), keepdim=True)
            span = sel.amax(dim=(1, 2, 3), keepdim=True) - lo
            x[idx] = ((sel - lo) / (span + 1e-7)).clamp_min(0) ** gamma * span + lo
        idx, std = drawn(0.2, 0.0, 0.05)  # Gaussian noise with a drawn standard deviation
        g = torch.Generator().manual_seed(int(r.randint(0, 2 ** 31 - 1)))
        if len(idx):
            x[idx] = x[idx] + torch.randn((len(idx), *x.shape[1:]), generator=g, dtype=x.dtype) * std
        return x, y


def fill_views(x: torch.Tensor, plan) -> list[torch.Tensor]:
    """x (B x C x ...) and, for a plan with a channel fill, a copy of it per fill pattern (tta_fills): the
    views test-time augmentation averages. Without a channel fill: [x]."""
    fill, views = plan.channel_fill, [x]
    for channels in tta_fills(fill, plan.channels if fill else 1)[1:]:  # the first, (): x as it is
        drop = np.zeros((x.shape[0], plan.channels), dtype=bool)
        drop[:, list(channels)] = True
        views.append(fill_channels(x.clone(), int(fill["source"]), plan.channels, drop))
    return views


def fill_channels(x: torch.Tensor, source: int, per: int, drop: np.ndarray) -> torch.Tensor:
    """x: B x C x ... with C a multiple of `per` (one block of `per` channels per 2.5D slice); each channel c of
    sample b with drop[b, c] (drop: B x per booleans) becomes a copy of channel `source`, in every block
    alike. In place where x is writable; returns x."""
    blocks = x.reshape(x.shape[0], -1, per, *x.shape[2:])  # B x slices x per x ...
    for b, c in zip(*np.nonzero(drop)):
        blocks[b, :, c] = blocks[b, :, source]
    return blocks.reshape(x.shape)


def tta_fills(fill: dict | None, per: int) -> list[tuple[int, ...]]:
    """The channel sets test-time augmentation replaces by copies of the fill's source, one view each: every
    subset of the other channels, the empty one (the image as it is) first; [()] without a channel fill.

    A run trained with the plan's channel_fill has seen each other channel replaced independently, so each
    pattern is an image it trained on; TTA averages their probabilities as it averages the flips the model
    was trained with. Where the other channels mislead the model, the filled views still find the lesion: an
    LGG patient whose pre-contrast lesion is 1.44x as bright as its brain scored 0.000 as published and
    0.91 in pooled cross-validation. Averaging all four LGG patterns beat averaging the image with the
    fully filled one in each of three pooled runs (README, "Missing sequences")."""
    if not fill or not fill.get("prob"):
        return [()]
    others = [c for c in range(per) if c != int(fill["source"])]
    return [combo for k in range(len(others) + 1) for combo in itertools.combinations(others, k)]


class RandFillChannels(mt.Randomizable):
    """Training as a data set marks a missing sequence: with probability `prob` each channel other than
    `source` is replaced by a copy of channel `source`, in every 2.5D neighbour slice alike (the image's
    channels are blocks of `per` channels, one block per slice).

    kaggle_3m (LGG) puts FLAIR in place of a missing pre- or post-contrast scan. A model that never saw
    such a patient gave it an empty mask: three dev patients scored 0.862 with their own channels and
    0.000 with pre- and post-contrast replaced by FLAIR (README, "Missing sequences"). MONAI has channel
    dropout to zeros (RandCoarseDropout fills regions, not whole channels with another one), not this
    copy, so it is written here. Works on one sample (dict, C x ...) or a batch tensor pair (B x C x ...)."""

    def __init__(self, source: int, per: int, prob: float):
        self.source, self.per, self.prob = int(source), int(per), float(prob)

    def randomize(self, n: int) -> np.ndarray:
        """(n, per) booleans: which channels of each sample are replaced (the source by itself: no change)."""
        return self.R.random_sample((n, self.per)) < self.prob

    def _fill(self, x: torch.Tensor, drop: np.ndarray) -> torch.Tensor:
        return fill_channels(x, self.source, self.per, drop)

    def __call__(self, data, label=None):
        if label is not None:  # a batch: (images, labels)
            return self._fill(data, self.randomize(data.shape[0])), label
        drop = self.randomize(1)
        if not drop.any():  # most samples: no copy of the image
            return data
        out = dict(data)
        out[IMAGE] = self._fill(torch.as_tensor(out[IMAGE]).clone()[None], drop)[0]
        return out


class RandSequenceGamma(mt.Randomizable):
    """Each sequence its own contrast curve: with probability `prob` each of the `per` channels of a block
    (one sequence, in every 2.5D neighbour slice alike) gets its own gamma drawn from `gamma`, applied on that
    sequence's own range, as MONAI's RandAdjustContrast applies one to a whole image.

    Institutions differ in how each MRI sequence renders a lesion against the brain, not only in overall
    brightness (LGG: in 6 of 7 CS patients the lesion is brighter than the brain on post-contrast, in 1 of
    21 others; README, "Missing sequences"); per-case normalisation removes scale and offset per channel,
    not that. MONAI's contrast transforms draw one value for all channels (RandScaleIntensity's channel_wise
    draws per channel, not per sequence across neighbour slices, and scales rather than bends), so it is
    written here. Works on one sample (dict, C x ...) or a batch tensor pair (B x C x ...)."""

    def __init__(self, per: int, prob: float, gamma: tuple[float, float] = (0.5, 2.0)):
        self.per, self.prob, self.gamma = int(per), float(prob), (float(gamma[0]), float(gamma[1]))

    def randomize(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """((n, per) booleans: which sequences of each sample change, (n, per) their gammas)."""
        return self.R.random_sample((n, self.per)) < self.prob, self.R.uniform(*self.gamma, (n, self.per))

    def _bend(self, x: torch.Tensor, on: np.ndarray, gamma: np.ndarray) -> torch.Tensor:
        blocks = x.reshape(x.shape[0], -1, self.per, *x.shape[2:])  # B x slices x per x ...
        for b, c in zip(*np.nonzero(on)):
            sel = blocks[b, :, c]
            lo = sel.min()
            span = sel.max() - lo
            blocks[b, :, c] = ((sel - lo) / (span + 1e-7)).clamp_min(0) ** float(gamma[b, c]) * span + lo
        return blocks.reshape(x.shape)

    def __call__(self, data, label=None):
        if label is not None:  # a batch: (images, labels)
            return self._bend(data, *self.randomize(data.shape[0])), label
        on, gamma = self.randomize(1)
        if not on.any():
            return data
        out = dict(data)
        out[IMAGE] = self._bend(torch.as_tensor(out[IMAGE]).clone()[None], on, gamma)[0]
        return out


class _Then(mt.Randomizable):
    """A batch augmenter followed by batch extras (RandSequenceGamma, RandFillChannels: the "fast" set with
    them), each seeded from the next seed."""

    batched = True

    def __init__(self, first, *then):
        self.first, self.then = first, then

    def set_random_state(self, seed=None, state=None):
        self.first.set_random_state(seed=seed, state=state)
        for i, t in enumerate(self.then, 1):
            t.set_random_state(seed=None if seed is None else seed + i)
        return self

    def randomize(self, data=None) -> None:  # each part draws its own
        pass

    def __call__(self, x, y):
        x, y = self.first(x, y)
        for t in self.then:
            x, y = t(x, y)
        return x, y


_AUGMENTATION_SETS = {"none": list, "default": _default, "robust": _robust, "anchored": _anchored, "mri": _mri,
                      "flips": lambda: [_flip(1)], "busi": _busi, "lgg": _lgg, "liver-ct": _liver_ct, "cbis": _cbis,
                      "strong": _strong, "wide": _wide, "elastic": _elastic, "anchored-elastic": _anchored_elastic,
                      "3d": _volume, "fast": None}
# One line each for `medseg presets`. Geometry moves image and label together (labels by nearest neighbour);
# intensity changes touch the image only.
AUGMENTATIONS: dict[str, str] = {
    "none": "no augmentation",
    "default": "left-right flip, rotation +-15 deg, scale +-15%, brightness/shift/gamma 0.7-1.5, light noise",
    "robust": "the default set with gamma 0.5-2 (the default for 2D runs)",
    "anchored": "the robust set with its gamma about the value the case scaling puts its statistic at",
    "mri": "the anchored set without the additive intensity shift (an MR image's zero is air)",
    "flips": "left-right flip only",
    "busi": "left-right flip, rotation +-10 deg, scale +-10%, brightness and contrast",
    "lgg": "Buda et al.: isotropic scale +-5%, rotation +-15 deg, left-right flip",
    "liver-ct": "median or Gaussian blur, Gaussian noise (no geometry), as the liver-CT tutorial",
    "cbis": "left-right and up-down flips, brightness +-20%, as the mammography tutorial",
    "strong": "flips, rotation +-30 deg, scale +-20%, elastic, brightness/contrast/gamma, noise, blur",
    "elastic": "the robust set with its rotation and scaling made elastic (a smooth 2-3 px deformation)",
    "anchored-elastic": "the anchored set with its rotation and scaling made elastic",
    "wide": "left-right flip, rotation +-25 deg, scale 0.7-1.3, low resolution, blur, brightness/gamma 0.5-2, noise",
    "3d": "3D patches: flips on all axes, in-plane 90 deg turns, brightness/shift/gamma, light noise",
    "fast": "the default set's transforms and ranges, applied to whole batches with vectorised torch ops",
}


@functools.lru_cache(maxsize=None)  # asked once per predicted batch; the set's transforms are built to be read
def tta_flips(name: str) -> tuple[int, ...]:
    """The flips of augmentation set `name`, as axes of a B x C x H x W batch (-1 left-right, -2 up-down):
    test-time augmentation averages over these only. A flip the model never saw in training is a new input,
    not a second view: up-down flips (an ultrasound image with the skin at the bottom) took the pooled BUSI
    folds' lesion Dice from 0.648 (left-right only) to 0.613 at threshold 0.3. A set without flips: none."""
    if name == "fast":  # BatchDefault flips as `_default` does: left-right only
        return (-1,)
    sets = _AUGMENTATION_SETS[name]()
    axes = {int(a) for t in sets if isinstance(t, mt.RandFlipd) for a in np.atleast_1d(t.flipper.spatial_axis)}
    return tuple(sorted((a - 2 for a in axes), reverse=True))  # spatial axis 1 (W) -> -1, 0 (H) -> -2


def plan_augmentation(plan):
    """The training augmentation a plan names, with its channel fill, sequence gamma and intensity rule; for a
    soft_labels run its geometry resamples the labels bilinearly (`soft_geometry`)."""
    aug = augmentation(plan.augmentation, plan.channel_fill, plan.channels, plan.sequence_gamma, plan.intensity_norm)
    return soft_geometry(aug) if getattr(plan, "soft_labels", False) else aug


def soft_geometry(aug):
    """The augmentation `aug` with every label resampling that is nearest-neighbour made bilinear: a soft label
    (each pixel's share inside the mask) rotated or scaled keeps its shares between pixels, where nearest
    would put them back on the 0/1 staircase. Same random draws; MONAI's transforms take the mode per key, so
    the label's entry is swapped in place."""
    for t in getattr(aug, "transforms", ()) or (getattr(aug, "first", aug),):
        if isinstance(t, BatchDefault):
            t.label_mode = "bilinear"
        keys, mode = tuple(getattr(t, "keys", ())), getattr(t, "mode", None)
        if LABEL in keys and isinstance(mode, tuple) and len(mode) == len(keys) and mode[keys.index(LABEL)] == "nearest":
            t.mode = tuple("bilinear" if k == LABEL else m for k, m in zip(keys, mode))
    return aug


def augmentation(name: str, fill: dict | None = None, channels: int = 1, sequence_gamma: float = 0.0,
                 intensity_norm: str | None = None):
    """Training augmentation by name (see AUGMENTATIONS); seed it with `.set_random_state(seed=...)`.
    `sequence_gamma` (a probability; the plan's) adds RandSequenceGamma, then `fill` ({"source": c, "prob": p},
    the plan's channel_fill) RandFillChannels last, both over blocks of `channels` channels; the set's own
    transforms keep their random streams, and so does the fill where sequence_gamma is 0. `intensity_norm` (the
    plan's rule) places the "anchored", "mri" and "anchored-elastic" sets' gamma; the other sets ignore it."""
    from .errors import MedsegError

    if name not in _AUGMENTATION_SETS:
        raise MedsegError(None, f"unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}")
    extras = ([RandSequenceGamma(channels, sequence_gamma)] if sequence_gamma else []) + (
        [RandFillChannels(fill["source"], channels, fill["prob"])] if fill and fill.get("prob") else [])
    if name == "fast":
        return _Then(BatchDefault(), *extras) if extras else BatchDefault()
    if name in ("anchored", "mri", "anchored-elastic"):  # the value the plan's rule puts a case's statistic at
        return mt.Compose(_AUGMENTATION_SETS[name](RULES.get(intensity_norm, (None, 1.0))[1]) + extras)
    return mt.Compose(_AUGMENTATION_SETS[name]() + extras)
