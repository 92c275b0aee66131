"""Embedder validation: the LFW protocol on a pairs set (accuracy over its folds, threshold, VAL@FAR, AUC,
EER) and the triplet loss on fixed P x K batches of the validation identities."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from config import FaceNetConfig
from models.embedder import Embedder
from training.engine import unwrap
from training.facenet.crops import FaceCrops, PairsSet
from training.facenet.samplers import PKBatchSampler
from training.facenet.triplet import TripletLoss
from utils.errors import ConfigError
from utils.metrics import VerificationResult, pair_scores, verification_metrics
from utils.plots import plot_roc

STAT_NAMES = ("active_fraction", "triplet_accuracy", "mean_pos_dist", "mean_neg_dist")


def embed_crops(model: Embedder, crops: FaceCrops, device: torch.device, batch_size: int, flip: bool) -> Tensor:
    """Embeddings [N, D] (CPU) of every crop, in eval mode, with optional flip test-time augmentation."""
    chunks = [list(range(i, min(i + batch_size, len(crops)))) for i in range(0, len(crops), batch_size)]
    return torch.cat([model.embed(crops.__getitems__(chunk).images, batch_size=batch_size, flip=flip, device=device)
                      for chunk in chunks]) if chunks else torch.empty(0, model.embedding_size)


def validation_loss(embeddings: Tensor, labels: np.ndarray, loss_fn: TripletLoss, p: int, k: int, batches: int,
                    seed: int) -> dict[str, float]:
    """Triplet loss and statistics on fixed P x K batches of the validation identities (empty when they are too few)."""
    if batches == 0:
        return {}
    try:
        sampler = PKBatchSampler(labels, min(p, len(np.unique(labels))), k, seed=seed, batches_per_epoch=batches,
                                 num_replicas=1, rank=0)
    except ConfigError:
        return {}
    totals: dict[str, float] = {}
    for batch in sampler:
        loss, stats = loss_fn(embeddings[batch], torch.from_numpy(labels[batch]))
        values = {"val_loss": float(loss),
                  **{f"val_{name}": v for name, v in stats.as_floats().items() if name in STAT_NAMES}}
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value / len(sampler)
    return totals


def evaluate(model: nn.Module, pairs: PairsSet, device: torch.device, cfg: FaceNetConfig, loss_fn: TripletLoss | None,
             flip: bool = False) -> tuple[VerificationResult, dict[str, float], np.ndarray]:
    """The LFW protocol on the pairs set (cosine similarity, the pairs file's folds) and the validation
    triplet loss; returns (metrics, loss figures, pair scores)."""
    net = unwrap(model)
    embeddings = embed_crops(net, pairs.crops, device, cfg.val_batch_size, flip)
    scores, higher = pair_scores(embeddings[pairs.first].numpy(), embeddings[pairs.second].numpy(), "cosine")
    folds: Any = pairs.folds if len(np.unique(pairs.folds)) >= 2 else 10  # one-fold files: 10 blocks in file order
    result = verification_metrics(scores, pairs.same, folds, higher_is_same=higher, far_target=cfg.far_target)
    losses = {}
    if loss_fn is not None:
        losses = validation_loss(embeddings, pairs.crops.labels, loss_fn, cfg.identities_per_batch,
                                 cfg.images_per_identity, cfg.val_loss_batches, seed=12345)
    return result, losses, scores


def save_roc(path: Path, result: VerificationResult, title: str) -> None:
    """ROC curve PNG of one evaluation (accuracy and AUC in the legend)."""
    plot_roc(path, {f"accuracy {result.accuracy:.4f}, AUC {result.auc:.4f}": (result.fpr, result.tpr)}, title=title)
