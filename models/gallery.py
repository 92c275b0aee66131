"""The gallery: enrolled identities, each with one or more face embeddings and the
source images they came from, tagged with the SHA-256 of the embedder that made them.

Saved as one ``.pt`` file of plain tensors, strings and lists (loaded with ``weights_only=True``), written
atomically: a crash mid-write leaves the previous gallery intact. Embeddings of different embedders are
never mixed: adding or loading with another fingerprint is an error, and :meth:`Gallery.rebuild`
re-embeds the stored source images with the new models instead (README, "Check the whole system":
``--rebuild``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from utils.checkpoint import save_checkpoint
from utils.errors import DataError
from utils.file_header import check_header

GALLERY_FORMAT = "face-gallery"
GALLERY_VERSION = 1


class GalleryModelMismatch(DataError):
    """The gallery's embeddings were made by another embedder than the one in use."""


@dataclass
class Identity:
    """One enrolled person: embeddings [K, D] (float32, unit length) and the source image of each ('' if none)."""

    name: str
    embeddings: np.ndarray
    sources: list[str] = field(default_factory=list)


@dataclass
class RebuildReport:
    """What :meth:`Gallery.rebuild` did: embeddings re-made, and sources that could not be (missing, no face)."""

    rebuilt: int
    failed: list[str]
    dropped_identities: list[str]


class Gallery:
    """Enrolled identities with their embeddings, for one embedder (identified by its SHA-256)."""

    def __init__(self, embedder_sha256: str, embedding_size: int) -> None:
        if not embedder_sha256:
            raise ValueError("a gallery needs the SHA-256 of the embedder that makes its embeddings")
        self.embedder_sha256 = embedder_sha256
        self.embedding_size = int(embedding_size)
        self._identities: dict[str, Identity] = {}

    def __len__(self) -> int:
        return len(self._identities)

    def __contains__(self, name: object) -> bool:
        return name in self._identities

    def __iter__(self) -> Iterator[Identity]:
        return iter(self._identities.values())

    @property
    def names(self) -> list[str]:
        """Enrolled identity names, in enrolment order."""
        return list(self._identities)

    @property
    def num_embeddings(self) -> int:
        """Total embeddings over all identities."""
        return sum(len(identity.embeddings) for identity in self._identities.values())

    def identity(self, name: str) -> Identity:
        """The enrolled identity ``name`` (KeyError when not enrolled)."""
        return self._identities[name]

    def add(self, name: str, embeddings: np.ndarray, sources: Sequence[str] | None = None,
            embedder_sha256: str | None = None, replace: bool = False) -> Identity:
        """Enrol (or extend) ``name`` with embeddings [K, D]; refuses embeddings of another embedder or size."""
        if embedder_sha256 is not None and embedder_sha256 != self.embedder_sha256:
            raise GalleryModelMismatch(name, f"embeddings come from embedder {embedder_sha256[:12]}, the gallery holds "
                                             f"embeddings of embedder {self.embedder_sha256[:12]}; rebuild the gallery "
                                             "instead of mixing models")
        if not name or name != name.strip():
            raise ValueError(f"identity name {name!r} must be non-empty without surrounding spaces")
        array = np.asarray(embeddings, dtype=np.float32)
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or array.shape[1] != self.embedding_size:
            raise ValueError(f"expected [K, {self.embedding_size}] embeddings for {name!r}, got shape {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"embeddings for {name!r} contain NaN or infinite values")
        sources = [str(s) for s in sources] if sources is not None else [""] * len(array)
        if len(sources) != len(array):
            raise ValueError(f"{len(array)} embeddings but {len(sources)} source paths for {name!r}")
        if replace or name not in self._identities:
            self._identities[name] = Identity(name, array.copy(), sources)
        else:
            current = self._identities[name]
            current.embeddings = np.concatenate([current.embeddings, array])
            current.sources = current.sources + sources
        return self._identities[name]

    def remove(self, name: str) -> None:
        """Forget identity ``name`` (KeyError when not enrolled)."""
        del self._identities[name]

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """All embeddings stacked [M, D] and the identity index (into :attr:`names`) of each row."""
        if not self._identities:
            return np.zeros((0, self.embedding_size), np.float32), np.zeros(0, np.int64)
        blocks = [identity.embeddings for identity in self._identities.values()]
        owners = np.concatenate([np.full(len(b), i, dtype=np.int64) for i, b in enumerate(blocks)])
        return np.concatenate(blocks), owners

    def save(self, path: str | Path) -> Path:
        """Write the gallery atomically (temp file + fsync + rename)."""
        path = Path(path)
        embeddings, owners = self.matrix()
        state = {
            "format": GALLERY_FORMAT, "version": GALLERY_VERSION, "embedder_sha256": self.embedder_sha256,
            "embedding_size": self.embedding_size, "names": self.names,
            "embeddings": torch.from_numpy(embeddings), "owners": torch.from_numpy(owners),
            "sources": [s for identity in self._identities.values() for s in identity.sources],
        }
        save_checkpoint(path, state)
        return path

    @classmethod
    def load(cls, path: str | Path, embedder_sha256: str | None = None) -> Gallery:
        """Read a gallery; with ``embedder_sha256`` given, refuse one made by another embedder."""
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "gallery file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch.load raises many types on corrupt bytes; all mean "unreadable"
            first = (str(exc).strip().splitlines() or ["unreadable"])[0]
            raise DataError(path, f"unreadable or truncated gallery file ({first})") from None
        check_header(state, path, GALLERY_FORMAT, GALLERY_VERSION, "gallery")
        stored = str(state["embedder_sha256"])
        if embedder_sha256 is not None and stored != embedder_sha256:
            raise GalleryModelMismatch(path, f"gallery holds embeddings of embedder {stored[:12]}, the embedder in use "
                                             f"is {embedder_sha256[:12]}; rebuild it (test_system.py --rebuild) to "
                                             "re-embed its source images")
        try:
            gallery = cls(stored, int(state["embedding_size"]))
            embeddings = state["embeddings"].numpy()
            owners = state["owners"].numpy()
            sources = list(state["sources"])
            if len(sources) != len(embeddings) or len(owners) != len(embeddings):
                raise ValueError("embeddings, owners and sources differ in length")
            for i, name in enumerate(state["names"]):
                rows = np.flatnonzero(owners == i)
                gallery.add(name, embeddings[rows], [sources[r] for r in rows])
        except (KeyError, ValueError, AttributeError, TypeError) as exc:
            raise DataError(path, f"gallery file is malformed ({exc})") from None
        return gallery

    def rebuild(self, embed_sources: Callable[[Sequence[str]], list[np.ndarray | None]], embedder_sha256: str,
                embedding_size: int) -> tuple[Gallery, RebuildReport]:
        """A new gallery for another embedder: each stored source image re-embedded with ``embed_sources``
        (paths -> one embedding or None per path). Embeddings without a usable source are lost and listed."""
        rebuilt = Gallery(embedder_sha256, embedding_size)
        failed: list[str] = []
        dropped: list[str] = []
        for identity in self._identities.values():
            usable = [s for s in identity.sources if s]
            failed += [f"{identity.name}: embedding without a source image" for s in identity.sources if not s]
            results = embed_sources(usable) if usable else []
            keep = [(s, e) for s, e in zip(usable, results, strict=True) if e is not None]
            failed += [f"{identity.name}: {s}" for s, e in zip(usable, results, strict=True) if e is None]
            if keep:
                rebuilt.add(identity.name, np.stack([e for _, e in keep]), [s for s, _ in keep])
            else:
                dropped.append(identity.name)
        return rebuilt, RebuildReport(rebuilt.num_embeddings, failed, dropped)
