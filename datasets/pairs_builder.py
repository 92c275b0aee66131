"""Build LFW View-2 pairs files (N folds of same + different pairs) over any LFW-layout identity folder.

Folds are ``identity``-disjoint (each person in one fold: the LFW protocol, and what a held-out split of a
training set needs) or, for sets of few people such as LFW's top 12, ``image``-disjoint (each photo in one
fold; a person appears in several folds, so the 10-fold threshold choice still never sees the test fold's
photos). Everything is drawn from ``seed``: the same folder and seed give the same file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from datasets.lfw import Pair
from utils.errors import DataError
from utils.metrics import deal_folds

FoldSplit = Literal["identity", "image"]


def _lfw_index(identity: str, path: Path) -> int | None:
    stem = path.stem
    prefix = f"{identity}_"
    return int(stem[len(prefix):]) if stem.startswith(prefix) and stem[len(prefix):].isdigit() else None


def list_lfw_images(images_root: str | Path) -> dict[str, list[int]]:
    """Image numbers per identity of an LFW-layout folder (``<Name>/<Name>_NNNN.jpg``); identities without such
    files are left out, a folder with none at all is an error."""
    root = Path(images_root)
    if not root.is_dir():
        raise DataError(root, "not a folder of identity folders")
    images: dict[str, list[int]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        numbers = sorted(n for n in (_lfw_index(folder.name, f) for f in folder.glob("*.jpg")) if n is not None)
        if numbers:
            images[folder.name] = numbers
    if not images:
        raise DataError(root, "no <Name>/<Name>_NNNN.jpg images (the LFW layout; --align writes evaluation sets so)")
    return images


def _fold_members(images: dict[str, list[int]], folds: int, split: FoldSplit,
                  rng: np.random.Generator) -> list[dict[str, list[int]]]:
    """Per fold, the images of each identity it holds."""
    names = sorted(images)
    if split == "identity":
        if len(names) < 2 * folds:
            raise DataError(f"{len(names)} identities", f"cannot fill {folds} identity-disjoint folds (2 per fold "
                                                          "needed); use image-disjoint folds or fewer folds")
        fold_of = deal_folds(len(names), folds, rng)
        return [{n: images[n] for n, f in zip(names, fold_of) if f == fold} for fold in range(folds)]
    members: list[dict[str, list[int]]] = [{} for _ in range(folds)]
    start = 0
    for name in names:  # each person's photos dealt round the folds, continuing where the last person stopped
        shuffled = [images[name][i] for i in rng.permutation(len(images[name]))]
        for k, number in enumerate(shuffled):
            members[(start + k) % folds].setdefault(name, []).append(number)
        start += len(shuffled)
    return [{n: sorted(v) for n, v in sorted(group.items())} for group in members]


def make_pairs(images_root: str | Path, folds: int, pairs_per_fold: int, seed: int,
               split: FoldSplit = "identity") -> list[list[Pair]]:
    """``folds`` folds of ``pairs_per_fold`` same pairs then as many different pairs, every pair distinct.

    When the poorest fold cannot supply that many, every fold gets as many as it can (the header says how many).
    """
    root = Path(images_root)
    rng = np.random.default_rng([seed, 1972])
    members = _fold_members(list_lfw_images(root), folds, split, rng)
    same_candidates = [[(n, i, j) for n, numbers in group.items() for a, i in enumerate(numbers)
                        for j in numbers[a + 1:]]
                       for group in members]
    # different-person pairs a fold can give: all pairs of its photos minus the same-person ones
    diff_counts = [(sum(map(len, group.values())) ** 2 - sum(len(v) ** 2 for v in group.values())) // 2
                   for group in members]
    per_fold = min([pairs_per_fold, *map(len, same_candidates), *diff_counts])
    if per_fold < 1:
        raise DataError(root, "some fold has no identity with two images, or only one identity; fewer folds needed")
    result = []
    for group, candidates in zip(members, same_candidates):
        same = [Pair(n, i, n, j) for n, i, j in (candidates[int(c)] for c in
                                                 rng.choice(len(candidates), per_fold, replace=False))]
        names = list(group)
        different: dict[tuple[str, int, str, int], Pair] = {}
        while len(different) < per_fold:
            a, b = sorted(rng.choice(names, size=2, replace=False).tolist())
            i, j = int(rng.choice(group[a])), int(rng.choice(group[b]))
            different.setdefault((a, i, b, j), Pair(a, i, b, j))
        result.append(same + list(different.values()))
    return result
