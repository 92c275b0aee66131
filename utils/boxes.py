"""Box helpers shared by the detector, sample generation and evaluation: formats, squaring, regression, NMS.

Boxes are float tensors ``[N, 4]`` in pixels, ``x1, y1, x2, y2`` unless a name says ``xywh``.
Two size conventions exist in the original MTCNN cascade, and both are kept because its weights were
trained with them: ``inclusive=False`` measures a box as ``x2 - x1`` (P-Net stage), ``inclusive=True``
as ``x2 - x1 + 1`` with landmarks counted from ``x1 - 1`` (R-Net and O-Net stages, the MATLAB
heritage of the release). Each encode function has a decode partner with the same convention.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_convert, box_iou, clip_boxes_to_image, nms as box_nms

NMS_MODES = ("union", "min")


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert ``[N, 4]`` boxes from (x, y, width, height) to (x1, y1, x2, y2)."""
    return box_convert(boxes, "xywh", "xyxy")


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """Convert ``[N, 4]`` boxes from (x1, y1, x2, y2) to (x, y, width, height)."""
    return box_convert(boxes, "xyxy", "xywh")


def widths_heights(boxes: Tensor, inclusive: bool = False) -> tuple[Tensor, Tensor]:
    """Widths and heights of ``[N, 4]`` boxes under the given size convention."""
    extra = 1.0 if inclusive else 0.0
    return boxes[:, 2] - boxes[:, 0] + extra, boxes[:, 3] - boxes[:, 1] + extra


def boxes_outside_image(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    """Which boxes of positive size reach more than a pixel outside a ``width`` x ``height`` image, and one
    problem line for each: the sample generator skips such a face, and the dataset check reports it."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    zero = (boxes[:, 2] - boxes[:, 0] <= 0) | (boxes[:, 3] - boxes[:, 1] <= 0)
    outside = ~zero & ((boxes[:, 0] < -1) | (boxes[:, 1] < -1) | (boxes[:, 2] > width + 1) | (boxes[:, 3] > height + 1))
    problems = [f"face {i + 1} box {np.round(boxes[i], 1).tolist()} is outside the {width}x{height} image"
                for i in np.flatnonzero(outside)]
    return outside, problems


def square_boxes(boxes: Tensor) -> Tensor:
    """Grow each box to a square of side max(width, height) around the same centre."""
    w, h = widths_heights(boxes)
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def clip_boxes(boxes: Tensor, width: int, height: int) -> Tensor:
    """Clip ``[N, 4]`` boxes to the image rectangle [0, width] x [0, height]."""
    return clip_boxes_to_image(boxes, (height, width))


def apply_box_regression(boxes: Tensor, offsets: Tensor, inclusive: bool = False) -> Tensor:
    """Move each box edge by its offset times the box size (the MTCNN box-regression decoding)."""
    w, h = widths_heights(boxes, inclusive)
    scale = torch.stack([w, h, w, h], dim=1)
    return boxes[:, :4] + offsets[:, :4].to(boxes.dtype) * scale


def box_regression_targets(boxes: Tensor, targets: Tensor, inclusive: bool = False) -> Tensor:
    """Offsets that :func:`apply_box_regression` turns ``boxes`` into ``targets`` with (training labels)."""
    w, h = widths_heights(boxes, inclusive)
    scale = torch.stack([w, h, w, h], dim=1)
    return (targets[:, :4] - boxes[:, :4]) / scale


def decode_landmarks(boxes: Tensor, offsets: Tensor, inclusive: bool = False) -> Tensor:
    """Turn ``[N, 10]`` landmark offsets (x1..x5, y1..y5, relative to the box) into ``[N, 5, 2]`` pixels."""
    w, h = widths_heights(boxes, inclusive)
    start = 1.0 if inclusive else 0.0
    xs = boxes[:, 0:1] - start + offsets[:, 0:5].to(boxes.dtype) * w[:, None]
    ys = boxes[:, 1:2] - start + offsets[:, 5:10].to(boxes.dtype) * h[:, None]
    return torch.stack([xs, ys], dim=2)


def encode_landmarks(boxes: Tensor, points: Tensor, inclusive: bool = False) -> Tensor:
    """Inverse of :func:`decode_landmarks`: ``[N, 5, 2]`` pixel points to ``[N, 10]`` box-relative offsets."""
    w, h = widths_heights(boxes, inclusive)
    start = 1.0 if inclusive else 0.0
    xs = (points[:, :, 0] - boxes[:, 0:1] + start) / w[:, None]
    ys = (points[:, :, 1] - boxes[:, 1:2] + start) / h[:, None]
    return torch.cat([xs, ys], dim=1)


def box_overlap(a: Tensor, b: Tensor, mode: str = "union") -> Tensor:
    """Pairwise ``[N, M]`` overlap: intersection over union, or over the smaller area (``mode="min"``)."""
    if mode not in NMS_MODES:
        raise ValueError(f"overlap mode must be one of {NMS_MODES}, got {mode!r}")
    if mode == "union":
        return box_iou(a, b)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    smaller = torch.minimum(area_a[:, None], area_b[None, :])
    return inter / smaller.clamp(min=torch.finfo(inter.dtype).tiny)


def _greedy_min_nms(boxes: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """Greedy NMS of one group with intersection-over-minimum; kept indices by falling score.

    Equal scores go to the later box, as in the reference implementation (O-Net scores often
    saturate at the same float value, so this decides which of two overlapping faces is kept).
    """
    order = torch.argsort(scores, stable=True).flip(0)
    suppress = (box_overlap(boxes[order], boxes[order], "min") > threshold).cpu().numpy()
    alive = np.ones(len(order), dtype=bool)
    for i in range(len(order)):
        if alive[i]:
            alive[i + 1:] &= ~suppress[i, i + 1:]
    return order[torch.from_numpy(alive).to(order.device)]


def nms(boxes: Tensor, scores: Tensor, groups: Tensor | None, threshold: float, mode: str = "union") -> Tensor:
    """Non-maximum suppression within each group (image, scale...; None: all one group); returns kept indices.

    ``mode="union"`` suppresses boxes whose IoU with a better one exceeds ``threshold`` (torchvision's
    ``nms``); ``mode="min"`` divides the intersection by the smaller box's area, the final-stage rule of
    the original cascade (it removes boxes nested inside others). Indices come group after group in
    increasing group id, each group's by falling score. On the CPU every group is suppressed on its own
    boxes, so a group's result never depends on what else is in the call (an image alone or in a batch).
    """
    if mode not in NMS_MODES:
        raise ValueError(f"NMS mode must be one of {NMS_MODES}, got {mode!r}")
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if boxes.dtype != torch.float32 or scores.dtype != torch.float32:
        boxes, scores = boxes.float(), scores.float()
    if groups is None:
        if mode == "union":
            return box_nms(boxes, scores, threshold)
        return _greedy_min_nms(boxes, scores, threshold)
    if mode == "union" and boxes.device.type != "cpu":
        keep = batched_nms(boxes, scores, groups, threshold)
        return keep[torch.argsort(groups[keep], stable=True)]
    ids, inverse = torch.unique(groups, return_inverse=True)
    members_by_group = torch.argsort(inverse, stable=True).split(torch.bincount(inverse, minlength=len(ids)).tolist())
    keep = []
    for members in members_by_group:
        if mode == "union":
            kept = box_nms(boxes[members], scores[members], threshold)
        else:
            kept = _greedy_min_nms(boxes[members], scores[members], threshold)
        keep.append(members[kept])
    return torch.cat(keep)


def detection_agreement(boxes_a: Tensor, scores_a: Tensor, boxes_b: Tensor, scores_b: Tensor,
                        landmarks_a: Tensor | None = None, landmarks_b: Tensor | None = None,
                        min_score: float = 0.9, min_iou: float = 0.9) -> dict[str, float]:
    """How far two detectors agree on one image: confident faces of each that the other misses, landmark error.

    A face of A with score >= ``min_score`` counts as found by B when some box of B (any score) overlaps
    it with IoU >= ``min_iou``, and the other way round. Landmark distance (mean over the five points,
    in pixels) is summed over A's confident faces matched to their best-overlapping B box.
    """
    iou = box_iou(boxes_a.float(), boxes_b.float()) if len(boxes_a) and len(boxes_b) else \
        torch.zeros(len(boxes_a), len(boxes_b))
    best_for_a = iou.max(dim=1) if len(boxes_b) else None
    best_for_b = iou.max(dim=0).values if len(boxes_a) else torch.zeros(len(boxes_b))
    confident_a, confident_b = scores_a >= min_score, scores_b >= min_score
    found_a = best_for_a.values >= min_iou if best_for_a is not None else torch.zeros(len(boxes_a), dtype=torch.bool)
    found_b = best_for_b >= min_iou
    result = {
        "confident_a": float(confident_a.sum()), "confident_b": float(confident_b.sum()),
        "missed_by_b": float((confident_a & ~found_a).sum()), "missed_by_a": float((confident_b & ~found_b).sum()),
        "landmark_pairs": 0.0, "landmark_distance_sum": 0.0,
    }
    if landmarks_a is not None and landmarks_b is not None and best_for_a is not None:
        pairs = confident_a & found_a
        partner = best_for_a.indices[pairs]
        distance = (landmarks_a[pairs].float() - landmarks_b[partner].float()).norm(dim=2).mean(dim=1)
        result["landmark_pairs"] = float(pairs.sum())
        result["landmark_distance_sum"] = float(distance.sum())
    return result
