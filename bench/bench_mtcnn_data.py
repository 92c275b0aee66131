"""Benchmark: MTCNN sample generation (crops/s) and hard-example mining (images/s), ours against a plain loop.

Both sides do the same work on the same decoded images (decoding is timed once, apart, and shared):

* stage-P samples: ours is ``training.mtcnn.samples.detection_samples`` (all crops of an image drawn,
  labelled with one ``box_iou`` call and cut out in one summed-area-table gather); the baseline draws
  one crop at a time, computes its IoU with NumPy, crops with slicing (a view; a padded copy only for a
  crop crossing the border) and resizes with ``cv2.resize``
  (INTER_AREA averages areas like ours, with fractional weights at the bin edges where ours, like
  adaptive pooling, uses whole pixels: about one grey level apart on average, identical at integer
  scales; INTER_LINEAR, what the public scripts use, is cheaper but aliased, and is shown as well),
  retrying negatives until the quota is met, as the public MTCNN data scripts do.
* stage-R/O mining: both run the same batched ``FaceDetector`` stages (same weights, thresholds and
  batches); ours labels every candidate of an image at once and crops the kept ones from the integral
  image the cascade built (on its device), the baseline loops over the boxes (IoU, label, crop region,
  resize, targets), as the public scripts do. Reported end to end (networks included) and for the
  per-box work alone, since the networks' time is common to both.

    python -m bench.bench_mtcnn_data                       # WIDER subset (../shared/data) if present
    python -m bench.bench_mtcnn_data --images 40 --threads 1 --data /path/to/wider_root
    python -m bench.bench_mtcnn_data --device cuda         # mining on the GPU (the loop still crops on the CPU)

Timings on a shared machine are noisy; the table says which device and thread count produced them.
"""
from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from config import Config, MTCNNConfig
from datasets.wider import read_wider_annotations, wider_split_paths
from models.detector import DetectorSettings, FaceDetector
from models.weights import load_net
from training.mtcnn.mining import mining_function
from training.mtcnn.packed import NEGATIVE, PART, POSITIVE
from training.mtcnn.samples import DetectionItem, IouRule, detection_samples, select_faces
from utils.images import read_image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "wider_face_train_subset"
DEFAULT_WEIGHTS = REPO.parent / "shared" / "pretrained" / "mtcnn_facenet_pytorch"


# --- the per-crop / per-box baseline ------------------------------------------------------------------------


def _iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with many (NumPy), as the public scripts compute it per crop."""
    if not len(boxes):
        return np.zeros(0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    w = np.maximum(0, np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]))
    h = np.maximum(0, np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]))
    inter = w * h
    return inter / (area + areas - inter)


def _crop_one(image: np.ndarray, region: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    """Crop one integer region and resize it: a view when it lies inside the image (as the public scripts
    slice), a zero-padded copy only when it crosses the border."""
    x0, y0, x1, y1 = (int(v) for v in region)
    height, width = image.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return cv2.resize(image[y0:y1, x0:x1], (size, size), interpolation=interpolation)
    patch = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx1 > sx0 and sy1 > sy0:
        patch[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def _target_one(region: np.ndarray, face: np.ndarray, size: int) -> np.ndarray:
    """Box offsets of one crop in the detector's frame, plain arithmetic (as the public scripts compute them)."""
    x0, y0, x1, y1 = region
    side = x1 - x0
    if size == 12:
        frame, width = np.array([x0 + side / 12, y0 + side / 12, x1, y1]), side * 11 / 12
    else:
        frame, width = np.array([x0 + 1, y0 + 1, x1, y1]), side
    return (face - frame) / width


def baseline_stage_p(image: np.ndarray, faces: np.ndarray, avoid: np.ndarray, size: int, stage, rule: IouRule,
                     rng: np.random.Generator, interpolation: int) -> int:
    """The public scripts' loop: one crop at a time (draw, IoU, crop, resize, label). Returns crops kept."""
    height, width = image.shape[:2]
    crops, kinds, targets = [], [], []
    max_size = min(width, height) // 2
    negatives = tries = 0
    while max_size > size and negatives < stage.negatives_per_image and tries < 3 * stage.negatives_per_image:
        tries += 1
        side = int(rng.integers(size, max_size))
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        region = np.array([x, y, x + side, y + side])
        if _iou_one(region, avoid).max(initial=0) < rule.negative:
            crops.append(_crop_one(image, region, size, interpolation))
            kinds.append(NEGATIVE)
            negatives += 1
    for face in faces:
        w, h = face[2] - face[0], face[3] - face[1]
        near = 0
        for _ in range(3 * stage.negatives_near_face):
            if near >= stage.negatives_near_face or max_size <= size:
                break
            side = int(rng.integers(size, max_size))
            dx = int(rng.integers(max(-side, -face[0]), max(w, max(-side, -face[0]) + 1)))
            dy = int(rng.integers(max(-side, -face[1]), max(h, max(-side, -face[1]) + 1)))
            x, y = int(max(0, face[0] + dx)), int(max(0, face[1] + dy))
            if x + side > width or y + side > height:
                continue
            region = np.array([x, y, x + side, y + side])
            if _iou_one(region, avoid).max(initial=0) < rule.negative:
                crops.append(_crop_one(image, region, size, interpolation))
                kinds.append(NEGATIVE)
                near += 1
        for _ in range(stage.crops_per_face):
            low = int(min(w, h) * 0.8)
            side = int(rng.integers(low, max(int(np.ceil(1.25 * max(w, h))), low + 1)))
            x = int(face[0] + w / 2 + rng.uniform(-0.2, 0.2) * w - side / 2)
            y = int(face[1] + h / 2 + rng.uniform(-0.2, 0.2) * h - side / 2)
            if x < 0 or y < 0 or x + side > width or y + side > height or side < 1:
                continue
            region = np.array([x, y, x + side, y + side])
            iou = _iou_one(region, faces)
            best = int(iou.argmax())
            if iou[best] >= rule.part:
                patch = _crop_one(image, region, size, interpolation)
                target_face = faces[best]
                if rng.random() < 0.5:
                    patch = patch[:, ::-1]
                    axis = region[0] + region[2]
                    target_face = np.array([axis - target_face[2], target_face[1],
                                            axis - target_face[0], target_face[3]])
                crops.append(patch)
                kinds.append(POSITIVE if iou[best] >= rule.positive else PART)
                targets.append(_target_one(region, target_face, size))
    return len(crops)


def baseline_mined(image: np.ndarray, faces: np.ndarray, avoid: np.ndarray, boxes: np.ndarray, regions: np.ndarray,
                   size: int, rule: IouRule, limit: int, rng: np.random.Generator) -> int:
    """The public scripts' loop over one image's detections: IoU, label, crop, resize, targets per box."""
    kept = negatives = 0
    for box, region in zip(boxes, regions):
        iou_all = _iou_one(box, avoid)
        iou = _iou_one(box, faces)
        best = int(iou.argmax()) if len(iou) else -1
        if iou_all.max(initial=0) < rule.negative:
            if negatives >= limit:
                continue
            negatives += 1
            _crop_one(image, region, size, cv2.INTER_AREA)
        elif best >= 0 and iou[best] >= rule.part:
            _crop_one(image, region, size, cv2.INTER_AREA)
            width = box[2] - box[0] + 1
            _ = (faces[best] - box) / width  # offsets in the candidate's frame
        else:
            continue
        kept += 1
    return kept


# --- the runs -----------------------------------------------------------------------------------------------


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - start[0], time.process_time() - start[1]


def load_images(root: Path, count: int, min_face: float) -> tuple[list[np.ndarray], list[tuple], float]:
    """Decode the first ``count`` images of the train annotations; returns images, (faces, avoid), decode seconds."""
    images_dir, annotation_file = wider_split_paths(root, "train")
    annotations = read_wider_annotations(annotation_file)[:count]
    start = time.perf_counter()
    images = [read_image(images_dir / a.image_path) for a in annotations]
    decode = time.perf_counter() - start
    geometry = []
    for a, image in zip(annotations, images):
        item = DetectionItem(a.image_path, a.boxes, a.valid)
        faces, avoid, _, _ = select_faces(item, image.shape[1], image.shape[0], min_face)
        geometry.append((faces, avoid))
    return images, geometry, decode


def bench_stage_p(images: list[np.ndarray], geometry: list[tuple], config: MTCNNConfig,
                  repeats: int) -> dict[str, tuple]:
    """crops/s of ours and the loop (area and linear resizing) over the same images."""
    rule, stage = IouRule.from_config(config), config.pnet
    results = {}
    for name in ("ours", "loop_area", "loop_linear"):
        best = None
        for _ in range(repeats):
            rng = np.random.default_rng(0)
            crops = 0
            start = _clock()
            for image, (faces, avoid) in zip(images, geometry):
                if name == "ours":
                    crops += len(detection_samples(image, faces, avoid, 12, stage, rule, rng)["kinds"])
                else:
                    mode = cv2.INTER_AREA if name == "loop_area" else cv2.INTER_LINEAR
                    crops += baseline_stage_p(image, faces, avoid, 12, stage, rule, rng, mode)
            wall, cpu = _since(start)
            if best is None or wall < best[1]:
                best = (crops, wall, cpu)
        results[name] = best
    return results


def bench_mining(images: list[np.ndarray], geometry: list[tuple], config: Config, weights: Path, until: str,
                 batch: int, device: str) -> dict[str, tuple]:
    """images/s of mining for the stage after ``until``: networks + per-box work, ours and the loop.

    Ours cuts its crops from the integral images the cascade built, on ``device``; the loop crops on the CPU.
    """
    m = config.mtcnn
    nets = [load_net(weights, name) for name in ("pnet", "rnet", "onet")]
    settings = DetectorSettings.from_config(config.detector)
    settings.thresholds = (m.mining_thresholds[0], m.mining_thresholds[1], config.detector.thresholds[2])
    detector = FaceDetector(*nets, settings=settings, device=device)
    detect = mining_function(detector, until)
    size = 24 if until == "pnet" else 48
    stage, rule = (m.rnet if until == "pnet" else m.onet), IouRule.from_config(m)
    detect(images[:1])  # warm-up
    start = _clock()
    found = []
    for first in range(0, len(images), batch):
        found += detect(images[first:first + batch])
    net_wall, net_cpu = _since(start)
    boxes = sum(len(candidates.boxes) for candidates in found)
    results = {"networks": (boxes, net_wall, net_cpu)}
    mined_only = replace(stage, negatives_per_image=0, negatives_near_face=0, crops_per_face=0)
    for name in ("ours", "loop"):
        rng = np.random.default_rng(0)
        kept = 0
        start = _clock()
        for image, (faces, avoid), mined in zip(images, geometry, found):
            if name == "ours":
                kept += len(detection_samples(image, faces, avoid, size, mined_only, rule, rng, mined=mined)["kinds"])
            else:
                kept += baseline_mined(image, faces, avoid, mined.boxes, mined.regions, size, rule,
                                       stage.mined_negatives_per_image, rng)
        wall, cpu = _since(start)
        results[name] = (kept, wall, cpu)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks and print the README table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="WIDER-layout root (WIDER_train/, wider_face_split/)")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                        help="folder with pnet.pt, rnet.pt, onet.pt for mining (or 'facenet-pytorch')")
    parser.add_argument("--images", type=int, default=40, help="images to use")
    parser.add_argument("--repeats", type=int, default=2, help="stage-P repeats (best wall time kept)")
    parser.add_argument("--batch", type=int, default=8, help="images per detector call while mining")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--device", default="cpu",
                        help="where the cascade runs while mining (cpu, cuda): ours crops there too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    config = Config()
    images, geometry, decode = load_images(Path(args.data), args.images, config.mtcnn.min_face_size)
    pixels = sum(i.shape[0] * i.shape[1] for i in images) / len(images)
    print(f"{len(images)} images from {args.data} (mean {pixels / 1e6:.2f} MP, "
          f"decoding {decode / len(images) * 1e3:.1f} ms per image, not counted below); "
          f"{platform.processor() or platform.machine()}, torch threads {args.threads}, mining on {args.device}")

    p = bench_stage_p(images, geometry, config.mtcnn, args.repeats)
    print("\n| stage-P samples (12 px) | crops | wall s | crops/s | CPU s | speed-up (wall) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, label in (("ours", "ours (vectorised)"),
                        ("loop_area", "per-crop loop, cv2 INTER_AREA (area averages, like ours)"),
                        ("loop_linear", "per-crop loop, cv2 INTER_LINEAR (public scripts)")):
        crops, wall, cpu = p[name]
        speed = p[name][0] / wall
        ratio = (p["ours"][0] / p["ours"][1]) / speed
        print(f"| {label} | {crops:,} | {wall:.2f} | {speed:,.0f} | {cpu:.2f} "
              f"| {'' if name == 'ours' else f'{ratio:.1f}x'} |")

    for until, label in (("pnet", "stage-R mining (P-Net, 24 px)"), ("rnet", "stage-O mining (P+R-Net, 48 px)")):
        r = bench_mining(images, geometry, config, Path(args.weights) if args.weights != "facenet-pytorch"
                         else args.weights, until, args.batch, args.device)
        boxes, net_wall, net_cpu = r["networks"]
        n = len(images)
        print(f"\n| {label}: {boxes:,} candidate boxes | per-box work s | boxes/s | images/s incl. networks "
              "| speed-up per-box | speed-up end to end |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, text in (("ours", "ours (vectorised)"), ("loop", "per-box loop")):
            _, wall, _ = r[name]
            ours_wall = r["ours"][1]
            per_box = "" if name == "ours" else f"{wall / ours_wall:.1f}x"
            end = "" if name == "ours" else f"{(net_wall + wall) / (net_wall + ours_wall):.2f}x"
            print(f"| {text} | {wall:.2f} | {boxes / wall:,.0f} | {n / (net_wall + wall):.2f} | {per_box} | {end} |")
        print(f"| (networks, shared by both) | {net_wall:.2f} s wall, {net_cpu:.2f} s CPU | | | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
