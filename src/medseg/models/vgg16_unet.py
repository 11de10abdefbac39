"""U-Net with a VGG16 encoder (the mammography workflow's network), weights from a local file only.

Hand-written because neither MONAI nor PyTorch ships a VGG-encoder U-Net (MONAI's FlexibleUNet takes
EfficientNet/ResNet backbones only). The encoder is laid out exactly as torchvision's `vgg16(_bn).features`
so that its state-dict keys (`features.0.weight`, ...) load without renaming. Skips come from the last
convolution of blocks 1-4, the bridge is block 5 (1/16 of the input size), as in the Keras VGG16 U-Net.

Grey (1-channel) input with ImageNet weights: the first convolution's RGB kernels are summed into one, which
gives the same response as feeding the grey image repeated into three channels, at a third of the cost.
"""

from __future__ import annotations

import torch
import torch.nn as nn

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg16_features(batch_norm: bool) -> tuple[nn.Sequential, list[int]]:
    """torchvision's layer sequence (without the final pool) and the indices whose outputs are the skips."""
    layers: list[nn.Module] = []
    skips, channels = [], 3
    for v in VGG16_CFG:
        if v == "M":
            skips.append(len(layers) - 1)  # the ReLU just before each pool
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(channels, v, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        channels = v
    return nn.Sequential(*layers), skips


class _Up(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.conv = nn.Sequential(
            nn.Conv2d(cout + cskip, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], 1))


class VGG16UNet(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 1, batch_norm: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.features, self.skips = vgg16_features(batch_norm)
        if in_channels != 3:
            self.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        self.decoder = nn.ModuleList([_Up(512, 512, 512), _Up(512, 256, 256), _Up(256, 128, 128), _Up(128, 64, 64)])
        self.head = nn.Conv2d(64, out_channels, 1)

    def encoder_parameters(self):
        return self.features.parameters()

    def set_encoder_trainable(self, trainable: bool) -> None:
        for p in self.features.parameters():
            p.requires_grad_(trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.skips[:4]:
                skips.append(x)
        for up, skip in zip(self.decoder, reversed(skips)):
            x = up(x, skip)
        return self.head(x)

    def load_encoder(self, state: dict[str, torch.Tensor]) -> None:
        """Load torchvision-format VGG16 weights (`features.*`; `classifier.*` is ignored). Raises
        ValueError listing missing/unexpected keys or wrong shapes, so the caller can name the file."""
        feats = {k: v for k, v in state.items() if k.startswith("features.")}
        own = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        missing = sorted(set(own) - set(feats))
        unexpected = sorted(set(state) - set(own) - {k for k in state if k.startswith("classifier.")})
        if missing or unexpected:
            kind = "vgg16_bn" if any(k.endswith("running_mean") for k in own) else "vgg16"
            raise ValueError(f"not {kind} weights: missing keys {missing[:6]}{'...' if len(missing) > 6 else ''}, "
                             f"unexpected keys {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}")
        first = feats["features.0.weight"]
        if self.in_channels != first.shape[1]:
            if first.shape[1] != 3:
                raise ValueError(f"features.0.weight has {first.shape[1]} input channels, expected 3")
            # grey input: summed RGB kernels == the grey image repeated in three channels
            first = first.sum(1, keepdim=True).repeat(1, self.in_channels, 1, 1) / self.in_channels
            feats = {**feats, "features.0.weight": first}
        for k, v in feats.items():
            if own[k].shape != v.shape:
                raise ValueError(f"{k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
        self.features.load_state_dict({k[len("features."):]: v for k, v in feats.items()})


def build_vgg16_unet(in_channels: int, out_channels: int = 1, batch_norm: bool = False, **_ignored) -> VGG16UNet:
    """`**_ignored` takes training-only model_args (encoder weights path, freeze epochs) stored in the plan."""
    return VGG16UNet(in_channels, out_channels, batch_norm)
