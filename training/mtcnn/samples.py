"""MTCNN training samples: face / non-face / part-face crops labelled by IoU, and landmark crops.

Stage P draws random square crops from WIDER-format images: negatives anywhere and near each face,
and shifted/scaled crops around each face labelled by IoU with the nearest face (negative < 0.3, part
0.4-0.65, positive >= 0.65). Stages R and O add the previous stages' detections on the same images
(hard examples: the caller passes a batched ``detect`` function). Landmark samples are shifted crops of
the landmark-list faces kept at IoU >= 0.65, mirrored (left/right points swapped) and slightly rotated.

Everything per crop is vectorised: IoU with ``torchvision.ops.box_iou`` over all crops of an image at
once, and cropping + resizing by gathers from the image's summed-area table (``utils.area_resize``, the
detector's own resampling: what ``F.interpolate(crop, size, mode="area")`` computes). While mining, the
crops are read from the integral images the cascade already built for the image, on its device.
Targets are box offsets over the crop size and landmarks ``x1..x5, y1..y5`` relative to the crop, encoded
(``utils.boxes``) against the box the cascade decodes that crop's outputs with (``target_frame``), so a
trained net's outputs land where the detector puts them. Half of the random and landmark crops are
mirrored (image and geometry). Samples are written to a packed, sharded, memory-mapped store
(``training.mtcnn.packed``) by worker processes, a shard per task; finished shards survive an interruption.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import box_iou
from tqdm.auto import tqdm

from config import MTCNNConfig, MTCNNStageConfig
from datasets.decoding import decoded_batches, keep_batch
from training.mtcnn.packed import (
    LANDMARK,
    NEGATIVE,
    PART,
    POSITIVE,
    concat_samples,
    count_kinds,
    read_manifest,
    shard_is_complete,
    write_manifest,
    write_shard,
)
from utils.area_resize import crop_resize, integral_image
from utils.atomic import atomic_write_text
from utils.boxes import box_regression_targets, boxes_outside_image, encode_landmarks
from utils.errors import BadInputLog, DataError
from utils.images import read_image

# Mirroring swaps left and right eyes and mouth corners (points in LANDMARK_NAMES order).
MIRROR_POINTS = [1, 0, 2, 4, 3]


@dataclass
class Mined:
    """One image's hard-example candidates from the earlier stages of the cascade (stages R/O)."""

    boxes: np.ndarray  # float [N, 4]: the boxes handed to the next stage, the frame their outputs decode in
    regions: np.ndarray  # int [N, 4]: the pixel regions the cascade crops for them (end exclusive)
    integral: torch.Tensor | None = None  # the image's integral image as the cascade built it, reused for every crop


# Mining: runs the earlier stages on a batch of images and returns each image's candidates.
DetectFn = Callable[[list[np.ndarray]], list[Mined]]


# --- geometry: crops, labels, targets ---------------------------------------------------------------------


def iou_matrix(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU [len(boxes), len(others)] of x1, y1, x2, y2 boxes (torchvision.ops.box_iou)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    others = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    if not len(boxes) or not len(others):
        return np.zeros((len(boxes), len(others)))
    return box_iou(torch.from_numpy(boxes), torch.from_numpy(others)).numpy()


def target_frame(regions: np.ndarray, size: int) -> tuple[torch.Tensor, bool]:
    """The boxes the cascade decodes the outputs for crops of these regions against, and their size convention.

    P-Net (12 px) reports a window of side s at [x0 + s/12, x0 + s] measured as x2 - x1; R-Net and O-Net
    cut a region [x0, x1) for a box [x0 + 1, x1] measured as x2 - x1 + 1 (``FaceDetector.crop_regions``).
    """
    r = torch.as_tensor(np.asarray(regions, dtype=np.float64).reshape(-1, 4))
    if size == 12:
        w, h = r[:, 2] - r[:, 0], r[:, 3] - r[:, 1]
        return torch.stack([r[:, 0] + w / 12, r[:, 1] + h / 12, r[:, 2], r[:, 3]], dim=1), False
    return torch.stack([r[:, 0] + 1, r[:, 1] + 1, r[:, 2], r[:, 3]], dim=1), True


def encode_targets(frames: torch.Tensor, inclusive: bool, faces: np.ndarray,
                   points: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Box targets [C, 4] (and landmark targets [C, 10], zeros without ``points``) of faces seen in ``frames``."""
    faces_t = torch.as_tensor(np.asarray(faces, dtype=np.float64).reshape(-1, 4))
    boxes = box_regression_targets(frames, faces_t, inclusive=inclusive).float().numpy()
    if points is None:
        return boxes, np.zeros((len(boxes), 10), dtype=np.float32)
    points_t = torch.as_tensor(np.asarray(points, dtype=np.float64).reshape(-1, 5, 2))
    return boxes, encode_landmarks(frames, points_t, inclusive=inclusive).float().numpy()


def mirror_geometry(regions: np.ndarray, boxes: np.ndarray,
                    points: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Boxes (and points) as they appear in horizontally mirrored crops of ``regions`` (left/right points swapped)."""
    regions = np.asarray(regions, dtype=np.float64).reshape(-1, 4)
    axis = (regions[:, 0] + regions[:, 2])[:, None]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    mirrored = np.stack([axis[:, 0] - boxes[:, 2], boxes[:, 1], axis[:, 0] - boxes[:, 0], boxes[:, 3]], axis=1)
    if points is None:
        return mirrored, None
    points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)[:, MIRROR_POINTS].copy()
    points[:, :, 0] = axis - points[:, :, 0]
    return mirrored, points


def _uniform_int(rng: np.random.Generator, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Integers in [low, high) elementwise (high > low assumed)."""
    return np.floor(low + rng.random(np.shape(low)) * (high - low)).astype(np.int64)


def random_crops(rng: np.random.Generator, width: int, height: int, min_size: int, count: int) -> np.ndarray:
    """``count`` square crops anywhere in the image, side in [min_size, min(W, H) / 2)."""
    max_size = min(width, height) // 2
    if max_size <= min_size or count <= 0:
        return np.zeros((0, 4), dtype=np.int64)
    side = rng.integers(min_size, max_size, count)
    x = _uniform_int(rng, np.zeros(count), width - side)
    y = _uniform_int(rng, np.zeros(count), height - side)
    return np.stack([x, y, x + side, y + side], axis=1)


def near_face_crops(rng: np.random.Generator, faces: np.ndarray, width: int, height: int, min_size: int,
                    per_face: int) -> np.ndarray:
    """Square crops that overlap each face a little (candidate negatives), inside the image."""
    max_size = min(width, height) // 2
    if max_size <= min_size or per_face <= 0 or not len(faces):
        return np.zeros((0, 4), dtype=np.int64)
    f = np.repeat(np.asarray(faces, dtype=np.float64), per_face, axis=0)
    side = rng.integers(min_size, max_size, len(f))
    w, h = f[:, 2] - f[:, 0], f[:, 3] - f[:, 1]
    dx = _uniform_int(rng, np.maximum(-side, -f[:, 0]), np.maximum(w, np.maximum(-side, -f[:, 0]) + 1))
    dy = _uniform_int(rng, np.maximum(-side, -f[:, 1]), np.maximum(h, np.maximum(-side, -f[:, 1]) + 1))
    x = np.maximum(0, f[:, 0] + dx).astype(np.int64)
    y = np.maximum(0, f[:, 1] + dy).astype(np.int64)
    crops = np.stack([x, y, x + side, y + side], axis=1)
    return crops[(crops[:, 2] <= width) & (crops[:, 3] <= height)]


def shifted_crops(rng: np.random.Generator, faces: np.ndarray, width: int, height: int, per_face: int,
                  inside: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Square crops around each face, side in [0.8 min(w, h), 1.25 max(w, h)], centre shifted by up to 0.2 w/h.

    Returns (crops [C, 4], index of the face each was drawn around); with ``inside`` only crops within the image.
    """
    faces = np.asarray(faces, dtype=np.float64).reshape(-1, 4)
    if per_face <= 0 or not len(faces):
        return np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64)
    source = np.repeat(np.arange(len(faces)), per_face)
    f = faces[source]
    w, h = f[:, 2] - f[:, 0], f[:, 3] - f[:, 1]
    low = np.floor(np.minimum(w, h) * 0.8)
    high = np.maximum(np.ceil(1.25 * np.maximum(w, h)), low + 1)
    side = _uniform_int(rng, low, high).clip(min=1)
    dx = (rng.random(len(f)) * 0.4 - 0.2) * w
    dy = (rng.random(len(f)) * 0.4 - 0.2) * h
    x = np.floor(f[:, 0] + w / 2 + dx - side / 2).astype(np.int64)
    y = np.floor(f[:, 1] + h / 2 + dy - side / 2).astype(np.int64)
    crops = np.stack([x, y, x + side, y + side], axis=1)
    if inside:
        keep = (x >= 0) & (y >= 0) & (crops[:, 2] <= width) & (crops[:, 3] <= height)
        crops, source = crops[keep], source[keep]
    return crops, source


@dataclass(frozen=True)
class IouRule:
    """The IoU thresholds that label a crop: negative < ``negative`` <= ignored < ``part`` <= part < ``positive``."""

    negative: float = 0.3
    part: float = 0.4
    positive: float = 0.65

    @classmethod
    def from_config(cls, config: MTCNNConfig) -> IouRule:
        return cls(config.iou_negative, config.iou_part, config.iou_positive)


def label_crops(crops: np.ndarray, faces: np.ndarray, all_boxes: np.ndarray,
                rule: IouRule) -> tuple[np.ndarray, np.ndarray]:
    """Label crops by IoU: kinds int8 [C] (-1 = discarded) and the index of the nearest usable face [C].

    ``faces`` are the usable faces (positives and parts come from them); a negative must also stay below
    the negative threshold with every annotated box in ``all_boxes`` (small or invalid faces included).
    """
    crops = np.asarray(crops).reshape(-1, 4)
    kinds = np.full(len(crops), -1, dtype=np.int8)
    best = np.zeros(len(crops), dtype=np.int64)
    if not len(crops):
        return kinds, best
    iou_all = iou_matrix(crops, all_boxes).max(axis=1, initial=0.0)
    kinds[iou_all < rule.negative] = NEGATIVE
    if len(faces):
        iou = iou_matrix(crops, faces)
        best = iou.argmax(axis=1)
        best_iou = iou[np.arange(len(crops)), best]
        kinds[(best_iou >= rule.part) & (best_iou < rule.positive)] = PART
        kinds[best_iou >= rule.positive] = POSITIVE
    return kinds, best


# --- per-image and per-face sample makers ---------------------------------------------------------------


@dataclass
class DetectionItem:
    """One training image: its file and every annotated box with a usable flag (WIDER ``valid``)."""

    image_path: str
    boxes: np.ndarray  # float32 [N, 4] x1, y1, x2, y2
    valid: np.ndarray  # bool [N]


@dataclass
class LandmarkItem:
    """One landmark-list face: its image file, box and five points."""

    image_path: str
    box: np.ndarray  # float32 [4]
    landmarks: np.ndarray  # float32 [5, 2]


@dataclass
class FaceCounts:
    """What happened to the annotated faces while sampling (summed over images)."""

    used: int = 0
    small: int = 0
    invalid: int = 0
    zero_size: int = 0
    outside: int = 0

    def add(self, other: FaceCounts) -> None:
        for name in ("used", "small", "invalid", "zero_size", "outside"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def select_faces(item: DetectionItem, width: int, height: int,
                 min_face_size: float) -> tuple[np.ndarray, np.ndarray, FaceCounts, list[str]]:
    """Split an image's boxes into usable faces and the boxes negatives must avoid; count and explain the rest.

    Returns (faces [F, 4], avoid [A, 4] clipped to the image, counts, problems): a box that is not inside
    the image (by more than a pixel) is a problem (reported by the caller) and not used as a face.
    """
    boxes = np.asarray(item.boxes, dtype=np.float64).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    zero = (w <= 0) | (h <= 0)
    outside, problems = boxes_outside_image(boxes, width, height)
    invalid = ~zero & ~np.asarray(item.valid, dtype=bool)
    small = ~zero & ~invalid & ~outside & (np.maximum(w, h) < min_face_size)
    usable = ~zero & ~invalid & ~outside & ~small
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    avoid = clipped[~zero & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])]
    counts = FaceCounts(int(usable.sum()), int(small.sum()), int(invalid.sum()), int(zero.sum()), int(outside.sum()))
    return boxes[usable], avoid, counts, problems


def _take(rng: np.random.Generator, mask: np.ndarray, limit: int) -> np.ndarray:
    """Indices of up to ``limit`` True entries of ``mask``, chosen at random (all when fewer)."""
    index = np.flatnonzero(mask)
    if len(index) > limit:
        index = np.sort(rng.choice(index, limit, replace=False))
    return index


def detection_samples(image: np.ndarray, faces: np.ndarray, avoid: np.ndarray, size: int, stage: MTCNNStageConfig,
                      rule: IouRule, rng: np.random.Generator, mined: Mined | None = None,
                      mirror: bool = True) -> dict[str, np.ndarray]:
    """All face/non-face/part samples of one image, cropped and resized to ``size``: random negatives,
    negatives near faces, shifted crops around faces (half mirrored when ``mirror``) and, for stages R/O,
    the ``mined`` candidates of the earlier stages, labelled by their boxes' IoU (only the kept ones are cropped)."""
    height, width = image.shape[:2]
    groups = [random_crops(rng, width, height, size, 3 * stage.negatives_per_image),
              near_face_crops(rng, faces, width, height, size, 3 * stage.negatives_near_face),
              shifted_crops(rng, faces, width, height, stage.crops_per_face)[0]]
    candidates = np.concatenate(groups).astype(np.int64).reshape(-1, 4)
    all_kinds, all_nearest = label_crops(candidates, faces, avoid, rule)  # one IoU pass over every candidate
    bounds = np.cumsum([0] + [len(g) for g in groups])
    group = np.searchsorted(bounds, np.arange(len(candidates)), side="right") - 1
    negative = all_kinds == NEGATIVE
    pick = np.concatenate([
        bounds[0] + _take(rng, negative[group == 0], stage.negatives_per_image),
        bounds[1] + _take(rng, negative[group == 1], stage.negatives_near_face * len(faces)),
        np.flatnonzero((group == 2) & ((all_kinds == POSITIVE) | (all_kinds == PART))),
    ]).astype(np.int64)
    regions, kinds, nearest = candidates[pick], all_kinds[pick].astype(np.int8), all_nearest[pick]
    flipped = (rng.random(len(regions)) < 0.5) if mirror else np.zeros(len(regions), dtype=bool)
    targets = np.zeros((len(regions), 4), dtype=np.float32)
    is_face = kinds != NEGATIVE
    if is_face.any():
        seen = faces[nearest[is_face]]
        turn = flipped[is_face]
        seen[turn] = mirror_geometry(regions[is_face][turn], seen[turn])[0]
        frames, inclusive = target_frame(regions[is_face], size)
        targets[is_face] = encode_targets(frames, inclusive, seen)[0]
    integral = mined.integral if mined is not None and mined.integral is not None else integral_image(image)
    images = crop_resize(integral, regions, size)
    images[flipped] = images[flipped][:, :, ::-1]
    samples = [{"images": images, "kinds": kinds, "boxes": targets,
                "landmarks": np.zeros((len(regions), 10), dtype=np.float32)}]

    if mined is not None and len(mined.boxes):
        boxes = np.asarray(mined.boxes, dtype=np.float64).reshape(-1, 4)
        cut = np.asarray(mined.regions, dtype=np.int64).reshape(-1, 4)
        kinds, nearest = label_crops(boxes, faces, avoid, rule)
        neg = _take(rng, kinds == NEGATIVE, stage.mined_negatives_per_image)
        pick = np.sort(np.concatenate([neg, np.flatnonzero((kinds == POSITIVE) | (kinds == PART))]))
        boxes, cut, kinds, nearest = boxes[pick], cut[pick], kinds[pick], nearest[pick]
        targets = np.zeros((len(pick), 4), dtype=np.float32)
        is_face = kinds != NEGATIVE
        if is_face.any():
            targets[is_face] = encode_targets(torch.as_tensor(boxes[is_face]), True, faces[nearest[is_face]])[0]
        samples.append({"images": crop_resize(integral, cut, size), "kinds": kinds, "boxes": targets,
                        "landmarks": np.zeros((len(pick), 10), dtype=np.float32)})
    return concat_samples(samples, size)


def _rotated_patch(image: np.ndarray, box: np.ndarray, points: np.ndarray,
                   angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square patch around the face rotated by ``angle`` degrees about its centre; box and points in patch pixels."""
    cx, cy = round((box[0] + box[2]) / 2), round((box[1] + box[3]) / 2)  # whole pixels: angle 0 is an exact copy
    w, h = box[2] - box[0], box[3] - box[1]
    radius = int(np.ceil(1.7 * max(w, h))) + 2
    matrix = cv2.getRotationMatrix2D((float(cx), float(cy)), float(angle), 1.0)
    matrix[:, 2] += (radius - cx, radius - cy)
    patch = cv2.warpAffine(image, matrix, (2 * radius, 2 * radius), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    moved = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ matrix.T
    centre = matrix @ np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 1.0])
    patch_box = np.array([centre[0] - w / 2, centre[1] - h / 2, centre[0] + w / 2, centre[1] + h / 2])
    return patch, patch_box, moved


def landmark_samples(image: np.ndarray, box: np.ndarray, points: np.ndarray, size: int, count: int, rule: IouRule,
                     rng: np.random.Generator, mirror: bool = True, max_rotation: float = 0.0) -> dict[str, np.ndarray]:
    """Up to ``count`` landmark samples of one face: shifted crops kept at IoU >= rule.positive, half of them
    from a copy rotated by up to ``max_rotation`` degrees, each mirrored with probability 1/2 when ``mirror``."""
    box = np.asarray(box, dtype=np.float64).reshape(4)
    points = np.asarray(points, dtype=np.float64).reshape(5, 2)
    angles = [0.0] if max_rotation <= 0 else [0.0, float(rng.uniform(-max_rotation, max_rotation))]
    quotas = [count - count // len(angles) * (len(angles) - 1)] + [count // len(angles)] * (len(angles) - 1)
    results = []
    for angle, quota in zip(angles, quotas):
        if quota <= 0:
            continue
        patch, patch_box, moved = _rotated_patch(image, box, points, angle)
        crops, _ = shifted_crops(rng, patch_box[None], patch.shape[1], patch.shape[0], 4 * quota)
        keep = np.flatnonzero(iou_matrix(crops, patch_box[None])[:, 0] >= rule.positive)[:quota]
        crops = crops[keep]
        if not len(crops):
            continue
        faces = np.repeat(patch_box[None], len(crops), axis=0)
        marks = np.repeat(moved[None], len(crops), axis=0)
        images = crop_resize(integral_image(patch), crops, size)
        if mirror:
            turn = rng.random(len(crops)) < 0.5
            images[turn] = images[turn][:, :, ::-1]
            faces[turn], marks[turn] = mirror_geometry(crops[turn], faces[turn], marks[turn])
        frames, inclusive = target_frame(crops, size)
        targets, landmarks = encode_targets(frames, inclusive, faces, marks)
        results.append({"images": images, "kinds": np.full(len(crops), LANDMARK, dtype=np.int8),
                        "boxes": targets, "landmarks": landmarks})
    return concat_samples(results, size)


# --- generation: tasks, workers, the store ----------------------------------------------------------------


@dataclass
class SampleTask:
    """One shard's worth of work: detection images or landmark faces, with the seed of each item."""

    name: str
    kind: str  # "detection" | "landmark"
    items: list[Any]
    seeds: list[int]


@dataclass
class GenerationSummary:
    """What a generation run produced: samples per type, images and faces used or skipped, speed."""

    counts: dict[str, int] = field(default_factory=lambda: count_kinds(np.zeros(0, dtype=np.int8)))
    images: int = 0
    images_skipped: int = 0
    faces: FaceCounts = field(default_factory=FaceCounts)
    landmark_faces: int = 0
    landmark_faces_skipped: int = 0
    seconds: float = 0.0
    reused: bool = False

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        rate = self.total / self.seconds if self.seconds > 0 else float("nan")
        return [
            "samples: " + ", ".join(f"{k} {v:,}" for k, v in self.counts.items()) + f" (total {self.total:,})",
            f"images: {self.images:,} used, {self.images_skipped:,} skipped; faces: {self.faces.used:,} used, "
            f"{self.faces.small:,} below the minimum size, {self.faces.invalid:,} marked invalid, "
            f"{self.faces.zero_size:,} zero-size, {self.faces.outside:,} outside their image",
            f"landmark faces: {self.landmark_faces:,} used, {self.landmark_faces_skipped:,} skipped",
            ("reused the finished store" if self.reused else f"{self.seconds:.1f} s, {rate:,.0f} crops/s"),
        ]


class _TaskRunner(Dataset):
    """Runs sample tasks (one per item), so a DataLoader spreads them over worker processes."""

    def __init__(self, tasks: Sequence[SampleTask], store: Path, size: int, config: MTCNNConfig,
                 stage: MTCNNStageConfig) -> None:
        self.tasks, self.store, self.size, self.config, self.stage = list(tasks), store, size, config, stage
        self.rule = IouRule.from_config(config)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        task = self.tasks[index]
        cv2.setNumThreads(1)
        parts, tally = [], _Tally()
        for item, seed in zip(task.items, task.seeds):
            rng = np.random.default_rng(seed)
            try:
                image = read_image(item.image_path)
            except DataError as error:
                tally.skip(task.kind, error.path, error.reason)
                continue
            height, width = image.shape[:2]
            if task.kind == "detection":
                chosen, avoid, counts, bad = select_faces(item, width, height, self.config.min_face_size)
                tally.problems += [(item.image_path, message) for message in bad]
                tally.faces.add(counts)
                parts.append(detection_samples(image, chosen, avoid, self.size, self.stage, self.rule, rng,
                                                  mirror=self.config.mirror))
                tally.images += 1
            elif not _box_inside(item.box, width, height):
                tally.skip(task.kind, item.image_path,
                           f"landmark box {np.round(item.box, 1).tolist()} is outside the {width}x{height} image")
            else:
                parts.append(landmark_samples(image, item.box, item.landmarks, self.size,
                                              self.stage.landmark_crops_per_face, self.rule, rng,
                                              self.config.mirror, self.config.landmark_max_rotation))
                tally.landmark_faces += 1
        return write_shard(self.store, task.name, concat_samples(parts, self.size), tally.marker())


@dataclass
class _Tally:
    """Per-shard counts and problems, stored in the shard's marker (so a resumed run reports them too)."""

    images: int = 0
    images_skipped: int = 0
    landmark_faces: int = 0
    landmark_faces_skipped: int = 0
    faces: FaceCounts = field(default_factory=FaceCounts)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, kind: str, path: str, message: str) -> None:
        if kind == "detection":
            self.images_skipped += 1
        else:
            self.landmark_faces_skipped += 1
        self.problems.append((str(path), message))

    def marker(self) -> dict[str, Any]:
        return {"images": self.images, "images_skipped": self.images_skipped, "landmark_faces": self.landmark_faces,
                "landmark_faces_skipped": self.landmark_faces_skipped, "faces": dict(self.faces.__dict__),
                "problems": [list(p) for p in self.problems]}


def _box_inside(box: np.ndarray, width: int, height: int) -> bool:
    """True when a box has positive size and lies within the image (one pixel of slack)."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    return x2 > x1 and y2 > y1 and x1 >= -1 and y1 >= -1 and x2 <= width + 1 and y2 <= height + 1


def _item_seed(seed: int, kind: int, index: int) -> int:
    """A per-item seed independent of worker count and order (so reruns and resumes draw the same crops)."""
    return int(np.random.SeedSequence([seed, kind, index]).generate_state(1)[0])


def plan_tasks(detection_items: Sequence[DetectionItem], landmark_items: Sequence[LandmarkItem], seed: int,
               images_per_shard: int, faces_per_shard: int = 512) -> list[SampleTask]:
    """Split images and landmark faces into shard-sized tasks with deterministic per-item seeds."""
    tasks = []
    for start in range(0, len(detection_items), images_per_shard):
        chunk = list(detection_items[start:start + images_per_shard])
        tasks.append(SampleTask(f"det-{start // images_per_shard:05d}", "detection", chunk,
                                [_item_seed(seed, 0, start + i) for i in range(len(chunk))]))
    for start in range(0, len(landmark_items), faces_per_shard):
        chunk = list(landmark_items[start:start + faces_per_shard])
        tasks.append(SampleTask(f"lmk-{start // faces_per_shard:05d}", "landmark", chunk,
                                [_item_seed(seed, 1, start + i) for i in range(len(chunk))]))
    return tasks


def prepare_store(store: str | Path, settings: dict[str, Any]) -> bool:
    """Make ``store`` ready for generation with ``settings``; True when it is already finished with them.

    Shards written under other settings are removed; those written under the same ones are kept (resume).
    """
    store = Path(store)
    settings_path = store / "settings.json"
    text = json.dumps(settings, sort_keys=True, default=str)
    if store.is_dir():
        old = settings_path.read_text(encoding="utf-8") if settings_path.is_file() else None
        if old != text + "\n":
            shutil.rmtree(store)
        else:
            manifest = read_manifest(store)
            if manifest is not None:
                return True
    store.mkdir(parents=True, exist_ok=True)
    atomic_write_text(settings_path, text + "\n")
    return False


def _read_marker(store: Path, name: str) -> dict[str, Any]:
    return json.loads((store / f"{name}.json").read_text(encoding="utf-8"))


def _add_marker(summary: GenerationSummary, marker: dict[str, Any], log: BadInputLog) -> None:
    """Add one shard's counts to the summary and report its bad inputs through ``log``."""
    for kind, value in marker["counts"].items():
        summary.counts[kind] += value
    summary.images += marker.get("images", 0)
    summary.images_skipped += marker.get("images_skipped", 0)
    summary.landmark_faces += marker.get("landmark_faces", 0)
    summary.landmark_faces_skipped += marker.get("landmark_faces_skipped", 0)
    summary.faces.add(FaceCounts(**marker.get("faces", {})))
    for path, message in marker.get("problems", []):
        log.report(DataError(path, message))


def generate_samples(store: str | Path, size: int, detection_items: Sequence[DetectionItem],
                     landmark_items: Sequence[LandmarkItem], config: MTCNNConfig, stage: MTCNNStageConfig, *,
                     seed: int, workers: int = 0, log: BadInputLog | None = None, detect: DetectFn | None = None,
                     settings: dict[str, Any] | None = None, progress: bool = True) -> GenerationSummary:
    """Write the samples of one stage to ``store`` (resuming finished shards) and return the summary.

    Without ``detect`` (stage P) detection images are sampled by worker processes. With it (stages R/O)
    images are decoded by workers and the batched ``detect`` runs here; its boxes become extra samples.
    Bad inputs (unreadable images, boxes outside their image) go to ``log``: skipped and counted, or the
    first one raised when it is strict (or absent).
    """
    store = Path(store)
    log = log if log is not None else BadInputLog(strict=True)
    finished = prepare_store(store, {"size": size, "seed": seed, **(settings or {})})
    start = time.perf_counter()
    tasks = plan_tasks(detection_items, landmark_items, seed, config.shard_images)
    summary = GenerationSummary(reused=finished)
    todo = [] if finished else [t for t in tasks if not shard_is_complete(store, t.name)]
    done = {t.name for t in tasks} - {t.name for t in todo}
    for task in tasks:
        if task.name in done:
            _add_marker(summary, _read_marker(store, task.name), log)
    if finished:
        return summary
    crop_tasks = [t for t in todo if detect is None or t.kind == "landmark"]
    mine_tasks = [t for t in todo if detect is not None and t.kind == "detection"]
    bar = tqdm(total=sum(len(t.items) for t in todo), desc=f"samples {size}px", unit="item",
               disable=not progress, dynamic_ncols=True, leave=False)
    if crop_tasks:
        loader = DataLoader(_TaskRunner(crop_tasks, store, size, config, stage), batch_size=None,
                            num_workers=min(workers, len(crop_tasks)), collate_fn=keep_batch)
        sizes = {t.name: len(t.items) for t in crop_tasks}
        for marker in loader:
            _add_marker(summary, marker, log)
            bar.update(sizes[marker["name"]])
    for task in mine_tasks:
        _add_marker(summary, _mine_task(task, store, size, config, stage, detect, workers, bar), log)
    bar.close()
    write_manifest(store, size, [t.name for t in tasks], {"size": size})
    summary.seconds = time.perf_counter() - start
    return summary


def _mine_task(task: SampleTask, store: Path, size: int, config: MTCNNConfig, stage: MTCNNStageConfig,
               detect: DetectFn, workers: int, bar: Any) -> dict[str, Any]:
    """Stages R/O, one shard: run the earlier stages on the task's images in batches, label and crop."""
    rule = IouRule.from_config(config)
    loader = decoded_batches([item.image_path for item in task.items], config.mining_batch_images, min(workers, 2))
    parts, tally = [], _Tally()
    for batch in loader:
        readable = []
        for index, image, error in batch:
            if image is None:
                tally.skip("detection", task.items[index].image_path, error)
            else:
                readable.append((index, image))
        detections = detect([image for _, image in readable]) if readable else []
        for (index, image), mined in zip(readable, detections, strict=True):
            item = task.items[index]
            height, width = image.shape[:2]
            chosen, avoid, counts, bad = select_faces(item, width, height, config.min_face_size)
            tally.problems += [(item.image_path, message) for message in bad]
            tally.faces.add(counts)
            rng = np.random.default_rng(task.seeds[index])
            parts.append(detection_samples(image, chosen, avoid, size, stage, rule, rng, mined=mined,
                                            mirror=config.mirror))
            tally.images += 1
        bar.update(len(batch))
    return write_shard(store, task.name, concat_samples(parts, size), tally.marker())


# --- training-time augmentation -------------------------------------------------------------------------------


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of NHWC float images (edges replicated)."""
    radius = max(1, int(round(2.5 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps ** 2) / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)  # [3, 1, 1, k]
    y = F.pad(x.permute(0, 3, 1, 2), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(F.conv2d(y, kernel, groups=3), kernel.transpose(2, 3), groups=3)
    return y.permute(0, 2, 3, 1)


def augment_batch(images: torch.Tensor, kinds: torch.Tensor, jitter: float = 0.0, occlusion: float = 0.0,
                  blur: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Photometric jitter and blur for any sample, random occluders on face crops; uint8 [B, S, S, 3] in.

    ``jitter``: contrast scaled by up to 1 +- jitter and brightness moved by up to +-64 jitter levels, per
    sample. ``blur``: the probability of a Gaussian blur (sigma 0.5-2 px at 24 px, scaled with the size).
    ``occlusion``: the probability that a positive or part crop gets a flat rectangle of random colour
    over 25-50% of its side in each direction (faces half hidden by hands, hair or other people).
    Box and landmark targets are unchanged by all three. Returns a new float tensor on the input's device.
    """
    x = images.float()
    n, size = x.shape[0], x.shape[1]
    dev = x.device
    if jitter > 0:
        contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        brightness = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 64 * jitter
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast.to(dev) + mean + brightness.to(dev)).clamp_(0, 255)
    if blur > 0:
        level = torch.randint(0, 3, (n,), generator=generator)
        chosen = torch.rand(n, generator=generator) < blur
        for value, sigma in enumerate((0.5, 1.0, 2.0)):
            rows = torch.nonzero(chosen & (level == value)).flatten().to(dev)
            if len(rows):
                x[rows] = _gaussian_blur(x[rows], sigma * size / 24)
    if occlusion > 0:
        face = (kinds == POSITIVE) | (kinds == PART)
        chosen = face.cpu() & (torch.rand(n, generator=generator) < occlusion)
        rows = torch.nonzero(chosen).flatten()
        if len(rows):
            k = len(rows)
            extent = (torch.rand(k, 2, generator=generator) * 0.25 + 0.25) * size  # height, width
            start = torch.rand(k, 2, generator=generator) * (size - extent)
            grid = torch.arange(size, dtype=torch.float32)
            inside_y = (grid[None] >= start[:, :1]) & (grid[None] < start[:, :1] + extent[:, :1])
            inside_x = (grid[None] >= start[:, 1:]) & (grid[None] < start[:, 1:] + extent[:, 1:])
            mask = (inside_y[:, :, None] & inside_x[:, None, :])[..., None].to(dev)
            colour = (torch.rand(k, 1, 1, 3, generator=generator) * 255).to(dev)
            x[rows.to(dev)] = torch.where(mask, colour, x[rows.to(dev)])
    return x
