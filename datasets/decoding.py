"""Decoding files in DataLoader worker processes: an unreadable file comes back as its error text, so the
caller can report it and go on instead of losing the whole run to one bad JPEG."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from utils.errors import DataError
from utils.images import read_image

Decoded = tuple[int, np.ndarray | None, str | None]  # (index, image, None) or (index, None, why it is unreadable)


def keep_batch(batch: Any) -> Any:
    """DataLoader ``collate_fn`` that hands a batch on unchanged (a list of items, or a batch the dataset gathered)."""
    return batch


class DecodedFiles(Dataset):
    """Item ``i`` is ``load(sources[i])`` as a ``Decoded`` tuple; ``load`` raises DataError for a bad file."""

    def __init__(self, sources: Sequence[Any], load: Callable[[Any], np.ndarray] = read_image) -> None:
        self.sources, self.load = sources, load

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Decoded:
        try:
            return index, self.load(self.sources[index]), None
        except DataError as error:
            return index, None, error.reason


def decoded_batches(sources: Sequence[Any], batch_size: int, workers: int,
                    load: Callable[[Any], np.ndarray] = read_image) -> DataLoader:
    """Lists of ``Decoded`` items in source order, ``batch_size`` at a time, decoded in ``workers`` processes
    (``load`` must be picklable: a module-level function or a ``functools.partial`` of one)."""
    return DataLoader(DecodedFiles(sources, load), batch_size=max(1, batch_size), num_workers=workers,
                      collate_fn=keep_batch)
