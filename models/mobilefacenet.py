"""MobileFaceNet (Chen et al. 2018): a ~1M-parameter face embedder for CPU training and quick experiments.

Table 1 of the paper, for a 112x112 input (every size here is configurable):

    conv 3x3/2 64 -> depthwise 3x3 64
    bottlenecks (expansion t, channels c, repeats n, stride s):
        (2,64,5,2) (4,128,1,2) (2,128,6,1) (4,128,1,2) (2,128,2,1)
    conv 1x1 512 -> global depthwise conv (GDConv, kernel = final grid) -> embedding

PReLU activations, batch norm after every convolution, linear (no activation) projections. The paper's
head ends in a linear 1x1 conv to 128-d; here that is a dropout + bias-free linear + BatchNorm1d, the same
bottleneck as Inception-ResNet-v1, so both backbones share one interface. ``width`` scales every channel
count (0.5 halves the cost) and ``input_size`` sets the GDConv kernel (input / 16, rounded up).
"""
from __future__ import annotations

import math

from torch import Tensor, nn

# (expansion, output channels, repeats, first stride) from Table 1 of the MobileFaceNet paper.
BOTTLENECK_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


def _scaled(channels: int, width: float) -> int:
    """Scale a channel count by ``width``, rounded to a multiple of 8 (at least 8)."""
    return max(8, int(round(channels * width / 8.0)) * 8)


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias) + BN (+ per-channel PReLU when ``act``); padding keeps 'same' size at stride 1."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.PReLU(out_ch))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise (stride s), linear 1x1 project; skip when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.residual = stride == 1 and in_ch == out_ch
        self.block = nn.Sequential(
            _conv_bn(in_ch, hidden, 1),
            _conv_bn(hidden, hidden, 3, stride=stride, groups=hidden),
            _conv_bn(hidden, out_ch, 1, act=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Block output, plus the input when the block keeps the shape."""
        out = self.block(x)
        return x + out if self.residual else out


def final_grid_size(input_size: int) -> int:
    """Side of the feature grid after the four stride-2 stages (3x3 kernels, padding 1): ceil(input / 16)."""
    size = input_size
    for _ in range(4):
        size = (size - 1) // 2 + 1
    return size


class MobileFaceNet(nn.Module):
    """MobileFaceNet trunk + bottleneck head; standardised RGB in, un-normalised embedding out."""

    def __init__(self, embedding_size: int = 128, input_size: int = 112, dropout: float = 0.0,
                 width: float = 1.0) -> None:
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be positive, got {embedding_size}")
        if input_size < 16:
            raise ValueError(f"input_size must be at least 16 pixels, got {input_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not (width > 0 and math.isfinite(width)):
            raise ValueError(f"width must be a positive number, got {width}")
        self.embedding_size = embedding_size
        self.input_size = input_size
        stem = _scaled(64, width)
        layers: list[nn.Module] = [_conv_bn(3, stem, 3, stride=2), _conv_bn(stem, stem, 3, groups=stem)]
        channels = stem
        for expansion, out, repeats, stride in BOTTLENECK_SETTINGS:
            out = _scaled(out, width)
            for i in range(repeats):
                layers.append(Bottleneck(channels, out, stride if i == 0 else 1, expansion))
                channels = out
        head = _scaled(512, width)
        layers.append(_conv_bn(channels, head, 1))
        self.features = nn.Sequential(*layers)
        grid = final_grid_size(input_size)
        # Global depthwise conv: a learned, position-aware weighting of the final grid (not an average).
        self.gdconv = nn.Sequential(nn.Conv2d(head, head, grid, groups=head, bias=False), nn.BatchNorm2d(head))
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(head, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)
        self._init_weights()

    def _init_weights(self) -> None:
        """He initialisation for convolutions and the linear layer; BN starts as identity."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """[N, 3, input_size, input_size] standardised RGB -> [N, embedding_size] (before L2 normalisation)."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise ValueError(
                f"MobileFaceNet was built for {self.input_size}x{self.input_size} input, got {tuple(x.shape[-2:])}"
            )
        x = self.gdconv(self.features(x)).flatten(1)
        return self.bn(self.linear(self.dropout(x)))
