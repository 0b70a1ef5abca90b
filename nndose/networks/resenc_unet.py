"""U-Nets built from a plan's `Architecture`: the residual-encoder U-Net (the default) and a plain
convolutional variant. Instance norm, leaky ReLU, transposed-convolution decoder, linear 1x1x1 head
predicting dose / reference dose."""
from __future__ import annotations

import torch
from torch import nn

from nndose.plans import Architecture


def _conv(cin: int, cout: int, kernel, stride=1) -> nn.Conv3d:
    kernel = tuple(kernel)
    return nn.Conv3d(cin, cout, kernel, stride=tuple(stride) if not isinstance(stride, int) else stride,
                     padding=tuple(k // 2 for k in kernel), bias=True)


def _norm_act(c: int) -> list[nn.Module]:
    return [nn.InstanceNorm3d(c, affine=True, eps=1e-5), nn.LeakyReLU(0.01, inplace=True)]


class ResidualBlock(nn.Module):
    """conv-norm-act-conv-norm + skip (1x1x1 projection when shape changes), then act."""

    def __init__(self, cin: int, cout: int, kernel, stride):
        super().__init__()
        self.body = nn.Sequential(_conv(cin, cout, kernel, stride), *_norm_act(cout), _conv(cout, cout, kernel),
                                  nn.InstanceNorm3d(cout, affine=True, eps=1e-5))
        needs_proj = cin != cout or any(s != 1 for s in stride)
        self.skip = nn.Sequential(nn.Conv3d(cin, cout, 1, stride=tuple(stride), bias=False),
                                  nn.InstanceNorm3d(cout, affine=True)) if needs_proj else nn.Identity()
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


class PlainBlock(nn.Sequential):
    """conv-norm-act twice, no skip connection (nnU-Net's plain encoder stage)."""

    def __init__(self, cin: int, cout: int, kernel, stride):
        super().__init__(_conv(cin, cout, kernel, stride), *_norm_act(cout), _conv(cout, cout, kernel), *_norm_act(cout))


class ResEncUNet(nn.Module):
    block = ResidualBlock

    def __init__(self, in_channels: int, features, kernel_sizes, strides, n_blocks, n_conv_decoder):
        super().__init__()
        self.stem = nn.Sequential(_conv(in_channels, features[0], kernel_sizes[0]), *_norm_act(features[0]))
        self.encoder = nn.ModuleList()
        prev = features[0]
        for s, f in enumerate(features):
            blocks = [self.block(prev, f, kernel_sizes[s], strides[s])]
            blocks += [self.block(f, f, kernel_sizes[s], (1, 1, 1)) for _ in range(n_blocks[s] - 1)]
            self.encoder.append(nn.Sequential(*blocks))
            prev = f
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for s in range(len(features) - 2, -1, -1):
            stride = tuple(strides[s + 1])
            self.up.append(nn.ConvTranspose3d(features[s + 1], features[s], stride, stride=stride))
            layers: list[nn.Module] = []
            cin = 2 * features[s]
            for _ in range(n_conv_decoder[s]):
                layers += [_conv(cin, features[s], kernel_sizes[s]), *_norm_act(features[s])]
                cin = features[s]
            self.decoder.append(nn.Sequential(*layers))
        self.head = nn.Conv3d(features[0], 1, 1)  # linear output

    @classmethod
    def from_architecture(cls, in_channels: int, arch: Architecture) -> "ResEncUNet":
        return cls(in_channels, arch.features_per_stage, arch.kernel_sizes, arch.strides, arch.n_blocks_per_stage,
                   arch.n_conv_per_stage_decoder)

    @property
    def encoder_modules(self) -> list[nn.Module]:
        return [self.stem, self.encoder]

    def forward(self, x):
        skips = []
        x = self.stem(x)
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.decoder):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


class PlainConvUNet(ResEncUNet):
    """The same U-Net with plain (non-residual) encoder stages."""
    block = PlainBlock
