"""MTCNN's multi-task loss (Zhang et al. 2016) with online hard example mining on the classification term.

Each sample is one type (training.mtcnn.packed: negative, positive, part, landmark) and feeds only the terms
that type has a target for: face classification on positives and negatives, box regression on
positives and parts, landmark regression on landmark samples. Per stage the three terms are weighted
(P 1/0.5/0.5, R 1/0.5/0.5, O 1/0.5/1 in the paper). OHEM keeps the hardest ``ohem_ratio`` of the
classification losses in the batch and averages those only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.mtcnn.packed import LANDMARK, NEGATIVE, PART, POSITIVE


@dataclass
class LossParts:
    """The weighted total and its unweighted parts, plus per-type quality figures for the logs."""

    total: Tensor
    cls: Tensor
    box: Tensor
    landmark: Tensor
    stats: dict[str, Tensor]  # per-type sums (0-dim tensors, no device sync); see ``summarize_stats``


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values[mask]``; zero (still differentiable) when nothing is selected."""
    selected = values[mask]
    return selected.mean() if selected.numel() else values.sum() * 0.0


class MTCNNLoss(nn.Module):
    """Weighted cls + box + landmark loss over a batch of mixed sample types, with OHEM on cls."""

    def __init__(self, cls_weight: float = 1.0, box_weight: float = 0.5, landmark_weight: float = 0.5,
                 ohem_ratio: float = 0.7) -> None:
        super().__init__()
        if not 0.0 < ohem_ratio <= 1.0:
            raise ValueError(f"ohem_ratio must be in (0, 1], got {ohem_ratio}")
        self.cls_weight = cls_weight
        self.box_weight = box_weight
        self.landmark_weight = landmark_weight
        self.ohem_ratio = ohem_ratio

    def forward(self, face_logits: Tensor, box_pred: Tensor, landmark_pred: Tensor | None, kinds: Tensor,
                box_target: Tensor, landmark_target: Tensor) -> LossParts:
        """Losses for ``[B, 2]`` logits, ``[B, 4]`` boxes, ``[B, 10]`` landmarks (or None) and ``[B]`` kinds."""
        face_logits = face_logits.float().reshape(len(kinds), 2)
        box_pred = box_pred.float().reshape(len(kinds), 4)
        is_pos, is_neg = kinds == POSITIVE, kinds == NEGATIVE
        is_part, is_mark = kinds == PART, kinds == LANDMARK

        cls_mask = is_pos | is_neg
        per_sample = F.cross_entropy(face_logits, is_pos.long(), reduction="none")
        cls_losses = per_sample[cls_mask]
        if cls_losses.numel():
            keep = max(1, int(round(cls_losses.numel() * self.ohem_ratio)))
            cls_loss = torch.topk(cls_losses, keep, sorted=False).values.mean()
        else:
            cls_loss = face_logits.sum() * 0.0

        box_mask = is_pos | is_part
        box_loss = _masked_mean(((box_pred - box_target.float()) ** 2).sum(dim=1), box_mask)

        if landmark_pred is not None:
            landmark_pred = landmark_pred.float().reshape(len(kinds), 10)
            landmark_sq = ((landmark_pred - landmark_target.float()) ** 2).sum(dim=1)
            landmark_loss = _masked_mean(landmark_sq, is_mark)
        else:
            landmark_sq = None
            landmark_loss = box_loss.detach() * 0.0
        total = self.cls_weight * cls_loss + self.box_weight * box_loss
        if landmark_pred is not None:
            total = total + self.landmark_weight * landmark_loss
        stats = self._stats(face_logits, box_pred, box_target, landmark_pred, landmark_target, kinds, per_sample)
        return LossParts(total, cls_loss.detach(), box_loss.detach(), landmark_loss.detach(), stats)

    @torch.no_grad()
    def _stats(self, face_logits: Tensor, box_pred: Tensor, box_target: Tensor, landmark_pred: Tensor | None,
               landmark_target: Tensor, kinds: Tensor, per_sample_cls: Tensor) -> dict[str, Tensor]:
        """Sums (not means) per type, so batches can be added up: counts, correct, cls loss, box/landmark error."""
        face = face_logits.argmax(dim=1) == 1
        stats: dict[str, Tensor] = {}
        box_err = (box_pred - box_target.float()).abs().mean(dim=1)
        for kind, name in ((NEGATIVE, "neg"), (POSITIVE, "pos"), (PART, "part"), (LANDMARK, "landmark")):
            mask = kinds == kind
            stats[f"n_{name}"] = mask.sum().float()
            if kind in (NEGATIVE, POSITIVE):
                stats[f"correct_{name}"] = (face[mask] == (kind == POSITIVE)).sum().float()
                stats[f"cls_loss_{name}"] = per_sample_cls.detach()[mask].sum()
            if kind in (POSITIVE, PART):
                stats[f"box_err_{name}"] = box_err[mask].sum()
        if landmark_pred is not None:
            mask = kinds == LANDMARK
            stats["landmark_err"] = (landmark_pred[mask] - landmark_target[mask].float()).abs().mean(dim=1).sum()
        return stats


def summarize_stats(totals: dict[str, float]) -> dict[str, float]:
    """Turn summed per-type stats into means: accuracy and loss per type, mean box and landmark error."""
    def ratio(num: str, den: str) -> float:
        return totals.get(num, 0.0) / totals[den] if totals.get(den, 0.0) else float("nan")

    out = {
        "acc_neg": ratio("correct_neg", "n_neg"),
        "acc_pos": ratio("correct_pos", "n_pos"),
        "cls_loss_neg": ratio("cls_loss_neg", "n_neg"),
        "cls_loss_pos": ratio("cls_loss_pos", "n_pos"),
        "box_err_pos": ratio("box_err_pos", "n_pos"),
        "box_err_part": ratio("box_err_part", "n_part"),
    }
    n_cls = totals.get("n_neg", 0.0) + totals.get("n_pos", 0.0)
    out["acc"] = (totals.get("correct_neg", 0.0) + totals.get("correct_pos", 0.0)) / n_cls if n_cls else float("nan")
    if "landmark_err" in totals:
        out["landmark_err"] = ratio("landmark_err", "n_landmark")
    return out
