"""Embedder training as a task of the training engine: P x K batches augmented on the device, the loss (the
triplet loss with online mining, or an ArcFace/CosFace margin head over the training identities, optionally
followed by triplet fine-tuning), validation by the LFW protocol on a pairs set, batch-norm calibration before
the first step, which settings cannot change when a run is resumed, and the final report."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from config import Config, FaceNetConfig
from models.system import load_embedder
from training.engine import StepFn, StepOutput, Task, Trainer, TrainingState, unwrap
from training.facenet.augment import AugmentSettings, augment
from training.facenet.crops import CropBatch, PairsSet
from training.facenet.margin import MarginHead
from training.facenet.model import architecture
from training.facenet.triplet import TripletLoss
from training.facenet.validation import STAT_NAMES, evaluate, save_roc
from utils.atomic import atomic_write_json
from utils.errors import BadInputLog, DataError
from utils.logger import RunLogger
from utils.metrics import VerificationResult
from utils.plots import plot_loss_curves

KIND = "facenet"

# What a resumed run cannot change: the network's shape and input (its weights would not fit or would mean
# something else), the face framing its crops were cut with, the optimizer kind (its saved moments), the loss
# kinds and where the switch between them falls, the identities the margin head has one weight for, the
# accumulation its pending gradients were scaled for, the weights it started from, and the decay of the weight
# average the checkpoint's model is.
FIXED_ON_RESUME = tuple(f"facenet.{key}" for key in (
    "backbone", "embedding_size", "input_size", "width", "standardization", "pretrained", "optimizer", "mining",
    "squared", "accumulate", "loss", "triplet_finetune_epochs", "train_images", "ema_decay")) + tuple(
    f"align.{key}" for key in ("train_size", "eval_size", "margin", "method"))
MARGIN_STAT_NAMES = ("train_accuracy", "mean_target_cos", "mean_max_other_cos")


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
        model(augment(images, cfg.input_size, AugmentSettings.of(cfg)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def loss_modules(cfg: FaceNetConfig, num_classes: int) -> dict[str, nn.Module]:
    """The trainable modules the loss needs beside the embedder: a margin ``head`` over the training identities for
    ArcFace/CosFace, none for the triplet loss."""
    if cfg.loss == "triplet":
        return {}
    return {"head": MarginHead(cfg.embedding_size, num_classes, cfg.loss, cfg.head_scale, cfg.head_margin)}


def describe_loss(cfg: FaceNetConfig) -> str:
    """The loss recipe in a few words (a run's first line, the recipe table)."""
    triplet = f"triplet ({cfg.mining} mining, margin {cfg.margin:g})"
    if cfg.loss == "triplet":
        return triplet
    margin = f"{cfg.loss} (s {cfg.head_scale:g}, m {cfg.head_margin:g})"
    if cfg.triplet_finetune_epochs:
        return f"{margin} for {cfg.margin_epochs()} epochs, then {triplet} for {cfg.triplet_finetune_epochs}"
    return margin


def result_row(result: VerificationResult, losses: dict[str, float], pairs: PairsSet) -> dict[str, float]:
    """The ``metrics_val.csv`` row of one validation."""
    row = {"val_accuracy": result.accuracy, "val_accuracy_std": result.accuracy_std, "val_threshold": result.threshold,
           "val_val": result.val, "val_far": result.far, "val_auc": result.auc, "val_eer": result.eer,
           "val_pairs": result.num_pairs, "val_pairs_dropped": pairs.dropped}
    row.update(losses)
    return row


class EmbedderTask(Task):
    """The embedder trained on P x K batches augmented on the device, with the triplet loss and online mining
    (``facenet.loss`` triplet), or with a margin ``head`` over the training identities for the first
    ``cfg.margin_epochs()`` epochs and the triplet loss after them; validated every ``val_every`` epochs on the
    pairs set (in the main process) by pair accuracy, ties going to the better ROC AUC."""

    unit = "images"

    def __init__(self, trainer: Trainer, config: Config, loss_fn: TripletLoss, pairs: PairsSet | None,
                 log: BadInputLog, run_dir: Path) -> None:
        self.trainer, self.config, self.cfg = trainer, config, config.facenet
        self.loss_fn, self.pairs, self.log, self.run_dir = loss_fn, pairs, log, run_dir
        self.augmentation = AugmentSettings.of(config.facenet)
        # runtime.compile: training steps run the compiled graph (sharing the model's parameters); validation and
        # batch-norm calibration keep the eager model, whose other modes and batch sizes would each recompile
        self.forward = torch.compile(trainer.model) if config.runtime.compile else trainer.model
        # runtime.channels_last: batches in the layout build_model gave the weights
        self.memory_format = torch.channels_last if config.runtime.channels_last else torch.contiguous_format
        self.result: VerificationResult | None = None  # the latest validation

    def _inputs(self, batch: CropBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's augmented inputs and labels on the device (unreadable crops reported and left out)."""
        for path, reason in batch.errors:
            self.log.report(DataError(path, reason))
        images, labels = batch.images, batch.labels
        if batch.errors:
            images, labels = images[batch.valid], labels[batch.valid]
        device = self.trainer.device
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        inputs = augment(images, self.cfg.input_size, self.augmentation)
        return inputs.contiguous(memory_format=self.memory_format), labels

    def triplet_step(self, batch: CropBatch) -> StepOutput:
        """Triplet loss and mining statistics of one batch."""
        inputs, labels = self._inputs(batch)
        with self.trainer.autocast():
            embeddings = self.forward(inputs)
        loss, stats = self.loss_fn(embeddings.float(), labels)
        return StepOutput(loss, {name: getattr(stats, name) for name in STAT_NAMES}, len(labels))

    def margin_step(self, batch: CropBatch) -> StepOutput:
        """Margin-softmax loss of one batch over the training identities, the margin ramped up over the first
        ``margin_warmup_steps`` optimizer steps; the head's accuracy and cosines as statistics."""
        inputs, labels = self._inputs(batch)
        head = self.trainer.modules["head"]
        ramp = self.cfg.margin_warmup_steps
        unwrap(head).margin = self.cfg.head_margin * min(1.0, self.trainer.state.step / ramp if ramp else 1.0)
        with self.trainer.autocast():
            embeddings = self.forward(inputs)
        loss, stats = head(embeddings.float(), labels)
        return StepOutput(loss, {name: getattr(stats, name) for name in MARGIN_STAT_NAMES}, len(labels))

    def step_for(self, epoch: int) -> StepFn:
        """The margin step for the first ``margin_epochs()`` epochs, the triplet step after them."""
        return self.margin_step if epoch < self.cfg.margin_epochs() else self.triplet_step

    def validate(self, epoch: int) -> tuple[float | None, dict[str, Any]]:
        """The LFW protocol on the pairs set every ``val_every`` epochs and after the last (main process only)."""
        if self.pairs is None or not (epoch % self.cfg.val_every == 0 or epoch == self.cfg.epochs):
            return None, {}
        self.result, losses, _ = evaluate(self.trainer.eval_model, self.pairs, self.trainer.device, self.cfg,
                                          self.loss_fn, self.cfg.val_flip)
        return self.result.accuracy + 1e-6 * self.result.auc, result_row(self.result, losses, self.pairs)

    def on_best(self, epoch: int) -> None:
        """The ROC curve of the validation that made the new best.pt."""
        if self.result is not None:
            save_roc(self.run_dir / "roc.png", self.result, f"validation, epoch {epoch}")

    def checkpoint_extra(self) -> dict[str, Any]:
        """The embedder record that ``models.system.load_embedder`` rebuilds the model from."""
        return {"embedder": architecture(self.config)}

    def describe(self, epoch: int, train: dict[str, float], val: dict[str, Any]) -> str:
        """Loss, its statistics (active triplets, triplet accuracy and distances; or the head's accuracy and
        cosines), throughput; the validation figures when validated."""
        nan = float("nan")
        message = f"epoch {epoch}/{self.cfg.epochs}: loss {train.get('loss', nan):.4f}, "
        if "train_accuracy" in train:
            message += (f"{self.cfg.loss} head acc {train['train_accuracy']:.3f}, cos own "
                        f"{train.get('mean_target_cos', nan):.3f} other {train.get('mean_max_other_cos', nan):.3f}")
        else:
            message += (f"active {train.get('active_fraction', nan):.3f}, triplet acc "
                        f"{train.get('triplet_accuracy', nan):.3f}, d+ {train.get('mean_pos_dist', nan):.3f} "
                        f"d- {train.get('mean_neg_dist', nan):.3f}")
        message += f"; {train['images_per_s']:.0f} img/s"
        if val:
            message += (f"; val acc {val['val_accuracy']:.4f} +- {val['val_accuracy_std']:.4f}, AUC "
                        f"{val['val_auc']:.4f}, VAL@FAR={self.cfg.far_target:g} {val['val_val']:.4f}"
                        + (f", val loss {val['val_loss']:.4f}" if "val_loss" in val else ""))
        return message


def finish(run_dir: Path, config: Config, logger: RunLogger, best_path: Path, pairs: PairsSet | None,
           log: BadInputLog, seconds: float, state: TrainingState, device: torch.device) -> None:
    """Loss curves, the best checkpoint's validation figures (ROC PNG) and report.json."""
    train_rows, val_rows = logger.rows("train"), logger.rows("val")
    history: dict[str, list[float]] = {}
    if train_rows:
        history["loss/train"] = [float(r["loss"]) for r in train_rows]
        for column, label in (("triplet_accuracy", "triplet accuracy"), ("train_accuracy", "head accuracy")):
            history[f"{label}/train"] = [float(r[column]) for r in train_rows if r.get(column) not in (None, "")]
    if val_rows:
        history["loss/val"] = [float(r["val_loss"]) for r in val_rows if r.get("val_loss") not in (None, "")]
        history["val accuracy"] = [float(r["val_accuracy"]) for r in val_rows]
    if any(history.values()):
        plot_loss_curves(run_dir / "loss_curves.png", history, title="FaceNet training")
    report: dict[str, Any] = {"epochs": state.epoch, "steps": state.step, "seconds": round(seconds, 1),
                              "bad_inputs": len(log), "bad_input_files": sorted({p.path for p in log.problems}),
                              "best": str(best_path)}
    if pairs is not None:
        report["validation_pairs_left_out"] = pairs.dropped
        report["validation_images_missing"] = pairs.missing_images
    if pairs is not None and best_path.is_file():
        best = load_embedder(best_path, device)
        result, _, _ = evaluate(best, pairs, device, config.facenet, None, config.facenet.val_flip)
        save_roc(run_dir / "roc.png", result, "validation (best.pt)")
        report["best_validation"] = result.as_dict()
        logger.info(f"best.pt: {result.summary()}")
    if len(log):
        logger.info(log.summary())
    atomic_write_json(run_dir / "report.json", report)
    logger.info(f"done in {seconds:.0f} s; best checkpoint {best_path}, report {run_dir / 'report.json'}")
