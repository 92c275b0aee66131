"""Stage 2: train the face embedder on aligned identity crops (triplet loss, or an ArcFace/CosFace margin head
optionally followed by triplet fine-tuning); validate by the LFW protocol.

    python prepare_training_data.py --align synthetic              # aligned crops first (the detector)
    python train_facenet.py                                        # the synthetic preset (config defaults)
    python train_facenet.py --config configs/facenet_real.json     # VGGFace2 -> LFW, Inception-ResNet-v1
    python train_facenet.py --resume                               # continue from <output-dir>/last.pt
    python train_facenet.py --test-only --flip                     # evaluate best.pt on the pairs file
    torchrun --nproc_per_node 2 train_facenet.py ...               # DDP (rank 0 validates and writes)

Batches hold P identities x K images (``facenet.identities_per_batch`` x ``images_per_identity``); the
training crops (``align.train_size``, 182 px) are scaled by ``input_size / align.eval_size``, randomly
cropped to the input size, flipped and colour-jittered on the device (zoom, rotation, greyscale, blur,
low resolution and erasing when configured); ``facenet.loss`` is the triplet loss with online semi-hard,
batch-hard or batch-all mining (``training/facenet/triplet.py``) or a margin softmax over the training identities
(``arcface``/``cosface``, ``training/facenet/margin.py``; its head is saved in last.pt for --resume, never in
best.pt), switching to the triplet loss for the last ``facenet.triplet_finetune_epochs``. Each epoch logs loss
and its statistics (share of active triplets, triplet accuracy and mean positive/negative distances; or the
head's accuracy and cosines), then validates on the pairs file: accuracy (mean +- std over its folds),
threshold, VAL@FAR, AUC, EER, and the validation triplet loss. ``best.pt`` keeps the best validation
accuracy; ``last.pt`` the full state for ``--resume``. Outputs in ``--output-dir`` (default: the folder of
``paths.embedder``): config.json, metrics_train.csv, metrics_val.csv, roc.png, loss_curves.png, report.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from config import Config, load_config
from datasets.decoding import keep_batch
from models.system import load_embedder
from training.engine import EpochLoader, OptimSettings, Trainer, unwrap
from training.facenet.crops import load_pairs_set, load_training_crops, training_side
from training.facenet.model import build_model
from training.facenet.samplers import PKBatchSampler
from training.facenet.task import (
    FIXED_ON_RESUME,
    KIND,
    EmbedderTask,
    calibrate_batchnorm,
    describe_loss,
    finish,
    loss_modules,
)
from training.facenet.triplet import TripletLoss
from training.facenet.validation import evaluate, save_roc
from training.run import open_run
from utils.atomic import atomic_write_json
from utils.cli import add_config_args, config_from_args, run
from utils.distributed import DistInfo, cleanup_distributed, init_distributed
from utils.errors import BadInputLog
from utils.plots import plot_score_histograms
from utils.seed import seed_everything


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
                        help="with --test-only: aligned images in the LFW layout for --pairs "
                             "(default: facenet.val_images)")
    parser.add_argument("--flip", action="store_true",
                        help="horizontal-flip test-time augmentation in validation and --test-only (facenet.val_flip)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes decoding images (default: runtime.workers); with facenet.preload they "
                             "decode once at start, otherwise they stream batches")
    parser.add_argument("--skip-nonfinite", action="store_true",
                        help="skip batches whose loss is NaN/inf instead of stopping")
    add_config_args(parser)
    return parser


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
    # one folder per pairs file: test_<folder>, with the file's stem added when it is not the usual pairs.txt
    suffix = "" if pairs_file.stem == "pairs" else f"_{pairs_file.stem}"
    out_dir = run_dir / f"test_{pairs_file.parent.name or 'pairs'}{suffix}"
    report = {"weights": str(weights), "pairs": str(pairs_file), "images": str(images), "flip": flip,
              "pairs_dropped": pairs.dropped, **result.as_dict(),
              "fold_accuracies": result.fold_accuracies, "fold_thresholds": result.fold_thresholds}
    atomic_write_json(out_dir / "eval.json", report)
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


def train(args: argparse.Namespace, config: Config, run_dir: Path, dist: DistInfo, log: BadInputLog,
          workers: int) -> int:
    """The training run: data, model, the engine's epochs with validation and checkpoints, final report."""
    cfg = config.facenet
    started = time.perf_counter()
    session = open_run(run_dir, KIND, config, resume=args.resume, fixed=FIXED_ON_RESUME, is_main=dist.is_main)
    crops, classes = load_training_crops(config, config.train_roots(), workers, log, dist.is_main)
    sampler = PKBatchSampler(crops.labels, cfg.identities_per_batch, cfg.images_per_identity, seed=config.runtime.seed,
                             small_identities=cfg.small_identities, batches_per_epoch=cfg.batches_per_epoch or None,
                             num_replicas=dist.world_size, rank=dist.rank)
    loader_workers = 0 if cfg.preload else workers
    batches = EpochLoader(crops, sampler, config.runtime.seed + dist.rank, collate_fn=keep_batch,
                          pin_memory=dist.device.type == "cuda", num_workers=loader_workers,
                          persistent_workers=loader_workers > 0)
    pairs = None
    if dist.is_main:
        pairs = load_pairs_set(config.facenet_path("val_pairs"), config.facenet_path("val_images"), cfg.input_size, log,
                               workers, progress=True)
    trainer = Trainer(build_model(cfg, config.runtime.channels_last), OptimSettings.of(cfg), batches, dist_info=dist,
                      run=session, modules=loss_modules(cfg, len(classes)),
                      amp=config.runtime.amp, skip_nonfinite=args.skip_nonfinite)
    if session.checkpoint is None and not cfg.pretrained:
        calibrate_batchnorm(unwrap(trainer.model), batches.loader, dist.device, cfg)
    task = EmbedderTask(trainer, config, TripletLoss(cfg.margin, cfg.mining, cfg.squared), pairs, log, run_dir)
    session.logger.info(f"{sampler.summary()}; {len(crops)} crops of {len(classes)} identities "
                        f"({training_side(config)} px -> {cfg.input_size} px inputs), "
                        f"{cfg.backbone} {cfg.embedding_size}-d, {describe_loss(cfg)}; "
                        f"{len(sampler)} steps/epoch x {cfg.epochs} epochs; "
                        + (f"validation: {pairs.describe()}" if pairs is not None else ""))
    state = trainer.fit(task)
    if dist.is_main:
        finish(run_dir, config, session.logger, trainer.checkpointer.best_path, pairs, log,
               time.perf_counter() - started, state, dist.device)
    session.logger.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, get_args_parser()))
