"""Face embedder: backbone choice, input standardisation, L2-normalised embeddings, batched inference.

``Embedder.forward`` is what training calls (uint8 or 0..255 float batches in, unit vectors out, so the
uint8 batch can cross to the GPU before it is converted); ``Embedder.embed`` is what evaluation, the
matcher and the gallery call (inference mode, batching, optional horizontal-flip test-time augmentation).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config import Backbone, Standardization
from models.inception_resnet_v1 import InceptionResnetV1
from models.mobilefacenet import MobileFaceNet
from utils.errors import ConfigError

BACKBONES = get_args(Backbone)
INCEPTION_MIN_INPUT = 75  # smallest side for which Inception-ResNet-v1's reductions leave a 1x1 grid
PIXEL_MEAN = 127.5
PIXEL_DIVISOR = 128.0


def build_backbone(
    name: str,
    embedding_size: int = 512,
    dropout: float = 0.0,
    input_size: int = 160,
    width: float = 1.0,
) -> nn.Module:
    """Build a backbone by config name; ``width`` applies to mobilefacenet only (Inception is fixed-width)."""
    if name == "inception_resnet_v1":
        if input_size < INCEPTION_MIN_INPUT:
            raise ConfigError(f"inception_resnet_v1 needs input_size >= {INCEPTION_MIN_INPUT}, got {input_size}")
        if width != 1.0:
            raise ConfigError("inception_resnet_v1 has a fixed width (its published weights fix every shape)")
        return InceptionResnetV1(embedding_size=embedding_size, dropout=dropout)
    if name == "mobilefacenet":
        return MobileFaceNet(embedding_size=embedding_size, input_size=input_size, dropout=dropout, width=width)
    raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


STANDARDIZATIONS = get_args(Standardization)


def standardize(images: Tensor, mode: str = "fixed") -> Tensor:
    """0..255 pixels (uint8 or float) [N, C, H, W] -> network input: ``fixed`` (x - 127.5) / 128, the scaling of
    FaceNet and its published weights; ``per_image`` each face's own mean and standard deviation (FaceNet's
    prewhitening: exposure and contrast of the photo no longer matter; std floored at 1 grey level)."""
    x = images.float()
    if mode == "per_image":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp(min=1.0)
        return (x - mean) / std
    return (x - PIXEL_MEAN) / PIXEL_DIVISOR


def _as_batch(images: Tensor | Sequence[np.ndarray], size: int) -> Tensor:
    """Images as an [N, 3, size, size] float 0..255 tensor; other sizes are resized (bilinear, antialiased)."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected an [N, 3, H, W] image tensor, got shape {tuple(images.shape)}")
        batch = images.float()
        if batch.shape[-2:] != (size, size):
            batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return batch
    tensors = []
    for i, array in enumerate(images):
        array = np.asarray(array)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"image {i}: expected an HxWx3 RGB array, got shape {array.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().unsqueeze(0)
        if tensor.shape[-2:] != (size, size):
            tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        tensors.append(tensor)
    if not tensors:
        return torch.empty(0, 3, size, size)
    return torch.cat(tensors)


def embed_in_batches(
    forward: Callable[[Tensor], Tensor],
    images: Tensor | Sequence[np.ndarray],
    input_size: int,
    embedding_size: int,
    batch_size: int = 64,
    flip: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """The batched embedding loop of every embedder (PyTorch, ONNX): ``forward`` maps a float 0..255
    [n, 3, input_size, input_size] batch to features; returns L2-normalised [N, D] float32 rows on the CPU.

    With ``flip`` each row is the re-normalised sum of the image's and its mirror image's unit features.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    outputs = []
    # Converted chunk by chunk, so memory follows batch_size, not the number of images.
    for start in range(0, len(images), batch_size):
        chunk = _as_batch(images[start : start + batch_size], input_size)
        if device is not None:
            chunk = chunk.to(device, non_blocking=True)
        feats = forward(chunk).float()
        if flip:
            feats = F.normalize(feats, dim=1) + F.normalize(forward(chunk.flip(-1)).float(), dim=1)
        outputs.append(F.normalize(feats, p=2, dim=1).cpu())
    if not outputs:
        return torch.empty(0, embedding_size)
    return torch.cat(outputs)


class Embedder(nn.Module):
    """Backbone wrapped with FaceNet standardisation and L2 normalisation: pixels in, unit vectors out.

    ``input_size`` is the side ``embed`` resizes to; by default the backbone's own, else 160 (FaceNet).
    """

    def __init__(self, backbone: nn.Module, input_size: int | None = None, standardization: str = "fixed") -> None:
        super().__init__()
        if standardization not in STANDARDIZATIONS:
            raise ConfigError(f"unknown input standardization {standardization!r}; "
                              f"choose one of {', '.join(STANDARDIZATIONS)}")
        self.standardization = standardization
        built_for = getattr(backbone, "input_size", None)  # fixed-size backbones (MobileFaceNet) carry theirs
        if input_size is None:
            input_size = built_for if built_for is not None else 160
        elif built_for is not None and built_for != input_size:
            raise ConfigError(f"the backbone was built for {built_for} px input, not {input_size}")
        self.backbone = backbone
        self.input_size = int(input_size)

    @classmethod
    def build(
        cls, name: str, embedding_size: int = 512, dropout: float = 0.0, input_size: int = 160, width: float = 1.0,
        standardization: str = "fixed",
    ) -> Embedder:
        """Build the named backbone (see :func:`build_backbone`) and wrap it."""
        return cls(build_backbone(name, embedding_size, dropout, input_size, width), input_size, standardization)

    @property
    def embedding_size(self) -> int:
        """Length of each embedding vector."""
        return int(self.backbone.embedding_size)

    def forward(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] pixels 0..255 (uint8 or float) -> [N, D] L2-normalised embeddings (differentiable)."""
        return F.normalize(self.backbone(standardize(images, self.standardization)), p=2, dim=1)

    def embed(
        self,
        images: Tensor | Sequence[np.ndarray],
        batch_size: int = 64,
        flip: bool = False,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Embed images (uint8 [N,3,H,W] tensor or HxWx3 RGB arrays) in eval/inference mode; [N, D] on CPU.

        With ``flip`` each image's embedding is the re-normalised sum of the image's and its mirror's.
        Images whose size differs from ``input_size`` are resized (align to the right size for best results).
        """
        device = torch.device(device) if device is not None else next(self.parameters()).device
        dtype = next(self.parameters()).dtype  # float16 after .half() (CUDA inference)
        was_training = self.training
        self.eval()

        def features(batch: Tensor) -> Tensor:
            with torch.inference_mode():
                return self.backbone(standardize(batch, self.standardization).to(dtype))

        try:
            return embed_in_batches(features, images, self.input_size, self.embedding_size, batch_size, flip, device)
        finally:
            self.train(was_training)
