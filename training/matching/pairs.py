"""The matcher's data: validation pairs and identity-folder images embedded by the system's own detector,
alignment and embedder, with the pairs' cross-validation folds."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.identity import IdentityFolder
from datasets.lfw import PairsFile, lfw_image_path
from models.system import FaceRecognitionSystem
from utils.errors import DataError
from utils.metrics import fold_ids


@dataclass
class PairSet:
    """The validation pairs whose two images gave a face: embeddings, labels, folds, names and image paths."""

    emb_a: np.ndarray
    emb_b: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    names: list[tuple[str, str]]
    paths: list[tuple[str, str]]
    dropped: int = 0  # pairs without a usable face in one of their images


@dataclass
class IdentitySet:
    """Embedded images of identity folders: embeddings, integer labels, identity names and image paths."""

    embeddings: np.ndarray
    labels: np.ndarray
    classes: list[str]
    paths: list[str]


def fold_ids_for(pairs: PairsFile, folds: int) -> np.ndarray:
    """Fold of each pair: the pairs file's folds (``folds`` 0; a one-fold file is cut into 10 blocks in file
    order), or ``folds`` contiguous blocks."""
    n = len(pairs.pairs)
    if folds == 0 and pairs.num_folds > 1:
        return np.repeat(np.arange(pairs.num_folds), 2 * pairs.pairs_per_fold)
    count = folds or 10
    count = min(count, n // 2)
    if count < 2:
        raise DataError(pairs.path or "pairs", f"{n} pairs are too few for cross-validation")
    return fold_ids(n, count)


def embed_paths(system: FaceRecognitionSystem, paths: Sequence[str], desc: str) -> dict[str, np.ndarray | None]:
    """Main-face embedding of each image path (None: unreadable or no face), with a progress bar."""
    unique = sorted(set(paths))
    embeddings, _ = system.embed_images(unique, progress=desc)
    return {p: (embeddings[i] if np.all(np.isfinite(embeddings[i])) else None) for i, p in enumerate(unique)}


def embed_validation_images(system: FaceRecognitionSystem, pairs: PairsFile, images: Path,
                            folder: IdentityFolder) -> dict[str, np.ndarray | None]:
    """Every existing image of the pairs and of the identity folders, embedded in one pass (see ``embed_paths``)."""
    wanted = [str(lfw_image_path(images, name, index)) for p in pairs.pairs
              for name, index in ((p.name_a, p.index_a), (p.name_b, p.index_b))]
    wanted += [str(p) for p, _ in folder.samples]
    return embed_paths(system, [p for p in wanted if Path(p).is_file()], "embedding validation images")


def pair_set(pairs: PairsFile, images: Path, folds: np.ndarray, embedded: dict[str, np.ndarray | None]) -> PairSet:
    """The pairs whose images both gave an embedding (others are counted in ``dropped``)."""
    rows, names, paths = [], [], []
    for i, pair in enumerate(pairs.pairs):
        a = str(lfw_image_path(images, pair.name_a, pair.index_a))
        b = str(lfw_image_path(images, pair.name_b, pair.index_b))
        if embedded.get(a) is not None and embedded.get(b) is not None:
            rows.append(i)
            names.append((pair.name_a, pair.name_b))
            paths.append((a, b))
    if not rows:
        raise DataError(pairs.path or "pairs", "no pair has a detectable face in both images")
    same = np.array([pairs.pairs[i].same for i in rows])
    return PairSet(np.stack([embedded[a] for a, _ in paths]), np.stack([embedded[b] for _, b in paths]), same,
                   folds[rows], names, paths, dropped=len(pairs.pairs) - len(rows))


def identity_set(folder: IdentityFolder, embedded: dict[str, np.ndarray | None]) -> IdentitySet:
    """The identity-folder images that gave an embedding."""
    kept = [(str(p), label) for p, label in folder.samples if embedded.get(str(p)) is not None]
    if not kept:
        raise DataError(folder.root, "no image of these identity folders gave a face")
    return IdentitySet(np.stack([embedded[p] for p, _ in kept]), np.array([label for _, label in kept]),
                       list(folder.classes), [p for p, _ in kept])
