"""Batched, on-device augmentation of aligned face crops for embedder training.

Every transform is drawn per image and applied to the whole batch at once on the batch's device (a GPU
when training runs on one), so augmentation never becomes the data loader's bottleneck. Nothing here waits
for the device: what decides a shape or a kernel (the images an occasional transform picks, its strength)
is drawn on the host, so no number is read back from a GPU in the middle of a training step. The geometric part
(random crop, scale and rotation) is one affine resampling; the photometric part covers what real photos
vary in: exposure and colour (jitter, greyscale), focus (blur), resolution (down- then up-scaling) and
occlusion (random erasing).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from config import FaceNetConfig


@dataclass(frozen=True)
class AugmentSettings:
    """Strengths and probabilities of each transform; the defaults: a random window and a flip, nothing else."""

    random_crop: bool = True  # random position of the input window inside the larger training crop (else centred)
    flip: bool = True  # horizontal flip with probability 0.5
    jitter: float = 0.0  # brightness/contrast/saturation factors drawn from [1 - jitter, 1 + jitter]
    scale: float = 0.0  # window side drawn from [1 - scale, 1 + scale] times the input framing (zoom in and out)
    rotate: float = 0.0  # rotation drawn from [-rotate, rotate] degrees
    greyscale: float = 0.0  # probability of a grey copy (all three channels equal)
    blur: float = 0.0  # probability of a Gaussian blur (sigma drawn from 0.5..1.5 px at the input size)
    low_resolution: float = 0.0  # probability of down-scaling to 1/4..1/2 of the side and back
    erase: float = 0.0  # probability of one grey rectangle (2-20% of the area) over the face

    @classmethod
    def of(cls, cfg: FaceNetConfig) -> AugmentSettings:
        """The settings of the ``facenet`` config section."""
        return cls(random_crop=cfg.random_crop, flip=cfg.flip, jitter=cfg.color_jitter, scale=cfg.random_scale,
                   rotate=cfg.random_rotate, greyscale=cfg.greyscale, blur=cfg.blur, low_resolution=cfg.low_resolution,
                   erase=cfg.random_erase)

    @property
    def geometric(self) -> bool:
        """Whether the crop needs the affine resampling path (scale or rotation), not a plain window."""
        return self.scale > 0 or self.rotate > 0


def _uniform(batch: int, low: float, high: float, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(batch, device=device)


def _window(images: Tensor, size: int, random_crop: bool) -> Tensor:
    """A size x size window of each crop: a random position per image, or the centre."""
    batch, _, side, _ = images.shape
    device = images.device
    if side == size:
        return images.float()
    if not random_crop:
        start = (side - size) // 2
        return images[:, :, start:start + size, start:start + size].float()
    offsets = torch.randint(0, side - size + 1, (batch, 2), device=device)
    steps = torch.arange(size, device=device)
    rows = (offsets[:, 0, None] + steps)[:, :, None]
    cols = (offsets[:, 1, None] + steps)[:, None, :]
    return images[torch.arange(batch, device=device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2).float()


def _affine_window(images: Tensor, size: int, settings: AugmentSettings) -> Tensor:
    """Each crop resampled (bilinear) through its own zoom, rotation and shift into a size x size input."""
    batch, _, side, _ = images.shape
    device = images.device
    zoom = _uniform(batch, 1.0 - settings.scale, 1.0 + settings.scale, device) * (size / side)
    angle = _uniform(batch, -settings.rotate, settings.rotate, device) * (math.pi / 180.0)
    slack = (1.0 - size / side) if settings.random_crop else 0.0  # the shift the plain random window allows
    shift = (torch.rand(batch, 2, device=device) * 2.0 - 1.0) * slack
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [batch, 3, size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def _colour(x: Tensor, jitter: float) -> Tensor:
    batch, device = x.shape[0], x.device
    factors = 1.0 + (torch.rand(batch, 3, device=device) * 2.0 - 1.0) * jitter
    brightness, contrast, saturation = (factors[:, i, None, None, None] for i in range(3))
    x = x * brightness
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = grey + (x - grey) * saturation
    mean = grey.mean(dim=(2, 3), keepdim=True)
    return (mean + (x - mean) * contrast).clamp(0.0, 255.0)


def _chosen(batch: int, probability: float, device: torch.device) -> Tensor:
    """[B, 1, 1, 1] mask: each image with ``probability``."""
    return (torch.rand(batch, device=device) < probability)[:, None, None, None]


def _host_uniform(low: float, high: float) -> float:
    """One number for the whole batch, drawn on the host (reading one back from a GPU would wait for it)."""
    return float(torch.empty(()).uniform_(low, high))


def _host_rows(batch: int, probability: float) -> Tensor:
    """Indices of the images a transform picks, each with ``probability``, drawn on the host (so their count
    is known without asking the device)."""
    return torch.nonzero(torch.rand(batch) < probability).flatten()


def _on_rows(x: Tensor, rows: Tensor, transform: Callable[[Tensor], Tensor]) -> Tensor:
    """``transform`` applied to images ``rows`` of the batch only (the batch itself when none is picked)."""
    if not len(rows):
        return x
    rows = rows.to(x.device, non_blocking=True)
    return x.index_copy(0, rows, transform(x.index_select(0, rows)))


def _low_resolution(x: Tensor) -> Tensor:
    """Images scaled down to one common factor in 1/4..1/2 (area) and back up (bilinear)."""
    size = x.shape[-1]
    small = max(4, round(size * _host_uniform(0.25, 0.5)))
    return F.interpolate(F.interpolate(x, size=(small, small), mode="area"), size=(size, size), mode="bilinear",
                         align_corners=False)


def _blur(x: Tensor) -> Tensor:
    """Images blurred with one Gaussian of sigma 0.5..1.5 px (scaled with the input side)."""
    sigma = _host_uniform(0.5, 1.5) * x.shape[-1] / 96.0
    kernel = 2 * math.ceil(2 * sigma) + 1
    return TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def _erase(x: Tensor, chosen: Tensor) -> Tensor:
    """One mid-grey rectangle of 2-20% of the area and aspect 0.3..3.3 on each chosen image."""
    batch, _, height, width = x.shape
    device = x.device
    area = _uniform(batch, 0.02, 0.2, device) * height * width
    aspect = torch.exp(_uniform(batch, math.log(0.3), math.log(3.3), device))
    h = (area * aspect).sqrt().clamp(1, height)
    w = (area / aspect).sqrt().clamp(1, width)
    top = torch.rand(batch, device=device) * (height - h)
    left = torch.rand(batch, device=device) * (width - w)
    rows = torch.arange(height, device=device)[None, :, None]
    cols = torch.arange(width, device=device)[None, None, :]
    box = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
           & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]))
    return torch.where(box[:, None] & chosen, torch.full_like(x, 127.5), x)


def augment(images: Tensor, size: int, settings: AugmentSettings | None = None) -> Tensor:
    """uint8 crops [B, 3, S, S] (S >= size) -> float 0..255 inputs [B, 3, size, size], every transform drawn per
    image on the batch's device (default settings: random window and flip)."""
    settings = settings or AugmentSettings()
    batch, _, side, _ = images.shape
    if side < size:
        raise ValueError(f"crops of {side} px cannot give {size} px inputs")
    device = images.device
    x = _affine_window(images, size, settings) if settings.geometric else _window(images, size, settings.random_crop)
    if settings.flip:
        x = torch.where(_chosen(batch, 0.5, device), x.flip(-1), x)
    if settings.jitter > 0:
        x = _colour(x, settings.jitter)
    if settings.greyscale > 0:
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
        x = torch.where(_chosen(batch, settings.greyscale, device), grey, x)
    if settings.low_resolution > 0:
        x = _on_rows(x, _host_rows(batch, settings.low_resolution), _low_resolution)
    if settings.blur > 0:
        x = _on_rows(x, _host_rows(batch, settings.blur), _blur)
    if settings.erase > 0:
        x = _erase(x, _chosen(batch, settings.erase, device))
    return x.contiguous()
