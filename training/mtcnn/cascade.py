"""The cascade trained so far, run over images: the detector it makes (for mining and evaluation), the
evaluation of MTCNN training on the validation split (per-stage recall/precision, AP, landmark error) and on
FDDB, and the nets' input scaling."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from config import Config
from datasets.decoding import decoded_batches
from datasets.fddb import fddb_fold_files, fddb_image_path, read_fddb_ellipses
from models.detector import STAGES, DetectorSettings, FaceDetector
from models.mtcnn import NET_INPUT_SIZE, PIXEL_MEAN, PIXEL_SCALE, build_net
from training.engine import unwrap
from training.mtcnn.data import MTCNNData
from training.mtcnn.evaluation import (
    CascadeEvaluation,
    ellipse_rect_iou,
    fddb_tpr_at_fp,
    landmark_nme,
    match_detections,
    save_pr_curves,
)
from training.mtcnn.samples import LandmarkItem, target_frame
from utils.area_resize import crop_resize, integral_image
from utils.atomic import atomic_write_json
from utils.boxes import decode_landmarks, square_boxes
from utils.errors import BadInputLog, DataError
from utils.images import read_image


def make_detector(nets: dict[str, nn.Module], config: Config, device: torch.device,
                  thresholds: tuple[float, float, float] | None = None) -> FaceDetector:
    """A FaceDetector from the nets trained so far (later positions get untrained nets that are never run)."""
    filled = [nets[name] if name in nets else build_net(name) for name in STAGES]
    settings = DetectorSettings.from_config(config.detector)
    if thresholds is not None:
        settings.thresholds = thresholds
    return FaceDetector(*filled, settings=settings, device=device)


def detect_all_stages(detector: FaceDetector, images: list[np.ndarray], until: str
                      ) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Run the cascade once and keep each stage's output per image: ``[{stage: (boxes, scores)}]``."""
    stages = STAGES[:STAGES.index(until) + 1]
    per_image: list[dict[str, tuple[np.ndarray, np.ndarray]]] = [{} for _ in images]
    with torch.inference_mode():
        prep = detector.prepare(images)
        cands = None
        for stage in stages:
            if stage == "pnet":
                cands = detector.pnet_stage(prep)
            elif stage == "rnet":
                cands = detector.rnet_stage(prep, cands)
            else:
                cands = detector.onet_stage(prep, cands)
            for i, det in enumerate(detector.split(prep, cands, stage)):
                per_image[i][stage] = (det.boxes.cpu().numpy(), det.scores.cpu().numpy())
    return per_image


def image_batches(paths: list[str], batch: int, workers: int, log: BadInputLog
                  ) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Yield lists of (index, image) in order, decoded in ``workers`` processes; bad files go to ``log``."""
    for items in decoded_batches(paths, batch, workers):
        good = []
        for index, image, error in items:
            if image is None:
                log.report(DataError(paths[index], error))
            else:
                good.append((index, image))
        yield good


def landmark_error(net: nn.Module, items: list[LandmarkItem], device: torch.device, log: BadInputLog,
                   batch: int = 256) -> dict[str, float]:
    """Landmark error of one net on faces cropped square around their boxes: mean NME (inter-ocular) and
    failures > 0.1."""
    size = NET_INPUT_SIZE[type(net).__name__.lower()]
    net = net.to(device).train()  # train mode: plain heads; no layer here behaves differently in eval
    errors = []
    for start in range(0, len(items), batch):
        crops, frames, truth = [], [], []
        for item in items[start:start + batch]:
            try:
                image = read_image(item.image_path)
            except DataError as error:
                log.report(error)
                continue
            region = square_boxes(torch.as_tensor(item.box, dtype=torch.float64)[None]).round().long().numpy()
            crops.append(crop_resize(integral_image(image), region, size)[0])
            frames.append(region[0])
            truth.append(item.landmarks)
        if not crops:
            continue
        with torch.no_grad():
            out = net(to_net_input(torch.from_numpy(np.stack(crops)), device))
        frame, inclusive = target_frame(np.stack(frames), size)
        points = decode_landmarks(frame, out.landmarks.reshape(len(crops), 10).double().cpu(), inclusive=inclusive)
        errors.append(landmark_nme(points.numpy(), np.stack(truth)))
    nme = np.concatenate(errors) if errors else np.zeros(0)
    return {"landmark_nme": float(nme.mean()) if len(nme) else float("nan"),
            "landmark_failure_rate": float((nme > 0.1).mean()) if len(nme) else float("nan"),
            "landmark_faces": int(len(nme))}


def evaluation_detector(nets: dict[str, nn.Module], config: Config, until: str, device: torch.device) -> FaceDetector:
    """The cascade up to ``until`` for evaluation: the detector's thresholds, except that a final O-Net keeps
    faces down to ``mtcnn.eval_score_floor`` so that AP ranks the whole list."""
    thresholds = tuple(config.detector.thresholds)
    if until == "onet":
        thresholds = (thresholds[0], thresholds[1], min(thresholds[2], config.mtcnn.eval_score_floor))
    return make_detector(nets, config, device, thresholds)  # type: ignore[arg-type]


def evaluate(nets: dict[str, nn.Module], data: MTCNNData, until: str, config: Config, out_dir: Path | None,
             log: BadInputLog, device: torch.device, workers: int = 0) -> dict[str, Any]:
    """Run the cascade up to ``until`` over the validation split; report, write eval.json and pr_curve.png.

    Precision, recall and mean IoU are at the detector's threshold for that stage; AP ranks every face
    the evaluation detector returns. Landmark error is measured when the last net has a landmark head.
    """
    m = config.mtcnn
    stages = STAGES[:STAGES.index(until) + 1]
    detector = evaluation_detector(nets, config, until, device)
    operating = config.detector.thresholds[STAGES.index(until)]
    evaluation = CascadeEvaluation(stages, m.eval_iou, config.detector.min_face_size, tuple(data.keep), operating)
    start = time.perf_counter()
    for batch in image_batches([item.image_path for item in data.val], m.eval_batch_images, workers, log):
        if not batch:
            continue
        results = detect_all_stages(detector, [image for _, image in batch], until)
        for (index, _), found in zip(batch, results):
            item = data.val[index]
            evaluation.add(found, item.boxes, item.valid, {k: masks[index] for k, masks in data.keep.items()})
    report = evaluation.report()
    report["seconds"] = time.perf_counter() - start
    if unwrap(nets[until]).has_landmarks and data.landmarks_test:
        report.update(landmark_error(nets[until], data.landmarks_test, device, log))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "eval.json", report)
        save_pr_curves(out_dir / "pr_curve.png", evaluation.curves(), f"MTCNN up to {until} (IoU {m.eval_iou:g})")
    return report


def evaluate_fddb(nets: dict[str, nn.Module], config: Config, device: torch.device, folds_dir: str | Path,
                  images_root: str | Path, log: BadInputLog, workers: int = 0, batch: int = 8) -> dict[str, float]:
    """FDDB discrete protocol over every fold file: true-positive rate at 1,000 and 2,000 false positives."""
    detector = evaluation_detector(nets, config, "onet", device)
    iou_threshold = config.mtcnn.eval_iou
    annotations = [a for fold in fddb_fold_files(folds_dir) for a in read_fddb_ellipses(fold, log=log)]
    paths = [str(fddb_image_path(images_root, a.image_path)) for a in annotations]
    matches = []
    for chunk in image_batches(paths, batch, workers, log):
        if not chunk:
            continue
        found = detector.detect([image for _, image in chunk])
        for (index, _), det in zip(chunk, found):
            boxes, scores = det.boxes.cpu().numpy(), det.scores.cpu().numpy()
            overlaps = ellipse_rect_iou(boxes, annotations[index].ellipses)
            matches.append(match_detections(boxes, scores, annotations[index].boxes, None, iou_threshold, overlaps))
    rates = fddb_tpr_at_fp(matches, (1000, 2000))
    return {"fddb_images": len(matches), "fddb_faces": sum(m.faces for m in matches),
            "fddb_tpr_at_1000_fp": rates[1000], "fddb_tpr_at_2000_fp": rates[2000]}


def to_net_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[B, S, S, 3] RGB pixels (uint8 or float 0..255) -> float [B, 3, S, S] as (x - 127.5) / 128 on ``device``."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    return (x - PIXEL_MEAN) * PIXEL_SCALE

