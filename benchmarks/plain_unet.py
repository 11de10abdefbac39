"""The eager reference for `throughput`: a plain PyTorch U-Net of the classic milesial shape (double 3x3
conv + BN + ReLU per level, 4 max-pool downs, bilinear ups, base width `base`), written here for the
benchmark only."""

from __future__ import annotations

import torch
from torch import nn


def _double(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PlainUNet(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 1, base: int = 64):
        super().__init__()
        w = [base * 2 ** i for i in range(5)]
        w[4] //= 2  # bilinear variant: the bottom level has as many channels as the one above
        self.downs = nn.ModuleList([_double(in_channels, w[0])] + [_double(w[i], w[i + 1]) for i in range(4)])
        ups_in = [w[4] + w[3], w[3] // 2 + w[2], w[2] // 2 + w[1], w[1] // 2 + w[0]]
        ups_out = [w[3] // 2, w[2] // 2, w[1] // 2, w[0]]
        self.ups = nn.ModuleList([_double(i, o) for i, o in zip(ups_in, ups_out)])
        self.head = nn.Conv2d(w[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, down in enumerate(self.downs):
            x = down(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up in self.ups:
            x = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = up(torch.cat([skips.pop(), x], 1))
        return self.head(x)
