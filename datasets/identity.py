"""Identity folders: ``<root>/<identity>/<image>`` (VGGFace2, CASIA-WebFace, ORL ``s1/1.pgm``, LFW
``images/<Name>/``, CelebA subsets ``<id>/<img>.jpg``, our aligned crops), listed as (path, label).

Labels follow the sorted identity folder names (as in torchvision's ImageFolder) after identities with
too few images are dropped, so they are contiguous. Hidden folders and files (``.git``, ``._x.jpg``) are ignored.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import has_file_allowed_extension, make_dataset

from utils.errors import DataError
from utils.images import IMAGE_EXTENSIONS


class IdentityFolder:
    """The images of an identity-folder tree as ``samples`` (path, label) with sorted ``classes``.

    Identities with fewer than ``min_images`` images are left out and listed in ``dropped``
    (name -> image count). A missing or empty root, or one where every identity is dropped, is a DataError.
    """

    def __init__(self, root: str | Path, min_images: int = 1,
                 extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "identity folder not found")
        names = sorted(entry.name for entry in os.scandir(self.root)
                       if entry.is_dir() and not entry.name.startswith("."))
        if not names:
            raise DataError(self.root, "no identity sub-folders found")
        extensions = tuple(e.lower() for e in extensions)

        def is_image(path: str) -> bool:
            return not os.path.basename(path).startswith(".") and has_file_allowed_extension(path, extensions)

        listed = make_dataset(str(self.root), {name: i for i, name in enumerate(names)},
                              is_valid_file=is_image, allow_empty=True)
        counts = Counter(label for _, label in listed)
        if not listed:
            raise DataError(self.root, f"no images with extensions {', '.join(extensions)} in its identity folders")
        kept = [name for i, name in enumerate(names) if counts[i] >= min_images]
        self.dropped: dict[str, int] = {name: counts[i] for i, name in enumerate(names) if counts[i] < min_images}
        if not kept:
            raise DataError(self.root, f"no identity has at least {min_images} images "
                                       f"({len(self.dropped)} identities dropped)")
        self.classes: list[str] = kept
        self.class_to_idx: dict[str, int] = {name: i for i, name in enumerate(kept)}
        relabel = {i: self.class_to_idx[name] for i, name in enumerate(names) if name in self.class_to_idx}
        self.samples: list[tuple[Path, int]] = [(Path(p), relabel[label]) for p, label in listed if label in relabel]
        self.targets: list[int] = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def indices_by_label(self) -> list[np.ndarray]:
        """Sample indices of each label (for P identities x K images samplers)."""
        targets = np.asarray(self.targets)
        order = np.argsort(targets, kind="stable")
        return np.split(order, np.cumsum(np.bincount(targets, minlength=len(self.classes)))[:-1])
