"""Embedder deployment variants side by side: verification accuracy on the validation pairs and inference speed of
PyTorch fp32, ONNX Runtime fp32, ONNX Runtime int8 (static, calibrated) and, where CUDA is present, PyTorch fp16.

Run from the repo root (``--config``/``--set`` as for every script; needs ``requirements-export.txt``):

    .venv/bin/python -m bench.bench_inference --threads 1 --repeats 5
    .venv/bin/python -m bench.bench_inference --embedder runs/facenet/best.pt --onnx-dir runs/onnx

The ONNX files come from ``--onnx-dir`` (written by ``python -m deploy.export --int8`` from the same checkpoint),
or, without it, are exported here into a temporary folder with the same code (int8: ``--calibration-count``
aligned training crops from ``facenet.train_images``). Accuracy: the LFW protocol of
``training.facenet.validation.evaluate`` on ``facenet.val_pairs`` (every variant sees the same crops), and the
cosine similarity of each variant's embedding of every validation crop to PyTorch fp32's (mean and lowest; a finer
measure than accuracy on a few hundred pairs). Speed: ``embed`` over ``--images`` validation crops
in batches of ``--batch-size``, the variants alternated ``--repeats`` times and the best pass of each kept, per
wall-clock second and per CPU second of this process (steadier on a shared machine); every variant runs with
``--threads`` CPU threads, and the ratios are against PyTorch fp32 on the same device, in the same run.
Prints a markdown table; ``--json FILE`` also saves the numbers.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.bench_facenet import _Clock, _table
from config import load_config
from deploy.export import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION,
    calibration_faces,
    export_embedder,
    export_embedder_int8,
    load_embedder_for_export,
)
from models.onnx_nets import ONNX_FILES, load_onnx_embedder, read_sidecar, require
from models.system import read_embedder
from training.facenet.crops import PairsSet, load_pairs_set
from training.facenet.validation import evaluate
from utils.atomic import atomic_write_text
from utils.cli import add_config_args, config_from_args, run
from utils.errors import BadInputLog, DataError
from utils.hashing import sha256_file


def get_args_parser() -> argparse.ArgumentParser:
    """The command line (every flag explained in ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", metavar="FILE", default=None,
                        help="embedder checkpoint (default: paths.embedder)")
    parser.add_argument("--onnx-dir", metavar="DIR", default=None,
                        help="folder with embedder.onnx and embedder_int8.onnx exported from that checkpoint "
                             "(default: export both into a temporary folder now)")
    parser.add_argument("--calibration-count", type=int, default=300,
                        help="int8 calibration crops when exporting here (default: 300)")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default=DEFAULT_CALIBRATION,
                        help=f"int8 activation-range method when exporting here (default: {DEFAULT_CALIBRATION})")
    parser.add_argument("--images", type=int, default=512,
                        help="validation crops embedded per timed pass (default: 512, or all when fewer)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per embed batch (default: 64)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed passes per variant, alternating variants; the best is kept (default: 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for PyTorch and for each onnxruntime session (default: 1)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the numbers to this JSON file")
    add_config_args(parser)
    return parser


def onnx_files(checkpoint: Path, folder: Path) -> dict[str, Path]:
    """The fp32 and int8 files in ``folder``, checked to come from ``checkpoint`` (DataError otherwise)."""
    sha = sha256_file(checkpoint)
    files = {}
    for key in ("embedder", "embedder_int8"):
        path = folder / ONNX_FILES[key]
        if read_sidecar(path, "embedder").get("source_sha256") != sha:
            raise DataError(path, f"was exported from another checkpoint than {checkpoint}")
        files[key] = path
    return files


def export_here(config: Any, checkpoint: Path, folder: Path, pairs: PairsSet,
                args: argparse.Namespace) -> dict[str, Path]:
    """Export fp32 and int8 from ``checkpoint`` into ``folder`` (checked on the first validation crops)."""
    model, arch = load_embedder_for_export(checkpoint)
    faces = pairs.crops.images[:64]
    export_embedder(model, arch, checkpoint, folder, faces, threads=args.threads)
    root = config.train_roots()[0]
    calibration = calibration_faces(config, root, args.calibration_count, model.input_size, config.runtime.seed)
    export_embedder_int8(model, checkpoint, folder, calibration, faces, args.calibration_method,
                         calibration_source=str(root), threads=args.threads)
    return {key: folder / ONNX_FILES[key] for key in ("embedder", "embedder_int8")}


def speed(model: Any, images: torch.Tensor, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Images per wall second and per CPU second of one ``embed`` pass over ``images``."""
    with _Clock(device) as clock:
        model.embed(images, batch_size=batch_size, device=device)
    return len(images) / clock.wall, len(images) / max(clock.cpu, 1e-9)


def main(args: argparse.Namespace) -> int:
    """Build the variants, measure accuracy and speed, print the table."""
    config = config_from_args(args, load_config)
    require("onnxruntime")
    torch.set_num_threads(args.threads)
    checkpoint = Path(args.embedder) if args.embedder else config.path("embedder")
    cpu = torch.device("cpu")
    torch_model, _ = read_embedder(checkpoint, cpu)
    pairs = load_pairs_set(config.facenet_path("val_pairs"), config.facenet_path("val_images"),
                           torch_model.input_size, BadInputLog(strict=config.runtime.strict))
    assert pairs.crops.images is not None  # load_pairs_set preloads
    with tempfile.TemporaryDirectory(prefix="bench_inference.") as tmp:
        files = onnx_files(checkpoint, Path(args.onnx_dir)) if args.onnx_dir else export_here(
            config, checkpoint, Path(tmp), pairs, args)
        variants: list[tuple[str, Any, torch.device]] = [
            ("torch fp32", torch_model, cpu),
            ("onnx fp32", load_onnx_embedder(files["embedder"], threads=args.threads), cpu),
            ("onnx int8", load_onnx_embedder(files["embedder_int8"], threads=args.threads), cpu)]
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        variants += [("torch fp32", read_embedder(checkpoint, gpu)[0], gpu),
                     ("torch fp16", read_embedder(checkpoint, gpu)[0].half(), gpu)]
    images = pairs.crops.images[:args.images]
    reference = torch_model.embed(pairs.crops.images, batch_size=args.batch_size)
    rows = []
    for name, model, device in variants:
        result, _, _ = evaluate(model, pairs, device, config.facenet, None)
        cosine = (model.embed(pairs.crops.images, batch_size=args.batch_size, device=device) * reference).sum(dim=1)
        rows.append({"variant": name, "device": device.type, "accuracy": result.accuracy, "auc": result.auc,
                     "mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()),
                     "images_per_s": 0.0, "images_per_cpu_s": 0.0})
    for _ in range(args.repeats):
        for row, (_, model, device) in zip(rows, variants):
            wall, cpu_rate = speed(model, images, args.batch_size, device)
            row["images_per_s"] = max(row["images_per_s"], wall)
            row["images_per_cpu_s"] = max(row["images_per_cpu_s"], cpu_rate)
    for row in rows:
        base = next(r for r in rows if r["device"] == row["device"] and r["variant"] == "torch fp32")
        row["ratio"] = row["images_per_s"] / base["images_per_s"]
        row["cpu_ratio"] = row["images_per_cpu_s"] / base["images_per_cpu_s"]
    print(f"{checkpoint}: {pairs.describe()}; {len(images)} crops of {torch_model.input_size} px per timed pass, "
          f"batch {args.batch_size}, {args.threads} CPU thread(s), best of {args.repeats}")
    print(_table(rows, [("variant", "variant", ""), ("device", "device", ""), ("accuracy", "accuracy", ".4f"),
                        ("AUC", "auc", ".4f"), ("cosine to torch fp32: mean", "mean_cosine", ".4f"),
                        ("min", "min_cosine", ".4f"), ("img/s", "images_per_s", ".1f"),
                        ("x torch fp32", "ratio", ".2f"), ("img/CPU-s", "images_per_cpu_s", ".1f"),
                        ("x torch fp32 (CPU time)", "cpu_ratio", ".2f")]))
    fp32 = rows[0]  # torch fp32 on the CPU
    int8 = next(r for r in rows if r["variant"] == "onnx int8")
    print(f"int8 - torch fp32 accuracy: {100 * (int8['accuracy'] - fp32['accuracy']):+.2f} points")
    if not torch.cuda.is_available():
        print("fp16: no CUDA device here, so the torch fp16 rows (Embedder.half() on CUDA) were not measured")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, get_args_parser()))
