"""Triplet loss with online mining inside a P x K batch: semi-hard, batch-hard and batch-all.

* ``semi_hard`` (Schroff et al. 2015, FaceNet): every anchor-positive pair takes the closest negative that
  is still farther than the positive (inside the margin it contributes, beyond it the loss is zero). When
  every negative is closer than the positive, the pair falls back to the farthest negative - the easiest
  of the hard ones - rather than the hardest, which early in training collapses the embedding. The loss is
  the mean over all anchor-positive pairs.
* ``batch_hard`` (Hermans et al. 2017): per anchor, its farthest positive against its closest negative;
  mean over anchors. From random initialisation it can collapse every embedding onto one point (the
  loss then sits at the margin), as the FaceNet paper warns for hardest negatives; it suits fine-tuning,
  while ``semi_hard`` and ``batch_all`` are the safe choices from scratch.
* ``batch_all`` (Hermans et al. 2017, "BA!=0"): every valid triplet; the sum of their hinge losses divided
  by the number of active (non-zero) ones.

Distances are squared Euclidean by default (the FaceNet formulation, margin 0.2 on unit vectors, so the
range is 0..4); ``squared=False`` gives plain Euclidean as in Hermans et al. Everything is computed from
the B x B distance matrix with masks, sorting and prefix sums - O(B^2 log B) time and O(B^2) memory, no
B^3 triplet tensor and no Python loop over anchors - so large batches stay cheap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import get_args

import torch
from torch import Tensor, nn

from config import TripletMining

MINING_METHODS = get_args(TripletMining)


@dataclass
class TripletStats:
    """Per-batch diagnostics (detached 0-d tensors, so logging costs no device sync until read).

    Fractions are over all valid triplets (a, p, n) in the batch - anchor and positive share an identity,
    a != p, the negative has another identity - whatever the mining, except ``mined_active_fraction``
    (share of the triplets the loss used that have a non-zero hinge). ``triplet_accuracy`` is the training
    accuracy: share of valid triplets whose negative is farther from the anchor than the positive.
    """

    active_fraction: Tensor
    mined_active_fraction: Tensor
    triplet_accuracy: Tensor
    mean_pos_dist: Tensor
    mean_neg_dist: Tensor
    num_valid_triplets: Tensor
    num_mined_triplets: Tensor

    def as_floats(self) -> dict[str, float]:
        """All statistics as Python floats (one device sync), for logging."""
        values = torch.stack([getattr(self, f.name).float() for f in fields(self)]).tolist()
        return {f.name: value for f, value in zip(fields(self), values)}


def pairwise_distances(embeddings: Tensor, squared: bool = True) -> Tensor:
    """[B, D] -> [B, B] (squared) Euclidean distances in float32, exact zeros on the diagonal, finite gradients."""
    emb = embeddings.float()
    gram = emb @ emb.t()
    norms = gram.diagonal()
    eye = torch.eye(emb.shape[0], dtype=torch.bool, device=emb.device)
    dist2 = (norms[:, None] - 2.0 * gram + norms[None, :]).clamp_min(0.0).masked_fill(eye, 0.0)
    if squared:
        return dist2
    # clamp_min passes no gradient below its floor, so the sqrt never sees a zero on the backward pass.
    return torch.where(dist2 > 0, dist2.clamp_min(1e-12).sqrt(), torch.zeros_like(dist2))


def check_triplet_settings(margin: float, mining: str) -> None:
    """Raise ValueError for an unknown mining method or a margin that is not a positive finite number."""
    if mining not in MINING_METHODS:
        raise ValueError(f"unknown triplet mining {mining!r}; choose one of {', '.join(MINING_METHODS)}")
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"triplet margin must be a positive number, got {margin}")


def _mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` is true (0 when the mask is empty)."""
    count = mask.sum()
    return (values * mask).sum() / count.clamp_min(1)


def triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    mining: str = "semi_hard",
    squared: bool = True,
) -> tuple[Tensor, TripletStats]:
    """Triplet loss of a batch with online mining; returns (scalar loss, statistics).

    A batch with no valid triplet (one identity, or no identity seen twice) gives a zero loss that is still
    connected to the graph (every parameter gets a zero gradient, as DDP needs) and
    ``num_valid_triplets == 0`` in the statistics.
    """
    check_triplet_settings(margin, mining)
    if embeddings.ndim != 2 or labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"expected embeddings [B, D] and labels [B], got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
        )
    dist = pairwise_distances(embeddings, squared=squared)
    batch = dist.shape[0]
    labels = labels.to(dist.device)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(batch, dtype=torch.bool, device=dist.device)
    pos_mask = same & ~eye
    neg_mask = ~same
    num_neg = neg_mask.sum(dim=1, keepdim=True)  # [B, 1]
    pair_mask = pos_mask & (num_neg > 0)  # anchor-positive pairs that have at least one negative

    # Each anchor's negative distances, sorted ascending; non-negatives are pushed past every real value.
    # (A 0-d tensor, not a Python float, so that no device sync happens here.)
    beyond = dist.detach().max() + margin + 1.0
    neg_sorted = torch.where(neg_mask, dist, beyond).sort(dim=1).values
    fixed = dist.detach().contiguous()
    sorted_fixed = neg_sorted.detach().contiguous()
    # For every (anchor, j): how many of the anchor's negatives are <= d_aj, and how many are < d_aj + margin.
    not_farther = torch.searchsorted(sorted_fixed, fixed, right=True)
    inside_margin = torch.searchsorted(sorted_fixed, (fixed + margin).contiguous(), right=False)

    farther = (num_neg - not_farther) * pair_mask
    active = inside_margin * pair_mask
    num_valid = (num_neg * pair_mask).sum()

    if mining == "batch_all":
        prefix = torch.cat([torch.zeros_like(neg_sorted[:, :1]), neg_sorted.cumsum(dim=1)], dim=1)
        # Sum over active negatives of (d_ap + margin - d_an) = count * (d_ap + margin) - sum of those d_an.
        hinge_sum = inside_margin * (dist + margin) - prefix.gather(1, inside_margin)
        num_active = active.sum()
        loss = (hinge_sum * pair_mask).sum() / num_active.clamp_min(1)
        num_mined = num_valid
        mined_active = num_active
    elif mining == "semi_hard":
        has_semi_hard = not_farther < num_neg
        choice = torch.where(has_semi_hard, not_farther, num_neg - 1).clamp_min(0)
        d_an = neg_sorted.gather(1, choice)
        hinge = torch.relu(dist - d_an + margin)
        loss = _mean(hinge, pair_mask)
        num_mined = pair_mask.sum()
        mined_active = ((hinge > 0) & pair_mask).sum()
    else:  # batch_hard
        anchors = pair_mask.any(dim=1)
        hardest_pos = dist.masked_fill(~pos_mask, 0.0).max(dim=1).values
        hardest_neg = neg_sorted[:, 0]
        hinge = torch.relu(hardest_pos - hardest_neg + margin)
        loss = _mean(hinge, anchors)
        num_mined = anchors.sum()
        mined_active = ((hinge > 0) & anchors).sum()

    valid = num_valid.clamp_min(1).float()
    stats = TripletStats(
        active_fraction=active.sum().float() / valid,
        mined_active_fraction=mined_active.float() / num_mined.clamp_min(1).float(),
        triplet_accuracy=farther.sum().float() / valid,
        mean_pos_dist=_mean(fixed, pos_mask),
        mean_neg_dist=_mean(fixed, neg_mask),
        num_valid_triplets=num_valid,
        num_mined_triplets=num_mined,
    )
    return loss, stats


class TripletLoss(nn.Module):
    """Module form of :func:`triplet_loss` holding margin, mining method and distance kind from config."""

    def __init__(self, margin: float = 0.2, mining: str = "semi_hard", squared: bool = True) -> None:
        super().__init__()
        check_triplet_settings(margin, mining)
        self.margin = margin
        self.mining = mining
        self.squared = squared

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, TripletStats]:
        """(loss, stats) for a batch of embeddings [B, D] and identity labels [B]."""
        return triplet_loss(embeddings, labels, self.margin, self.mining, self.squared)

    def extra_repr(self) -> str:
        """Settings shown when the module is printed."""
        return f"margin={self.margin}, mining={self.mining}, squared={self.squared}"
