"""One MTCNN stage as a task of the training engine: its sample stores, its net, the per-batch step (the
multi-task loss with OHEM on augmented balanced batches), the validation loss over the whole validation
store, and which settings cannot change when a stage is resumed."""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from config import Config, MTCNNConfig, MTCNNStageConfig
from models.mtcnn import NET_NAMES, build_net
from models.weights import load_net
from training.engine import StatSums, StepFn, StepOutput, Task, Trainer, unwrap
from training.mtcnn.cascade import make_detector, to_net_input
from training.mtcnn.data import MTCNNData
from training.mtcnn.loss import LossParts, MTCNNLoss, summarize_stats
from training.mtcnn.mining import mining_function
from training.mtcnn.packed import PackedSamples
from training.mtcnn.samples import augment_batch, generate_samples
from training.run import check_resume, config_changes, describe_changes
from utils.checkpoint import load_checkpoint
from utils.config_io import config_to_dict
from utils.errors import BadInputLog, ConfigError
from utils.logger import RunLogger


def fixed_on_resume(stage: str) -> tuple[str, ...]:
    """Settings of ``stage`` a resumed run cannot change: the net's shape, the optimizer kind (its saved
    moments), the accumulation its pending gradients were scaled for."""
    return tuple(f"mtcnn.{stage}.{key}" for key in ("size", "landmark_head", "optimizer", "accumulate"))


def check_stage_resume(stage: str, stage_dir: Path, config: Config) -> None:
    """Before a ``--resume`` writes anything: refuse changed settings the stage's saved state cannot take, and
    changes to a finished stage's own section (it will not train again, so they could not apply)."""
    current = config_to_dict(config)
    if (stage_dir / "done.json").is_file() and (stage_dir / "config.json").is_file():
        saved = json.loads((stage_dir / "config.json").read_text(encoding="utf-8"))
        changed = {k: v for k, v in config_changes(saved, current).items() if k.startswith(f"mtcnn.{stage}.")}
        if changed:
            raise ConfigError(f"--resume: stage {stage} is finished ({stage_dir / 'done.json'}) and will not train "
                              f"again, so these changes cannot apply: {describe_changes(changed)} (restore them, or "
                              f"retrain it with --stage {stage} without --resume)")
    elif (stage_dir / "last.pt").is_file():
        check_resume(load_checkpoint(stage_dir / "last.pt", kind=stage), current, fixed_on_resume(stage),
                     stage_dir / "last.pt")


def stage_config(config: Config, stage: str) -> MTCNNStageConfig:
    """The per-stage section ``mtcnn.<stage>``."""
    return getattr(config.mtcnn, stage)


def sample_settings(config: Config, stage: str, sources: dict[str, str], split: str,
                    count: tuple[int, int]) -> dict[str, Any]:
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
        settings = sample_settings(config, stage, sources, split, (len(items), len(marks)))
        seed = config.runtime.seed * 1000 + NET_NAMES.index(stage) * 10 + (split == "val")
        summary = generate_samples(store, cfg.size, items, marks, m, cfg, seed=seed, workers=workers, log=log,
                                   detect=detect, settings=settings, progress=logger.enabled)
        for line in summary.lines():
            logger.info(f"[{stage} {split} samples] {line}")
        stores[split] = store
    return stores["train"], stores["val"]


def forward_loss(model: nn.Module, batch: dict[str, torch.Tensor], loss_fn: MTCNNLoss, device: torch.device,
                 augment: MTCNNConfig | None = None,
                 autocast: contextlib.AbstractContextManager | None = None) -> LossParts:
    """The multi-task loss of one batch of samples (augmented as ``augment`` says, when given). Only the net
    runs under ``autocast`` (AMP): augmentation and loss stay in float32, as in the embedder's steps."""
    images = batch["images"].to(device, non_blocking=True)
    if augment is not None and (augment.jitter > 0 or augment.occlusion > 0 or augment.blur > 0):
        images = augment_batch(images, batch["kinds"], augment.jitter, augment.occlusion, augment.blur)
    with autocast or contextlib.nullcontext():
        out = model(to_net_input(images, device), logits=True)
    n = len(batch["kinds"])
    landmarks = out.landmarks.reshape(n, 10).float() if out.landmarks is not None else None
    return loss_fn(out.face.reshape(n, 2).float(), out.box.reshape(n, 4).float(), landmarks,
                   batch["kinds"].to(device, non_blocking=True), batch["boxes"].to(device, non_blocking=True),
                   batch["landmarks"].to(device, non_blocking=True))


class StageTask(Task):
    """Training of one MTCNN net: balanced batches, augmented on the device, through the multi-task loss with
    OHEM; after each epoch the loss over the whole validation store (lower is better)."""

    def __init__(self, trainer: Trainer, stage: str, config: Config, train_loss: MTCNNLoss, val_loss: MTCNNLoss,
                 val_set: PackedSamples) -> None:
        self.trainer, self.stage, self.config = trainer, stage, config
        self.cfg = stage_config(config, stage)
        self.train_loss, self.val_loss, self.val_set = train_loss, val_loss, val_set

    def step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """Loss and statistics of one training batch."""
        parts = forward_loss(self.trainer.model, batch, self.train_loss, self.trainer.device, self.config.mtcnn,
                             self.trainer.autocast())
        stats = {**parts.stats, "cls": parts.cls, "box": parts.box, "landmark": parts.landmark}
        return StepOutput(parts.total, stats, len(batch["kinds"]))

    def step_for(self, epoch: int) -> StepFn:
        """The same step in every epoch."""
        return self.step

    def summarize(self, sums: dict[str, float], batches: float) -> dict[str, float]:
        """Mean total and part losses, and per-type accuracy and errors."""
        return summarize_parts(sums, batches)

    @torch.no_grad()
    def validation(self) -> dict[str, float]:
        """Loss and per-type figures over the whole validation sample store (no OHEM: every sample counts)."""
        net = unwrap(self.trainer.model)
        net.eval()
        sums, size, store = StatSums(), max(self.cfg.batch_size, 512), self.val_set
        for first in range(0, len(store), size):
            batch = store.__getitems__(list(range(first, min(first + size, len(store)))))
            parts = forward_loss(net, batch, self.val_loss, self.trainer.device)
            sums.add(parts.total, {**parts.stats, "cls": parts.cls, "box": parts.box, "landmark": parts.landmark})
        return {f"val_{k}": v for k, v in summarize_parts(*sums.reduced(self.trainer.device)).items()}

    def validate(self, epoch: int) -> tuple[float, dict[str, float]]:
        """The validation loss, negated as the metric (every process computes it on the whole store)."""
        row = self.validation()
        return -row["val_loss"], row

    def checkpoint_extra(self) -> dict[str, Any]:
        """Which net the checkpoint holds, and whether it has a landmark head."""
        return {"net": self.stage, "landmark_head": bool(unwrap(self.trainer.model).has_landmarks)}

    def describe(self, epoch: int, train: dict[str, float], val: dict[str, Any]) -> str:
        """Loss and its parts, accuracies, validation loss and accuracy, throughput."""
        return (f"[{self.stage}] epoch {epoch}/{self.cfg.epochs}: loss {train['loss']:.4f} "
                f"(cls {train['cls_loss']:.4f}, "
                f"box {train['box_loss']:.4f}, landmark {train['landmark_loss']:.4f}), acc pos {train['acc_pos']:.3f} "
                f"neg {train['acc_neg']:.3f}; val loss {val['val_loss']:.4f}, val acc {val['val_acc']:.3f}; "
                f"{train['samples_per_s']:,.0f} samples/s")


def summarize_parts(sums: dict[str, float], batches: float) -> dict[str, float]:
    """Mean total, cls, box and landmark losses per batch, then the per-type figures of ``summarize_stats``."""
    values, n = dict(sums), max(batches, 1.0)
    out = {"loss": values.pop("loss", 0.0) / n, "cls_loss": values.pop("cls", 0.0) / n,
           "box_loss": values.pop("box", 0.0) / n, "landmark_loss": values.pop("landmark", 0.0) / n}
    out.update(summarize_stats(values))
    return out


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
