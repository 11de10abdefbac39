"""MONAI's `UNet` (Kerfoot et al.: residual units, strided-conv downsampling), in 2D ("unet") and 3D ("unet3d").

The plan and every checkpoint store the name and these keyword arguments, so the signature only grows."""

from __future__ import annotations

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
                dropout: float) -> UNet:
    features = tuple(int(f) for f in features)
    if len(features) < 2:
        raise MedsegError(None, f"unet features needs at least 2 levels, got {list(features)}")
    if not 0.0 <= dropout < 1.0:
        raise MedsegError(None, f"dropout must be in [0, 1), got {dropout}")
    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=features,
                strides=(2,) * (len(features) - 1), num_res_units=int(res_units), norm=monai_norm(norm),
                dropout=dropout)


def build_unet(in_channels: int, out_channels: int = 1, features: tuple[int, ...] = (16, 32, 64, 128, 256),
               res_units: int = 2, norm: str = "batch", dropout: float = 0.0) -> UNet:
    """2D; H and W must be divisible by 2**(len(features) - 1)."""
    return _monai_unet(2, in_channels, out_channels, features, res_units, norm, dropout)


def build_unet3d(in_channels: int, out_channels: int = 1, features: tuple[int, ...] = (16, 32, 64, 128, 256),
                 res_units: int = 2, norm: str = "instance", dropout: float = 0.0) -> UNet:
    """3D for patch-based volume training (e.g. 1x1x32x32x32 CT patches, sides divisible by 16).
    Instance norm by default: 3D patches come in batches too small for batch statistics."""
    return _monai_unet(3, in_channels, out_channels, features, res_units, norm, dropout)
