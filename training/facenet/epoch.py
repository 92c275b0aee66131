"""One training epoch of the embedder: P x K batches, on-device augmentation, triplet loss with online mining,
the step runner (AMP, accumulation), and the epoch's statistics."""
from __future__ import annotations

import time

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from config import FaceNetConfig
from training.facenet.crops import augment
from training.facenet.triplet import TripletLoss, TripletStats
from training.facenet.validation import STAT_NAMES
from utils.distributed import all_reduce_mean
from utils.errors import BadInputLog, DataError
from utils.logger import RunLogger
from utils.training import StepRunner, StopOnSignal, TrainingState, buffer_snapshot, check_finite, restore_buffers


class _StatSums:
    """Running sums of loss and triplet statistics, kept on the device (one sync per epoch)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.batches = 0

    def add(self, loss: Tensor, stats: TripletStats) -> None:
        values = {"loss": loss.detach().float(), **{n: getattr(stats, n).detach().float() for n in STAT_NAMES}}
        for key, value in values.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.batches += 1

    def means(self) -> dict[str, float]:
        if not self.sums:
            return {}
        stacked = torch.stack([self.sums[k] for k in self.sums]).double() / max(self.batches, 1)
        reduced = all_reduce_mean(stacked.cpu()).tolist()
        return dict(zip(self.sums, reduced))


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: TripletLoss, steps: StepRunner, device: torch.device,
                    epoch: int, state: TrainingState, logger: RunLogger, stop: StopOnSignal, cfg: FaceNetConfig,
                    log: BadInputLog, skip_nonfinite: bool = False) -> dict[str, float]:
    """One epoch of P x K batches; returns mean loss, active-triplet share, triplet accuracy, mean distances
    (averaged over processes), images per second, the learning rate, and the batches skipped for a non-finite
    loss (with ``skip_nonfinite``; their forward pass leaves no trace in the batch-norm statistics)."""
    model.train()
    sums = _StatSums()
    seen, started = 0, time.perf_counter()
    bar = logger.progress(loader, desc=f"epoch {epoch + 1}", total=len(loader))
    taken = skipped = 0  # taken: batches drawn from the loader, trained or skipped (what a resume inside this epoch skips)
    for batch in bar:
        taken += 1
        for path, reason in batch.errors:
            log.report(DataError(path, reason))
        images, labels = batch.images, batch.labels
        if batch.errors:
            images, labels = images[batch.valid], labels[batch.valid]
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        inputs = augment(images, cfg.input_size, cfg.random_crop, cfg.flip, cfg.color_jitter)
        buffers = buffer_snapshot(model) if skip_nonfinite else {}
        with steps.autocast():
            embeddings = model(inputs)
        loss, stats = loss_fn(embeddings.float(), labels)
        if not check_finite(loss, f"epoch {epoch + 1}, step {state.step}", skip_nonfinite):
            restore_buffers(model, buffers)
            skipped += 1
            continue
        if steps.backward(loss, model.parameters()):
            state.step += 1
        sums.add(loss, stats)
        seen += len(labels)
        if sums.batches % 10 == 0 and logger.enabled:
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", acc=f"{float(stats.triplet_accuracy):.3f}")
        if stop.requested:
            break
    out = sums.means()
    out["batches"] = sums.batches
    out["batches_taken"] = taken
    out["nonfinite_skipped"] = skipped
    out["images_per_s"] = seen / max(time.perf_counter() - started, 1e-9)
    out["lr"] = steps.optimizer.param_groups[0]["lr"]
    return out
