"""P identities x K images per batch, the batch shape online triplet mining needs.

Each batch holds ``p`` different identities and ``k`` images of each, so every anchor has k-1 positives
and (p-1)*k negatives. An epoch walks the identities in a seeded random order, ``p`` at a time (each
identity once per epoch by default; ``batches_per_epoch`` makes epochs longer or shorter by cycling
through fresh permutations). Identities with a single image cannot form a positive pair and are always
left out and counted. Identities with 2..k-1 images follow ``small_identities``:

* ``"replace"`` (default): every image once, the rest of the k slots drawn again at random (with
  replacement), so such identities still train, with repeated images;
* ``"skip"``: left out and counted, like single-image identities.

Under DDP every rank builds the same batch list from (seed, epoch) and takes every ``num_replicas``-th
batch starting at its rank, so ranks see disjoint batches and the same number of them; call
``set_epoch`` before each epoch, as with ``torch.utils.data.DistributedSampler``.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import get_args

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from config import SmallIdentities
from utils.errors import ConfigError

SMALL_IDENTITY_POLICIES = get_args(SmallIdentities)


class PKBatchSampler(Sampler[list[int]]):
    """Batch sampler yielding lists of ``p * k`` dataset indices (``p`` identities x ``k`` images each).

    Use as ``DataLoader(dataset, batch_sampler=PKBatchSampler(labels, p, k))``; ``labels[i]`` is the
    identity of dataset item ``i`` (any hashable). Deterministic for a given seed, epoch and rank.
    """

    def __init__(
        self,
        labels: Sequence[object] | np.ndarray,
        p: int,
        k: int,
        *,
        seed: int = 0,
        small_identities: str = "replace",
        batches_per_epoch: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if p < 2:
            raise ConfigError(f"P (identities per batch) must be at least 2 to have negatives, got {p}")
        if k < 2:
            raise ConfigError(f"K (images per identity) must be at least 2 to have positives, got {k}")
        if small_identities not in SMALL_IDENTITY_POLICIES:
            raise ConfigError(
                f"small_identities must be one of {', '.join(SMALL_IDENTITY_POLICIES)}, got {small_identities!r}"
            )
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.p, self.k, self.seed = p, k, seed
        self.small_identities = small_identities
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

        label_array = np.asarray(labels)
        if label_array.dtype == object:  # mixed or non-numpy labels: compare by their text
            label_array = label_array.astype(str)
        _, inverse, counts = np.unique(label_array, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        groups = np.split(order, np.cumsum(counts)[:-1]) if len(order) else []
        self.excluded_single = int(np.sum(counts == 1))
        small = (counts >= 2) & (counts < k)
        self.excluded_small = int(small.sum()) if small_identities == "skip" else 0
        self.padded_small = int(small.sum()) if small_identities == "replace" else 0
        keep = counts >= (k if small_identities == "skip" else 2)
        self.identities: list[np.ndarray] = [group for group, kept in zip(groups, keep) if kept]
        if len(self.identities) < p:
            raise ConfigError(
                f"P={p} identities per batch, but only {len(self.identities)} identities are usable "
                f"({self.excluded_single} with a single image and {self.excluded_small} with fewer than K={k} "
                "images left out); lower P or add data"
            )
        default_batches = len(self.identities) // p
        total = default_batches if batches_per_epoch is None else batches_per_epoch
        if total < num_replicas:
            raise ConfigError(
                f"{total} batches per epoch cannot be shared by {num_replicas} processes; "
                "raise batches_per_epoch or lower P"
            )
        self.total_batches = total - total % num_replicas  # equal share per rank, as DDP needs

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (same on every rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        return self.total_batches // self.num_replicas

    def summary(self) -> str:
        """One line for the training log: usable identities and what was left out or padded."""
        return (
            f"P x K sampler: {len(self.identities)} identities used, P={self.p}, K={self.k}, "
            f"{len(self)} batches per epoch per process; {self.excluded_single} single-image identities left out; "
            f"{self.excluded_small} identities with fewer than K images left out, {self.padded_small} padded "
            "by sampling with replacement"
        )

    def _identity_batch(self, rng: np.random.Generator, members: np.ndarray) -> np.ndarray:
        """K indices of one identity: without replacement when it has K or more, else all plus random repeats."""
        if len(members) >= self.k:
            return rng.choice(members, size=self.k, replace=False)
        extra = rng.choice(members, size=self.k - len(members), replace=True)
        return rng.permutation(np.concatenate([members, extra]))

    def __iter__(self) -> Iterator[list[int]]:
        """Yield this rank's batches for the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        identity_order = np.empty(0, dtype=np.int64)
        cursor = 0
        for batch_index in range(self.total_batches):
            if cursor + self.p > len(identity_order):
                identity_order, cursor = rng.permutation(len(self.identities)), 0
            chosen = identity_order[cursor : cursor + self.p]
            cursor += self.p
            # Every rank draws every batch (keeping the generators in step) and keeps its own share.
            batch = np.concatenate([self._identity_batch(rng, self.identities[i]) for i in chosen])
            if batch_index % self.num_replicas == self.rank:
                yield batch.tolist()
