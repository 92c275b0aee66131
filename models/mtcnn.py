"""The three MTCNN networks (Zhang et al. 2016): P-Net, R-Net and O-Net, trainable and weight-compatible.

Layer names and shapes follow the original Caffe model as converted to PyTorch (the files in
``pretrained/mtcnn_facenet_pytorch``), so ``load_state_dict`` takes those files unchanged. P-Net and
R-Net get an optional five-point landmark head (``conv4_3`` / ``dense5_3``) for training as in the
paper; the released weights lack it, so loading them into a net with the head reports exactly the
head's two keys as missing.

Every net returns a :class:`NetOutput` ``(box, landmarks, face)``: box offsets (x1, y1, x2, y2 over
the window size), landmarks (x1..x5 then y1..y5, relative to the window) or ``None``, and the
face/non-face pair: softmax probabilities, or raw logits when called as ``net(x, logits=True)`` (what the
training loss and evaluation losses take); the mode (train/eval) does not change the output. For
probabilities the output heads run as one fused layer (one convolution or matrix product instead of two
or three), and without autograd the 2x2 max-pools of channels-last maps run as two element-wise maxima;
both give the same numbers as the plain layers, faster (see ``bench/bench_detector.py``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NET_NAMES = ("pnet", "rnet", "onet")
NET_INPUT_SIZE = {"pnet": 12, "rnet": 24, "onet": 48}
PIXEL_MEAN, PIXEL_MULTIPLIER = 127.5, 0.0078125  # the networks' input: (x - PIXEL_MEAN) * PIXEL_MULTIPLIER, i.e. / 128


class NetOutput(NamedTuple):
    """What every MTCNN net returns: box offsets, landmark offsets (or None) and face probabilities (or logits)."""

    box: Tensor
    landmarks: Tensor | None
    face: Tensor


def _fused_heads(features: Tensor, heads: list[nn.Module], conv: bool) -> list[Tensor]:
    """Run several heads that read the same features as one layer and split the result per head."""
    weight = torch.cat([head.weight for head in heads], dim=0)
    bias = torch.cat([head.bias for head in heads], dim=0)
    out = F.conv2d(features, weight, bias) if conv else F.linear(features, weight, bias)
    return list(out.split([head.weight.shape[0] for head in heads], dim=1))


class _MTCNNNet(nn.Module):
    """Shared head logic: the face, box and optional landmark heads, probabilities or logits."""

    input_size: int
    face_head: str
    box_head: str
    landmark_head: str

    def _check_input(self, x: Tensor) -> None:
        """Raise ValueError with the expected shape when ``x`` cannot go through this net."""
        size = self.input_size
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects an N x 3 x H x W tensor, got shape {tuple(x.shape)}")
        if size != 12 and (x.shape[2] != size or x.shape[3] != size):
            raise ValueError(f"{type(self).__name__} expects N x 3 x {size} x {size} crops, got {tuple(x.shape)}")
        if x.shape[2] < size or x.shape[3] < size:
            raise ValueError(f"{type(self).__name__} needs inputs of at least {size}x{size}, got {tuple(x.shape)}")

    @property
    def has_landmarks(self) -> bool:
        """Whether this net predicts the five landmarks."""
        return hasattr(self, self.landmark_head)

    def _heads(self, features: Tensor, conv: bool, logits: bool) -> NetOutput:
        """Apply the output heads: as separate layers giving face logits (``logits``: for a loss), or as one fused
        layer whose face pair is softmaxed into probabilities (inference, the detector, the exported files)."""
        names = [self.box_head, self.face_head] + ([self.landmark_head] if self.has_landmarks else [])
        heads = [getattr(self, name) for name in names]
        if logits:
            outs = [head(features) for head in heads]
        else:
            outs = _fused_heads(features, heads, conv)
        box, face = outs[0], outs[1]
        landmarks = outs[2] if len(outs) == 3 else None
        if not logits:
            face = torch.softmax(face, dim=1)
        return NetOutput(box, landmarks, face)


def _is_channels_last(x: Tensor) -> bool:
    """True for a 4-D tensor stored channels-last (and not also plain contiguous)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def max_pool_2x2(x: Tensor, layer: nn.MaxPool2d) -> Tensor:
    """``layer(x)`` for the 2x2 stride-2 ceil-mode pools; on channels-last maps as two element-wise maxima.

    The odd last row/column is padded with -inf, which is what ceil mode's partial window means.
    """
    if not _is_channels_last(x) or torch.is_grad_enabled():
        return layer(x)
    height, width = x.shape[2], x.shape[3]
    if height % 2 or width % 2:
        x = F.pad(x, (0, width % 2, 0, height % 2), value=float("-inf"))
    rows = torch.maximum(x[:, :, 0::2], x[:, :, 1::2])
    return torch.maximum(rows[:, :, :, 0::2], rows[:, :, :, 1::2])


def _flatten_whc(x: Tensor) -> Tensor:
    """Flatten a feature map in (N, W, H, C) order, the order the original dense layers were trained on."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(_MTCNNNet):
    """Proposal net: fully convolutional 12x12 face/non-face classifier with stride 2."""

    input_size = 12
    face_head, box_head, landmark_head = "conv4_1", "conv4_2", "conv4_3"

    def __init__(self, landmarks: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)
        if landmarks:
            self.conv4_3 = nn.Conv2d(32, 10, kernel_size=1)

    def forward(self, x: Tensor, logits: bool = False) -> NetOutput:
        """Map N x 3 x H x W images (scaled to [-1, 1]) to per-window outputs of spatial size ((H-10)/2)."""
        self._check_input(x)
        x = max_pool_2x2(self.prelu1(self.conv1(x)), self.pool1)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self._heads(x, conv=True, logits=logits)


class RNet(_MTCNNNet):
    """Refinement net: classifies and regresses 24x24 crops of the P-Net candidates."""

    input_size = 24
    face_head, box_head, landmark_head = "dense5_1", "dense5_2", "dense5_3"

    def __init__(self, landmarks: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)
        if landmarks:
            self.dense5_3 = nn.Linear(128, 10)

    def forward(self, x: Tensor, logits: bool = False) -> NetOutput:
        """Map N x 3 x 24 x 24 crops (scaled to [-1, 1]) to N-row outputs."""
        self._check_input(x)
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_whc(x)))
        return self._heads(x, conv=False, logits=logits)


class ONet(_MTCNNNet):
    """Output net: final classification, box refinement and five landmarks on 48x48 crops."""

    input_size = 48
    face_head, box_head, landmark_head = "dense6_1", "dense6_2", "dense6_3"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor, logits: bool = False) -> NetOutput:
        """Map N x 3 x 48 x 48 crops (scaled to [-1, 1]) to N-row outputs, landmarks included."""
        self._check_input(x)
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = max_pool_2x2(self.prelu3(self.conv3(x)), self.pool3)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_whc(x)))
        return self._heads(x, conv=False, logits=logits)


def build_net(name: str, landmarks: bool | None = None) -> _MTCNNNet:
    """Construct the net called ``name`` ("pnet", "rnet", "onet"); ``landmarks`` adds the P/R landmark head."""
    if name == "pnet":
        return PNet(landmarks=bool(landmarks))
    if name == "rnet":
        return RNet(landmarks=bool(landmarks))
    if name == "onet":
        if landmarks is False:
            raise ValueError("ONet always has its landmark head (dense6_3)")
        return ONet()
    raise ValueError(f"unknown MTCNN net {name!r}; expected one of {', '.join(NET_NAMES)}")
