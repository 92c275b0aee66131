"""Speed and agreement of our FaceDetector against facenet-pytorch 2.6.0's MTCNN, same images, weights, threads.

Run (from the repo root; facenet-pytorch comes from ``pip install --no-deps -r requirements-reference.txt``):

    .venv/bin/python -m bench.bench_detector --threads 2 --repeats 3

Images: ``../shared/data/photos`` plus 50 WIDER FACE train images spread evenly over the subset (on
CUDA also 4 batches of 16 WIDER images of one size, 1024x768). Both
detectors run in this process, one image at a time, alternating which goes first; each image's time is
its fastest of ``--repeats`` runs, so load from other processes distorts the ratio as little as possible.
Per-stage times come from wrapping facenet-pytorch's networks, resizing and NMS calls (nothing in
site-packages is edited) and from our ``StageTimer``. ``--device all`` adds the CUDA runs when a GPU is
present. Prints markdown tables; ``--json FILE`` also saves the numbers.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from models.detector import DetectorSettings, FaceDetector, StageTimer
from models.weights import original_weight_paths, read_state_dict
from utils.atomic import atomic_write_text
from utils.boxes import detection_agreement

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
STAGE_ROWS = ("pnet", "rnet", "onet", "resize/crop", "nms", "other")


def bench_images(shared: Path, n_wider: int = 50) -> list[Path]:
    """The photos and ``n_wider`` WIDER train images taken at even steps through the sorted subset."""
    photos = sorted((shared / "data" / "photos").glob("*"))
    wider = sorted((shared / "data" / "wider_face_train_subset" / "WIDER_train" / "images").glob("*/*.jpg"))
    step = max(1, len(wider) // max(n_wider, 1))
    return photos + wider[::step][:n_wider]


class Reference:
    """facenet-pytorch's MTCNN with the given weights, wrapped to time its stages and return tensors."""

    def __init__(self, weights: Path, device: torch.device, clock: Callable[[], float] = time.perf_counter) -> None:
        from facenet_pytorch import MTCNN
        from facenet_pytorch.models.utils import detect_face as module

        self.mtcnn = MTCNN(keep_all=True, device=device, min_face_size=20, thresholds=[0.6, 0.7, 0.7],
                           factor=0.709, post_process=False)
        for name, path in original_weight_paths(weights).items():
            getattr(self.mtcnn, name).load_state_dict(read_state_dict(path, name))
        self.device = device
        self.clock = clock
        self.seconds: dict[str, float] = {}
        for name in ("pnet", "rnet", "onet"):
            net = getattr(self.mtcnn, name)
            net.forward = self._timed(name, net.forward)
        # detect_face looks these up as module globals at call time, so wrapping them here times them
        # (always wrapping the original functions, so a second Reference does not time through the first).
        originals = module.__dict__.setdefault("_bench_originals", {
            name: getattr(module, name) for name in ("imresample", "batched_nms", "batched_nms_numpy")})
        module.imresample = self._timed("resize/crop", originals["imresample"])
        module.batched_nms = self._timed("nms", originals["batched_nms"])
        module.batched_nms_numpy = self._timed("nms", originals["batched_nms_numpy"])

    def _timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with its wall time added to ``stage``."""
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._sync()
            start = self.clock()
            out = fn(*args, **kwargs)
            self._sync()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + self.clock() - start
            return out
        return wrapper

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def detect(self, images: list[Image.Image]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Boxes, scores, landmarks per image (a batch must share one size, facenet-pytorch's rule)."""
        boxes, probs, points = self.mtcnn.detect(images, landmarks=True)
        out = []
        for b, p, lm in zip(boxes, probs, points):
            if b is None:
                out.append((torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 5, 2)))
            else:
                out.append((torch.as_tensor(np.asarray(b, dtype=np.float32)),
                            torch.as_tensor(np.asarray(p, dtype=np.float32)),
                            torch.as_tensor(np.asarray(lm, dtype=np.float32))))
        return out


def _ours_stages(seconds: dict[str, float]) -> dict[str, float]:
    """Our StageTimer sections folded into the table's rows."""
    rows = {"pnet": seconds.get("pnet", 0.0), "rnet": seconds.get("rnet", 0.0), "onet": seconds.get("onet", 0.0),
            "resize/crop": sum(seconds.get(k, 0.0) for k in ("prepare", "pyramid", "crop")),
            "nms": seconds.get("nms", 0.0)}
    return rows


def run_pair(ref: Reference, ours: FaceDetector, batches: list[list[Image.Image]], repeats: int,
             clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time both detectors on each batch (fastest of ``repeats``, interleaved) and compare their outputs."""
    best: dict[str, list[tuple[float, dict[str, float]]]] = {"ref": [], "ours": []}
    results: dict[str, list[Any]] = {"ref": [], "ours": []}
    for index, batch in enumerate(batches):
        timings: dict[str, list[tuple[float, dict[str, float]]]] = {"ref": [], "ours": []}
        for rep in range(repeats):
            order = ("ref", "ours") if (rep + index) % 2 == 0 else ("ours", "ref")
            for who in order:
                if who == "ref":
                    ref.seconds = {}
                    start = clock()
                    found = ref.detect(batch)
                    total = clock() - start
                    stages = dict(ref.seconds)
                else:
                    timer = StageTimer(clock)
                    start = clock()
                    dets = ours.detect(batch, timer=timer)
                    total = clock() - start
                    stages = _ours_stages(timer.seconds)
                    found = [(d.boxes.cpu(), d.scores.cpu(), d.landmarks.cpu()) for d in dets]
                stages["other"] = max(0.0, total - sum(stages.values()))
                timings[who].append((total, stages))
                if rep == repeats - 1:
                    results[who].extend(found)
        for who in ("ref", "ours"):
            best[who].append(min(timings[who], key=lambda t: t[0]))
    n_images = sum(len(b) for b in batches)
    summary: dict[str, Any] = {"images": n_images}
    for who in ("ref", "ours"):
        total = sum(t for t, _ in best[who])
        summary[who] = {"seconds_per_image": total / n_images, "images_per_second": n_images / total,
                        "stages_per_image": {row: sum(s.get(row, 0.0) for _, s in best[who]) / n_images
                                             for row in STAGE_ROWS}}
    summary["speedup"] = summary["ref"]["seconds_per_image"] / summary["ours"]["seconds_per_image"]
    summary["agreement"] = agreement(results["ref"], results["ours"])
    return summary


def agreement(ref: list[Any], ours: list[Any]) -> dict[str, float]:
    """Sum :func:`detection_agreement` over images (score >= 0.9 faces, IoU >= 0.9 both ways)."""
    total: dict[str, float] = {}
    for (rb, rs, rl), (ob, os_, ol) in zip(ref, ours):
        for key, value in detection_agreement(rb, rs, ob, os_, rl, ol).items():
            total[key] = total.get(key, 0.0) + value
    pairs = total.get("landmark_pairs", 0.0)
    total["mean_landmark_px"] = total.get("landmark_distance_sum", 0.0) / pairs if pairs else 0.0
    return total


def print_table(title: str, summary: dict[str, Any]) -> None:
    """Markdown tables: throughput and ratio, per-stage milliseconds per image, agreement."""
    ref, ours, agree = summary["ref"], summary["ours"], summary["agreement"]
    print(f"\n### {title} ({summary['images']} images)\n")
    print("| | facenet-pytorch MTCNN | ours | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| images/s | {ref['images_per_second']:.2f} | {ours['images_per_second']:.2f} "
          f"| {summary['speedup']:.2f}x |")
    print(f"| ms/image | {ref['seconds_per_image'] * 1e3:.1f} | {ours['seconds_per_image'] * 1e3:.1f} | |")
    for row in STAGE_ROWS:
        r, o = ref["stages_per_image"][row] * 1e3, ours["stages_per_image"][row] * 1e3
        ratio = f"{r / o:.1f}x" if o > 1e-6 else ""
        print(f"| {row} ms | {r:.1f} | {o:.1f} | {ratio} |")
    print(f"\nAgreement: faces with score >= 0.9: reference {agree['confident_a']:.0f}, "
          f"ours {agree['confident_b']:.0f}; "
          f"missed by ours {agree['missed_by_b']:.0f}, missed by reference {agree['missed_by_a']:.0f} (IoU >= 0.9); "
          f"mean landmark distance {agree['mean_landmark_px']:.3f} px over {agree['landmark_pairs']:.0f} faces")


def same_size_batches(shared: Path, batch: int, n_batches: int = 4) -> list[list[Image.Image]]:
    """``n_batches`` batches of ``batch`` WIDER images of the most common size (facenet-pytorch cannot mix sizes)."""
    wider = sorted((shared / "data" / "wider_face_train_subset" / "WIDER_train" / "images").glob("*/*.jpg"))
    by_size: dict[tuple[int, int], list[Path]] = {}
    for path in wider:
        with Image.open(path) as image:
            by_size.setdefault(image.size, []).append(path)
    if not by_size:
        return []
    paths = max(by_size.values(), key=len)[:batch * n_batches]
    images = [Image.open(p).convert("RGB") for p in paths]
    return [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=str(SHARED / "pretrained" / "mtcnn_facenet_pytorch"),
                        help="folder with pnet.pt, rnet.pt, onet.pt (or 'facenet-pytorch' for the wheel's copy)")
    parser.add_argument("--shared", default=str(SHARED),
                        help="the shared data root (holds data/photos, data/wider_...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs per image; the fastest counts")
    parser.add_argument("--wider", type=int, default=50, help="WIDER train images besides the photos")
    parser.add_argument("--device", default="all", help="cpu, cuda, or all (cpu, then cuda when present)")
    parser.add_argument("--cuda-batch", type=int, default=16)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or CPU time of the calling thread (needs --threads 1; barely disturbed "
                             "by other processes, so use it on a busy machine)")
    parser.add_argument("--json", default="", help="also write the numbers to this JSON file")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the CPU (and CUDA) comparisons and print the tables."""
    if args.clock == "cpu" and args.threads != 1:
        raise SystemExit("--clock cpu measures one thread's CPU time; run it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    paths = bench_images(Path(args.shared), args.wider)
    if not paths:
        raise SystemExit(f"no bench images under {args.shared}/data")
    images = [Image.open(p).convert("RGB") for p in paths]
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or (torch.cuda.is_available() and args.clock == "wall")]
    report: dict[str, Any] = {"threads": args.threads, "clock": args.clock, "torch": torch.__version__,
                              "images": [p.name for p in paths]}
    for name in devices:
        device = torch.device(name)
        ref = Reference(Path(args.weights), device, clock)
        ours = FaceDetector.from_pretrained(args.weights, DetectorSettings(), device=device)
        for image in images[:3]:  # warm-up: allocator, kernels, first-call overheads
            ref.detect([image])
            ours.detect([image])
        singles = [[image] for image in images]
        report[name] = run_pair(ref, ours, singles, args.repeats, clock)
        print_table(f"{name}, one image per call, {args.threads} threads, {args.clock} time", report[name])
        if device.type == "cuda":
            batches = same_size_batches(Path(args.shared), args.cuda_batch)
            if batches:
                report[f"{name}_batch{args.cuda_batch}"] = run_pair(ref, ours, batches, args.repeats, clock)
                print_table(f"{name}, batches of {args.cuda_batch}", report[f"{name}_batch{args.cuda_batch}"])
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
