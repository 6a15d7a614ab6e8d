"""MobileNetV1 (Howard et al. 2017, "MobileNets", Table 1).

A standard 3x3 convolution, then 13 depthwise-separable pairs — a 3x3 depthwise conv
(one filter per channel, ``groups = channels``) and a 1x1 pointwise conv, each followed by
BatchNorm and ReLU — then global average pooling and one fully connected layer.

Layer names say what each conv is: ``conv1.conv`` (the standard conv), ``dw{i}.conv`` and
``pw{i}.conv`` for pair i = 1..13, ``fc``. Notebook 09 compares depthwise with pointwise layers
by these names.

At width 1.0 on 224x224 RGB images with 1000 classes this is the paper's network: 569 million
multiply-adds and 4.2 million parameters. ``mobilenet_v1_small`` is the same network for 32x32
Fashion-MNIST: two of the five stride-2 steps removed (the first conv and pair 12), width 0.25.
"""

from __future__ import annotations

from torch import nn

from mpqlab.errors import ModelSpecError

# (output channels at width 1.0, stride) of the 13 depthwise-separable pairs, from Table 1.
# The stride belongs to the depthwise conv; the pointwise conv is always stride 1.
PAIRS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
         (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


class ConvBNReLU(nn.Module):
    """conv -> BatchNorm -> ReLU; ``groups = in_channels`` makes it depthwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class MobileNetV1(nn.Module):
    """MobileNetV1 with a width multiplier and an optional small-input stride schedule."""

    def __init__(self, width: float = 1.0, num_classes: int = 1000, in_channels: int = 3,
                 small_input: bool = False):
        super().__init__()
        if not 0 < width <= 4:
            raise ModelSpecError(f"width must be in (0, 4], got {width}")

        def ch(c):  # the width multiplier thins every layer uniformly
            return max(8, int(c * width))

        self.width = width
        self.small_input = small_input
        self.conv1 = ConvBNReLU(in_channels, ch(32), 3, stride=1 if small_input else 2)
        channels = ch(32)
        self.pair_names = []
        for i, (out, stride) in enumerate(PAIRS, start=1):
            if small_input and i == 12:
                stride = 1  # keep a 4x4 map at the end for 32x32 inputs
            setattr(self, f"dw{i}", ConvBNReLU(channels, channels, 3, stride, groups=channels))
            setattr(self, f"pw{i}", ConvBNReLU(channels, ch(out), 1, 1))
            self.pair_names += [f"dw{i}", f"pw{i}"]
            channels = ch(out)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):  # (N, C, H, W)
        x = self.conv1(x)
        for name in self.pair_names:
            x = getattr(self, name)(x)
        return self.fc(self.pool(x).flatten(1))  # (N, num_classes)


def mobilenet_v1(width: float = 1.0, num_classes: int = 1000, in_channels: int = 3,
                 small_input: bool = False) -> MobileNetV1:
    """MobileNetV1 as in the paper (defaults: width 1.0, ImageNet-sized)."""
    return MobileNetV1(width, num_classes, in_channels, small_input)


def mobilenet_v1_small(width: float = 0.25, num_classes: int = 10, in_channels: int = 1) -> MobileNetV1:
    """The workbook's Fashion-MNIST MobileNetV1: 32x32 grey input, width 0.25, three stride-2 steps."""
    return MobileNetV1(width, num_classes, in_channels, small_input=True)
