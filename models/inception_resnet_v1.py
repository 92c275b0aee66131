"""Inception-ResNet-v1 face embedder (Szegedy et al. 2016, as used by FaceNet, Schroff et al. 2015).

Layout, per the paper's Inception-ResNet-v1 figure, for a 160x160 input:

    stem            3x3/2 32 -> 3x3 32 -> 3x3 64 -> maxpool 3x3/2 -> 1x1 80 -> 3x3 192 -> 3x3/2 256   (17x17)
    5 x Block35     residual Inception-A, scale 0.17                                                  (17x17x256)
    Mixed_6a        reduction-A (k=192, l=192, m=256, n=384)                                           (8x8x896)
    10 x Block17    residual Inception-B, scale 0.10                                                  (8x8x896)
    Mixed_7a        reduction-B                                                                       (3x3x1792)
    5 x Block8      residual Inception-C, scale 0.20, then one more without scale and without ReLU
    head            global average pool -> dropout -> linear (no bias) -> BatchNorm1d -> embedding

Batch norms use eps=1e-3 (the TensorFlow default the published weights were trained with). Module names
follow the published PyTorch port of the FaceNet weights (``conv2d_1a`` ... ``last_bn``), so a state_dict
of facenet-pytorch's ``InceptionResnetV1`` (VGGFace2 / CASIA-WebFace weights) loads here unchanged.
:func:`load_facenet_weights` reads such a file (dropping its classifier head). The forward returns the
un-normalised embedding; :class:`models.embedder.Embedder` standardises the
input and L2-normalises the output.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from utils.errors import DataError

BN_EPS = 1e-3
CLASSIFIER_PREFIX = "logits."  # the published files carry a classifier over their training identities


class ConvBN(nn.Module):
    """Convolution without bias, batch norm, ReLU: the unit every Inception branch is made of."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Conv -> BN -> ReLU."""
        return self.relu(self.bn(self.conv(x)))


class _ResidualInception(nn.Module):
    """Shared residual step: concat the ``branch0..branchN`` modules, 1x1 projection, scaled add, optional ReLU."""

    def __init__(self, num_branches: int, concat_channels: int, channels: int, scale: float, activate: bool) -> None:
        super().__init__()
        self.num_branches = num_branches
        self.scale = scale
        self.activate = activate
        self.conv2d = nn.Conv2d(concat_channels, channels, kernel_size=1, bias=True)
        if activate:
            self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """x + scale * project(concat(branch_i(x))), then ReLU unless this is the final block."""
        branches = [getattr(self, f"branch{i}")(x) for i in range(self.num_branches)]
        out = x + self.scale * self.conv2d(torch.cat(branches, dim=1))
        return self.relu(out) if self.activate else out


class Block35(_ResidualInception):
    """Inception-ResNet-A on the 35x35 grid of the paper (17x17 for a 160 px face), 256 channels.

    Branches: 1x1 | 1x1-3x3 | 1x1-3x3-3x3.
    """

    def __init__(self, scale: float = 0.17) -> None:
        super().__init__(3, 96, 256, scale, activate=True)
        self.branch0 = ConvBN(256, 32, 1)
        self.branch1 = nn.Sequential(ConvBN(256, 32, 1), ConvBN(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(ConvBN(256, 32, 1), ConvBN(32, 32, 3, padding=1), ConvBN(32, 32, 3, padding=1))


class Block17(_ResidualInception):
    """Inception-ResNet-B on the 17x17 grid (8x8 for 160 px), 896 channels: 1x1 | 1x1-1x7-7x1."""

    def __init__(self, scale: float = 0.10) -> None:
        super().__init__(2, 256, 896, scale, activate=True)
        self.branch0 = ConvBN(896, 128, 1)
        self.branch1 = nn.Sequential(
            ConvBN(896, 128, 1),
            ConvBN(128, 128, (1, 7), padding=(0, 3)),
            ConvBN(128, 128, (7, 1), padding=(3, 0)),
        )


class Block8(_ResidualInception):
    """Inception-ResNet-C on the 8x8 grid (3x3 for 160 px), 1792 channels: 1x1 | 1x1-1x3-3x1."""

    def __init__(self, scale: float = 0.20, activate: bool = True) -> None:
        super().__init__(2, 384, 1792, scale, activate=activate)
        self.branch0 = ConvBN(1792, 192, 1)
        self.branch1 = nn.Sequential(
            ConvBN(1792, 192, 1),
            ConvBN(192, 192, (1, 3), padding=(0, 1)),
            ConvBN(192, 192, (3, 1), padding=(1, 0)),
        )


class Mixed6a(nn.Module):
    """Reduction-A: 256 -> 896 channels, stride 2 (3x3 conv | 1x1-3x3-3x3/2 | max pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = ConvBN(256, 384, 3, stride=2)
        self.branch1 = nn.Sequential(ConvBN(256, 192, 1), ConvBN(192, 192, 3, padding=1), ConvBN(192, 256, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate the three stride-2 branches."""
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1)


class Mixed7a(nn.Module):
    """Reduction-B: 896 -> 1792 channels, stride 2 (three conv towers | max pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(ConvBN(896, 256, 1), ConvBN(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(ConvBN(896, 256, 1), ConvBN(256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(ConvBN(896, 256, 1), ConvBN(256, 256, 3, padding=1), ConvBN(256, 256, 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate the four stride-2 branches."""
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)


class InceptionResnetV1(nn.Module):
    """Inception-ResNet-v1 trunk + bottleneck head; input standardised RGB, output un-normalised embedding.

    Works for any input of at least 75x75 (the global pool adapts); 160x160 is the FaceNet setting.
    """

    def __init__(self, embedding_size: int = 512, dropout: float = 0.6) -> None:
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be positive, got {embedding_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embedding_size = embedding_size
        self.conv2d_1a = ConvBN(3, 32, 3, stride=2)
        self.conv2d_2a = ConvBN(32, 32, 3)
        self.conv2d_2b = ConvBN(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = ConvBN(64, 80, 1)
        self.conv2d_4a = ConvBN(80, 192, 3)
        self.conv2d_4b = ConvBN(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*[Block35() for _ in range(5)])
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(*[Block17() for _ in range(10)])
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(*[Block8() for _ in range(5)])
        self.block8 = Block8(scale=1.0, activate=False)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.last_linear = nn.Linear(1792, embedding_size, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding_size, eps=BN_EPS)

    def features(self, x: Tensor) -> Tensor:
        """The convolutional trunk: [N, 3, H, W] standardised -> [N, 1792, h, w]."""
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x))))
        x = self.mixed_6a(self.repeat_1(x))
        x = self.mixed_7a(self.repeat_2(x))
        return self.block8(self.repeat_3(x))

    def forward(self, x: Tensor) -> Tensor:
        """[N, 3, H, W] standardised RGB -> [N, embedding_size] (before L2 normalisation)."""
        x = self.avgpool_1a(self.features(x)).flatten(1)
        return self.last_bn(self.last_linear(self.dropout(x)))


def load_facenet_weights(model: InceptionResnetV1, source: str | Path | Mapping[str, Tensor]) -> list[str]:
    """Load a facenet-pytorch ``InceptionResnetV1`` state_dict (file or mapping) into ``model``, strictly.

    The classifier head (``logits.*``, fitted to the source dataset's identities: 8631 for VGGFace2, 10575
    for CASIA-WebFace) is not part of the embedder and is dropped; its key names are returned. Any other
    missing, unexpected or mis-shaped key raises a DataError naming the file and the first offending keys.
    """
    where = str(source) if isinstance(source, (str, Path)) else "<state_dict>"
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise DataError(source, "weights file not found")
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt or foreign file
            raise DataError(source, f"cannot read weights ({type(exc).__name__}: {exc})") from None
    else:
        state = source
    if not isinstance(state, Mapping):
        raise DataError(where, f"expected a state_dict (a mapping of names to tensors), got {type(state).__name__}")
    dropped = [key for key in state if key.startswith(CLASSIFIER_PREFIX)]
    weights = {key: value for key, value in state.items() if not key.startswith(CLASSIFIER_PREFIX)}
    expected = model.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    if missing or unexpected:
        raise DataError(
            where,
            f"not an Inception-ResNet-v1 state_dict: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:3]}",
        )
    for key, value in weights.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            hint = f" (build the model with embedding_size={value.shape[0]})" if key.startswith("last_") else ""
            raise DataError(
                where, f"{key} has shape {tuple(value.shape)}, the model expects {tuple(expected[key].shape)}{hint}"
            )
    model.load_state_dict(weights, strict=True)
    return dropped
