"""Face-detection metrics: precision, recall, AP and mean IoU at an IoU threshold, landmark error, FDDB TPR.

Detections are matched to ground truth per image, greedily by descending score (the PASCAL VOC / WIDER
FACE rule): a detection is a hit when its best-overlapping unmatched face reaches the IoU threshold.
Faces marked *ignored* (smaller than the minimum size, outside an easy/medium/hard keep-list) are
neither hits nor misses, and a detection that lands on one is neither a hit nor a false alarm. AP is the
area under the precision-recall curve with precision made monotone (all-point interpolation). FDDB
faces are ellipses; overlap with a rectangle is measured on a sampling grid, and the figure reported is
the true-positive rate at a given number of false positives over the whole set.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from datasets.fddb import ellipse_to_box
from utils.plots import plot_pr_curves


@dataclass
class ImageMatch:
    """One image's detections after matching: score, hit flag, ignored flag and IoU with the matched face."""

    scores: np.ndarray  # float64 [D]
    hits: np.ndarray  # bool [D]
    ignored: np.ndarray  # bool [D]
    ious: np.ndarray  # float64 [D], IoU with the matched face (0 when not a hit)
    faces: int  # faces that count (not ignored)


def longer_sides(boxes: np.ndarray) -> np.ndarray:
    """The longer side of each x1, y1, x2, y2 box (the 'face size' minimum sizes are compared with)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def match_detections(boxes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray, gt_ignore: np.ndarray | None = None,
                     iou_threshold: float = 0.5, overlaps: np.ndarray | None = None) -> ImageMatch:
    """Match one image's detections to its faces greedily by score; ``overlaps`` [D, G] replaces box IoU."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_ignore = np.zeros(len(gt_boxes), dtype=bool) if gt_ignore is None else np.asarray(gt_ignore, dtype=bool)
    hits = np.zeros(len(boxes), dtype=bool)
    ignored = np.zeros(len(boxes), dtype=bool)
    ious = np.zeros(len(boxes), dtype=np.float64)
    if len(boxes) and len(gt_boxes):
        if overlaps is None:
            overlaps = box_iou(torch.from_numpy(boxes), torch.from_numpy(gt_boxes)).numpy()
        taken = np.zeros(len(gt_boxes), dtype=bool)
        for d in np.argsort(-scores, kind="stable"):
            row = overlaps[d]
            free = np.where(~taken & ~gt_ignore & (row >= iou_threshold), row, -1.0)
            g = int(free.argmax())
            if free[g] >= 0:
                taken[g] = True
                hits[d] = True
                ious[d] = row[g]
            elif np.any(gt_ignore & (row >= iou_threshold)):
                ignored[d] = True
    return ImageMatch(scores, hits, ignored, ious, int((~gt_ignore).sum()))


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under a PR curve (recall ascending) after making precision monotone (VOC all-point AP)."""
    r = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    return float(np.sum((r[1:] - r[:-1]) * p[1:]))


@dataclass
class DetectionMetrics:
    """Summary of one evaluation: counts, precision and recall of all detections, AP and mean IoU of hits."""

    images: int
    faces: int
    detections: int
    hits: int
    false_alarms: int
    precision: float
    recall: float
    ap: float
    mean_iou: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{prefix + name: value}`` for logs and JSON reports."""
        return {prefix + k: v for k, v in asdict(self).items()}


@dataclass
class DetectionEvaluator:
    """Accumulates per-image matches and reports precision, recall, AP, mean IoU and the PR curve."""

    iou_threshold: float = 0.5
    min_face_size: float = 0.0  # faces (and unmatched detections) with a smaller longer side are ignored
    matches: list[ImageMatch] = field(default_factory=list)

    def add(self, boxes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray,
            gt_ignore: np.ndarray | None = None) -> ImageMatch:
        """Match one image's detections (x1, y1, x2, y2) against its faces and remember the result."""
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        ignore = np.zeros(len(gt_boxes), dtype=bool) if gt_ignore is None else np.asarray(gt_ignore, dtype=bool).copy()
        ignore |= longer_sides(gt_boxes) < self.min_face_size
        match = match_detections(boxes, scores, gt_boxes, ignore, self.iou_threshold)
        small = longer_sides(boxes) < self.min_face_size
        match.ignored |= small & ~match.hits
        self.matches.append(match)
        return match

    def _flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        keep = [(~m.ignored) for m in self.matches]
        scores = np.concatenate([m.scores[k] for m, k in zip(self.matches, keep)]) if self.matches else np.zeros(0)
        hits = np.concatenate([m.hits[k] for m, k in zip(self.matches, keep)]) if self.matches else np.zeros(0, bool)
        ious = np.concatenate([m.ious[k] for m, k in zip(self.matches, keep)]) if self.matches else np.zeros(0)
        return scores, hits, ious, sum(m.faces for m in self.matches)

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(precision, recall, score thresholds), detections taken in descending score order."""
        scores, hits, _, faces = self._flat()
        order = np.argsort(-scores, kind="stable")
        tp = np.cumsum(hits[order])
        fp = np.cumsum(~hits[order])
        recall = tp / max(faces, 1)
        precision = tp / np.maximum(tp + fp, 1)
        return precision, recall, scores[order]

    def summary(self) -> DetectionMetrics:
        """Precision and recall of all detections kept, AP over the PR curve, mean IoU of hits."""
        scores, hits, ious, faces = self._flat()
        precision, recall, _ = self.pr_curve()
        n_hits = int(hits.sum())
        return DetectionMetrics(
            images=len(self.matches), faces=faces, detections=len(scores), hits=n_hits,
            false_alarms=int(len(scores) - n_hits),
            precision=float(n_hits / len(scores)) if len(scores) else 0.0,
            recall=float(n_hits / faces) if faces else 0.0,
            ap=average_precision(recall, precision) if len(scores) else 0.0,
            mean_iou=float(ious[hits].mean()) if n_hits else 0.0,
        )


def landmark_nme(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-face landmark error: mean point distance over the inter-ocular distance; [N, 5, 2] each, eyes first."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, 5, 2)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 5, 2)
    inter_ocular = np.linalg.norm(truth[:, 0] - truth[:, 1], axis=1)
    errors = np.linalg.norm(predicted - truth, axis=2).mean(axis=1)
    return errors / np.maximum(inter_ocular, 1e-6)


# --- FDDB: ellipse faces, TPR at a number of false positives -------------------------------------------


def ellipse_rect_iou(rects: np.ndarray, ellipses: np.ndarray, grid: int = 64) -> np.ndarray:
    """IoU [D, E] of rectangles with ellipse regions, measured on a ``grid`` x ``grid`` sampling of each union box."""
    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    e = np.asarray(ellipses, dtype=np.float64).reshape(-1, 5)
    if not len(rects) or not len(e):
        return np.zeros((len(rects), len(e)))
    eb = ellipse_to_box(e).astype(np.float64)
    lo = np.minimum(rects[:, None, :2], eb[None, :, :2])  # [D, E, 2]
    hi = np.maximum(rects[:, None, 2:], eb[None, :, 2:])
    t = (np.arange(grid) + 0.5) / grid
    xs = lo[..., 0, None] + (hi[..., 0] - lo[..., 0])[..., None] * t  # [D, E, grid]
    ys = lo[..., 1, None] + (hi[..., 1] - lo[..., 1])[..., None] * t
    in_rect = ((xs >= rects[:, None, 0, None]) & (xs <= rects[:, None, 2, None]))[..., None, :] & \
              ((ys >= rects[:, None, 1, None]) & (ys <= rects[:, None, 3, None]))[..., :, None]  # [D, E, gy, gx]
    a, b, theta, cx, cy = (v[None, :, None, None] for v in e.T)
    dx, dy = xs[..., None, :] - cx, ys[..., :, None] - cy
    # Coordinates along the major (u) and minor (v) axes.
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    in_ellipse = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    inter = (in_rect & in_ellipse).sum(axis=(2, 3))
    union = (in_rect | in_ellipse).sum(axis=(2, 3))
    return inter / np.maximum(union, 1)


def fddb_tpr_at_fp(matches: Sequence[ImageMatch], false_positives: Sequence[int] = (1000, 2000)) -> dict[int, float]:
    """FDDB discrete score: true-positive rate once ``k`` false positives are allowed (the final rate if never
    reached)."""
    scores = np.concatenate([m.scores[~m.ignored] for m in matches]) if matches else np.zeros(0)
    hits = np.concatenate([m.hits[~m.ignored] for m in matches]) if matches else np.zeros(0, bool)
    faces = max(sum(m.faces for m in matches), 1)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    fp = np.cumsum(~hits[order])
    result = {}
    for k in false_positives:
        within = np.flatnonzero(fp <= k)
        result[int(k)] = float(tp[within[-1]] / faces) if len(within) else 0.0
    return result


# --- plots ------------------------------------------------------------------------------------------------


def save_pr_curves(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> Path:
    """Write a PNG of detection precision-recall curves (name -> (precision, recall)) with AP in the legend."""
    return plot_pr_curves(path, {name: (precision, recall, average_precision(recall, precision) if len(recall) else 0.0)
                                 for name, (precision, recall) in curves.items()}, title)


# --- a cascade's evaluation: every stage, the whole split and the official subsets -------------------------

# The target figure of each stage (README, "Train a detector"): P-Net must keep nearly every face for the later
# stages, R-Net and O-Net must remove the false candidates.
STAGE_TARGETS = {"pnet": ("recall", 0.90), "rnet": ("precision", 0.95), "onet": ("precision", 0.98)}


@dataclass
class CascadeEvaluation:
    """Per-stage evaluators over one split, plus one per named subset (WIDER easy/medium/hard keep-lists).

    Faces not ``valid`` (flagged invalid, zero size) and faces below ``min_face_size`` are ignored; in a
    subset, faces outside its keep-list are ignored too (the official rule; no size floor there).
    AP ranks every detection the last stage returns (WIDER and VOC evaluate the whole ranked list);
    precision, recall and mean IoU are those of the detections scoring at least ``operating_threshold``
    (the detector's own threshold, where the last stage was run with a lower one to rank more).
    """

    stages: tuple[str, ...]
    iou_threshold: float = 0.5
    min_face_size: float = 0.0
    subsets: tuple[str, ...] = ()
    operating_threshold: float = 0.0
    per_stage: dict[str, DetectionEvaluator] = field(default_factory=dict)
    per_subset: dict[str, DetectionEvaluator] = field(default_factory=dict)
    ranked: DetectionEvaluator = field(default=None)  # the last stage, every detection (for AP)

    def __post_init__(self) -> None:
        self.per_stage = {s: DetectionEvaluator(self.iou_threshold, self.min_face_size) for s in self.stages}
        self.per_subset = {s: DetectionEvaluator(self.iou_threshold, 0.0) for s in self.subsets}
        self.ranked = DetectionEvaluator(self.iou_threshold, self.min_face_size)

    def add(self, detections: dict[str, tuple[np.ndarray, np.ndarray]], gt_boxes: np.ndarray, valid: np.ndarray,
            keep: dict[str, np.ndarray] | None = None) -> None:
        """One image: ``detections[stage] = (boxes, scores)``; ``keep[subset]`` = bool mask of faces that count."""
        ignore = ~np.asarray(valid, dtype=bool)
        last = self.stages[-1]
        for stage, evaluator in self.per_stage.items():
            boxes, scores = detections[stage]
            if stage == last:
                self.ranked.add(boxes, scores, gt_boxes, ignore)
                operating = np.asarray(scores) >= self.operating_threshold
                boxes, scores = np.asarray(boxes)[operating], np.asarray(scores)[operating]
            evaluator.add(boxes, scores, gt_boxes, ignore)
        for subset, evaluator in self.per_subset.items():
            evaluator.add(*detections[last], gt_boxes, ignore | ~np.asarray((keep or {})[subset], dtype=bool))

    def report(self) -> dict[str, object]:
        """Metrics of the last stage, per-stage recall/precision beside the stage targets, subsets' AP."""
        last = self.stages[-1]
        operating = self.per_stage[last].summary()
        report: dict[str, object] = {"iou_threshold": self.iou_threshold, "min_face_size": self.min_face_size,
                                     "operating_threshold": self.operating_threshold, **operating.as_dict()}
        ranked = self.ranked.summary()
        report.update(ap=ranked.ap, ranked_detections=ranked.detections, ranked_recall=ranked.recall,
                      ap_at_operating_threshold=operating.ap)
        stages = {}
        for stage, evaluator in self.per_stage.items():
            summary = evaluator.summary()
            entry = {"recall": summary.recall, "precision": summary.precision, "ap": summary.ap,
                     "detections": summary.detections}
            if stage in STAGE_TARGETS:
                entry["target"] = {STAGE_TARGETS[stage][0]: STAGE_TARGETS[stage][1]}
            stages[stage] = entry
        report["stages"] = stages
        report["subsets"] = {name: e.summary().ap for name, e in self.per_subset.items()}
        return report

    def curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(precision, recall) per stage and subset, for the PR-curve plot."""
        out = {}
        named = [*self.per_stage.items(), (f"{self.stages[-1]} ranked", self.ranked),
                 *((f"{self.stages[-1]} {k}", v) for k, v in self.per_subset.items())]
        for name, evaluator in named:
            precision, recall, _ = evaluator.pr_curve()
            out[name] = (precision, recall)
        return out


def format_report(report: dict[str, object]) -> list[str]:
    """Readable lines for a ``CascadeEvaluation.report()``: AP, precision, recall, mean IoU, per-stage table."""
    lines = [f"AP@{report['iou_threshold']:.2f} {report['ap']:.4f} ({report['ranked_detections']} ranked detections); "
             f"at score >= {report['operating_threshold']:g}: precision {report['precision']:.4f}  "
             f"recall {report['recall']:.4f}  mean IoU {report['mean_iou']:.4f}  "
             f"AP {report['ap_at_operating_threshold']:.4f}  "
             f"({report['faces']} faces >= {report['min_face_size']:g} px, {report['images']} images, "
             f"{report['detections']} detections)"]
    for stage, entry in report["stages"].items():  # type: ignore[union-attr]
        target = entry.get("target", {})
        note = ", ".join(f"target {k} ~{v:.0%}" for k, v in target.items())
        lines.append(f"  after {stage}: recall {entry['recall']:.4f}  precision {entry['precision']:.4f}  "
                     f"({entry['detections']} boxes){'  ' + note if note else ''}")
    for subset, ap in report.get("subsets", {}).items():  # type: ignore[union-attr]
        lines.append(f"  WIDER {subset}: AP {ap:.4f}")
    return lines
