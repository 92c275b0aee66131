"""Face crops for the embedder: by box with a margin, or aligned by a similarity transform of five landmarks.

Template: the five-point template of the ArcFace/InsightFace 112x112 crops (eye centres, nose tip,
mouth corners, in that order: the subject's right eye first, i.e. the eye on the image's left, as
MTCNN returns them). :data:`TEMPLATE_112` holds its pixel coordinates. For an output of ``size``
pixels with ``margin`` pixels of context, the template is scaled to the central ``size - margin``
pixels, so ``margin=0`` gives the ArcFace framing at any size (160 for FaceNet).

``margin`` means the same for both methods: extra pixels of context in the output image, half on each
side. The box method takes the square of side max(width, height) around the box centre (no aspect
distortion); parts outside the image are black. Downscaling averages k x k samples per output pixel
(k = the scale, at most 4), so large faces are not aliased; each face's crop depends only on itself.
"""
from __future__ import annotations

from typing import Any, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from config import AlignMethod
from models.detector import Detections, to_rgb_tensor

TEMPLATE_112 = torch.tensor([
    [38.2946, 51.6963],  # eye on the image's left
    [73.5318, 51.5014],  # eye on the image's right
    [56.0252, 71.7366],  # nose tip
    [41.5493, 92.3655],  # mouth corner on the image's left
    [70.7299, 92.2041],  # mouth corner on the image's right
], dtype=torch.float64)
TEMPLATE_SIZE = 112
METHODS = get_args(AlignMethod)
MAX_SUPERSAMPLING = 4


def face_template(size: int = 160, margin: float = 0.0) -> Tensor:
    """The five template points [5, 2] (pixel index coordinates) for a ``size`` x ``size`` output with ``margin``."""
    inner = size - margin
    if inner <= 0:
        raise ValueError(f"margin {margin} leaves no room for the face in a {size}px crop")
    return (TEMPLATE_112 + 0.5) * (inner / TEMPLATE_SIZE) + margin / 2.0 - 0.5


def similarity_transforms(landmarks: Tensor, template: Tensor) -> Tensor:
    """Least-squares similarity (rotation, uniform scale, shift) [N, 2, 3] mapping each face's points onto
    ``template``."""
    src = landmarks.to(torch.float64)
    dst = template.to(src.device, torch.float64).expand_as(src)
    x, y = src[..., 0], src[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, -y, one, zero], dim=-1)  # u = a x - b y + tx
    rows_v = torch.stack([y, x, zero, one], dim=-1)  # v = b x + a y + ty
    design = torch.cat([rows_u, rows_v], dim=1)  # [N, 10, 4]
    target = torch.cat([dst[..., 0], dst[..., 1]], dim=1).unsqueeze(-1)
    a, b, tx, ty = torch.linalg.lstsq(design, target).solution.squeeze(-1).unbind(-1)
    return torch.stack([torch.stack([a, -b, tx], -1), torch.stack([b, a, ty], -1)], dim=1)


def invert_affine(matrices: Tensor) -> Tensor:
    """Inverse of [N, 2, 3] affine maps."""
    linear, shift = matrices[:, :, :2], matrices[:, :, 2:]
    inverse = torch.linalg.inv(linear)
    return torch.cat([inverse, -inverse @ shift], dim=2)


def box_transforms(boxes: Tensor, size: int, margin: float) -> Tensor:
    """Affine maps [N, 2, 3] from output pixels to input pixels for square box crops with ``margin``."""
    boxes = boxes.to(torch.float64)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    scale = torch.maximum(w, h) / (size - margin)  # input pixels per output pixel
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    zero = torch.zeros_like(scale)
    # pixel index i covers [i, i + 1): output centre i + 0.5 -> input centre, minus 0.5 back to an index
    tx = cx - scale * size / 2 + 0.5 * scale - 0.5
    ty = cy - scale * size / 2 + 0.5 * scale - 0.5
    return torch.stack([torch.stack([scale, zero, tx], -1), torch.stack([zero, scale, ty], -1)], dim=1)


def warp_faces(image: Tensor, out_to_in: Tensor, size: int) -> Tensor:
    """Sample ``size`` x ``size`` crops [N, 3, size, size] (float) from a [3, H, W] image through output->input maps."""
    n = out_to_in.shape[0]
    result = image.new_zeros(n, 3, size, size)
    if n == 0:
        return result
    scales = out_to_in[:, :, :2].det().abs().sqrt()
    factors = scales.ceil().clamp(1, MAX_SUPERSAMPLING).long()
    _, height, width = image.shape
    norm = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64, device=image.device)
    for k in factors.unique().tolist():
        members = torch.nonzero(factors == k).flatten()
        fine = torch.arange(size * k, dtype=torch.float64, device=image.device)
        fine = (fine + 0.5) / k - 0.5  # output index coordinate of each sub-sample
        gy, gx = torch.meshgrid(fine, fine, indexing="ij")
        points = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1)  # [S, S, 3]
        source = torch.einsum("nij,hwj->nhwi", out_to_in[members].to(torch.float64), points)
        grid = ((source + 0.5) * norm - 1.0).to(image.dtype)  # index -> [-1, 1] for align_corners=False
        batch = image.unsqueeze(0).expand(len(members), -1, -1, -1)
        crops = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        result[members] = F.avg_pool2d(crops, k) if k > 1 else crops
    return result


def _as_points(value: Any, method: str) -> Tensor:
    """Boxes [N, 4] or landmarks [N, 5, 2] from a Detections object, a tensor or an array."""
    if isinstance(value, Detections):
        if method == "box":
            return value.boxes
        if value.landmarks is None:
            raise ValueError("these detections have no landmarks (a stage without a landmark head); use method='box'")
        return value.landmarks
    tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
    if tensor.dim() == 1 and tensor.numel() in (4, 10):
        tensor = tensor.view(1, -1) if tensor.numel() == 4 else tensor.view(1, 5, 2)
    wanted = (4,) if method == "box" else (5, 2)
    if tuple(tensor.shape[1:]) != wanted:
        raise ValueError(f"method={method!r} needs {'boxes [N, 4]' if method == 'box' else 'landmarks [N, 5, 2]'}, "
                         f"got shape {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("face boxes/landmarks contain NaN or infinite values")
    return tensor.float()


def align_faces(image: Any, faces: Any, size: int = 160, margin: float = 0.0, method: str = "similarity",
                channel_order: str = "rgb") -> Tensor:
    """Cut each face out of ``image`` as a ``size`` x ``size`` RGB uint8 crop: [N, 3, size, size].

    ``faces``: a :class:`Detections`, or boxes [N, 4] (``method="box"``) or landmarks [N, 5, 2]
    (``method="similarity"``). ``image``: anything ``FaceDetector.detect`` takes for one image.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if size < 1 or not 0 <= margin < size:
        raise ValueError(f"need size >= 1 and 0 <= margin < size, got size={size}, margin={margin}")
    points = _as_points(faces, method)
    rgb = to_rgb_tensor(image, channel_order)
    picture = rgb.permute(2, 0, 1).float()
    points = points.to(picture.device)
    if method == "similarity":
        spread = (points - points.mean(dim=1, keepdim=True)).norm(dim=2).amax(dim=1) if len(points) else points
        if len(points) and bool((spread < 1e-3).any()):
            raise ValueError("degenerate landmarks (all five points coincide); cannot align")
        out_to_in = invert_affine(similarity_transforms(points, face_template(size, margin)))
    else:
        out_to_in = box_transforms(points, size, margin)
    if len(points) and not bool(torch.isfinite(out_to_in).all()):
        raise ValueError("degenerate faces (zero-size boxes or landmarks); cannot align")
    crops = warp_faces(picture, out_to_in, size)
    return crops.round_().clamp_(0, 255).to(torch.uint8)

