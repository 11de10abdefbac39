"""Model registry: a name -> a builder taking (in_channels, out_channels, **model_args).

Checkpoints store the name and model_args, so `predict` rebuilds the net without model flags. Every 2D model
takes any number of input channels (2.5D stacks are just more channels) and returns Bx1xHxW logits.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

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
    "unet": "MONAI UNet, residual units (features, res_units, norm, dropout, deep_supervision); ~1.6 M parameters "
            "by default",
    "unet2d": "plain U-Net of any depth/width (features, depth, norm batch|instance|none, dropout, "
              "upsampling transposed|bilinear)",
    "unet-milesial": "milesial/Pytorch-UNet shape: base 64, 4 downs, BN (bilinear); 31.0 M, 17.3 M with bilinear",
    "unet-buda": "Buda et al. brain-segmentation U-Net: base 32, 4 downs, BN, transposed up; 7.8 M",
    "unet3d": "MONAI UNet in 3D for volume patches (features, res_units, norm, dropout, deep_supervision); not "
              "used by 2D training",
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


_CONVS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into that convolution's weights
    (in place; the model must be in eval mode and is for inference only). Returns how many were folded.

    A folded network computes the same function up to fp32 rounding without the separate normalisation
    pass over every activation (benchmarks.inference: masks identical to the unfolded net's). The fusion
    itself is torch's (`fuse_conv_bn_eval`); what is written here is finding the pairs, which torch's fx
    fusers do not do through MONAI's Convolution blocks (conv, then an ADN block whose first layer is
    the norm) or with transposed convolutions."""
    assert not model.training, "fold_batchnorm is for eval-mode models"
    folded = 0
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, nxt = parent._modules[a], parent._modules[b]
            holder, key = (nxt, next(iter(nxt._modules), None)) if isinstance(nxt, nn.Sequential) else (parent, b)
            bn = holder._modules.get(key) if key is not None else None
            if isinstance(conv, _CONVS) and isinstance(bn, _NORMS) and bn.running_mean is not None \
                    and bn.num_features == conv.out_channels:
                parent._modules[a] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d | nn.ConvTranspose3d))
                holder._modules[key] = nn.Identity()
                folded += 1
    return folded
