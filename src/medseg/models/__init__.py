"""Model registry: a name -> a builder taking (in_channels, out_channels, **model_args).

Checkpoints store the name and model_args, so `predict` rebuilds the net without model flags. Every 2D model
takes any number of input channels (2.5D stacks are just more channels) and returns Bx1xHxW logits.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import MedsegError
from .unet import build_unet, build_unet3d
from .unet2d import build_unet2d
from .unet_buda import build_unet_buda
from .unet_milesial import build_unet_milesial
from .vgg16_unet import build_vgg16_unet

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "unet": build_unet,
    "unet2d": build_unet2d,
    "unet-milesial": build_unet_milesial,
    "unet-buda": build_unet_buda,
    "unet3d": build_unet3d,
    "vgg16-unet": build_vgg16_unet,
}
# One line each for `medseg presets`; the model_args each takes are the builder's keyword arguments.
MODELS: dict[str, str] = {
    "unet": "MONAI UNet, residual units (features, res_units, norm, dropout); ~1.6 M parameters by default",
    "unet2d": "plain U-Net of any depth/width (features, depth, norm batch|instance|none, dropout, "
              "upsampling transposed|bilinear)",
    "unet-milesial": "milesial/Pytorch-UNet shape: base 64, 4 downs, BN (bilinear); 31.0 M, 17.3 M with bilinear",
    "unet-buda": "Buda et al. brain-segmentation U-Net: base 32, 4 downs, BN, transposed up; 7.8 M",
    "unet3d": "MONAI UNet in 3D for volume patches (features, res_units, norm, dropout); not used by 2D training",
    "vgg16-unet": "U-Net with a VGG16 encoder (batch_norm; ImageNet encoder weights from a local file)",
}
SPATIAL_DIMS = {name: 3 if name == "unet3d" else 2 for name in _BUILDERS}


def build_model(name: str, in_channels: int, out_channels: int = 1, **kwargs) -> nn.Module:
    if name not in _BUILDERS:
        raise MedsegError(None, f"unknown model {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    try:
        return _BUILDERS[name](in_channels, out_channels, **kwargs)
    except TypeError as e:  # an unknown or missing keyword in model_args
        raise MedsegError(None, f"model {name!r}: bad model_args {kwargs}: {e}") from None


def models() -> list[str]:
    return sorted(_BUILDERS)
