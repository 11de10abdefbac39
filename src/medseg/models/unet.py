"""2D U-Net: MONAI's `UNet` (Kerfoot et al. residual units, strided-conv downsampling)."""

from __future__ import annotations

from monai.networks.nets import UNet


def build_unet(in_channels: int, out_channels: int = 1, features: tuple[int, ...] = (16, 32, 64, 128, 256),
               res_units: int = 2, norm: str = "batch", dropout: float = 0.0) -> UNet:
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=tuple(features),
                strides=(2,) * (len(features) - 1), num_res_units=res_units, norm=norm, dropout=dropout)
