"""Stage 1: train the MTCNN cascade (P-Net, then R-Net, then O-Net), with hard-example mining and evaluation.

    python train_mtcnn.py                                   # all three stages on the synthetic set (defaults)
    python train_mtcnn.py --stage rnet --resume              # continue or redo one stage
    python train_mtcnn.py --test-only                        # evaluate the trained cascade on the val split
    python train_mtcnn.py --test-only --from-pretrained ../shared/pretrained/mtcnn_facenet_pytorch
    python train_mtcnn.py --config configs/mtcnn_wider.json  # the WIDER FACE subset preset
    torchrun --nproc_per_node 2 train_mtcnn.py ...           # DDP (rank 0 writes samples, checkpoints, reports)

Per stage: samples (stage P: random crops of the training images; stages R and O: the earlier stages'
detections on the same images, plus random crops) are written once to ``<output-dir>/samples/``; the net
trains on batches balanced by sample type with a multi-task loss and OHEM; the validation loss is logged
every epoch; the cascade up to this stage is evaluated on the validation split at the end
(``<output-dir>/<stage>/eval.json``, ``pr_curve.png``). Checkpoints: ``<output-dir>/<stage>/{last,best}.pt``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from config import Config, load_config
from datasets.decoding import keep_batch
from models.detector import STAGES
from models.weights import load_net
from training.engine import EpochLoader, OptimSettings, Trainer
from training.mtcnn.cascade import evaluate, evaluate_fddb
from training.mtcnn.data import MTCNNData, load_data
from training.mtcnn.evaluation import format_report
from training.mtcnn.loss import MTCNNLoss
from training.mtcnn.packed import BalancedBatchSampler, PackedSamples
from training.mtcnn.stage import (
    StageTask,
    build_model,
    build_samples,
    check_stage_resume,
    fixed_on_resume,
    stage_config,
)
from training.run import open_run
from utils.atomic import atomic_write_json
from utils.cli import add_config_args, config_from_args, run
from utils.config_io import save_config
from utils.distributed import DistInfo, barrier, cleanup_distributed, init_distributed
from utils.errors import BadInputLog, ConfigError, DataError
from utils.hashing import file_fingerprint
from utils.plots import plot_loss_curves
from utils.seed import seed_everything, worker_seed


def get_args_parser() -> argparse.ArgumentParser:
    """The command line (every flag explained in ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Train the MTCNN face detector (P-Net -> R-Net -> O-Net) with hard-example mining, "
                    "and evaluate it (precision, recall, AP, per-stage recall/precision, landmark error).",
    )
    parser.add_argument("--stage", choices=(*STAGES, "all"), default="all",
                        help="which net to train; 'all' trains P, R and O in order, mining samples between them")
    parser.add_argument("--output-dir", default=None,
                        help="run folder (default: <paths.runs_dir>/mtcnn); holds samples/, pnet/, rnet/, onet/")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <output-dir>/<stage>/last.pt; finished stages are kept, finished "
                             "sample shards reused")
    parser.add_argument("--test-only", action="store_true",
                        help="only evaluate: the cascade up to --stage ('all' = O-Net) from <output-dir>/*/best.pt, "
                             "or the original weights with --from-pretrained")
    parser.add_argument("--from-pretrained", metavar="DIR", default=None,
                        help="folder with the original pnet.pt/rnet.pt/onet.pt (or 'facenet-pytorch'): start each "
                             "trained net from these weights (fine-tuning); with --test-only, evaluate them")
    parser.add_argument("--workers", type=int, default=None, help="worker processes for sample generation, "
                        "image decoding and data loading (default: runtime.workers)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads in this process (default: torch's choice; 1 is fastest on a busy machine)")
    parser.add_argument("--skip-nonfinite", action="store_true",
                        help="skip batches whose loss is NaN/inf instead of stopping")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation after each stage")
    parser.add_argument("--fddb-folds", metavar="DIR", default=None,
                        help="with --test-only: also evaluate on FDDB ellipse lists (FDDB-fold-XX-ellipseList.txt)")
    parser.add_argument("--fddb-images", metavar="DIR", default=None,
                        help="FDDB image root (originalPics) for --fddb-folds")
    add_config_args(parser)
    return parser


def train_stage(stage: str, config: Config, data: MTCNNData, run_dir: Path, args: argparse.Namespace,
                dist: DistInfo, log: BadInputLog, nets: dict[str, nn.Module], sources: dict[str, str],
                workers: int) -> dict[str, Any]:
    """Samples, training, validation loss and evaluation of one stage; returns its final report."""
    cfg, m = stage_config(config, stage), config.mtcnn
    stage_dir = run_dir / stage
    done_path = stage_dir / "done.json"
    if args.resume and done_path.is_file():
        return json.loads(done_path.read_text(encoding="utf-8"))
    session = open_run(stage_dir, stage, config, resume=args.resume, fixed=fixed_on_resume(stage), is_main=dist.is_main)
    logger = session.logger
    if dist.is_main:
        done_path.unlink(missing_ok=True)
        build_samples(stage, config, data, run_dir, nets, sources, dist.device, log, workers, logger)
    barrier()
    train_set = PackedSamples(run_dir / "samples" / f"{stage}_train")
    val_set = PackedSamples(run_dir / "samples" / f"{stage}_val")

    # Each stage starts from its own seed: the same initial weights and augmentation stream whether its samples
    # were generated now (which draws random numbers) or reused, and whether earlier stages ran in this process.
    seed_everything(config.runtime.seed + 1000 * STAGES.index(stage) + dist.rank, config.runtime.deterministic)
    model = build_model(stage, cfg, args.from_pretrained).to(dist.device, memory_format=torch.channels_last)
    sampler = BalancedBatchSampler(train_set.kinds, cfg.batch_size, m.batch_ratio, cfg.steps_per_epoch,
                                   seed=config.runtime.seed, rank=dist.rank, world_size=dist.world_size)
    loader_workers = min(workers, 1)
    batches = EpochLoader(train_set, sampler, config.runtime.seed + dist.rank, num_workers=loader_workers,
                          collate_fn=keep_batch, pin_memory=dist.device.type == "cuda", worker_init_fn=worker_seed,
                          persistent_workers=loader_workers > 0)
    trainer = Trainer(model, OptimSettings.of(cfg), batches, dist_info=dist, run=session, amp=config.runtime.amp,
                      skip_nonfinite=args.skip_nonfinite)
    weights = (cfg.cls_weight, cfg.box_weight, cfg.landmark_weight)
    task = StageTask(trainer, stage, config, MTCNNLoss(*weights, m.ohem_ratio), MTCNNLoss(*weights, 1.0), val_set)
    logger.info(f"[{stage}] {len(train_set):,} training samples {train_set.counts()}, {len(val_set):,} validation; "
                f"{len(sampler)} steps/epoch x {cfg.epochs} epochs, batch {cfg.batch_size} "
                f"(neg:pos:part:landmark {':'.join(str(int(q)) for q in sampler.quota)})")
    if session.checkpoint is None:  # the untrained baseline: the reference for the overfitting watch
        logger.log("val", epoch=0, **task.validation())
    state = trainer.fit(task)
    report: dict[str, Any] = {"stage": stage, "epochs": state.epoch, "steps": state.step,
                              "best_val_loss": -state.best_metric, "samples": train_set.counts()}
    if dist.is_main:
        rows = [r for r in logger.rows("val") if int(float(r["epoch"])) > 0]  # the plot starts after epoch 1
        if rows:
            history = {"train loss": [float(r["loss"]) for r in logger.rows("train")],
                       "val loss": [float(r["val_loss"]) for r in rows],
                       "val accuracy": [float(r["val_acc"]) for r in rows]}
            plot_loss_curves(stage_dir / "loss_curves.png", history, title=f"{stage} training")
        best = trainer.checkpointer.best_path
        nets[stage] = load_net(best, stage).to(dist.device)
        sources[stage] = file_fingerprint(best)
        if not args.no_eval:
            report["eval"] = evaluation = evaluate(nets, data, stage, config, stage_dir, log, dist.device, workers)
            for line in format_report(evaluation):
                logger.info(f"[{stage} eval] {line}")
            if "landmark_nme" in evaluation:
                logger.info(f"[{stage} eval] landmark NME {evaluation['landmark_nme']:.4f} (inter-ocular), "
                            f"failures > 0.1: {evaluation['landmark_failure_rate']:.3f}")
        atomic_write_json(done_path, report)
    logger.close()
    barrier()
    return report


def _earlier_nets(stage: str, run_dir: Path, device: torch.device) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The best checkpoints of the stages before ``stage`` (they must exist), with their fingerprints."""
    nets, sources = {}, {}
    for earlier in STAGES[:STAGES.index(stage)]:
        path = run_dir / earlier / "best.pt"
        if not path.is_file():
            raise DataError(path, f"{stage} needs a trained {earlier}; run --stage {earlier} (or --stage all) first")
        nets[earlier] = load_net(path, earlier).to(device)
        sources[earlier] = file_fingerprint(path)
    return nets, sources


def test_only(args: argparse.Namespace, config: Config, data: MTCNNData, run_dir: Path, device: torch.device,
              log: BadInputLog, workers: int) -> dict[str, Any]:
    """Evaluate the cascade up to --stage from the run's best checkpoints, or the original weights."""
    until = "onet" if args.stage == "all" else args.stage
    nets = {}
    for stage in STAGES[:STAGES.index(until) + 1]:
        source = args.from_pretrained if args.from_pretrained else run_dir / stage / "best.pt"
        nets[stage] = load_net(source, stage).to(device)
    name = "pretrained" if args.from_pretrained else "trained"
    out_dir = run_dir / f"test_{name}_{until}"
    report = evaluate(nets, data, until, config, out_dir, log, device, workers)
    if args.fddb_folds:
        if not args.fddb_images:
            raise ConfigError("--fddb-folds needs --fddb-images (the originalPics folder)")
        report.update(evaluate_fddb(nets, config, device, args.fddb_folds, args.fddb_images, log, workers))
        atomic_write_json(out_dir / "eval.json", report)
    print(f"{name} cascade up to {until} on {len(data.val)} validation images:")
    for line in format_report(report):
        print(line)
    if "landmark_nme" in report:
        print(f"  landmark NME {report['landmark_nme']:.4f} on {report['landmark_faces']} faces, "
              f"failures > 0.1: {report['landmark_failure_rate']:.3f}")
    if "fddb_tpr_at_1000_fp" in report:
        print(f"  FDDB ({report['fddb_images']} images, {report['fddb_faces']} faces): TPR "
              f"{report['fddb_tpr_at_1000_fp']:.4f} at 1000 FP, {report['fddb_tpr_at_2000_fp']:.4f} at 2000 FP")
    print(f"report: {out_dir / 'eval.json'}")
    return report


def main(args: argparse.Namespace) -> int:
    """Train the requested stage(s) or evaluate; returns the exit code."""
    config = config_from_args(args, load_config)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    dist = init_distributed(config.runtime.device)
    try:
        seed_everything(config.runtime.seed + dist.rank, config.runtime.deterministic)
        workers = config.runtime.workers if args.workers is None else args.workers
        run_dir = Path(args.output_dir) if args.output_dir else config.path("runs_dir") / "mtcnn"
        log = BadInputLog(strict=config.runtime.strict)
        data = load_data(config, log)
        if not data.train and not args.test_only:
            raise DataError(config.path("wider_face"), "no training images in the annotation file")
        if args.test_only:
            if dist.is_main:
                test_only(args, config, data, run_dir, dist.device, log, workers)
            return 0
        stages = STAGES if args.stage == "all" else (args.stage,)
        if args.resume:  # every stage checked before anything is written
            for stage in stages:
                check_stage_resume(stage, run_dir / stage, config)
        if dist.is_main:
            save_config(config, run_dir / "config.json")
        nets, sources = _earlier_nets(stages[0], run_dir, dist.device)
        started = time.perf_counter()
        reports = {}
        for stage in stages:
            reports[stage] = train_stage(stage, config, data, run_dir, args, dist, log, nets, sources, workers)
            if stage not in nets:
                nets[stage] = load_net(run_dir / stage / "best.pt", stage).to(dist.device)
                sources[stage] = file_fingerprint(run_dir / stage / "best.pt")
        if dist.is_main:
            summary = {"stages": reports, "seconds": time.perf_counter() - started, "bad_inputs": len(log)}
            atomic_write_json(run_dir / "report.json", summary)
            if len(log):
                print(log.summary())
            final = reports[stages[-1]].get("eval")
            if final:
                print(f"final ({stages[-1]}): AP {final['ap']:.4f}, precision {final['precision']:.4f}, "
                      f"recall {final['recall']:.4f}, mean IoU {final['mean_iou']:.4f}; "
                      f"{time.perf_counter() - started:.0f} s; report {run_dir / 'report.json'}")
        return 0
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    raise SystemExit(run(main, get_args_parser()))
