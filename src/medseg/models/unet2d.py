"""A plain 2D U-Net (Ronneberger et al.) of any depth and width, built from MONAI blocks.

MONAI's `BasicUNet` has a fixed depth of 4 and `UNet` uses residual units and strided convolutions, so neither
gives the classic shape (double 3x3 conv, max-pool down, transposed-conv or bilinear up) at a chosen depth.
This module does; "unet-milesial" and "unet-buda" are two of its settings (see those files).

Channels: level i has `features * 2**i`. With `upsampling="bilinear"` the bottom level is halved and every
decoder block halves its output, so the (parameter-free) upsampled tensor plus the skip is twice the skip's
width (the milesial layout); with "transposed" the up-convolution halves the channels instead.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample

from ..errors import MedsegError
from .unet import monai_norm

UPSAMPLING = ("transposed", "bilinear")


def double_conv(cin: int, cout: int, mid: int, norm, dropout: float, bias: bool) -> nn.Sequential:
    """(3x3 conv -> norm -> dropout -> ReLU) x 2."""
    kw = dict(spatial_dims=2, kernel_size=3, act="relu", norm=norm, dropout=dropout or None, bias=bias)
    return nn.Sequential(Convolution(in_channels=cin, out_channels=mid, **kw),
                         Convolution(in_channels=mid, out_channels=cout, **kw))


class UNet2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 1, features: int = 32, depth: int = 4,
                 norm: str = "batch", dropout: float = 0.0, upsampling: str = "transposed", bias: bool | None = None):
        super().__init__()
        if upsampling not in UPSAMPLING:
            raise MedsegError(None, f"unknown upsampling {upsampling!r}; known: {', '.join(UPSAMPLING)}")
        if int(depth) < 1 or int(features) < 2 or int(in_channels) < 1:
            raise MedsegError(None, f"unet2d needs depth >= 1, features >= 2 and in_channels >= 1 "
                                    f"(got {depth}, {features}, {in_channels})")
        if not 0.0 <= dropout < 1.0:
            raise MedsegError(None, f"dropout must be in [0, 1), got {dropout}")
        depth, features = int(depth), int(features)
        nrm = monai_norm(norm)
        bias = nrm is None if bias is None else bool(bias)  # a bias before a norm layer is wasted
        bilinear = upsampling == "bilinear"
        widths = [features * 2**i for i in range(depth)]
        bottom = features * 2**depth // (2 if bilinear else 1)
        self.depth = depth

        self.inc = double_conv(in_channels, widths[0], widths[0], nrm, dropout, bias)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), double_conv(cin, cout, cout, nrm, dropout, bias))
            for cin, cout in zip(widths, widths[1:] + [bottom]))
        self.ups, self.decs = nn.ModuleList(), nn.ModuleList()
        below = bottom
        for i in reversed(range(depth)):
            w = widths[i]
            if bilinear:
                self.ups.append(UpSample(2, below, below, scale_factor=2, mode="nontrainable", pre_conv=None,
                                         interp_mode="bilinear", align_corners=False))
                out = widths[i - 1] if i > 0 else w
                self.decs.append(double_conv(below + w, out, w, nrm, dropout, bias))
            else:  # 2x2 stride-2 transposed conv from `below` to `w` channels
                self.ups.append(UpSample(2, below, w, scale_factor=2, mode="deconv"))
                out = w
                self.decs.append(double_conv(2 * w, out, w, nrm, dropout, bias))
            below = out
        self.head = Convolution(2, below, out_channels, kernel_size=1, conv_only=True, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BxCxHxW -> Bx out_channels xHxW logits (no sigmoid: the loss and inference apply it)."""
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up, dec in zip(self.ups, self.decs):
            skip = skips.pop()
            x = up(x)
            if x.shape[-2:] != skip.shape[-2:]:  # sides not divisible by 2**depth: pad to the skip's size
                dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
                x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            x = dec(torch.cat([skip, x], dim=1))
        return self.head(x)


def build_unet2d(in_channels: int, out_channels: int = 1, features: int = 32, depth: int = 4, norm: str = "batch",
                 dropout: float = 0.0, upsampling: str = "transposed", bias: bool | None = None) -> UNet2d:
    return UNet2d(in_channels, out_channels, features, depth, norm, dropout, upsampling, bias)
