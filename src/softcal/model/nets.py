"""Plain ``nn.Module`` classifiers: images in, logits out. No Lightning in here.

Every net takes ``(in_channels, num_classes, image_size)`` first; the CLI fills those in from the
datamodule, so a config names only the architecture and its widths. The nets end in a linear
layer and return raw logits: softmax and the loss live in the LightningModule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    # No conv bias: the BatchNorm that follows has its own shift.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def conv_pool_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    # Pooling before the BatchNorm and ReLU (as airbench orders its blocks): both then run on a
    # map 4x smaller. ReLU commutes with max-pooling; BatchNorm then sees the pooled values, a
    # slightly different function of the same conv.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DigitCNN(nn.Module):
    """A small CNN for 28x28 digits: one conv block per width, each halving the map, then one
    linear layer.

    A block is conv-BN-ReLU, then a 2x2 max-pool. Two options make it cheaper where a CPU spends
    its time, in the elementwise work on the largest maps rather than in the convolutions:

    - ``stem_stride=2``: the first conv strides instead of pooling, so it computes a quarter of
      the positions and no pool follows it (on a 2-core CPU the first block went from ~8 ms to
      ~2 ms of a 256-image step, forward and backward);
    - ``pool_before_norm=True``: the other blocks pool right after the conv, so BatchNorm and
      ReLU run on the pooled map.

    Both on (configs/mnist.yaml), a training step takes about half the time of both off; one
    epoch then reaches 99.16% MNIST test accuracy (mean of 3 seeds), two epochs of the plain
    layout 99.21% (docs/benchmarks.md, ``mnist-default-run`` and ``mnist-ablation-*``).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int = 28,
        widths: Sequence[int] = (16, 32, 64),
        stem_stride: int = 1,
        pool_before_norm: bool = False,
    ) -> None:
        super().__init__()
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, not {stem_stride}")
        layers: list[nn.Module] = []
        c_in, side = in_channels, image_size
        for i, width in enumerate(widths):
            if i == 0 and stem_stride == 2:
                layers.append(conv_bn_relu(c_in, width, stride=2))
                side = (side + 1) // 2  # a padded 3x3 conv with stride 2 rounds up
            elif pool_before_norm:
                layers.append(conv_pool_bn_relu(c_in, width))
                side //= 2
            else:
                layers += [conv_bn_relu(c_in, width), nn.MaxPool2d(2)]
                side //= 2
            c_in = width
        if side < 1:
            raise ValueError(f"{len(widths)} poolings leave nothing of a {image_size}px image")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block; a 1x1 conv matches shapes when they change."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(c_in, c_out, stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for small images (He et al. 2016, CIFAR variant): a 3x3 stem and no max-pool,
    since a 32x32 image has no pixels to spare. ``blocks=(2, 2, 2, 2)`` with
    ``base_width=64`` is ResNet-18; smaller widths give quick CPU models."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int = 32,
        base_width: int = 64,
        blocks: Sequence[int] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        del image_size  # global average pooling makes the head independent of it
        self.stem = conv_bn_relu(in_channels, base_width)
        stages: list[nn.Module] = []
        c_in = base_width
        for i, n_blocks in enumerate(blocks):
            c_out = base_width * 2**i
            for j in range(n_blocks):
                stages.append(BasicBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, BasicBlock):  # start each residual branch at zero: easier to train
                nn.init.zeros_(m.body[2].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))
