"""FaceNet benchmarks: training-loop throughput against the bare model, embedding throughput, and a trained
embedder beside the Eigenfaces (pixel-PCA) baseline on the same pairs.

Run from the repo root (``--config``/``--set`` as for every script: the data paths and presets come from there):

    .venv/bin/python -m bench.bench_facenet throughput --backbone both --steps 8 --repeats 3
    .venv/bin/python -m bench.bench_facenet throughput --backbone mobilefacenet --compile \
        --config configs/facenet_celeba.json --set facenet.loss=cosface   # eager vs compiled, margin head
    .venv/bin/python -m bench.bench_facenet throughput --backbone mobilefacenet --compile --channels-last \
        --threads 1 --config configs/facenet_celeba.json    # compiled, contiguous vs channels-last layout
    .venv/bin/python -m bench.bench_facenet embed --backbone both
    .venv/bin/python -m bench.bench_facenet compare --weights runs/facenet/best.pt [--pairs P --images DIR]

``throughput``: images/s of the training engine's epoch (``Trainer.train_epoch``: data loader, on-device
augmentation, the configured loss (triplet mining, or the margin head), AMP/accumulation step runner,
statistics) and of a bare forward + backward + optimizer step of the same model on a random batch of the same
shape, alternated ``--repeats`` times (best of each kept, so load from other processes distorts the ratio
least), per wall-clock second and per CPU second of this process (on a shared machine the CPU-time ratio is
the steadier one; with DataLoader workers, wall time is the honest one); ``--compile`` adds the loop with
``runtime.compile`` and its one-off compile time, ``--channels-last`` the same loop (compiled with
``--compile``) on a second model built in channels-last layout (``runtime.channels_last``). Training crops come
from ``facenet.train_images`` when they exist, else random crops of the same size (the loop is the same).
``embed``: ``Embedder.embed`` images/s, with and without flip test-time augmentation. ``compare``: LFW-protocol
accuracy of each ``--weights`` embedder and of Eigenfaces (``datasets.synthetic.eval.eigenfaces_verification``:
PCA fitted on the training crops' centre squares, grey 32x32) on exactly the same pairs (those with both aligned
images). Prints markdown tables; ``--json FILE`` also saves the numbers.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from config import Backbone, Config, load_config
from datasets.decoding import keep_batch
from datasets.identity import IdentityFolder
from datasets.synthetic.eval import eigenfaces_verification
from models.system import load_embedder
from training.engine import EpochLoader, OptimSettings, StepRunner, Trainer
from training.facenet.crops import FaceCrops, load_pairs_set, load_training_crops, training_side
from training.facenet.model import build_model
from training.facenet.samplers import PKBatchSampler
from training.facenet.task import EmbedderTask, loss_modules
from training.facenet.triplet import TripletLoss
from training.facenet.validation import evaluate
from utils.atomic import atomic_write_text
from utils.cli import add_config_args, config_from_args, run
from utils.device import select_device
from utils.distributed import DistInfo
from utils.errors import BadInputLog

BACKBONES = get_args(Backbone)
INCEPTION = {"input_size": 160, "embedding_size": 512, "width": 1.0}  # the FaceNet shape


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of the three benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("throughput", "embed", "compare"), help="which benchmark to run")
    parser.add_argument("--backbone", choices=(*BACKBONES, "both"), default="both",
                        help="throughput/embed: the configured light backbone, Inception-ResNet-v1 (160 px, 512-d), "
                             "or both")
    parser.add_argument("--steps", type=int, default=8, help="throughput: timed training steps per measurement")
    parser.add_argument("--inception-steps", type=int, default=2,
                        help="throughput: timed steps for Inception-ResNet-v1 (slow on a CPU)")
    parser.add_argument("--inception-identities", type=int, default=4,
                        help="throughput: P (identities per batch) for Inception-ResNet-v1; 0 = the configured P")
    parser.add_argument("--compile", action="store_true",
                        help="throughput: also time the loop with runtime.compile (torch.compile) and its compile cost")
    parser.add_argument("--channels-last", action="store_true",
                        help="throughput: also time the loop (compiled with --compile) with runtime.channels_last")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements of loop and bare model")
    parser.add_argument("--images", type=int, default=512, help="embed: images embedded per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--weights", action="append", default=[], metavar="FILE",
                        help="compare: embedder checkpoint(s) to evaluate (repeatable)")
    parser.add_argument("--pairs", default=None, help="compare: pairs file (default: facenet.val_pairs)")
    parser.add_argument("--pair-images", default=None,
                        help="compare: aligned images of the pairs, LFW layout (default: facenet.val_images)")
    parser.add_argument("--pca-train", default=None,
                        help="compare: identity folders of crops the Eigenfaces PCA is fitted on "
                             "(default: the first root of facenet.train_images)")
    parser.add_argument("--flip", action="store_true", help="compare: flip test-time augmentation for the embedders")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the numbers to this JSON file")
    add_config_args(parser)
    return parser


def _backbone_config(config: Config, backbone: str, identities: int = 0) -> Config:
    """The config with the facenet section switched to ``backbone`` (Inception at its FaceNet shape, with
    ``identities`` per batch when given)."""
    extra: dict[str, Any] = dict(INCEPTION) if backbone == "inception_resnet_v1" else {}
    if backbone == "inception_resnet_v1" and identities:
        extra["identities_per_batch"] = identities
    if backbone == config.facenet.backbone and not extra:
        return config
    return replace(config, facenet=replace(config.facenet, backbone=backbone, pretrained="", **extra))


def _training_data(config: Config, log: BadInputLog) -> tuple[FaceCrops, str]:
    """The configured training crops, or random crops of the same side when there are none."""
    roots = config.train_roots()
    if all(root.is_dir() for root in roots):
        crops, _ = load_training_crops(config, roots, 0, log, progress=False)
        return crops, ", ".join(map(str, roots))
    side = training_side(config)
    crops = FaceCrops([], [], side, preload=False)
    generator = torch.Generator().manual_seed(0)
    crops.images = torch.randint(0, 256, (64 * 10, 3, side, side), dtype=torch.uint8, generator=generator)
    crops.labels = np.repeat(np.arange(64), 10)
    crops.paths = [Path(f"random_{i}") for i in range(len(crops.labels))]
    return crops, "random crops (no aligned training data found)"


class _Clock:
    """Wall-clock and process CPU seconds of a block (CPU time barely moves when other processes load the machine)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall = self.cpu = 0.0

    def __enter__(self) -> _Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


def _bare_rates(model: torch.nn.Module, steps: StepRunner, batch: int, size: int, device: torch.device,
                count: int) -> tuple[float, float]:
    """Images per wall second and per CPU second of forward + backward + optimizer step on a random batch
    already on the device."""
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device).float()
    model.train()
    with _Clock(device) as clock:
        for _ in range(count):
            with steps.autocast():
                embeddings = model(images)
            steps.backward(embeddings.float().sum(), model.parameters())
    return batch * count / clock.wall, batch * count / clock.cpu


def throughput(config: Config, backbone: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Loop and bare images/s for one backbone (best of the alternated repeats) and their ratio; with
    ``--compile`` also the loop with ``runtime.compile`` (its first epoch, which compiles, timed apart); with
    ``--channels-last`` the loop (compiled or not) on a second, channels-last model with its own trainer."""
    config = _backbone_config(config, backbone, args.inception_identities)
    cfg = config.facenet
    count = args.inception_steps if backbone == "inception_resnet_v1" else args.steps
    log = BadInputLog()
    crops, source = _training_data(config, log)
    model = build_model(cfg).to(device)
    sampler = PKBatchSampler(crops.labels, cfg.identities_per_batch, cfg.images_per_identity, seed=0,
                             batches_per_epoch=count, num_replicas=1, rank=0)
    batches = EpochLoader(crops, sampler, 0, collate_fn=keep_batch, pin_memory=device.type == "cuda")
    settings = replace(OptimSettings.of(cfg), accumulate=1, schedule="constant", warmup_steps=0)
    loss_fn = TripletLoss(cfg.margin, cfg.mining, cfg.squared)

    def trainer_of(net: torch.nn.Module) -> Trainer:
        """A trainer of ``net`` with the benchmark's constant-rate optimizer settings."""
        return Trainer(net, settings, batches, dist_info=DistInfo(0, 1, 0, device),
                       modules=loss_modules(cfg, int(crops.labels.max()) + 1), amp=config.runtime.amp)

    def task_of(trainer: Trainer, compiled: bool, channels_last: bool) -> EmbedderTask:
        """The embedder task of ``trainer`` with these runtime settings."""
        runtime = replace(config.runtime, compile=compiled, channels_last=channels_last)
        return EmbedderTask(trainer, replace(config, runtime=runtime), loss_fn, None, log, Path("."))

    trainer = trainer_of(model)
    tasks = {"eager": task_of(trainer, False, False)}
    compile_seconds = float("nan")
    if args.compile:
        tasks["compiled"] = task_of(trainer, True, False)
        with _Clock(device) as clock:
            first = trainer.train_epoch(tasks["compiled"], 0)
        compile_seconds = clock.wall
    if args.channels_last:
        layout_task = task_of(trainer_of(build_model(cfg, channels_last=True).to(device)), args.compile, True)
        tasks["channels_last"] = layout_task
        if args.compile:
            layout_task.trainer.train_epoch(layout_task, 0)  # its own compile, untimed
    batch = cfg.identities_per_batch * cfg.images_per_identity
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in (*tasks, "bare")}
    _bare_rates(model, trainer.steps, batch, cfg.input_size, device, 1)  # warm-up (allocator, kernels)
    for repeat in range(args.repeats):
        for name, task in tasks.items():
            with _Clock(device) as clock:
                stats = task.trainer.train_epoch(task, repeat)
            images = stats["batches"] * batch
            rates[name].append((images / clock.wall, images / clock.cpu))
        rates["bare"].append(_bare_rates(model, trainer.steps, batch, cfg.input_size, device, count))
    best = {name: np.max(values, axis=0) for name, values in rates.items()}
    loop, bare = best["eager"], best["bare"]
    row = {"backbone": backbone, "loss": cfg.loss, "input": cfg.input_size, "batch": batch, "steps": count,
           "data": source, "loop_images_per_s": loop[0], "bare_images_per_s": bare[0], "ratio": loop[0] / bare[0],
           "loop_images_per_cpu_s": loop[1], "bare_images_per_cpu_s": bare[1], "cpu_ratio": loop[1] / bare[1],
           "loop_all": rates["eager"], "bare_all": rates["bare"]}
    if args.compile:
        compiled = best["compiled"]
        # the first compiled epoch minus what its steps take once compiled: the one-off compile cost
        row.update(compiled_images_per_s=compiled[0], compiled_speedup=compiled[0] / loop[0],
                   compile_seconds=compile_seconds - first["batches"] * batch / compiled[0],
                   compiled_all=rates["compiled"])
    if args.channels_last:
        layout = best["channels_last"]
        baseline = best["compiled"] if args.compile else loop
        row.update(channels_last_images_per_s=layout[0], channels_last_speedup=layout[0] / baseline[0],
                   channels_last_baseline_images_per_s=baseline[0], channels_last_all=rates["channels_last"])
    return row


def embed_rate(config: Config, backbone: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Inference images/s of ``Embedder.embed`` with and without flip test-time augmentation."""
    cfg = _backbone_config(config, backbone).facenet
    model = build_model(cfg).to(device).eval()
    images = torch.randint(0, 256, (args.images, 3, cfg.input_size, cfg.input_size), dtype=torch.uint8)
    model.embed(images[:cfg.val_batch_size], batch_size=cfg.val_batch_size, device=device)  # warm-up
    out: dict[str, Any] = {"backbone": backbone, "input": cfg.input_size, "batch": cfg.val_batch_size}
    for flip in (False, True):
        rates = []
        for _ in range(args.repeats):
            with _Clock(device) as clock:
                model.embed(images, batch_size=cfg.val_batch_size, flip=flip, device=device)
            rates.append((len(images) / clock.wall, len(images) / clock.cpu))
        best = np.max(rates, axis=0)
        prefix = "flip_" if flip else ""
        out[f"{prefix}images_per_s"], out[f"{prefix}images_per_cpu_s"] = best
    return out


def _centre_box(side: int, config: Config) -> np.ndarray:
    """The centre square of a training crop that holds the evaluation framing (eval_size / train_size of it)."""
    inner = side * config.align.eval_size / config.align.train_size
    start = (side - inner) / 2
    return np.array([start, start, start + inner, start + inner])


def compare(config: Config, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Each embedder and Eigenfaces on the same pairs: accuracy +- std over the file's folds, AUC, VAL@FAR, EER."""
    cfg = config.facenet
    pairs_file = Path(args.pairs) if args.pairs else config.facenet_path("val_pairs")
    images = Path(args.pair_images) if args.pair_images else config.facenet_path("val_images")
    log = BadInputLog(strict=config.runtime.strict)
    rows = []
    for weights in args.weights:
        model = load_embedder(Path(weights), device)
        pairs = load_pairs_set(pairs_file, images, model.input_size, log)
        result, _, _ = evaluate(model, pairs, device, cfg, None, args.flip)
        rows.append({"method": f"embedder {weights}", **result.as_dict(), "dropped": pairs.dropped})
    pairs = load_pairs_set(pairs_file, images, 32, log)
    paths = pairs.crops.paths
    pair_rows = [(paths[a], None, paths[b], None) for a, b in zip(pairs.first, pairs.second)]
    folder = IdentityFolder(Path(args.pca_train) if args.pca_train else config.train_roots()[0])
    train = [(path, _centre_box(config.align.train_size, config)) for path, _ in folder.samples]
    folds = pairs.folds if len(np.unique(pairs.folds)) >= 2 else 10
    result = eigenfaces_verification(train, pair_rows, pairs.same, folds, size=(32, 32))
    rows.append({"method": "Eigenfaces (pixel PCA, 60 components)", **result.as_dict(), "dropped": pairs.dropped})
    print(f"pairs: {pairs.describe()}")
    return rows


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(title for title, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format(row[key], spec) if spec else str(row[key]) for _, key, spec in columns)
                     + " |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run the chosen benchmark and print its table."""
    config = config_from_args(args, load_config)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(config.runtime.device)
    torch.manual_seed(config.runtime.seed)
    backbones = BACKBONES if args.backbone == "both" else (args.backbone,)
    print(f"device {device}, {torch.get_num_threads()} CPU threads")
    if args.what == "throughput":
        rows = [throughput(config, b, args, device) for b in backbones]
        print(_table(rows, [("backbone", "backbone", ""), ("loss", "loss", ""), ("input", "input", "d"),
                            ("batch", "batch", "d"), ("loop img/s", "loop_images_per_s", ".1f"),
                            ("bare img/s", "bare_images_per_s", ".1f"),
                            ("loop / bare", "ratio", ".3f"), ("loop img/CPU-s", "loop_images_per_cpu_s", ".1f"),
                            ("bare img/CPU-s", "bare_images_per_cpu_s", ".1f"),
                            ("loop / bare (CPU)", "cpu_ratio", ".3f")]))
        if args.compile:
            print(_table(rows, [("backbone", "backbone", ""), ("eager loop img/s", "loop_images_per_s", ".1f"),
                                ("compiled loop img/s", "compiled_images_per_s", ".1f"),
                                ("compiled / eager", "compiled_speedup", ".3f"),
                                ("compile s", "compile_seconds", ".0f")]))
        if args.channels_last:
            kind = "compiled" if args.compile else "eager"
            print(_table(rows, [("backbone", "backbone", ""),
                                (f"{kind} loop img/s", "channels_last_baseline_images_per_s", ".1f"),
                                (f"{kind} channels-last img/s", "channels_last_images_per_s", ".1f"),
                                ("channels-last / contiguous", "channels_last_speedup", ".3f")]))
        print("data: " + "; ".join(f"{r['backbone']}: {r['data']}" for r in rows))
    elif args.what == "embed":
        rows = [embed_rate(config, b, args, device) for b in backbones]
        print(_table(rows, [("backbone", "backbone", ""), ("input", "input", "d"), ("batch", "batch", "d"),
                            ("img/s", "images_per_s", ".1f"), ("img/s with flip TTA", "flip_images_per_s", ".1f"),
                            ("img/CPU-s", "images_per_cpu_s", ".1f"),
                            ("img/CPU-s with flip", "flip_images_per_cpu_s", ".1f")]))
    else:
        rows = compare(config, args, device)
        print(_table(rows, [("method", "method", ""), ("accuracy", "accuracy", ".4f"), ("std", "accuracy_std", ".4f"),
                            ("AUC", "auc", ".4f"), (f"VAL@FAR={config.facenet.far_target:g}", "val", ".4f"),
                            ("EER", "eer", ".4f"), ("pairs", "num_pairs", ".0f"), ("folds", "num_folds", ".0f")]))
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, get_args_parser()))
