"""The U-Net of milesial/Pytorch-UNet (the BUSI workflow's model), as a setting of our `UNet2d`.

Its shape: double 3x3 conv (no bias) + BatchNorm + ReLU, 64 base features, 4 max-pool downs; up by a 2x2
transposed conv, or with `bilinear=True` by bilinear interpolation with the bottom at 1024 // 2 features and
each decoder block halving. Parameter counts match the original (3 in, 1 out): 31,037,633 (bilinear=False),
17,262,977 (bilinear=True); tests/test_models.py checks them.
"""

from __future__ import annotations

from .unet2d import UNet2d


def build_unet_milesial(in_channels: int, out_channels: int = 1, bilinear: bool = False, features: int = 64,
                        dropout: float = 0.0) -> UNet2d:
    return UNet2d(in_channels, out_channels, features=features, depth=4, norm="batch", dropout=dropout,
                  upsampling="bilinear" if bilinear else "transposed", bias=False)
