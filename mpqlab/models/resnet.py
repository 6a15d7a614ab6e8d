"""ResNet-20 for 32x32 images (He et al. 2016, Section 4.2: the CIFAR-10 networks, n = 3).

A 3x3 conv with 16 filters, three stages of three basic blocks (16, 32 and 64 filters; the
first block of stages 2 and 3 halves the map with stride 2), global average pooling and a
fully connected layer: 6n + 2 = 20 weighted layers.

Shortcuts are the paper's option A: the identity, with the map subsampled and zero channels
appended where the shape changes, so every skip path carries the block input unchanged.
Notebook 05 (precision highway) relies on that: the skip is where full precision can flow.

Names: ``conv1``, ``layer{s}.{b}.conv1``, ``layer{s}.{b}.conv2`` (stage s = 1..3, block b = 0..2), ``fc``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """out = ReLU(F(x) + shortcut(x)), F = conv-BN-ReLU-conv-BN."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def shortcut(self, x):
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))  # zero channels on both sides
        return x

    def residual(self, x):
        """F(x): the branch a low-precision network quantizes."""
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):
        return F.relu(self.residual(x) + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, blocks_per_stage: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        channels = 16
        for stage, width in enumerate((16, 32, 64), start=1):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if (stage > 1 and b == 0) else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.fc = nn.Linear(channels, num_classes)

    def blocks(self) -> list[BasicBlock]:
        """All basic blocks in forward order."""
        return [blk for stage in (self.layer1, self.layer2, self.layer3) for blk in stage]

    def forward(self, x):  # (N, C, 32, 32)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64, 8, 8)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet20(num_classes: int = 10, in_channels: int = 1) -> ResNet20:
    """ResNet-20 for 32x32 inputs (1 channel for Fashion-MNIST by default)."""
    return ResNet20(num_classes, in_channels)
