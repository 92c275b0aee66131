"""Aligned face crops for the embedder: decoding, the crop dataset, training roots and LFW-style pairs sets.

Used by ``train_facenet.py`` (training and validation), the export calibration and the benchmarks.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from config import Config
from datasets.decoding import decoded_batches
from datasets.identity import IdentityFolder
from datasets.lfw import check_pairs_images, lfw_image_path, read_pairs
from models.face_preprocess import centre_square, resize_face
from utils.errors import BadInputLog, DataError
from utils.images import read_image


def load_crop(path: str | Path, side: int) -> np.ndarray:
    """An aligned crop as ``side`` x ``side`` uint8 RGB: its centre square, resized as the system resizes its crops
    (``models.face_preprocess.resize_face``)."""
    return resize_face(centre_square(read_image(path))[0], side)


@dataclass
class CropBatch:
    """A batch of uint8 crops [B, 3, S, S], identity labels [B], which rows decoded, and the errors of the others."""

    images: Tensor
    labels: Tensor
    valid: Tensor
    errors: list[tuple[str, str]]

    def pin_memory(self) -> CropBatch:
        """Pinned copies (DataLoader calls this with pin_memory=True)."""
        return CropBatch(self.images.pin_memory(), self.labels.pin_memory(), self.valid, self.errors)


class FaceCrops(Dataset):
    """Aligned crops as ``side`` x ``side`` uint8 tensors with integer labels; ``dataset[indices]`` gives a CropBatch.

    ``preload`` decodes every crop once (in ``workers`` processes) into one tensor, dropping unreadable files
    (reported to ``log``): the fast path for sets that fit in memory. Otherwise crops are read per batch (in
    DataLoader workers) and an unreadable one is flagged in the batch, reported and left out of that step.
    """

    def __init__(self, paths: list[Path], labels: list[int] | np.ndarray, side: int, *, preload: bool = True,
                 workers: int = 0, log: BadInputLog | None = None, progress: bool = False, desc: str = "crops") -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.side = side
        self.images: Tensor | None = None
        if preload:
            self._preload(workers, log if log is not None else BadInputLog(), progress, desc)

    def _preload(self, workers: int, log: BadInputLog, progress: bool, desc: str) -> None:
        store = torch.empty(len(self.paths), 3, self.side, self.side, dtype=torch.uint8)
        ok = np.ones(len(self.paths), dtype=bool)
        loader = decoded_batches(self.paths, 64, workers, load=partial(load_crop, side=self.side))
        with tqdm(total=len(self.paths), desc=f"loading {desc}", unit="img", disable=not progress, leave=False) as bar:
            for items in loader:
                for index, image, error in items:
                    if image is None:
                        log.report(DataError(self.paths[index], error))
                        ok[index] = False
                    else:
                        store[index] = torch.from_numpy(image).permute(2, 0, 1)
                bar.update(len(items))
        keep = np.flatnonzero(ok)
        self.images = store if ok.all() else store[torch.from_numpy(keep)]
        self.paths = [self.paths[i] for i in keep]
        self.labels = self.labels[keep]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, indices: list[int]) -> CropBatch:
        labels = torch.from_numpy(self.labels[np.asarray(indices, dtype=np.int64)])
        if self.images is not None:
            images = self.images[torch.as_tensor(indices, dtype=torch.long)]
            return CropBatch(images, labels, torch.ones(len(indices), dtype=torch.bool), [])
        images = torch.zeros(len(indices), 3, self.side, self.side, dtype=torch.uint8)
        valid = torch.ones(len(indices), dtype=torch.bool)
        errors = []
        for row, index in enumerate(indices):
            try:
                images[row] = torch.from_numpy(load_crop(self.paths[index], self.side)).permute(2, 0, 1)
            except DataError as error:
                valid[row] = False
                errors.append((error.path, error.reason))
        return CropBatch(images, labels, valid, errors)

    def __getitem__(self, index: int) -> CropBatch:
        return self.__getitems__([index])


def training_side(config: Config) -> int:
    """Side the training crops are scaled to: ``align.train_size`` at the scale that maps eval_size to input_size."""
    return max(config.facenet.input_size,
               round(config.align.train_size * config.facenet.input_size / config.align.eval_size))


def load_training_crops(config: Config, roots: list[Path], workers: int, log: BadInputLog,
                        progress: bool) -> tuple[FaceCrops, list[str]]:
    """The identity folders of training crops under every root (every identity kept here; the sampler decides who
    trains). With several roots a person's name is prefixed by its root's index, so that two datasets' folders of
    the same name stay two people."""
    paths: list[Path] = []
    labels: list[int] = []
    classes: list[str] = []
    for number, root in enumerate(roots):
        folder = IdentityFolder(root)
        paths += [path for path, _ in folder.samples]
        labels += [len(classes) + label for label in folder.targets]
        classes += [f"{number}/{name}" if len(roots) > 1 else name for name in folder.classes]
    crops = FaceCrops(paths, labels, training_side(config), preload=config.facenet.preload, workers=workers,
                      log=log, progress=progress, desc="training crops")
    return crops, classes


@dataclass
class PairsSet:
    """A pairs file resolved to its images: every image once (with its identity label), pair rows into them,
    same/different flags, fold id per pair (file order), and how many pairs were dropped for missing images."""

    crops: FaceCrops
    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    num_folds: int
    dropped: int
    path: Path
    missing_images: list[str]

    def describe(self) -> str:
        """One line: the file, pairs used, folds, and what was left out."""
        text = f"{self.path} ({len(self.same)} pairs in {self.num_folds} folds"
        if self.dropped:
            text += (f"; {self.dropped} pairs left out, {len(self.missing_images)} of their images have no aligned "
                     f"crop, e.g. {self.missing_images[0] if self.missing_images else 'unreadable files'}")
        return text + ")"


def load_pairs_set(pairs_file: Path, images_root: Path, side: int, log: BadInputLog, workers: int = 0,
                   progress: bool = False) -> PairsSet:
    """Read an LFW pairs file and its aligned images (resized to ``side``); pairs with a missing image (the
    aligner found no face there) are left out and counted (with a strict ``log``: an error), pairs with an
    unreadable image are left out and reported through ``log``."""
    parsed = read_pairs(pairs_file)
    missing = BadInputLog(strict=log.strict)
    kept: list[tuple[int, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # expected after alignment; summarised in one line by the caller
        for number, fold in enumerate(parsed.folds):
            kept += [(number, pair) for pair in check_pairs_images(fold, images_root, log=missing)]
    files = sorted({(name, index) for _, pair in kept
                    for name, index in ((pair.name_a, pair.index_a), (pair.name_b, pair.index_b))})
    names = sorted({name for name, _ in files})
    crops = FaceCrops([lfw_image_path(images_root, n, i) for n, i in files], [names.index(n) for n, _ in files], side,
                      preload=True, workers=workers, log=log, progress=progress, desc="validation crops")
    row = {(Path(p).parent.name, int(Path(p).stem.rsplit("_", 1)[1])): r for r, p in enumerate(crops.paths)}
    usable = [(fold, pair) for fold, pair in kept
              if (pair.name_a, pair.index_a) in row and (pair.name_b, pair.index_b) in row]
    if not usable:
        raise DataError(pairs_file, f"no pair has both images under {images_root} (align the set first: "
                                    "prepare_training_data.py --align)")
    return PairsSet(crops,
                    np.array([row[(p.name_a, p.index_a)] for _, p in usable]),
                    np.array([row[(p.name_b, p.index_b)] for _, p in usable]),
                    np.array([p.same for _, p in usable]),
                    np.array([fold for fold, _ in usable]),
                    parsed.num_folds, len(parsed.pairs) - len(usable), pairs_file,
                    sorted({problem.path for problem in missing.problems}))
