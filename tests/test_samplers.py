"""P x K batch sampler: batch shape, determinism, small and single-image identities, DDP split."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from training.facenet.samplers import PKBatchSampler
from utils.errors import ConfigError


def _labels(sizes: dict[str, int]) -> list[str]:
    """Dataset labels in identity-folder order: ``sizes[name]`` images per identity."""
    return [name for name, count in sizes.items() for _ in range(count)]


SIZES = {f"id{i:02d}": 6 + i % 5 for i in range(12)}  # 12 identities with 6..10 images


def test_every_batch_has_p_identities_with_k_distinct_images_each() -> None:
    labels = _labels(SIZES)
    sampler = PKBatchSampler(labels, p=4, k=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3  # each identity once per epoch: 12 // 4
    seen = Counter()
    for batch in batches:
        assert len(batch) == 12
        groups = Counter(labels[i] for i in batch)
        assert len(groups) == 4 and set(groups.values()) == {3}
        assert len(set(batch)) == 12  # identities with >= K images are sampled without replacement
        seen.update(groups.keys())
    assert set(seen.values()) == {1} and len(seen) == 12


def test_deterministic_per_seed_and_epoch() -> None:
    labels = _labels(SIZES)
    first = PKBatchSampler(labels, p=4, k=2, seed=7)
    second = PKBatchSampler(labels, p=4, k=2, seed=7)
    assert list(first) == list(second)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    second.set_epoch(1)
    assert list(first) == list(second)
    assert list(PKBatchSampler(labels, p=4, k=2, seed=8)) != epoch0


def test_single_image_identities_are_excluded_and_counted() -> None:
    labels = _labels({**SIZES, "lonely_a": 1, "lonely_b": 1})
    sampler = PKBatchSampler(labels, p=4, k=2)
    assert sampler.excluded_single == 2
    used = {labels[i] for batch in sampler for i in batch}
    assert not used & {"lonely_a", "lonely_b"}
    assert "2 single-image identities left out" in sampler.summary()


def test_small_identities_padded_with_replacement_by_default() -> None:
    sizes = {"small": 2, **{f"big{i}": 8 for i in range(3)}}
    labels = _labels(sizes)
    sampler = PKBatchSampler(labels, p=4, k=5, seed=1)
    assert sampler.padded_small == 1 and sampler.excluded_small == 0
    (batch,) = list(sampler)
    small = [i for i in batch if labels[i] == "small"]
    assert len(small) == 5 and set(small) == {0, 1}  # both of its images, plus three repeats


def test_small_identities_skipped_when_configured() -> None:
    labels = _labels({"small": 2, **{f"big{i}": 8 for i in range(4)}})
    sampler = PKBatchSampler(labels, p=4, k=5, small_identities="skip")
    assert sampler.excluded_small == 1 and sampler.padded_small == 0
    assert all(labels[i] != "small" for batch in sampler for i in batch)
    with pytest.raises(ConfigError, match="only 3 identities are usable"):
        PKBatchSampler(labels[:-8], p=4, k=5, small_identities="skip")


def test_longer_epochs_cycle_identities_without_repeats_inside_a_batch() -> None:
    labels = _labels(SIZES)
    sampler = PKBatchSampler(labels, p=5, k=2, batches_per_epoch=10, seed=3)
    batches = list(sampler)
    assert len(batches) == 10
    for batch in batches:
        assert len({labels[i] for i in batch}) == 5


def test_distributed_ranks_split_one_batch_list_disjointly() -> None:
    labels = _labels(SIZES)
    single = list(PKBatchSampler(labels, p=2, k=2, seed=4, num_replicas=1, rank=0))
    ranks = [PKBatchSampler(labels, p=2, k=2, seed=4, num_replicas=2, rank=r) for r in range(2)]
    per_rank = [list(s) for s in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0]) == 3
    assert per_rank[0] == single[0::2] and per_rank[1] == single[1::2]
    flat = [tuple(b) for b in per_rank[0] + per_rank[1]]
    assert len(set(flat)) == len(flat)
    uneven = PKBatchSampler(labels, p=2, k=2, num_replicas=4, rank=3)
    assert len(uneven) == 1  # 6 batches -> 4 usable, one per rank, so every rank steps in lockstep


def test_bad_settings_give_config_errors() -> None:
    labels = _labels(SIZES)
    with pytest.raises(ConfigError, match="at least 2 to have negatives"):
        PKBatchSampler(labels, p=1, k=2)
    with pytest.raises(ConfigError, match="at least 2 to have positives"):
        PKBatchSampler(labels, p=2, k=1)
    with pytest.raises(ConfigError, match="P=20 identities per batch, but only 12"):
        PKBatchSampler(labels, p=20, k=2)
    with pytest.raises(ConfigError, match="small_identities"):
        PKBatchSampler(labels, p=2, k=2, small_identities="drop")
    with pytest.raises(ConfigError, match="rank 2"):
        PKBatchSampler(labels, p=2, k=2, num_replicas=2, rank=2)


def test_drives_a_dataloader() -> None:
    labels = np.repeat(np.arange(6), 4)
    dataset = TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
    loader = DataLoader(dataset, batch_sampler=PKBatchSampler(labels, p=3, k=2, seed=5))
    batches = list(loader)
    assert len(batches) == 2
    for indices, ids in batches:
        assert torch.equal(ids, torch.as_tensor(labels)[indices])
        assert sorted(Counter(ids.tolist()).values()) == [2, 2, 2]
