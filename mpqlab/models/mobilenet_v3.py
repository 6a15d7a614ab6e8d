"""A small MobileNetV3-style network (Howard et al. 2019, "Searching for MobileNetV3") for 32x32 Fashion-MNIST.

MobileNetV3 stacks *inverted residual* blocks (from MobileNetV2): a 1x1 **expansion** conv widens
the channels by a factor t, a kxk **depthwise** conv filters each channel on its own, and a 1x1
**projection** (reduction) conv narrows them again with no activation after it (the "linear
bottleneck"); when shapes allow, the block's input is added to its output. Early blocks use ReLU,
later ones the hard swish

    h-swish(x) = x * ReLU6(x + 3) / 6

whose output is negative on (-3, 0) with a minimum of -3/8 at x = -1.5 — the activation
notebook 07 (PROFIT) has to quantize. We leave out squeeze-and-excite to keep the network small.

Layer names say what each conv is: ``stem.conv``, ``blocks.{i}.expand.conv``, ``blocks.{i}.dw.conv``,
``blocks.{i}.project.conv`` (i = 0..6), ``head.conv`` and the classifier ``fc``.
About 4 million multiply-adds per 32x32 image, 0.1 million parameters.
"""

from __future__ import annotations

from torch import nn

from mpqlab.errors import ModelSpecError

# (expanded channels, output channels, kernel, stride, activation) of each inverted residual block,
# a scaled-down version of the paper's MobileNetV3-Small table for 16x16 maps after the stem.
BLOCKS = [
    (32, 16, 3, 1, "relu"),
    (48, 24, 3, 2, "relu"),  # 16x16 -> 8x8
    (72, 24, 3, 1, "relu"),
    (96, 40, 5, 1, "hswish"),
    (120, 40, 5, 1, "hswish"),
    (160, 64, 3, 2, "hswish"),  # 8x8 -> 4x4
    (192, 64, 3, 1, "hswish"),
]
STEM_CHANNELS = 16
HEAD_CHANNELS = 256


def activation(kind: str | None) -> nn.Module:
    """``"relu"``, ``"hswish"`` (``nn.Hardswish``: x ReLU6(x + 3) / 6) or ``None`` (identity, the linear bottleneck)."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "hswish":
        return nn.Hardswish()
    if kind is None:
        return nn.Identity()
    raise ModelSpecError(f"activation must be 'relu', 'hswish' or None, got {kind!r}")


class ConvBNAct(nn.Module):
    """conv -> BatchNorm -> activation; ``groups = in_channels`` makes it depthwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, act: str | None = "relu"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = activation(act)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """expand (1x1) -> depthwise (kxk) -> project (1x1, no activation), plus the input when shapes match."""

    def __init__(self, in_channels: int, expanded: int, out_channels: int, kernel_size: int, stride: int, act: str):
        super().__init__()
        self.expand = ConvBNAct(in_channels, expanded, 1, act=act)
        self.dw = ConvBNAct(expanded, expanded, kernel_size, stride, groups=expanded, act=act)
        self.project = ConvBNAct(expanded, out_channels, 1, act=None)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):  # (N, C_in, H, W)
        y = self.project(self.dw(self.expand(x)))  # (N, C_out, H / stride, W / stride)
        return x + y if self.residual else y


class MobileNetV3Small(nn.Module):
    """Stem conv (stride 2, h-swish), the inverted residual ``BLOCKS``, a 1x1 head conv, pooling, one linear layer."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = ConvBNAct(in_channels, STEM_CHANNELS, 3, stride=2, act="hswish")
        blocks, channels = [], STEM_CHANNELS
        for expanded, out, k, stride, act in BLOCKS:
            blocks.append(InvertedResidual(channels, expanded, out, k, stride, act))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(channels, HEAD_CHANNELS, 1, act="hswish")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x):  # (N, C, 32, 32)
        x = self.head(self.blocks(self.stem(x)))  # (N, 256, 4, 4)
        return self.fc(self.pool(x).flatten(1))  # (N, num_classes)


def mobilenet_v3_small_fmnist(num_classes: int = 10, in_channels: int = 1) -> MobileNetV3Small:
    """The workbook's Fashion-MNIST MobileNetV3-style network (32x32 grey input)."""
    return MobileNetV3Small(num_classes, in_channels)
