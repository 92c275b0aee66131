"""Stage 2: train the face embedder with triplet loss on aligned identity crops; validate by the LFW protocol.

    python prepare_training_data.py --align synthetic              # aligned crops first (the detector)
    python train_facenet.py                                        # the synthetic preset (config defaults)
    python train_facenet.py --config configs/facenet_real.json     # VGGFace2 -> LFW, Inception-ResNet-v1
    python train_facenet.py --resume                               # continue from <output-dir>/last.pt
    python train_facenet.py --test-only --flip                     # evaluate best.pt on the pairs file
    torchrun --nproc_per_node 2 train_facenet.py ...               # DDP (rank 0 validates and writes)

Batches hold P identities x K images (``facenet.identities_per_batch`` x ``images_per_identity``); the
training crops (``align.train_size``, 182 px) are scaled by ``input_size / align.eval_size``, randomly
cropped to the input size, flipped and colour-jittered on the device; the loss is the triplet loss with
online semi-hard, batch-hard or batch-all mining (``training/facenet/triplet.py``). Each epoch logs loss, share of
active triplets, triplet accuracy (share of triplets whose negative is farther than the positive) and mean
positive/negative distances, then validates on the pairs file: accuracy (mean +- std over its folds),
threshold, VAL@FAR, AUC, EER, and the validation triplet loss. ``best.pt`` keeps the best validation
accuracy; ``last.pt`` the full state for ``--resume``. Outputs in ``--output-dir`` (default: the folder of
``paths.embedder``): config.json, metrics_train.csv, metrics_val.csv, roc.png, loss_curves.png, report.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DataLoader

from config import Config, FaceNetConfig, load_config
from datasets.decoding import keep_batch
from models.system import load_embedder
from training.facenet.crops import PairsSet, augment, load_pairs_set, load_training_crops, training_side
from training.facenet.epoch import train_one_epoch
from training.facenet.model import architecture, build_model
from training.facenet.samplers import PKBatchSampler
from training.facenet.triplet import TripletLoss
from training.facenet.validation import evaluate, save_roc
from utils.atomic import atomic_write_text
from utils.checkpoint import load_checkpoint
from utils.cli import add_config_args, config_from_args, run
from utils.config_io import config_to_dict, save_config
from utils.distributed import DistInfo, cleanup_distributed, init_distributed
from utils.errors import BadInputLog
from utils.logger import RunLogger
from utils.metrics import VerificationResult
from utils.plots import plot_loss_curves, plot_score_histograms
from utils.seed import seed_everything
from utils.training import (
    Checkpointer,
    ResumableBatches,
    StepRunner,
    StopOnSignal,
    TrainingState,
    build_optimizer,
    build_scheduler,
    loader_generator,
    unwrap,
)

KIND = "facenet"


def get_args_parser() -> argparse.ArgumentParser:
    """The command line (every flag explained in ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Train a face embedder (FaceNet) with triplet loss and online mining on aligned identity "
                    "crops, validated each epoch by the LFW protocol on a pairs file.")
    parser.add_argument("--output-dir", default=None,
                        help="run folder for checkpoints, metrics and plots (default: the folder of paths.embedder)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <output-dir>/last.pt (model, optimizer, schedule, RNG, epoch)")
    parser.add_argument("--test-only", action="store_true",
                        help="only evaluate an embedder on a pairs file (default: <output-dir>/best.pt on "
                             "facenet.val_pairs)")
    parser.add_argument("--weights", metavar="FILE", default=None,
                        help="with --test-only: the embedder checkpoint to evaluate (default: <output-dir>/best.pt)")
    parser.add_argument("--pairs", metavar="FILE", default=None,
                        help="with --test-only: LFW-format pairs file (default: facenet.val_pairs)")
    parser.add_argument("--images", metavar="DIR", default=None,
                        help="with --test-only: aligned images in the LFW layout for --pairs (default: facenet.val_images)")
    parser.add_argument("--flip", action="store_true",
                        help="horizontal-flip test-time augmentation in validation and --test-only (facenet.val_flip)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes decoding images (default: runtime.workers); with facenet.preload they "
                             "decode once at start, otherwise they stream batches")
    parser.add_argument("--skip-nonfinite", action="store_true",
                        help="skip batches whose loss is NaN/inf instead of stopping")
    add_config_args(parser)
    return parser


# --- training -------------------------------------------------------------------------------------------------


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, loader: DataLoader, device: torch.device, cfg: FaceNetConfig,
                        batches: int = 4) -> None:
    """Set every batch norm's running statistics to their values on a few training batches (before training).

    A fresh network's running variance starts at 1, far above what its thin depthwise layers produce; in eval
    mode each such layer then shrinks the signal, and over tens of layers the embeddings collapse until the
    moving averages catch up. Starting from measured statistics makes validation meaningful from epoch 1.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for batch in itertools.islice(iter(loader), batches):
        images = batch.images[batch.valid].to(device, non_blocking=True)
        model(augment(images, cfg.input_size, cfg.random_crop, cfg.flip, cfg.color_jitter))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def _broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision, on every process (the value itself in a single process)."""
    if not (torch_dist.is_initialized() and torch_dist.get_world_size() > 1):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device if device.type == "cuda" else "cpu")
    torch_dist.broadcast(value, src=0)
    return bool(value.item())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=float) + "\n")


def _result_row(result: VerificationResult, losses: dict[str, float], pairs: PairsSet) -> dict[str, float]:
    row = {"val_accuracy": result.accuracy, "val_accuracy_std": result.accuracy_std, "val_threshold": result.threshold,
           "val_val": result.val, "val_far": result.far, "val_auc": result.auc, "val_eer": result.eer,
           "val_pairs": result.num_pairs, "val_pairs_dropped": pairs.dropped}
    row.update(losses)
    return row


def test_only(args: argparse.Namespace, config: Config, run_dir: Path, device: torch.device, log: BadInputLog,
              workers: int) -> dict[str, Any]:
    """Evaluate an embedder checkpoint on a pairs file; print the LFW-protocol figures; write eval.json and plots."""
    cfg = config.facenet
    weights = Path(args.weights) if args.weights else run_dir / "best.pt"
    model = load_embedder(weights, device)
    pairs_file = Path(args.pairs) if args.pairs else config.facenet_path("val_pairs")
    images = Path(args.images) if args.images else config.facenet_path("val_images")
    pairs = load_pairs_set(pairs_file, images, model.input_size, log, workers, progress=True)
    flip = args.flip or cfg.val_flip
    result, _, scores = evaluate(model, pairs, device, cfg, None, flip)
    out_dir = run_dir / f"test_{pairs_file.parent.name or 'pairs'}"
    report = {"weights": str(weights), "pairs": str(pairs_file), "images": str(images), "flip": flip,
              "pairs_dropped": pairs.dropped, **result.as_dict(),
              "fold_accuracies": result.fold_accuracies, "fold_thresholds": result.fold_thresholds}
    _write_json(out_dir / "eval.json", report)
    save_roc(out_dir / "roc.png", result, f"{weights.name} on {pairs_file.name}")
    plot_score_histograms(out_dir / "scores.png", scores, pairs.same, result.threshold, xlabel="cosine similarity")
    print(f"{weights} on {pairs.describe()}, flip={flip}:")
    print(f"  {result.summary()}")
    print(f"report: {out_dir / 'eval.json'}")
    return report


def main(args: argparse.Namespace) -> int:
    """Train the embedder (or evaluate one with --test-only); returns the exit code."""
    config = config_from_args(args, load_config)
    dist = init_distributed(config.runtime.device)
    try:
        seed_everything(config.runtime.seed + dist.rank, config.runtime.deterministic)
        workers = config.runtime.workers if args.workers is None else args.workers
        run_dir = Path(args.output_dir) if args.output_dir else config.path("embedder").parent
        log = BadInputLog(strict=config.runtime.strict)
        if args.flip:
            config.facenet.val_flip = True
        if args.test_only:
            if dist.is_main:
                test_only(args, config, run_dir, dist.device, log, workers)
            return 0
        return train(args, config, run_dir, dist, log, workers)
    finally:
        cleanup_distributed()


def train(args: argparse.Namespace, config: Config, run_dir: Path, dist: DistInfo, log: BadInputLog, workers: int) -> int:
    """The training run: data, model, optimizer, epochs with validation, checkpoints, final report."""
    cfg = config.facenet
    started = time.perf_counter()
    resume_path = run_dir / "last.pt" if args.resume and (run_dir / "last.pt").is_file() else None
    resumed = load_checkpoint(resume_path, kind=KIND) if resume_path else None
    logger = RunLogger(run_dir, enabled=dist.is_main, resume_epoch=resumed["epoch"] if resumed else None)
    if dist.is_main:
        save_config(config, run_dir / "config.json")

    crops, classes = load_training_crops(config, config.facenet_path("train_images"), workers, log, dist.is_main)
    sampler = PKBatchSampler(crops.labels, cfg.identities_per_batch, cfg.images_per_identity, seed=config.runtime.seed,
                             small_identities=cfg.small_identities, batches_per_epoch=cfg.batches_per_epoch or None,
                             num_replicas=dist.world_size, rank=dist.rank)
    batches = ResumableBatches(sampler)
    # The loader's own generator: creating an iterator then leaves the global RNG (augmentation) untouched,
    # so a run resumed in the middle of an epoch draws the same numbers as an unbroken one.
    loader = DataLoader(crops, batch_sampler=batches, collate_fn=keep_batch, pin_memory=dist.device.type == "cuda",
                        num_workers=0 if cfg.preload else workers, persistent_workers=not cfg.preload and workers > 0,
                        generator=loader_generator(config.runtime.seed + dist.rank))
    pairs = None
    if dist.is_main:
        pairs = load_pairs_set(config.facenet_path("val_pairs"), config.facenet_path("val_images"), cfg.input_size, log,
                               workers, progress=True)

    model: nn.Module = build_model(cfg).to(dist.device)
    if dist.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    total_steps = math.ceil(cfg.epochs * len(sampler) / cfg.accumulate)
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps, min(cfg.warmup_steps, total_steps // 4))
    steps = StepRunner(optimizer, scheduler, dist.device, config.runtime.amp, cfg.accumulate, cfg.clip_grad_norm)
    checkpointer = Checkpointer(run_dir, KIND, config_to_dict(config), enabled=dist.is_main)
    state = checkpointer.resume(resume_path, model, optimizer, steps) if resume_path else TrainingState()
    if not resumed and not cfg.pretrained:
        calibrate_batchnorm(unwrap(model), loader, dist.device, cfg)
    stale = int(resumed.get("stale_validations", 0)) if resumed else 0
    loss_fn = TripletLoss(cfg.margin, cfg.mining, cfg.squared)
    logger.info(f"{sampler.summary()}; {len(crops)} crops of {len(classes)} identities ({training_side(config)} px -> "
                f"{cfg.input_size} px inputs), {cfg.backbone} {cfg.embedding_size}-d, {cfg.mining} mining, margin "
                f"{cfg.margin}; {len(sampler)} steps/epoch x {cfg.epochs} epochs; "
                + (f"validation: {pairs.describe()}" if pairs is not None else ""))
    extra = {"embedder": architecture(config)}
    with StopOnSignal() as stop:
        for epoch in range(state.epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            batches.skip = state.batches_done  # > 0: the checkpoint was written inside this epoch
            epoch_start = time.perf_counter()
            stats = train_one_epoch(model, loader, loss_fn, steps, dist.device, epoch, state, logger, stop, cfg, log,
                                    args.skip_nonfinite)
            if stop.requested:  # SIGINT/SIGTERM: keep the state after the last finished batch, then exit
                checkpointer.save_and_stop(model, optimizer, steps, state, batches.skip + stats["batches_taken"],
                                           extra={**extra, "stale_validations": stale})
            state.epoch, state.batches_done = epoch + 1, 0
            train_seconds = time.perf_counter() - epoch_start
            metric, row = None, {}
            if dist.is_main and (state.epoch % cfg.val_every == 0 or state.epoch == cfg.epochs):
                result, losses, _ = evaluate(model, pairs, dist.device, cfg, loss_fn, cfg.val_flip)
                metric = result.accuracy + 1e-6 * result.auc  # ties in accuracy go to the better ranking
                row = _result_row(result, losses, pairs)
            if metric is not None:
                stale = 0 if metric > state.best_metric else stale + 1
            if row:  # rows before the checkpoint, so a kill between the two never loses this epoch's rows
                logger.log("val", epoch=state.epoch, **row)
            logger.log("train", epoch=state.epoch, step=state.step, seconds=round(train_seconds, 2), **stats)
            if checkpointer.save(model, optimizer, steps, state, metric=metric,
                                 extra={**extra, "stale_validations": stale}):
                save_roc(run_dir / "roc.png", result, f"validation, epoch {state.epoch}")
            message = (f"epoch {state.epoch}/{cfg.epochs}: loss {stats.get('loss', float('nan')):.4f}, active "
                       f"{stats.get('active_fraction', float('nan')):.3f}, triplet acc "
                       f"{stats.get('triplet_accuracy', float('nan')):.3f}, d+ {stats.get('mean_pos_dist', float('nan')):.3f} "
                       f"d- {stats.get('mean_neg_dist', float('nan')):.3f}; {stats['images_per_s']:.0f} img/s")
            if row:
                message += (f"; val acc {row['val_accuracy']:.4f} +- {row['val_accuracy_std']:.4f}, AUC "
                            f"{row['val_auc']:.4f}, VAL@FAR={cfg.far_target:g} {row['val_val']:.4f}"
                            + (f", val loss {row['val_loss']:.4f}" if "val_loss" in row else ""))
            logger.info(message)
            stop_early = dist.is_main and cfg.early_stopping_patience > 0 and stale >= cfg.early_stopping_patience
            if _broadcast_flag(stop_early, dist.device):
                logger.info(f"early stopping: no better validation accuracy for {stale} validations")
                break
    if dist.is_main:
        finish(run_dir, config, logger, checkpointer, pairs, log, time.perf_counter() - started, state, dist.device)
    logger.close()
    return 0


def finish(run_dir: Path, config: Config, logger: RunLogger, checkpointer: Checkpointer, pairs: PairsSet | None,
           log: BadInputLog, seconds: float, state: TrainingState, device: torch.device) -> None:
    """Loss curves, the best checkpoint's validation figures (ROC PNG) and report.json."""
    train_rows, val_rows = logger.rows("train"), logger.rows("val")
    history: dict[str, list[float]] = {}
    if train_rows:
        history["loss/train"] = [float(r["loss"]) for r in train_rows]
        history["triplet accuracy/train"] = [float(r["triplet_accuracy"]) for r in train_rows]
    if val_rows:
        history["loss/val"] = [float(r["val_loss"]) for r in val_rows if r.get("val_loss") not in (None, "")]
        history["val accuracy"] = [float(r["val_accuracy"]) for r in val_rows]
    if any(history.values()):
        plot_loss_curves(run_dir / "loss_curves.png", history, title="FaceNet training")
    report: dict[str, Any] = {"epochs": state.epoch, "steps": state.step, "seconds": round(seconds, 1),
                              "bad_inputs": len(log), "bad_input_files": sorted({p.path for p in log.problems}),
                              "best": str(checkpointer.best_path)}
    if pairs is not None:
        report["validation_pairs_left_out"] = pairs.dropped
        report["validation_images_missing"] = pairs.missing_images
    if pairs is not None and checkpointer.best_path.is_file():
        best = load_embedder(checkpointer.best_path, device)
        result, _, _ = evaluate(best, pairs, device, config.facenet, None, config.facenet.val_flip)
        save_roc(run_dir / "roc.png", result, "validation (best.pt)")
        report["best_validation"] = result.as_dict()
        logger.info(f"best.pt: {result.summary()}")
    if len(log):
        logger.info(log.summary())
    _write_json(run_dir / "report.json", report)
    logger.info(f"done in {seconds:.0f} s; best checkpoint {checkpointer.best_path}, report {run_dir / 'report.json'}")


if __name__ == "__main__":
    raise SystemExit(run(main, get_args_parser()))
