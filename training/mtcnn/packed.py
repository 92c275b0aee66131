"""The MTCNN sample store: packed, sharded, memory-mapped arrays instead of one JPEG per crop.

A store is a folder of shards, each written atomically by one worker task as four ``.npy`` files
(``<shard>.images.npy`` uint8 [N, S, S, 3] RGB, ``.kinds.npy`` int8 [N], ``.boxes.npy`` float32 [N, 4] box
offsets over the crop size, ``.landmarks.npy`` float32 [N, 10] x1..x5, y1..y5 relative to the crop) plus a
``<shard>.json`` written last, which marks the shard complete. ``manifest.json`` lists the shards once
all are written. Readers memory-map the images, so millions of 12x12 crops load fast in little memory,
and an interrupted generation keeps its finished shards.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.atomic import atomic_path, atomic_write_text
from utils.errors import DataError

NEGATIVE, POSITIVE, PART, LANDMARK = 0, 1, 2, 3
KIND_NAMES = ("negative", "positive", "part", "landmark")
MANIFEST = "manifest.json"
_ARRAYS = ("images", "kinds", "boxes", "landmarks")


def empty_samples(size: int) -> dict[str, np.ndarray]:
    """A sample batch with no rows, in the store's dtypes and shapes."""
    return {
        "images": np.zeros((0, size, size, 3), dtype=np.uint8),
        "kinds": np.zeros(0, dtype=np.int8),
        "boxes": np.zeros((0, 4), dtype=np.float32),
        "landmarks": np.zeros((0, 10), dtype=np.float32),
    }


def concat_samples(parts: Sequence[Mapping[str, np.ndarray]], size: int) -> dict[str, np.ndarray]:
    """Concatenate sample batches (dicts of the four arrays) row-wise."""
    parts = [p for p in parts if len(p["kinds"])]
    if not parts:
        return empty_samples(size)
    return {name: np.concatenate([p[name] for p in parts]) for name in _ARRAYS}


def count_kinds(kinds: np.ndarray) -> dict[str, int]:
    """Samples per type name (negative, positive, part, landmark)."""
    counts = np.bincount(np.asarray(kinds, dtype=np.int64), minlength=len(KIND_NAMES))
    return {name: int(counts[i]) for i, name in enumerate(KIND_NAMES)}


def shard_is_complete(store: str | Path, name: str) -> bool:
    """True when shard ``name`` was fully written (its JSON marker exists)."""
    return (Path(store) / f"{name}.json").is_file()


def write_shard(store: str | Path, name: str, samples: Mapping[str, np.ndarray],
                info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write one shard atomically (arrays first, the JSON marker last); return the marker's content."""
    store = Path(store)
    count = len(samples["kinds"])
    for array_name in _ARRAYS:
        array = np.ascontiguousarray(samples[array_name])
        if len(array) != count:
            raise ValueError(f"shard {name}: {array_name} has {len(array)} rows, kinds has {count}")
        with atomic_path(store / f"{name}.{array_name}.npy", suffix=".npy") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, array)
    marker = {"name": name, "count": count, "counts": count_kinds(samples["kinds"]), **(info or {})}
    atomic_write_text(store / f"{name}.json", json.dumps(marker, sort_keys=True) + "\n")
    return marker


def write_manifest(store: str | Path, size: int, shard_names: Sequence[str],
                   settings: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` listing the (complete) shards in order, with per-type totals and ``settings``."""
    store = Path(store)
    shards = []
    totals = dict.fromkeys(KIND_NAMES, 0)
    for name in shard_names:
        marker = json.loads((store / f"{name}.json").read_text(encoding="utf-8"))
        shards.append({"name": name, "count": marker["count"]})
        for kind, value in marker["counts"].items():
            totals[kind] += value
    manifest = {"size": size, "shards": shards, "counts": totals, "total": sum(totals.values()),
                "settings": dict(settings)}
    atomic_write_text(store / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def read_manifest(store: str | Path) -> dict[str, Any] | None:
    """The store's manifest, or None when the store is absent or unfinished."""
    path = Path(store) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"corrupt sample-store manifest ({exc.msg})", line=exc.lineno) from None


class PackedSamples(torch.utils.data.Dataset):
    """A finished sample store, memory-mapped. ``__getitems__`` gathers a whole batch shard by shard.

    Items are dicts of tensors: ``images`` uint8 [B, S, S, 3], ``kinds`` int64 [B], ``boxes`` [B, 4],
    ``landmarks`` [B, 10]. ``kinds`` (all samples, in memory) is what the balanced sampler draws from.
    """

    def __init__(self, store: str | Path) -> None:
        self.store = Path(store)
        manifest = read_manifest(self.store)
        if manifest is None:
            raise DataError(self.store, "sample store not found or unfinished (no manifest.json); generate it first")
        self.manifest = manifest
        self.size = int(manifest["size"])
        self.shard_names = [s["name"] for s in manifest["shards"]]
        counts = np.array([s["count"] for s in manifest["shards"]], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self._arrays: list[dict[str, np.ndarray]] | None = None
        self.kinds = np.concatenate([self._load(name, "kinds", mmap=False) for name in self.shard_names]) \
            if self.shard_names else np.zeros(0, dtype=np.int8)
        if len(self.kinds) != self.offsets[-1]:
            raise DataError(self.store,
                            f"manifest lists {self.offsets[-1]} samples but the shards hold {len(self.kinds)}")

    def _load(self, name: str, array: str, mmap: bool = True) -> np.ndarray:
        path = self.store / f"{name}.{array}.npy"
        try:
            return np.load(path, mmap_mode="r" if mmap else None)
        except (OSError, ValueError) as exc:
            raise DataError(path, f"unreadable sample shard ({exc})") from None

    def _shards(self) -> list[dict[str, np.ndarray]]:
        # Opened lazily, so DataLoader workers each map the files after they start.
        if self._arrays is None:
            self._arrays = [{a: self._load(n, a) for a in ("images", "boxes", "landmarks")} for n in self.shard_names]
        return self._arrays

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def counts(self) -> dict[str, int]:
        """Samples per type in this store."""
        return count_kinds(self.kinds)

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The samples at global ``indices`` (any order; returned in that order) as NumPy arrays."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"sample index out of range 0..{len(self) - 1}")
        out = {
            "images": np.empty((len(indices), self.size, self.size, 3), dtype=np.uint8),
            "boxes": np.empty((len(indices), 4), dtype=np.float32),
            "landmarks": np.empty((len(indices), 10), dtype=np.float32),
        }
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        order = np.argsort(shard_of, kind="stable")
        shards = self._shards()
        bounds = np.searchsorted(shard_of[order], np.arange(len(shards) + 1))
        for shard in range(len(shards)):
            rows = order[bounds[shard]:bounds[shard + 1]]
            if not len(rows):
                continue
            local = indices[rows] - self.offsets[shard]
            sort = np.argsort(local)  # ascending reads are kinder to the page cache
            for name in out:
                out[name][rows[sort]] = shards[shard][name][local[sort]]
        out["kinds"] = self.kinds[indices].astype(np.int64)
        return out

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in self.gather(np.asarray(indices)).items()}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def batch_quota(batch_size: int, ratio: Sequence[float], available: Sequence[int]) -> np.ndarray:
    """Samples per type in one batch, proportional to ``ratio`` over the types present (largest remainders)."""
    weights = np.array([r if n > 0 else 0.0 for r, n in zip(ratio, available, strict=True)], dtype=np.float64)
    if weights.sum() <= 0:
        raise DataError("sample store", "no samples of any type the batch ratio asks for")
    exact = batch_size * weights / weights.sum()
    quota = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - quota), kind="stable")[: batch_size - quota.sum()]:
        quota[i] += 1
    return quota


class BalancedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches with a fixed mix of sample types (neg : pos : part : landmark, e.g. 3 : 1 : 1 : 2).

    Each type's indices are walked in a seeded random order, starting over with a new order when used
    up, so rare types repeat and common ones are spread over epochs. Deterministic for (seed, epoch,
    rank); under DDP each rank draws its own stream. Call ``set_epoch`` before each epoch.
    """

    def __init__(self, kinds: np.ndarray, batch_size: int, ratio: Sequence[float], steps: int = 0, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        kinds = np.asarray(kinds)
        self.pools = [np.flatnonzero(kinds == k) for k in range(len(KIND_NAMES))]
        self.quota = batch_quota(batch_size, list(ratio) + [0.0] * (len(KIND_NAMES) - len(ratio)),
                                 [len(p) for p in self.pools])
        self.steps = steps if steps > 0 else max(1, len(kinds) // (batch_size * world_size))
        self.seed, self.rank, self.epoch = seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose draw order ``__iter__`` yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        streams = []
        for pool, need in zip(self.pools, self.quota):
            total = need * self.steps
            if need == 0:
                streams.append(np.zeros((self.steps, 0), dtype=np.int64))
                continue
            rounds = -(-total // len(pool))
            order = np.concatenate([rng.permutation(pool) for _ in range(rounds)])[:total]
            streams.append(order.reshape(self.steps, need))
        batches = np.concatenate(streams, axis=1)
        for row in batches:
            yield row.tolist()
