"""Identity folders: ``<root>/<identity>/<image>`` (VGGFace2, CASIA-WebFace, ORL ``s1/1.pgm``, LFW
``images/<Name>/``, CelebA subsets ``<id>/<img>.jpg``, our aligned crops), listed as (path, label).

Labels follow the sorted identity folder names (as in torchvision's ImageFolder) after identities with
too few images are dropped, so they are contiguous. Hidden folders and files (``.git``, ``._x.jpg``) are ignored.

Symbolic links never make one person's photos count as another's: inside a person's folder a link to a photo
is followed only when the photo lies in that same folder, and links to folders are not followed (whatever they
reach inside the folder is listed already; ``Ann/loop -> ..`` would reach everyone). An identity folder that is
itself a link is followed unless it points back into the tree (at another identity, or the root). Every link not
followed is named, with the reason, in :meth:`IdentityFolder.left_out`, as is every identity dropped.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from utils.errors import DataError
from utils.images import IMAGE_EXTENSIONS


def _inside(path: str, folder: str) -> bool:
    """True when the resolved ``path`` is ``folder`` or lies under it (both resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class IdentityFolder:
    """The images of an identity-folder tree as ``samples`` (path, label) with sorted ``classes``.

    Identities with fewer than ``min_images`` images are left out and listed in ``dropped``
    (name -> image count); links not followed and folders that cannot be read are in ``skipped`` (path
    relative to the root -> reason); :meth:`left_out` names both, by path. A missing or empty root, or one where every
    identity is dropped, is a DataError.
    """

    def __init__(self, root: str | Path, min_images: int = 1,
                 extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "identity folder not found")
        self.min_images = min_images
        self.extensions = tuple(e.lower() for e in extensions)
        self.skipped: dict[str, str] = {}  # path relative to the root -> why it is not listed
        real_root = os.path.realpath(self.root)
        names = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            target = os.path.realpath(entry.path)
            if entry.is_symlink() and _inside(target, real_root):
                self._skip(entry.path, f"link to {target}, inside this tree: not followed")
                continue
            names.append(entry.name)
        if not names:
            raise DataError(self.root, "no identity sub-folders found")
        listed = [(path, i) for i, name in enumerate(names) for path in self._images(name)]
        counts = Counter(label for _, label in listed)
        if not listed:
            raise DataError(self.root, f"no images with extensions {', '.join(self.extensions)} "
                                       "in its identity folders")
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

    def _images(self, name: str) -> list[str]:
        """The image files of identity ``name``, sub-folders included (in the order of a sorted ``os.walk``);
        what is not listed (links that would leave its folder, links to folders, unreadable folders) goes to
        ``skipped`` with the reason."""
        top = os.path.join(self.root, name)
        home = os.path.realpath(top)
        found: list[tuple[str, list[str]]] = []
        pending = [top]
        while pending:
            folder = pending.pop()
            try:
                with os.scandir(folder) as scan:
                    entries = sorted(scan, key=lambda e: e.name)
            except OSError as exc:
                self._skip(folder, f"folder cannot be read ({exc.strerror or exc})")
                continue
            images = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if not entry.is_symlink():
                    if entry.is_dir():
                        pending.append(entry.path)
                    elif entry.name.lower().endswith(self.extensions):
                        images.append(entry.path)
                    continue
                target = os.path.realpath(entry.path)
                where = "inside" if _inside(target, home) else "outside"
                if entry.is_dir():
                    self._skip(entry.path, f"link to the folder {target}, {where} {name}'s folder: not followed")
                elif entry.name.lower().endswith(self.extensions):
                    if where == "outside":
                        self._skip(entry.path, f"link to {target}, outside {name}'s folder: not followed")
                    elif not os.path.isfile(target):
                        self._skip(entry.path, f"link to {target}, which is not a file: not followed")
                    else:
                        images.append(entry.path)
            found.append((folder, images))
        return [path for _, images in sorted(found) for path in images]

    def _skip(self, path: str, reason: str) -> None:
        self.skipped[os.path.relpath(path, self.root)] = reason

    def left_out(self) -> dict[str, str]:
        """Everything of the tree not in ``samples`` (dropped identities, ``skipped`` paths), by path, with the
        reason: what reports name."""
        dropped = {name: (f"no images ({', '.join(self.extensions)})" if count == 0
                          else f"{count} image(s), fewer than min_images {self.min_images}")
                   for name, count in self.dropped.items()}
        reasons = {**dropped, **self.skipped}
        return {str(self.root / relative): reason for relative, reason in reasons.items()}

    def __len__(self) -> int:
        return len(self.samples)

    def indices_by_label(self) -> list[np.ndarray]:
        """Sample indices of each label (for P identities x K images samplers)."""
        targets = np.asarray(self.targets)
        order = np.argsort(targets, kind="stable")
        return np.split(order, np.cumsum(np.bincount(targets, minlength=len(self.classes)))[:-1])
