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
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from config import Config, MTCNNConfig, MTCNNStageConfig, load_config
from datasets.decoding import keep_batch
from models.mtcnn import NET_NAMES, build_net
from models.weights import load_net
from training.mtcnn.cascade import evaluate, evaluate_fddb, make_detector, to_net_input
from training.mtcnn.data import MTCNNData, load_data
from training.mtcnn.evaluation import format_report
from training.mtcnn.loss import MTCNNLoss, summarize_stats
from training.mtcnn.mining import mining_function
from training.mtcnn.packed import BalancedBatchSampler, PackedSamples
from training.mtcnn.samples import augment_batch, generate_samples
from utils.atomic import atomic_write_json
from utils.checkpoint import load_checkpoint
from utils.cli import add_config_args, config_from_args, run
from utils.config_io import config_to_dict, save_config
from utils.distributed import DistInfo, all_reduce_mean, barrier, cleanup_distributed, init_distributed
from utils.errors import BadInputLog, ConfigError, DataError
from utils.hashing import file_fingerprint
from utils.logger import RunLogger
from utils.plots import plot_loss_curves
from utils.seed import seed_everything, worker_seed
from utils.training import (
    Checkpointer,
    ResumableBatches,
    StepRunner,
    StopOnSignal,
    TrainingState,
    build_optimizer,
    build_scheduler,
    check_finite,
    loader_generator,
    unwrap,
)


def get_args_parser() -> argparse.ArgumentParser:
    """The command line (every flag explained in ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Train the MTCNN face detector (P-Net -> R-Net -> O-Net) with hard-example mining, "
                    "and evaluate it (precision, recall, AP, per-stage recall/precision, landmark error).",
    )
    parser.add_argument("--stage", choices=(*NET_NAMES, "all"), default="all",
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


# --- samples ----------------------------------------------------------------------------------------------


def stage_config(config: Config, stage: str) -> MTCNNStageConfig:
    """The per-stage section ``mtcnn.<stage>``."""
    return getattr(config.mtcnn, stage)


def _sample_settings(config: Config, stage: str, sources: dict[str, str], split: str, count: tuple[int, int]) -> dict[str, Any]:
    """What a sample store depends on (a store made under other settings is regenerated)."""
    m = asdict(config.mtcnn)
    shared_keys = ("iou_negative", "iou_part", "iou_positive", "min_face_size", "mirror", "landmark_max_rotation",
                   "shard_images", "mining_thresholds", "holdout_every", "train_fraction_of_images")
    shared = {k: m[k] for k in shared_keys}
    sample_keys = ("size", "negatives_per_image", "negatives_near_face", "crops_per_face", "landmark_crops_per_face",
                   "mined_negatives_per_image")
    return {"stage": stage, "split": split, "items": list(count), "shared": shared,
            "stage_samples": {k: m[stage][k] for k in sample_keys}, "earlier_nets": sources,
            "detector": asdict(config.detector), "wider": str(config.path("wider_face"))}


def build_samples(stage: str, config: Config, data: MTCNNData, run_dir: Path, nets: dict[str, nn.Module],
                  sources: dict[str, str], device: torch.device, log: BadInputLog, workers: int,
                  logger: RunLogger) -> tuple[Path, Path]:
    """Write (or reuse) the training and validation sample stores of ``stage``; return their folders."""
    m, cfg = config.mtcnn, stage_config(config, stage)
    stores = {}
    detect = None
    if stage != "pnet":
        until = "pnet" if stage == "rnet" else "rnet"
        thresholds = (m.mining_thresholds[0], m.mining_thresholds[1], config.detector.thresholds[2])
        detect = mining_function(make_detector(nets, config, device, thresholds), until)
    for split, items, marks in (("train", data.train, data.landmarks_train), ("val", data.val, data.landmarks_test)):
        store = run_dir / "samples" / f"{stage}_{split}"
        settings = _sample_settings(config, stage, sources, split, (len(items), len(marks)))
        seed = config.runtime.seed * 1000 + NET_NAMES.index(stage) * 10 + (split == "val")
        summary = generate_samples(store, cfg.size, items, marks, m, cfg, seed=seed, workers=workers, log=log,
                                   detect=detect, settings=settings, progress=logger.enabled)
        for line in summary.lines():
            logger.info(f"[{stage} {split} samples] {line}")
        stores[split] = store
    return stores["train"], stores["val"]


# --- training -------------------------------------------------------------------------------------------


def _forward_loss(model: nn.Module, batch: dict[str, torch.Tensor], loss_fn: MTCNNLoss, device: torch.device,
                  augment: MTCNNConfig | None = None):
    images = batch["images"].to(device, non_blocking=True)
    if augment is not None and (augment.jitter > 0 or augment.occlusion > 0 or augment.blur > 0):
        images = augment_batch(images, batch["kinds"], augment.jitter, augment.occlusion, augment.blur)
    out = model(to_net_input(images, device), logits=True)
    n = len(batch["kinds"])
    landmarks = out.landmarks.reshape(n, 10) if out.landmarks is not None else None
    return loss_fn(out.face.reshape(n, 2), out.box.reshape(n, 4), landmarks,
                   batch["kinds"].to(device, non_blocking=True), batch["boxes"].to(device, non_blocking=True),
                   batch["landmarks"].to(device, non_blocking=True))


def _add_stats(totals: dict[str, torch.Tensor], parts: Any) -> None:
    for key, value in parts.stats.items():
        totals[key] = totals.get(key, 0.0) + value.detach()
    for key in ("cls", "box", "landmark"):
        totals[f"sum_{key}"] = totals.get(f"sum_{key}", 0.0) + getattr(parts, key)
    totals["sum_total"] = totals.get("sum_total", 0.0) + parts.total.detach()
    totals["batches"] = totals.get("batches", 0.0) + 1.0


def _finish_stats(totals: dict[str, Any], prefix: str = "") -> dict[str, float]:
    values = {k: float(all_reduce_mean(torch.as_tensor(v, dtype=torch.float64).reshape(())).item())
              for k, v in totals.items()}
    n = max(values.pop("batches", 1.0), 1.0)
    out = {"loss": values.pop("sum_total", 0.0) / n, "cls_loss": values.pop("sum_cls", 0.0) / n,
           "box_loss": values.pop("sum_box", 0.0) / n, "landmark_loss": values.pop("sum_landmark", 0.0) / n}
    out.update(summarize_stats(values))
    return {prefix + k: v for k, v in out.items()}


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: MTCNNLoss, steps: StepRunner, device: torch.device,
                    epoch: int, state: TrainingState, logger: RunLogger, stop: StopOnSignal,
                    skip_nonfinite: bool = False, augment: MTCNNConfig | None = None) -> dict[str, float]:
    """One epoch of balanced batches (augmented as ``augment`` says); returns mean loss parts and per-type
    accuracy/errors (all ranks averaged)."""
    model.train()
    totals: dict[str, Any] = {}
    start, seen = time.perf_counter(), 0
    bar = logger.progress(loader, desc=f"epoch {epoch + 1}", total=len(loader))
    taken = skipped = 0  # taken: batches drawn from the loader, trained or skipped (what a resume inside this epoch skips)
    for batch in bar:
        taken += 1
        with steps.autocast():
            parts = _forward_loss(model, batch, loss_fn, device, augment)
        if not check_finite(parts.total, f"epoch {epoch + 1}, step {state.step}", skip_nonfinite):
            skipped += 1
            continue
        if steps.backward(parts.total, model.parameters()):
            state.step += 1
        _add_stats(totals, parts)
        seen += len(batch["kinds"])
        if stop.requested:
            break
    stats = _finish_stats(totals)
    stats["batches_taken"] = taken
    stats["nonfinite_skipped"] = skipped
    stats["samples_per_s"] = seen / max(time.perf_counter() - start, 1e-9)
    stats["lr"] = steps.optimizer.param_groups[0]["lr"]
    return stats


@torch.no_grad()
def validation_loss(model: nn.Module, store: PackedSamples, loss_fn: MTCNNLoss, device: torch.device,
                    batch_size: int) -> dict[str, float]:
    """Loss and per-type figures over the whole validation sample store (no OHEM: every sample counts)."""
    net = unwrap(model)
    net.eval()
    totals: dict[str, Any] = {}
    for first in range(0, len(store), batch_size):
        batch = store.__getitems__(list(range(first, min(first + batch_size, len(store)))))
        _add_stats(totals, _forward_loss(net, batch, loss_fn, device))
    return _finish_stats(totals, "val_")


def init_weights(model: nn.Module) -> nn.Module:
    """Xavier-uniform weights and zero biases in every conv and dense layer (the original MTCNN recipe);
    with these the classifier leaves its all-negative start within tens of steps instead of hundreds."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def build_model(stage: str, cfg: MTCNNStageConfig, pretrained: str | None) -> nn.Module:
    """A fresh net for ``stage`` (landmark head as configured), or the original weights to fine-tune."""
    landmarks = True if stage == "onet" else cfg.landmark_head
    if pretrained is not None:
        model = load_net(pretrained, stage, landmarks=landmarks)
        return model.train()
    return init_weights(build_net(stage, landmarks=landmarks))


def _loader(store: PackedSamples, sampler: ResumableBatches, workers: int, device: torch.device, seed: int) -> DataLoader:
    return DataLoader(store, batch_sampler=sampler, num_workers=workers, collate_fn=keep_batch,
                      pin_memory=device.type == "cuda", worker_init_fn=worker_seed,
                      persistent_workers=workers > 0, generator=loader_generator(seed))


def train_stage(stage: str, config: Config, data: MTCNNData, run_dir: Path, args: argparse.Namespace,
                dist: DistInfo, log: BadInputLog, nets: dict[str, nn.Module], sources: dict[str, str],
                workers: int) -> dict[str, Any]:
    """Samples, training, validation loss and evaluation of one stage; returns its final report."""
    cfg, m = stage_config(config, stage), config.mtcnn
    stage_dir = run_dir / stage
    done_path = stage_dir / "done.json"
    if args.resume and done_path.is_file():
        return json.loads(done_path.read_text(encoding="utf-8"))
    if dist.is_main:
        done_path.unlink(missing_ok=True)
    resume_path = stage_dir / "last.pt" if args.resume and (stage_dir / "last.pt").is_file() else None
    logger = RunLogger(stage_dir, enabled=dist.is_main,
                       resume_epoch=load_checkpoint(resume_path, kind=stage)["epoch"] if resume_path else None)
    if dist.is_main:
        save_config(config, stage_dir / "config.json")
        train_store, val_store = build_samples(stage, config, data, run_dir, nets, sources, dist.device, log,
                                               workers, logger)
    barrier()
    train_store, val_store = run_dir / "samples" / f"{stage}_train", run_dir / "samples" / f"{stage}_val"
    train_set, val_set = PackedSamples(train_store), PackedSamples(val_store)

    # Each stage starts from its own seed: the same initial weights and augmentation stream whether its samples
    # were generated now (which draws random numbers) or reused, and whether earlier stages ran in this process.
    seed_everything(config.runtime.seed + 1000 * NET_NAMES.index(stage) + dist.rank, config.runtime.deterministic)
    model = build_model(stage, cfg, args.from_pretrained).to(dist.device, memory_format=torch.channels_last)
    if dist.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    sampler = BalancedBatchSampler(train_set.kinds, cfg.batch_size, m.batch_ratio, cfg.steps_per_epoch,
                                   seed=config.runtime.seed, rank=dist.rank, world_size=dist.world_size)
    total_steps = math.ceil(cfg.epochs * len(sampler) / cfg.accumulate)
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps, min(cfg.warmup_steps, total_steps // 4))
    steps = StepRunner(optimizer, scheduler, dist.device, config.runtime.amp, cfg.accumulate, cfg.clip_grad_norm)
    checkpointer = Checkpointer(stage_dir, stage, config_to_dict(config), enabled=dist.is_main)
    state = checkpointer.resume(resume_path, model, optimizer, steps) if resume_path else TrainingState()
    train_loss = MTCNNLoss(cfg.cls_weight, cfg.box_weight, cfg.landmark_weight, m.ohem_ratio)
    val_loss = MTCNNLoss(cfg.cls_weight, cfg.box_weight, cfg.landmark_weight, 1.0)
    batches = ResumableBatches(sampler)
    loader = _loader(train_set, batches, min(workers, 1), dist.device, config.runtime.seed + dist.rank)
    logger.info(f"[{stage}] {len(train_set):,} training samples {train_set.counts()}, {len(val_set):,} validation; "
                f"{len(sampler)} steps/epoch x {cfg.epochs} epochs, batch {cfg.batch_size} "
                f"(neg:pos:part:landmark {':'.join(str(int(q)) for q in sampler.quota)})")
    extra = {"net": stage, "landmark_head": bool(unwrap(model).has_landmarks)}
    if state.epoch == 0 and state.step == 0:  # the untrained baseline: the reference for the overfitting watch
        logger.log("val", epoch=0, **validation_loss(model, val_set, val_loss, dist.device, max(cfg.batch_size, 512)))
    with StopOnSignal() as stop:
        for epoch in range(state.epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            batches.skip = state.batches_done  # > 0: the checkpoint was written inside this epoch
            started = time.perf_counter()
            stats = train_one_epoch(model, loader, train_loss, steps, dist.device, epoch, state, logger, stop,
                                    args.skip_nonfinite, augment=m)
            if stop.requested:
                checkpointer.save_and_stop(model, optimizer, steps, state, batches.skip + stats["batches_taken"], extra)
            val = validation_loss(model, val_set, val_loss, dist.device, max(cfg.batch_size, 512))
            state.epoch, state.batches_done = epoch + 1, 0
            # Rows first: a run killed between the two writes resumes from the previous checkpoint, and the
            # logger drops rows past it; the other order would lose this epoch's rows.
            logger.log("train", epoch=epoch + 1, step=state.step, seconds=round(time.perf_counter() - started, 2), **stats)
            logger.log("val", epoch=epoch + 1, **val)
            checkpointer.save(model, optimizer, steps, state, metric=-val["val_loss"], extra=extra)
            logger.info(f"[{stage}] epoch {epoch + 1}/{cfg.epochs}: loss {stats['loss']:.4f} (cls {stats['cls_loss']:.4f}, "
                        f"box {stats['box_loss']:.4f}, landmark {stats['landmark_loss']:.4f}), acc pos "
                        f"{stats['acc_pos']:.3f} neg {stats['acc_neg']:.3f}; val loss {val['val_loss']:.4f}, val acc "
                        f"{val['val_acc']:.3f}; {stats['samples_per_s']:,.0f} samples/s")
    report: dict[str, Any] = {"stage": stage, "epochs": state.epoch, "steps": state.step,
                              "best_val_loss": -state.best_metric, "samples": train_set.counts()}
    if dist.is_main:
        rows = [r for r in logger.rows("val") if int(float(r["epoch"])) > 0]  # the plot starts after epoch 1
        if rows:
            history = {"train loss": [float(r["loss"]) for r in logger.rows("train")],
                       "val loss": [float(r["val_loss"]) for r in rows],
                       "val accuracy": [float(r["val_acc"]) for r in rows]}
            plot_loss_curves(stage_dir / "loss_curves.png", history, title=f"{stage} training")
        nets[stage] = load_net(checkpointer.best_path, stage).to(dist.device)
        sources[stage] = file_fingerprint(checkpointer.best_path)
        if not args.no_eval:
            evaluation = evaluate(nets, data, stage, config, stage_dir, log, dist.device, workers)
            report["eval"] = evaluation
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
    for earlier in NET_NAMES[:NET_NAMES.index(stage)]:
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
    for stage in NET_NAMES[:NET_NAMES.index(until) + 1]:
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
        if dist.is_main:
            save_config(config, run_dir / "config.json")
        stages = NET_NAMES if args.stage == "all" else (args.stage,)
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
