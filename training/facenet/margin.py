"""Classification losses with an angular margin over the training identities: ArcFace and CosFace.

Both keep one L2-normalised weight vector per training identity and score a unit embedding by its cosines
to them, scaled by ``s``. The true class's cosine is penalised by a margin before the softmax: ArcFace adds
``m`` to the angle (cos(theta + m), Deng et al. 2019), CosFace subtracts ``m`` from the cosine (Wang et al.
2018). The head is needed only for training: it lives in the training checkpoint and never in the embedder
that inference, export and the matcher load.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class MarginStats:
    """Per-batch figures of a margin loss (tensors, so that summing them needs no device sync)."""

    train_accuracy: Tensor  # share of faces whose nearest class weight is their own identity's
    mean_target_cos: Tensor  # mean cosine between a face and its identity's weight
    mean_max_other_cos: Tensor  # mean of each face's highest cosine to another identity

    def as_floats(self) -> dict[str, float]:
        """The figures as plain floats (for logs)."""
        return {name: float(getattr(self, name)) for name in self.__dataclass_fields__}


class MarginHead(nn.Module):
    """Cosine classifier with an additive angular (``arcface``) or additive cosine (``cosface``) margin.

    ``forward(embeddings, labels)`` takes unit embeddings [B, D] and integer identities [B] and returns the
    cross-entropy loss with the margin applied to each face's own class, and its :class:`MarginStats`.
    """

    def __init__(self, embedding_size: int, num_classes: int, kind: str = "arcface", scale: float = 64.0,
                 margin: float = 0.5) -> None:
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ValueError(f"unknown margin loss {kind!r} (arcface, cosface)")
        self.kind, self.scale, self.margin = kind, float(scale), float(margin)
        self.num_classes = int(num_classes)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def cosines(self, embeddings: Tensor) -> Tensor:
        """[B, C] cosines between each face and each identity's normalised weight."""
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def margin_cosine(self, target: Tensor) -> Tensor:
        """The true class's cosine after the margin: cos(theta + m) (ArcFace) or cos(theta) - m (CosFace).

        Past theta = pi - m the ArcFace angle would wrap round and the penalty shrink, so there it continues as
        cos(theta) - m sin(m), which keeps the logit decreasing in theta (the choice insightface makes)."""
        if self.kind == "cosface":
            return target - self.margin
        sin = (1.0 - target * target).clamp_min(1e-7).sqrt()
        with_margin = target * math.cos(self.margin) - sin * math.sin(self.margin)
        return torch.where(target > math.cos(math.pi - self.margin), with_margin,
                           target - math.sin(math.pi - self.margin) * self.margin)

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, MarginStats]:
        cos = self.cosines(embeddings).clamp(-1.0, 1.0)
        target = cos.gather(1, labels[:, None]).squeeze(1)
        with_margin = self.margin_cosine(target)
        logits = cos.scatter(1, labels[:, None], with_margin[:, None]) * self.scale
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            others = cos.scatter(1, labels[:, None], -2.0)
            stats = MarginStats(train_accuracy=(cos.argmax(1) == labels).float().mean(),
                                mean_target_cos=target.mean(), mean_max_other_cos=others.max(1).values.mean())
        return loss, stats

    def extra_repr(self) -> str:
        return f"{self.kind}, {self.num_classes} classes, s={self.scale:g}, m={self.margin:g}"
