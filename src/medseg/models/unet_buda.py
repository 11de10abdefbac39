"""The U-Net of Buda et al. 2019 (mateuszbuda/brain-segmentation-pytorch, the LGG workflow), as a setting
of our `UNet2d`: 32 base features, 4 max-pool downs to a 512-feature bottleneck, double 3x3 conv (no bias) +
BatchNorm + ReLU, 2x2 transposed-conv up. The original ends with a sigmoid; ours returns logits because the
loss and inference apply the sigmoid. Parameters (3 in, 1 out): 7,763,041, as the original; tested.
"""

from __future__ import annotations

from .unet2d import UNet2d


def build_unet_buda(in_channels: int, out_channels: int = 1, features: int = 32, dropout: float = 0.0) -> UNet2d:
    return UNet2d(in_channels, out_channels, features=features, depth=4, norm="batch", dropout=dropout,
                  upsampling="transposed", bias=False)
