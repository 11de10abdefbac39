"""MONAI's `UNet` (Kerfoot et al.: residual units, strided-conv downsampling), in 2D ("unet") and 3D ("unet3d").

The plan and every checkpoint store the name and these keyword arguments, so the signature only grows."""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet

from ..errors import MedsegError

# "none" is spelled out because MONAI takes None, which a JSON plan or `--set` cannot express as a string.
NORMS = {"batch": "batch", "instance": ("instance", {"affine": True}), "none": None}


def monai_norm(norm: str):
    """A plan's norm name -> MONAI's norm argument; a clear error for anything else."""
    if norm not in NORMS:
        raise MedsegError(None, f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
    return NORMS[norm]


def _monai_unet(spatial_dims: int, in_channels: int, out_channels: int, features, res_units: int, norm: str,
                dropout: float, deep_supervision: int = 0) -> nn.Module:
    features = tuple(int(f) for f in features)
    if len(features) < 2:
        raise MedsegError(None, f"unet features needs at least 2 levels, got {list(features)}")
    if not 0.0 <= dropout < 1.0:
        raise MedsegError(None, f"dropout must be in [0, 1), got {dropout}")
    unet = UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=features,
                strides=(2,) * (len(features) - 1), num_res_units=int(res_units), norm=monai_norm(norm),
                dropout=dropout)
    return DeepSupervisedUNet(unet, deep_supervision, out_channels, spatial_dims) if deep_supervision else unet


class DeepSupervisedUNet(nn.Module):
    """MONAI's UNet with deep supervision: a 1x1 convolution on the output of each of the `levels` decoder
    stages below the top gives logits at 1/2, 1/4, ... of the input size (nnU-Net's deep supervision).
    Training mode returns [full-size logits, 1/2 logits, ...] for MONAI's DeepSupervisionLoss, which
    weighs them 1, 0.5, 0.25 against the nearest-downsampled mask; eval mode returns the full-size logits
    alone, so predict, ONNX and BatchNorm folding see a plain UNet.

    Written here because MONAI's UNet has no auxiliary outputs and its DynUNet, which has them, is another
    network (full-resolution first stage: ~4x the FLOPs of this one at the same widths). The decoder
    stages' outputs are read by forward hooks, so MONAI's own forward runs unchanged."""

    def __init__(self, unet: UNet, levels: int, out_channels: int, spatial_dims: int):
        super().__init__()
        self.unet = unet
        ups, node, widths = [], unet.model, list(unet.channels)
        while isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection):
            ups.append(node[2])
            node = node[1].submodule
        if isinstance(levels, bool) or not isinstance(levels, int | float) or levels != int(levels) \
                or not 1 <= levels <= len(ups) - 1:
            raise MedsegError(None, f"deep_supervision must be 1..{len(ups) - 1} for {len(widths)} levels, "
                                    f"got {levels}")
        self.heads = nn.ModuleList(Convolution(spatial_dims, widths[i], out_channels, kernel_size=1, conv_only=True)
                                   for i in range(int(levels)))
        self._features: dict[int, torch.Tensor] = {}
        for i, up in enumerate(ups[1:int(levels) + 1]):
            # a partial of a bound method, not a closure: deepcopy (the EMA's AveragedModel) rebinds it to the copy
            up.register_forward_hook(functools.partial(self._keep, i))

    def _keep(self, i: int, _module, _inputs, output):
        if self.training:
            self._features[i] = output

    def forward(self, x: torch.Tensor):
        out = self.unet(x)
        if not self.training:
            return out
        features, self._features = self._features, {}
        return [out] + [head(features[i]) for i, head in enumerate(self.heads)]


def build_unet(in_channels: int, out_channels: int = 1, features: tuple[int, ...] = (16, 32, 64, 128, 256),
               res_units: int = 2, norm: str = "batch", dropout: float = 0.0,
               deep_supervision: int = 0) -> nn.Module:
    """2D; H and W must be divisible by 2**(len(features) - 1). `deep_supervision` N > 0: N auxiliary
    outputs (DeepSupervisedUNet)."""
    return _monai_unet(2, in_channels, out_channels, features, res_units, norm, dropout, deep_supervision)


def build_unet3d(in_channels: int, out_channels: int = 1, features: tuple[int, ...] = (16, 32, 64, 128, 256),
                 res_units: int = 2, norm: str = "instance", dropout: float = 0.0,
                 deep_supervision: int = 0) -> nn.Module:
    """3D for patch-based volume training (e.g. 1x1x32x32x32 CT patches, sides divisible by 16), with the same
    deep supervision as `build_unet`. Instance norm by default: 3D patches come in batches too small for batch
    statistics."""
    return _monai_unet(3, in_channels, out_channels, features, res_units, norm, dropout, deep_supervision)
